"""
Active Directory as a credential source: the LDAP source with AD's names.

AD never reveals a password or an NT hash, so this source serves only
PLAINTEXT (an LDAP bind as the user, over TLS) and, when a
L{securepop.auth.winbind.WinbindNTLMVerifier} is configured, NTLM_DELEGATE
(the domain controller verifies NTLM; this source then says whether the
user may log in).  User names may be written C{alice}, C{alice@example.com}
(userPrincipalName) or C{EXAMPLE\\alice}.
"""

import dataclasses

from ldap3.utils.conv import escape_filter_chars

from securepop.auth.ldap import LDAPCredentialSource, LDAPSettings, _firstValue
from securepop.interfaces import NTLM_DELEGATE, PLAINTEXT

# userAccountControl / msDS-User-Account-Control-Computed bits.
UF_ACCOUNTDISABLE = 0x0002
UF_LOCKOUT = 0x0010
UF_PASSWORD_EXPIRED = 0x800000

# accountExpires: 100 ns ticks since 1601-01-01; 0 and 2**63-1 mean never.
_NEVER_EXPIRES = (0, 0x7FFFFFFFFFFFFFFF)
_EPOCH_AS_FILETIME_SECONDS = 11644473600

AD_ATTRIBUTES = (
    "userAccountControl",
    "lockoutTime",
    "accountExpires",
    "msDS-User-Account-Control-Computed",
    "memberOf",
)


def adSettings(**overrides):
    """
    L{LDAPSettings} with Active Directory defaults.

    @param overrides: any L{LDAPSettings} field (C{urls} and C{base_dn} are
        required).
    """
    values = dict(
        user_filter="(sAMAccountName={user})",
        username_attribute="sAMAccountName",
        lowercase_username=True,
        nested_groups=True,
        group_member_attribute="member",
        extra_attributes=AD_ATTRIBUTES,
    )
    values.update(overrides)
    if values.get("nt_hash_attribute") or values.get("secret_attribute"):
        raise ValueError(
            "Active Directory never reveals NT hashes or passwords: "
            "nt_hash_attribute and secret_attribute must stay empty "
            "(NTLM is verified by the domain controller through winbind)")
    extra = tuple(values["extra_attributes"])
    values["extra_attributes"] = extra + tuple(
        name for name in AD_ATTRIBUTES if name not in extra)
    return LDAPSettings(**values)


def _int(raw):
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


class ADCredentialSource(LDAPCredentialSource):
    """
    Users in Active Directory (or a Samba AD DC).

    @ivar domain: the NetBIOS domain name accepted in C{DOMAIN\\user}.
    @ivar realm: the DNS domain; C{user@realm} also matches C{sAMAccountName}.
    """

    name = "ad"

    def __init__(self, settings, reactor, domain, realm="",
                 ntlmDelegate=True, **kwargs):
        """
        @param settings: L{LDAPSettings}, best made by L{adSettings}.
        @param domain: NetBIOS domain name (e.g. C{"EXAMPLE"}).
        @param realm: DNS domain (e.g. C{"example.com"}), optional.
        @param ntlmDelegate: whether NTLM is verified by the DC (a
            WinbindNTLMVerifier is configured): adds NTLM_DELEGATE.
        @param kwargs: as L{LDAPCredentialSource}.
        """
        if settings.nt_hash_attribute or settings.secret_attribute:
            raise ValueError("Active Directory never reveals NT hashes or "
                             "passwords: nt_hash_attribute and "
                             "secret_attribute must stay empty")
        missing = [name for name in AD_ATTRIBUTES
                   if name not in settings.extra_attributes]
        if missing:
            settings = dataclasses.replace(
                settings,
                extra_attributes=tuple(settings.extra_attributes) + tuple(missing))
        self.domain = domain
        self.realm = realm
        self.ntlmVerifier = None
        self.ntlmDelegateFactory = None
        self._ntlmDelegate = ntlmDelegate
        super().__init__(settings, reactor, **kwargs)

    @classmethod
    def defaultOverrides(cls):
        values = dict(
            user_filter="(sAMAccountName={user})",
            username_attribute="sAMAccountName", lowercase_username=True,
            nested_groups=True, extra_attributes=AD_ATTRIBUTES)
        return values

    @classmethod
    def fromSettings(cls, section, reactor, settings, **kwargs):
        """
        Build the source and its winbind NTLM verifier from the
        configuration's C{[auth.ad]} section.

        The verifier's C{newExchange} becomes L{ntlmDelegateFactory}, the
        hook the server gives the NTLM delegate mechanism.
        """
        from securepop.auth.ldap import _fromConfig
        from securepop.auth.winbind import WinbindNTLMVerifier, WinbindSettings
        from securepop.errors import ConfigError

        ldapSettings = _fromConfig(section, settings, cls.defaultOverrides())
        where = getattr(settings, "path", None) or "(defaults)"
        if ldapSettings.nt_hash_attribute or ldapSettings.secret_attribute:
            raise ConfigError(where, "auth.ad", "Active Directory never reveals "
                              "NT hashes or passwords: leave nt_hash_attribute "
                              "and apop_secret_attribute empty")
        auth = settings.auth
        helpers = getattr(section, "helpers", 4)
        verifier = None
        if helpers > 0 and getattr(section, "ntlm_auth", ""):
            verifier = WinbindNTLMVerifier(reactor, WinbindSettings(
                ntlm_auth=section.ntlm_auth,
                configfile=getattr(section, "ntlm_auth_config", ""),
                helpers=helpers,
                timeout=getattr(section, "ntlm_timeout", 10.0),
                exchange_timeout=getattr(section, "ntlm_exchange_timeout", 30.0),
                max_queue=getattr(section, "ntlm_max_queue", 32),
                insecure_allow_ntlmv1=getattr(auth, "insecure_allow_ntlmv1", False)))
        source = cls(ldapSettings, reactor,
                     domain=getattr(section, "domain", "") or auth.netbios_domain,
                     realm=getattr(auth, "dns_domain", ""),
                     ntlmDelegate=verifier is not None, **kwargs)
        source.ntlmVerifier = verifier
        if verifier is not None:
            source.ntlmDelegateFactory = verifier.newExchange
        return source

    def capabilities(self):
        kinds = {PLAINTEXT}
        if self._ntlmDelegate:
            kinds.add(NTLM_DELEGATE)
        return frozenset(kinds)

    def userFilter(self, username):
        """
        Map the three AD spellings of a user name to one escaped filter.
        """
        if "\\" in username:
            domain, _, account = username.partition("\\")
            if not account or "\\" in account:
                return None
            if domain.upper() != self.domain.upper():
                return None
            return self._accountFilter(
                f"(sAMAccountName={escape_filter_chars(account)})")
        if "@" in username:
            account, _, suffix = username.rpartition("@")
            if not account or not suffix:
                return None
            byUPN = f"(userPrincipalName={escape_filter_chars(username)})"
            if self.realm and suffix.lower() == self.realm.lower():
                byUPN = (f"(|{byUPN}"
                         f"(sAMAccountName={escape_filter_chars(account)}))")
            return self._accountFilter(byUPN)
        return self._accountFilter(super().userFilter(username))

    def _accountFilter(self, userPart):
        return f"(&(objectCategory=person)(objectClass=user){userPart})"

    def _accountState(self, entry):
        """
        Disabled, locked out and expired accounts may not log in.
        """
        flags = _int(_firstValue(entry, "userAccountControl")) or 0
        computed = _int(_firstValue(entry, "msDS-User-Account-Control-Computed")) or 0
        if flags & UF_ACCOUNTDISABLE:
            return False, "disabled"
        lockoutTime = _int(_firstValue(entry, "lockoutTime")) or 0
        if lockoutTime > 0 or computed & UF_LOCKOUT:
            return False, "locked"
        expires = _int(_firstValue(entry, "accountExpires"))
        if expires is not None and expires not in _NEVER_EXPIRES:
            expiresAt = expires / 10_000_000 - _EPOCH_AS_FILETIME_SECONDS
            if self._reactor.seconds() >= expiresAt:
                return False, "expired"
        if computed & UF_PASSWORD_EXPIRED:
            return False, "password expired"
        return True, "enabled"
