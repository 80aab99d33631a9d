"""
User names: the one rule every entry point applies.

A name a client sends (USER, APOP, every SASL mechanism, the user and domain
fields of an NTLM AUTHENTICATE), a name an administrator types (C{securepop
user add/passwd/del}, C{deliver}, C{test-auth}) and the names of the users
file all go through L{normalise_username}, so the login, the users file and
the Maildir path always see the same string.  The LMTP listener (the
recipient's local part) and C{securepop migrate} (the local user) must call
it too.

The rule (README "User names"):

 1. Surrounding white space is removed.
 2. A qualified name, C{DOMAIN\\user} or C{user@domain}:
    - C{auth.strip_domain = true}: the domain is dropped, whatever it is.
    - C{auth.strip_domain = false} (default): the domain must be one of the
      server's own names (L{own_domains}: the NetBIOS domain, the NetBIOS
      computer name, the DNS domain and the host name, compared without
      regard to case); it is dropped.  Any other domain, an empty part, or
      more than one qualifier is refused.  With a directory source (C{ldap},
      C{ad}), C{user@domain} is handed to the directory unchanged: its
      C{user_filter} decides (Active Directory matches C{userPrincipalName},
      whose suffixes only the directory knows).
 3. C{auth.username_case = "lower"} folds case.
 4. An empty name, one over 255 octets in UTF-8, or one with a control
    character is refused.
"""

from __future__ import annotations

import functools

MAX_USERNAME_OCTETS = 255

#: The NetBIOS names a host without a usable first label gets (as NTLM's CHALLENGE).
DEFAULT_NETBIOS_NAME = "SECUREPOP"


class UnacceptableUsername(ValueError):
    """
    A name no login can use.

    @ivar reason: short token for the failure log (C{foreign-domain},
        C{malformed}).
    """

    def __init__(self, message, reason="malformed"):
        super().__init__(message)
        self.reason = reason


def server_names(auth, hostname):
    """
    The names the server gives itself, as NTLM's CHALLENGE announces them.

    @param auth: the C{[auth]} settings (C{netbios_domain}, C{dns_domain};
        missing attributes count as empty).
    @param hostname: C{server.hostname}.
    @return: (NetBIOS computer, NetBIOS domain, DNS computer, DNS domain):
        the first label of the host name (upper case, 15 characters at most),
        C{auth.netbios_domain} or else the NetBIOS computer name (the same
        way), the host name, and C{auth.dns_domain} or else the host name
        without its first label (the host name itself when it has one label).
    """
    return _server_names(getattr(auth, "netbios_domain", "") or "",
                         getattr(auth, "dns_domain", "") or "", hostname or "")


def _server_names(netbios_domain, dns_domain, hostname):
    hostname = hostname.rstrip(".")
    first, _, rest = hostname.partition(".")
    nb_computer = first.upper()[:15] or DEFAULT_NETBIOS_NAME
    nb_domain = (netbios_domain or nb_computer).upper()[:15]
    return nb_computer, nb_domain, hostname, dns_domain or rest or hostname


def own_domains(auth, hostname):
    """
    The domains a qualified user name may name when C{strip_domain} is off.

    @return: a frozenset of case-folded names: those of L{server_names}, the
        configured C{auth.netbios_domain} in full, and with C{auth.source =
        "ad"} the directory's NetBIOS domain (C{auth.ad.domain}).
    """
    ad_domain = auth.ad.domain if auth.source == "ad" else ""
    return _own_domains(auth.netbios_domain, auth.dns_domain, ad_domain, hostname or "")


@functools.lru_cache(maxsize=32)
def _own_domains(netbios_domain, dns_domain, ad_domain, hostname):
    names = set(_server_names(netbios_domain, dns_domain, hostname))
    names |= {netbios_domain, ad_domain}
    return frozenset(name.rstrip(".").casefold() for name in names if name)


def normalise_username(raw, auth, hostname):
    """
    Apply the rule of this module.

    @param raw: the name as given (str, or UTF-8 bytes).
    @param auth: the C{[auth]} settings (L{securepop.config.AuthSettings}).
    @param hostname: C{server.hostname}.
    @return: the normalised name (str).
    @raise UnacceptableUsername: (a L{ValueError}) for a name no login can
        use; the message never echoes the name.
    """
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise UnacceptableUsername("user name is not UTF-8") from None
    if not isinstance(raw, str):
        raise UnacceptableUsername("user name must be text")
    name = raw.strip()
    if auth.strip_domain:
        if "\\" in name:
            name = name.split("\\", 1)[1]
        elif "@" in name:
            name = name.split("@", 1)[0]
    elif "\\" in name or "@" in name:
        name = _unqualified(name, auth, hostname)
    if auth.username_case == "lower":
        name = name.lower()
    if not name:
        raise UnacceptableUsername("empty user name")
    try:
        octets = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnacceptableUsername("user name is not valid Unicode") from None
    if octets > MAX_USERNAME_OCTETS:
        raise UnacceptableUsername("user name longer than 255 octets")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise UnacceptableUsername("user name contains a control character")
    return name


def _unqualified(name, auth, hostname):
    """C{DOMAIN\\user} / C{user@domain} in one of the server's own domains -> C{user}."""
    if "\\" in name:
        domain, _, user = name.partition("\\")
        if "\\" in user or "@" in user:
            raise UnacceptableUsername("user name with more than one domain")
    else:
        if auth.source in ("ldap", "ad"):
            return name         # the directory's user_filter decides (AD: UPN)
        user, _, domain = name.partition("@")
        if "@" in domain:
            raise UnacceptableUsername("user name with more than one domain")
    if not user or not domain:
        raise UnacceptableUsername("user name with an empty user or domain part")
    if domain.rstrip(".").casefold() not in own_domains(auth, hostname):
        raise UnacceptableUsername("user name in a domain that is not this server's",
                                   "foreign-domain")
    return user


def index_names(names, key):
    """
    Map stored names (e.g. the users file's) to the names logins use.

    @param names: the stored names.
    @param key: a one-argument L{normalise_username}.
    @return: (index, unreachable, ambiguous): C{index} maps each normalised
        name to the stored name that serves it (the stored name equal to it
        when there is one, else the first in sorted order); C{unreachable}
        lists (stored name, reason) for names no login can reach;
        C{ambiguous} maps a normalised name to its stored names when more
        than one normalises to it.
    """
    index, unreachable, groups = {}, [], {}
    for name in sorted(names):
        try:
            normalised = key(name)
        except ValueError as e:
            unreachable.append((name, str(e)))
            continue
        groups.setdefault(normalised, []).append(name)
    for normalised, stored in groups.items():
        index[normalised] = normalised if normalised in stored else stored[0]
    ambiguous = {k: v for k, v in groups.items() if len(v) > 1}
    return index, unreachable, ambiguous


def for_settings(settings):
    """A one-argument L{normalise_username} for a whole L{securepop.config.Settings}."""
    auth, hostname = settings.auth, settings.server.hostname
    return lambda raw: normalise_username(raw, auth, hostname)
