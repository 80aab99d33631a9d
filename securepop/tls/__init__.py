"""
Secure communication: TLS policy (profiles, minimum cipher bits), server
certificates with SNI and reload, per-session TLS facts, and the certificate
tools behind C{securepop cert}.

Wiring (as the service does it)::

    policy = TLSPolicy(profile=settings.tls.profile,
                       min_cipher_bits=settings.tls.min_cipher_bits)
    serverTLS = ServerTLS(policy, certificate, key, sni=[...],
                          hostname=settings.server.hostname, clock=reactor)
    for problem in serverTLS.warnings(): log.warn(str(problem))
    # implicit TLS: securepop.tls.transport.ServerTLSFactory(serverTLS, pop3Factory)
    # STLS:         securepop.tls.transport.startTLS(session.transport, serverTLS)
    # SIGHUP:       serverTLS.reload()
"""

from securepop.tls.certificates import (
    CertificateProblem,
    ensure_selfsigned,
)
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
