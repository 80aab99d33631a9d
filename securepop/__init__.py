"""
securepop: a hardened POP3 server on Twisted.

Three levels of protection, as the Exchange 2000 POP3 virtual server had
them, with today's standards: connection control (address, subnet, host and
domain rules; limits), access control (SASL mechanisms that keep the
password off the wire; users file, OpenLDAP or Active Directory; defence
against password guessing), and secure communication (STLS and implicit
TLS with Mozilla's profiles).

Embedding::

    from securepop import config, makeService
    svc = makeService(config.load("securepop.toml"), reactor)
    svc.setServiceParent(application)
"""

from securepop.config import Settings, load as load_config
from securepop.errors import ConfigError, MailboxInUse, SourceUnavailable
from securepop.interfaces import (
    IAccessPolicy, ICredentialSource, ISASLExchange, ISASLMechanism,
    ISecretCredentials, ISecureMailbox, IVerifiedCredentials,
)


def __getattr__(name):
    # The service pulls in the whole server (and imports this package): the
    # CLI and twistd --help should not pay for it just by importing securepop.
    if name in ("SecurePOPService", "makeService"):
        from securepop import service

        return service.SecurePOPService if name == "SecurePOPService" else service.makeService
    raise AttributeError(name)

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "IAccessPolicy", "ICredentialSource", "ISASLExchange",
    "ISASLMechanism", "ISecretCredentials", "ISecureMailbox", "IVerifiedCredentials",
    "MailboxInUse", "SecurePOPService", "Settings", "SourceUnavailable",
    "load_config", "makeService", "__version__",
]
