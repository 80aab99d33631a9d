"""
Active Directory as a credential source: the LDAP source with AD's names.

AD never reveals a password or an NT hash, so this source serves only
PLAINTEXT (an LDAP bind as the user, over TLS) and, when a
L{securepop.auth.winbind.WinbindNTLMVerifier} is configured, NTLM_DELEGATE
(the domain controller verifies NTLM; this source then says whether the
user may log in).  User names may be written C{alice}, C{alice@example.com}
(userPrincipalName) or C{EXAMPLE\\alice}.
"""

from ldap3.utils.conv import escape_filter_chars

from securepop.auth.ldap import LDAPCredentialSource, first_value, resolved_settings
from securepop.auth.winbind import WinbindNTLMVerifier, WinbindSettings
from securepop.interfaces import NTLM_DELEGATE, PLAINTEXT

# userAccountControl / msDS-User-Account-Control-Computed bits.
UF_ACCOUNTDISABLE = 0x0002
UF_LOCKOUT = 0x0010
UF_PASSWORD_EXPIRED = 0x800000

# accountExpires: 100 ns ticks since 1601-01-01; 0 and 2**63-1 mean never.
_NEVER_EXPIRES = (0, 0x7FFFFFFFFFFFFFFF)
_EPOCH_AS_FILETIME_SECONDS = 11644473600

#: What every user search asks for besides the configured attributes: the
#: account state and the groups.
AD_ATTRIBUTES = (
    "userAccountControl",
    "lockoutTime",
    "accountExpires",
    "msDS-User-Account-Control-Computed",
    "memberOf",
)


def _int(raw):
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


class ADCredentialSource(LDAPCredentialSource):
    """
    Users in Active Directory (or a Samba AD DC).

    Its defaults (C{sAMAccountName}, nested groups) are
    L{securepop.config.AD_DEFAULTS}, the C{[auth.ad]} section's.

    @ivar domain: the NetBIOS domain name accepted in C{DOMAIN\\user}.
    @ivar realm: the DNS domain; C{user@realm} also matches C{sAMAccountName}.
    @ivar ntlmVerifier: the L{WinbindNTLMVerifier}, or L{None}.
    @ivar ntlmDelegateFactory: the hook the server gives the NTLM delegate
        mechanism (the verifier's C{newExchange}), or L{None}.
    """

    name = "ad"
    lowercase_username = True

    def __init__(self, settings, reactor, domain, realm="", ntlm_delegate=True,
                 **kwargs):
        """
        @param settings: L{securepop.config.LDAPSettings}, best
            L{securepop.config.AD_DEFAULTS} with the site's values.
        @param domain: NetBIOS domain name (e.g. C{"EXAMPLE"}).
        @param realm: DNS domain (e.g. C{"example.com"}), optional.
        @param ntlm_delegate: whether NTLM is verified by the DC (a
            WinbindNTLMVerifier is configured): adds NTLM_DELEGATE.
        @param kwargs: as L{LDAPCredentialSource}.
        """
        self.domain = domain
        self.realm = realm
        self.ntlmVerifier = None
        self.ntlmDelegateFactory = None
        self._ntlm_delegate = ntlm_delegate
        super().__init__(settings, reactor, **kwargs)

    @classmethod
    def fromSettings(cls, section, reactor, settings, **kwargs):
        """
        Build the source and its winbind NTLM verifier from the
        configuration's C{[auth.ad]} section.

        The verifier's C{newExchange} becomes L{ntlmDelegateFactory}, the
        hook the server gives the NTLM delegate mechanism.
        """
        auth = settings.auth
        verifier = None
        if section.helpers > 0 and section.ntlm_auth:
            verifier = WinbindNTLMVerifier(reactor, WinbindSettings.from_settings(auth))
        source = cls(resolved_settings(section, settings), reactor,
                     domain=section.domain or auth.netbios_domain,
                     realm=auth.dns_domain, ntlm_delegate=verifier is not None,
                     **kwargs)
        source.ntlmVerifier = verifier
        if verifier is not None:
            source.ntlmDelegateFactory = verifier.newExchange
        return source

    def capabilities(self):
        # never NT_HASH nor CLEARTEXT_SECRET: AD reveals neither
        kinds = {PLAINTEXT}
        if self._ntlm_delegate:
            kinds.add(NTLM_DELEGATE)
        return frozenset(kinds)

    def user_filter(self, username):
        """
        Map the three AD spellings of a user name to one escaped filter.
        """
        if "\\" in username:
            domain, _, account = username.partition("\\")
            if not account or "\\" in account:
                return None
            if domain.upper() != self.domain.upper():
                return None
            return self._account_filter(
                f"(sAMAccountName={escape_filter_chars(account)})")
        if "@" in username:
            account, _, suffix = username.rpartition("@")
            if not account or not suffix:
                return None
            by_upn = f"(userPrincipalName={escape_filter_chars(username)})"
            if self.realm and suffix.lower() == self.realm.lower():
                by_upn = (f"(|{by_upn}"
                          f"(sAMAccountName={escape_filter_chars(account)}))")
            return self._account_filter(by_upn)
        return self._account_filter(super().user_filter(username))

    def attributes_wanted(self):
        return super().attributes_wanted() + list(AD_ATTRIBUTES)

    def _account_filter(self, user_part):
        return f"(&(objectCategory=person)(objectClass=user){user_part})"

    def _account_state(self, entry):
        """
        Disabled, locked out and expired accounts may not log in.
        """
        flags = _int(first_value(entry, "userAccountControl")) or 0
        computed = _int(first_value(entry, "msDS-User-Account-Control-Computed")) or 0
        if flags & UF_ACCOUNTDISABLE:
            return False, "disabled"
        lockout_time = _int(first_value(entry, "lockoutTime")) or 0
        if lockout_time > 0 or computed & UF_LOCKOUT:
            return False, "locked"
        expires = _int(first_value(entry, "accountExpires"))
        if expires is not None and expires not in _NEVER_EXPIRES:
            expires_at = expires / 10_000_000 - _EPOCH_AS_FILETIME_SECONDS
            if self._reactor.seconds() >= expires_at:
                return False, "expired"
        if computed & UF_PASSWORD_EXPIRED:
            return False, "password expired"
        return True, "enabled"
