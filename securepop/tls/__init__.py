"""
Secure communication: TLS policy (profiles, minimum cipher bits), server
certificates with SNI and reload, per-session TLS facts, the TLS layer under
each session, and the certificate tools behind C{securepop cert}.

 - L{profiles}: L{TLSPolicy}, the protocol versions and ciphers.
 - L{contextfactory}: L{ServerTLS}, the certificates served (SNI, reload).
 - L{transport}: the memory-BIO TLS layer (implicit TLS and C{STLS}).
 - L{checks}: loading certificates and keys, and checking them.
 - L{certificates}: the default certificate, paths, the report.
 - L{selfsigned}: making keys and self-signed certificates.
 - L{issue}: C{securepop cert request|install}.

Wiring, as L{securepop.service} does it::

    policy = TLSPolicy(profile=settings.tls.profile,
                       min_cipher_bits=settings.tls.min_cipher_bits)
    serverTLS = ServerTLS(policy, certificate, key, sni=[...],
                          hostname=settings.server.hostname, clock=reactor)
    for problem in serverTLS.warnings(): log.warn(str(problem))
    # implicit TLS: ServerTLSFactory(serverTLS, pop3Factory)
    # STLS:         securepop.tls.transport.startTLS(transport, serverTLS)
    # SIGHUP:       serverTLS.reload()
"""

from securepop.tls.certificates import ensure_selfsigned
from securepop.tls.checks import CertificateProblem
from securepop.tls.contextfactory import ServerTLS, channel_binding, tls_facts
from securepop.tls.profiles import PROFILE_NAMES, TLSPolicy

__all__ = [
    "CertificateProblem",
    "PROFILE_NAMES",
    "ServerTLS",
    "TLSPolicy",
    "channel_binding",
    "ensure_selfsigned",
    "tls_facts",
]
