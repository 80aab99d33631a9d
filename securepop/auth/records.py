"""
Plain records a credential source hands back.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserRecord:
    """
    Who logged in, as the source knows them.

    @ivar username: canonical user name (the mailbox owner).
    @ivar mailbox: an explicit Maildir path from the directory, or None for
        the configured C{[mail] root} template.
    @ivar info: extra facts for logs and C{securepop test-auth} (DN, groups).
    """

    username: str
    mailbox: str | None = None
    info: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ScramSecret:
    """SCRAM stored keys (RFC 5802 section 3); the password is not kept."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
