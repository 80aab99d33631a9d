"""
An LDAP directory (OpenLDAP and friends) as a credential source.

A login is "search, then bind": the service account finds the user's entry
with a filter in which the user name is escaped (RFC 4515), then a second
connection binds with the user's DN and password; group membership, the
per-user POP3 switch and the mailbox come from the directory too.  The
servers, connections, failover and threads are L{securepop.auth.ldappool}'s
(as Dovecot's C{passdb-ldap.c} sits on C{db-ldap.c}).
"""

import dataclasses

import ldap3
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import to_dn
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail
from zope.interface import implementer

from securepop.auth.ldappool import LDAPPool, Refused
from securepop.auth.records import UserRecord
from securepop.errors import SourceUnavailable
from securepop.interfaces import (
    CLEARTEXT_SECRET,
    NT_HASH,
    PLAINTEXT,
    ICredentialSource,
)

_TRUE_VALUES = frozenset({"true", "1", "yes", "on", "enabled"})

#: Longer user names are refused before any search.
MAX_USERNAME_LENGTH = 256

#: The group attribute naming its members' DNs (groupOfNames, AD groups).
GROUP_MEMBER_ATTRIBUTE = "member"


def first_value(entry, attribute):
    """The first raw value of C{attribute} in a search entry, or L{None}."""
    values = entry["raw"].get(attribute.lower())
    if not values:
        return None
    return values[0]


def _text(raw):
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")


def _parse_nt_hash(raw):
    text = raw.strip()
    if len(text) != 32:
        return None
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


@implementer(ICredentialSource)
class LDAPCredentialSource:
    """
    Users in an LDAP directory: search with a service account, bind as the
    user.

    @ivar name: C{"ldap"}.
    @ivar settings: the L{securepop.config.LDAPSettings} in use.
    @ivar pool: the L{LDAPPool} every directory operation runs on.
    @cvar lowercase_username: whether the canonical name (from
        C{username_attribute}) is lowercased.
    """

    name = "ldap"
    lowercase_username = False

    def __init__(self, settings, reactor, bind_password=None, threadpool=None,
                 connection_factory=None, run_in_thread=None):
        """
        @param settings: L{securepop.config.LDAPSettings}.
        @param reactor: provides IReactorTime and IReactorCore (the pool
            starts and stops with it) and IReactorFromThreads.
        @param bind_password: the service password (else read from
            C{settings.bind_password_file}).
        @param threadpool: a L{ThreadPool} to use instead of a fresh one
            (the caller then starts and stops it).
        @param connection_factory: C{f(ldap3.Server, user, password) ->
            ldap3.Connection}; tests give ldap3's MOCK_SYNC strategy here.
        @param run_in_thread: C{f(callable) -> Deferred}; tests run inline.
        @raise ValueError: for settings the pool refuses (see L{LDAPPool}).
        """
        self.settings = settings
        self._reactor = reactor
        self.pool = LDAPPool(settings, reactor, self.name, bind_password=bind_password,
                             threadpool=threadpool, connection_factory=connection_factory,
                             run_in_thread=run_in_thread)

    @classmethod
    def fromSettings(cls, section, reactor, settings, **kwargs):
        """
        Build the source from the configuration's C{[auth.ldap]} section.

        @param section: the section's L{securepop.config.LDAPSettings}.
        @param settings: the whole L{securepop.config.Settings}: files
            named in the section are relative to its data directory.
        """
        return cls(resolved_settings(section, settings), reactor, **kwargs)

    # -- ICredentialSource ---------------------------------------------

    def capabilities(self):
        kinds = {PLAINTEXT}
        if self.settings.nt_hash_attribute:
            kinds.add(NT_HASH)
        if self.settings.apop_secret_attribute:
            kinds.add(CLEARTEXT_SECRET)
        return frozenset(kinds)

    def verifyPassword(self, username, password):
        if not isinstance(password, bytes):
            return fail(TypeError("password must be bytes"))

        def work(session):
            entry = self._find_user(session, username)
            self._bind_as_user(session, entry, password)
            self._check_may_log_in(session, entry)
            return self._record(entry, session)

        return self.pool.run(work)

    def lookupSecret(self, username, kind):
        if kind == NT_HASH and NT_HASH in self.capabilities():
            attribute = self.settings.nt_hash_attribute
        elif kind == CLEARTEXT_SECRET and CLEARTEXT_SECRET in self.capabilities():
            attribute = self.settings.apop_secret_attribute
        else:
            return fail(ValueError(f"{self.name} source cannot serve {kind!r}"))

        def work(session):
            entry = self._find_user(session, username)
            self._check_may_log_in(session, entry)
            raw = first_value(entry, attribute)
            if raw is None:
                raise Refused(f"{entry['dn']} has no {attribute}")
            if kind == NT_HASH:
                secret = _parse_nt_hash(raw)
                if secret is None:
                    raise Refused(f"{entry['dn']}: {attribute} is not 32 hex digits")
            else:
                secret = raw
            return (self._record(entry, session), secret)

        return self.pool.run(work)

    def lookupUser(self, username):
        def work(session):
            entry = self._find_user(session, username)
            self._check_may_log_in(session, entry)
            return self._record(entry, session)

        return self.pool.run(work)

    # -- diagnostics -----------------------------------------------------

    def explain(self, username, password=None):
        """
        Walk a login step by step for C{securepop test-auth}: which server,
        which DN, which groups, the account state, and the outcome.  The
        secrets themselves are not reported.

        @param password: L{bytes}, or L{None} to check only whether the user
            may log in (as after an NTLM verification).
        @return: Deferred firing with a L{dict} (never failing for a refusal;
            C{"result"} is C{"ok"}, C{"refused"} or C{"unavailable"}).
        """
        report = {"source": self.name, "user": username}
        settings = self.settings

        def work(session):
            report["server"] = session.server.url
            entry = self._find_user(session, username)
            report["dn"] = entry["dn"]
            report["groups"] = self._groups_of(session, entry)
            report["account"] = self._account_state(entry)[1]
            report["attributes"] = sorted(
                name for name in (settings.mailbox_attribute,
                                  settings.nt_hash_attribute,
                                  settings.apop_secret_attribute)
                if name and first_value(entry, name) is not None)
            if password is not None:
                self._bind_as_user(session, entry, password)
                report["bind"] = "ok"
            self._check_may_log_in(session, entry)
            record = self._record(entry, session)
            report["username"] = record.username
            report["mailbox"] = record.mailbox
            return report

        def refused(failure):
            failure.trap(UnauthorizedLogin, SourceUnavailable)
            if failure.check(SourceUnavailable):
                report["result"] = "unavailable"
            else:
                report["result"] = "refused"
            report["reason"] = str(failure.value)
            return report

        def ok(result):
            result["result"] = "ok"
            return result

        return self.pool.run(work).addCallbacks(ok, refused)

    def shutdown(self):
        """
        Stop the thread pool and close idle connections.
        """
        self.pool.shutdown()

    # -- what each directory flavour may change ---------------------------

    def user_filter(self, username):
        """
        @return: the search filter for C{username}, escaped; L{None} when
            the name cannot be a user of this source.
        """
        return self.settings.user_filter.replace(
            "{user}", escape_filter_chars(username))

    def attributes_wanted(self):
        """
        @return: the attributes a user search asks for.
        """
        settings = self.settings
        return [settings.username_attribute] + [
            name for name in (settings.mailbox_attribute,
                              settings.nt_hash_attribute,
                              settings.apop_secret_attribute,
                              settings.pop3_enabled_attribute,
                              settings.quota_attribute) if name]

    def _account_state(self, entry):
        """
        @return: C{(may_log_in, description)} from the entry's own attributes.
        """
        return True, "enabled"

    # -- steps (all run in a pool thread) ---------------------------------

    def _find_user(self, session, username):
        if (not isinstance(username, str) or not username
                or len(username) > MAX_USERNAME_LENGTH):
            raise Refused("user name empty or too long")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in username):
            # Escaping keeps NUL from changing the filter, but some servers
            # (Samba) compare values as C strings: "alice\0" finds alice.
            raise Refused("control character in user name")
        search_filter = self.user_filter(username)
        if search_filter is None:
            raise Refused("user name not valid for this directory")
        entries = session.search(self.settings.base_dn, search_filter,
                                 self.attributes_wanted(), size_limit=2)
        if len(entries) != 1:
            raise Refused(f"{len(entries)} entries match the user name")
        return entries[0]

    def _bind_as_user(self, session, entry, password):
        if not password:
            # An empty password is an unauthenticated bind (RFC 4513
            # 5.1.2), which many servers accept: never a login.
            raise Refused("empty password")
        session.bind_as(entry["dn"], password)

    def _check_may_log_in(self, session, entry):
        ok, state = self._account_state(entry)
        if not ok:
            raise Refused(f"{entry['dn']}: account {state}")
        settings = self.settings
        if settings.required_group and not self._is_member(
                session, entry, settings.required_group):
            raise Refused(f"{entry['dn']} not in {settings.required_group}")
        if settings.pop3_enabled_attribute:
            raw = first_value(entry, settings.pop3_enabled_attribute)
            if raw is None:
                allowed = settings.pop3_attribute_default
            else:
                allowed = _text(raw).strip().lower() in _TRUE_VALUES
            if not allowed:
                raise Refused(f"{entry['dn']}: POP3 switched off")
        if settings.pop3_denied_group and self._is_member(
                session, entry, settings.pop3_denied_group):
            raise Refused(f"{entry['dn']}: in {settings.pop3_denied_group}")

    def _is_member(self, session, entry, group_dn):
        if self.settings.nested_groups:
            # AD's LDAP_MATCHING_RULE_IN_CHAIN follows nested groups.
            found = session.search(
                entry["dn"],
                "(memberOf:1.2.840.113556.1.4.1941:="
                f"{escape_filter_chars(group_dn)})",
                [], scope=ldap3.BASE, size_limit=1)
        else:
            found = session.search(
                group_dn,
                f"({GROUP_MEMBER_ATTRIBUTE}="
                f"{escape_filter_chars(entry['dn'])})",
                [], scope=ldap3.BASE, size_limit=1)
        return bool(found)

    def _groups_of(self, session, entry):
        member_of = entry["raw"].get("memberof")
        if member_of:
            return sorted(_text(value) for value in member_of)
        base = self.settings.group_base_dn or self.settings.base_dn
        if not self.settings.group_base_dn and self.settings.required_group:
            # groups usually live beside the required one
            parts = to_dn(self.settings.required_group)
            if len(parts) > 1:
                base = ",".join(parts[1:])
        found = session.search(
            base,
            f"({GROUP_MEMBER_ATTRIBUTE}="
            f"{escape_filter_chars(entry['dn'])})",
            [], size_limit=100)
        return sorted(found_entry["dn"] for found_entry in found)

    def _record(self, entry, session):
        settings = self.settings
        username = _text(first_value(entry, settings.username_attribute))
        if not username:
            raise Refused(f"{entry['dn']} has no {settings.username_attribute}")
        if self.lowercase_username:
            username = username.lower()
        mailbox = None
        if settings.mailbox_attribute:
            mailbox = _text(first_value(entry, settings.mailbox_attribute))
        info = {"source": self.name, "dn": entry["dn"], "server": session.server.url}
        if settings.quota_attribute:
            quota = _text(first_value(entry, settings.quota_attribute))
            if quota:
                info["quota"] = quota   # "OCTETS[,MESSAGES]", read by the LMTP delivery
        return UserRecord(username=username, mailbox=mailbox, info=info)


def resolved_settings(section, settings):
    """
    C{section} with its file names made relative to the configuration's
    data directory (L{securepop.config.Settings.resolve}).
    """
    files = {name: str(settings.resolve(value)) for name, value in
             (("bind_password_file", section.bind_password_file),
              ("ca_file", section.ca_file)) if value}
    return dataclasses.replace(section, **files)
