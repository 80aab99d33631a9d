"""
Connection control: which clients may connect at all, decided before the
greeting (the first of the three Exchange 2000 security levels).

 - L{rules}: address, network, "address mask", C{host:} and C{domain:}
   rules; the modes C{allow-listed} and C{deny-listed}; L{Decision}.
 - L{dns}: asynchronous, cached, bounded reverse DNS with forward
   confirmation, and host-name resolution.
 - L{policy}: L{AccessPolicy}, the L{securepop.interfaces.IAccessPolicy}.
 - L{limits}: total, per-address and per-user connection limits.
 - L{proxy}: the PROXY protocol (v1, v2) from trusted proxies only.
"""

from securepop.access.dns import (
    AccessResolver,
    HostAddressWatcher,
    ReverseResult,
    makeTwistedResolver,
)
from securepop.access.limits import LimitExceeded, LimitRule
from securepop.access.policy import AccessPolicy
from securepop.access.proxy import (
    ProxyHeader,
    ProxyHeaderError,
    ProxyProtocolFactory,
    parseProxyHeader,
)
from securepop.access.rules import (
    ALLOW_LISTED,
    DENY_LISTED,
    Decision,
    RuleError,
    parseRule,
    parseRules,
)

__all__ = [
    "ALLOW_LISTED",
    "DENY_LISTED",
    "AccessPolicy",
    "AccessResolver",
    "Decision",
    "HostAddressWatcher",
    "LimitExceeded",
    "LimitRule",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyProtocolFactory",
    "ReverseResult",
    "RuleError",
    "makeTwistedResolver",
    "parseProxyHeader",
    "parseRule",
    "parseRules",
]
