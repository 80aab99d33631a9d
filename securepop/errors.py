"""
Exceptions that cross layers, each mapped to exactly one POP3 answer.
"""


class SecurePOPError(Exception):
    """Base class; the text is for logs, never for the client."""


class ConfigError(SecurePOPError):
    """
    A configuration problem: names the file, the key, and the reason (and
    the line when it is known), so the start stops with a useful message.
    """

    def __init__(self, path, key, reason, line=None):
        self.path, self.key, self.reason, self.line = path, key, reason, line
        where = str(path)
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {key}: {reason}")


class SourceUnavailable(SecurePOPError):
    """The credential source cannot answer now: C{-ERR [SYS/TEMP]}."""


class VerificationBusy(SourceUnavailable):
    """
    Too many verifications are waiting (server-wide, or for this client's
    address): C{-ERR [SYS/TEMP]} at once, rather than a login that times out.
    """


class MailboxInUse(SecurePOPError):
    """Another session holds the mailbox lock: C{-ERR [IN-USE]}."""


class MailboxUnavailable(SecurePOPError):
    """The maildrop cannot be opened now (disk full, storage away): [SYS/TEMP]."""


class SASLError(SecurePOPError):
    """A malformed or refused SASL response: the AUTH fails."""


class StateUnavailable(SecurePOPError):
    """The shared state store did not answer within its timeout."""
