"""
SASL mechanisms for POP3 AUTH (RFC 5034), and APOP.

Each mechanism is a pure object implementing
L{securepop.interfaces.ISASLMechanism}: it declares whether the password
crosses the wire (C{exposesPassword}) and what it needs from the credential
source (C{requires}), and its exchanges turn client responses into
challenges and, at the end, credentials for the portal.  They never touch
the network, a directory or the reactor: the protocol drives them.

The registry decides which mechanisms a configuration may use and which are
offered on a connection now; L{securepop.schemes} derives what they verify
against and the users file stores.
"""

from securepop.sasl.apop import APOPCredentials, new_timestamp
from securepop.sasl.base import Challenge
from securepop.sasl.cram_md5 import CRAM_MD5, CramMD5Credentials, CramMD5Mechanism
from securepop.sasl.credentials import VerifiedCredentials
from securepop.sasl.gssapi import GSSAPI, GSSAPIMechanism, IGSSAcceptorExchange
from securepop.sasl.login import LOGIN, LoginMechanism
from securepop.sasl.ntlm import (
    NTLM, NTLM_DELEGATED, INTLMDelegate, NTLMCredentials,
    NTLMDelegateMechanism, NTLMMechanism, NTLMRefused,
)
from securepop.sasl.plain import PLAIN, PlainMechanism
from securepop.sasl.registry import (
    MECHANISMS, check_pairings, mechanism_for, mechanisms_for,
)
from securepop.sasl.scram import (
    SCRAM_SHA_256_MECHANISM, SCRAM_SHA_256_PLUS_MECHANISM,
    ScramSHA256Mechanism,
)

__all__ = [
    "APOPCredentials", "CRAM_MD5", "Challenge", "CramMD5Credentials",
    "CramMD5Mechanism", "GSSAPI", "GSSAPIMechanism", "IGSSAcceptorExchange", "INTLMDelegate", "LOGIN", "LoginMechanism",
    "MECHANISMS", "NTLM", "NTLMCredentials", "NTLMDelegateMechanism",
    "NTLMMechanism", "NTLMRefused", "NTLM_DELEGATED", "PLAIN",
    "PlainMechanism", "SCRAM_SHA_256_MECHANISM",
    "SCRAM_SHA_256_PLUS_MECHANISM", "ScramSHA256Mechanism",
    "VerifiedCredentials", "check_pairings", "mechanism_for",
    "mechanisms_for", "new_timestamp",
]
