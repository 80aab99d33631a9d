"""
Which SASL mechanisms exist, which the configured credential source can
serve, and which may be offered on a connection right now.

Dovecot's rule: a mechanism declares what it needs from the source; a
configuration that pairs it with a source that cannot serve it stops the
start, instead of failing every login later.
"""

from securepop.interfaces import CLEARTEXT_SECRET, PLAINTEXT
from securepop.sasl.cram_md5 import CRAM_MD5
from securepop.sasl.gssapi import GSSAPI
from securepop.sasl.login import LOGIN
from securepop.sasl.ntlm import NTLM, NTLM_DELEGATED
from securepop.sasl.oauth import OAUTHBEARER, XOAUTH2
from securepop.sasl.plain import PLAIN
from securepop.sasl.scram import (
    SCRAM_SHA_256_MECHANISM, SCRAM_SHA_256_PLUS_MECHANISM,
)

#: SASL name -> candidate mechanism objects, preferred first.  NTLM has two:
#: verified by the domain controller, or here against the NT hash.
MECHANISMS = {
    "PLAIN": (PLAIN,),
    "LOGIN": (LOGIN,),
    "CRAM-MD5": (CRAM_MD5,),
    "SCRAM-SHA-256": (SCRAM_SHA_256_MECHANISM,),
    "SCRAM-SHA-256-PLUS": (SCRAM_SHA_256_PLUS_MECHANISM,),
    "NTLM": (NTLM_DELEGATED, NTLM),
    "OAUTHBEARER": (OAUTHBEARER,),
    "XOAUTH2": (XOAUTH2,),
    "GSSAPI": (GSSAPI,),
}

#: Logins that are not SASL but need the source all the same.
NON_SASL_REQUIREMENTS = {"USER": PLAINTEXT, "APOP": CLEARTEXT_SECRET}

#: Offered only under TLS, whatever the cleartext options say: SCRAM-PLUS is
#: bound to the TLS channel; a bearer token is a password that stays valid
#: for its lifetime and, unlike a password, is never meant to be typed in a
#: cleartext protocol (insecure_allow_cleartext does not extend to it).
_NEEDS_TLS = frozenset({"SCRAM-SHA-256-PLUS", "OAUTHBEARER", "XOAUTH2"})


def _canonical(name):
    canonical = name.upper()
    if canonical not in MECHANISMS and canonical not in NON_SASL_REQUIREMENTS:
        known = ", ".join(sorted(MECHANISMS) + sorted(NON_SASL_REQUIREMENTS))
        raise ValueError(f"unknown authentication mechanism {name!r} "
                         f"(known: {known})")
    return canonical


def mechanism_for(name, source_capabilities):
    """
    @return: the mechanism object for C{name} that the source can serve,
        or None.
    @raise ValueError: for an unknown name.
    """
    for mechanism in MECHANISMS.get(_canonical(name), ()):
        # requires None: any source (bearer tokens only look the user up).
        if mechanism.requires is None or mechanism.requires in source_capabilities:
            return mechanism
    return None


def check_pairings(names, source_capabilities):
    """
    Stop the start when a configured mechanism cannot work with the source.

    @param names: configured mechanism names (SASL names, plus C{USER} and
        C{APOP}).
    @param source_capabilities: the source's C{capabilities()}.
    @raise ValueError: naming the mechanism and what the source lacks.
    """
    capabilities = frozenset(source_capabilities)
    for name in names:
        canonical = _canonical(name)
        if canonical in NON_SASL_REQUIREMENTS:
            needed = [NON_SASL_REQUIREMENTS[canonical]]
        else:
            if mechanism_for(canonical, capabilities) is not None:
                continue
            needed = [m.requires for m in MECHANISMS[canonical]]
        if not capabilities.intersection(needed):
            has = ", ".join(sorted(capabilities)) or "nothing"
            raise ValueError(
                f"{canonical} needs a credential source that serves "
                f"{' or '.join(needed)}; the configured source serves "
                f"only {has}")


def mechanisms_for(names, source_capabilities, secure, allow_cleartext):
    """
    The mechanisms to offer on one connection now (CAPA SASL, bare AUTH,
    and which AUTH is accepted).

    @param names: configured mechanism names, in the order to offer them;
        C{USER} and C{APOP} are skipped (the protocol handles them).
    @param secure: True when the connection is under TLS now.
    @param allow_cleartext: the admin's explicit permission to use
        password-exposing mechanisms without TLS.
    @return: list of L{ISASLMechanism}, no name twice.
    """
    capabilities = frozenset(source_capabilities)
    offered, seen = [], set()
    for name in names:
        canonical = _canonical(name)
        if canonical in NON_SASL_REQUIREMENTS or canonical in seen:
            continue
        mechanism = mechanism_for(canonical, capabilities)
        if mechanism is None:
            continue
        if mechanism.exposesPassword and not (secure or allow_cleartext):
            continue
        if canonical in _NEEDS_TLS and not secure:
            continue
        seen.add(canonical)
        offered.append(mechanism)
    return offered
