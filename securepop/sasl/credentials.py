"""
Credentials objects shared by several mechanisms.
"""

from dataclasses import dataclass

from zope.interface import implementer

from securepop.interfaces import IVerifiedCredentials


@implementer(IVerifiedCredentials)
@dataclass(frozen=True)
class VerifiedCredentials:
    """
    A user whose proof the mechanism has already checked (SCRAM, NTLM via
    the domain controller); the checker only asks the source whether the
    user may log in.
    """

    username: str
    mechanism: str


def normalise(context, raw):
    """
    Normalise a user name through the context, turning its ValueError into
    the SASLError every mechanism raises for bad input (its C{reason}, e.g.
    C{foreign-domain}, goes to the failure log).
    """
    from securepop.errors import SASLError

    try:
        username = context.normaliseUsername(raw)
    except ValueError as e:
        error = SASLError(f"unacceptable user name: {e}")
        error.reason = getattr(e, "reason", "malformed")
        raise error from None
    if not username:
        raise SASLError("empty user name")
    return username
