"""
An in-memory directory for the LDAP unit tests: ldap3's MOCK_SYNC strategy
(unit tests only; the integration tests use real slapd), with directory
work run inline instead of on the thread pool, so a fake clock drives every
timeout.
"""

import ldap3
from ldap3.core.exceptions import LDAPSocketOpenError
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock

from securepop.auth.ldap import LDAPCredentialSource
from securepop.config import LDAPSettings

SERVICE = "cn=svc,dc=t"
PEOPLE = "ou=p,dc=t"
GROUP = "cn=pop3,dc=t"
DENIED = "cn=nopop3,dc=t"
NT = "0701327011" + "73C003589BA38563C67B5F"
URLS = ("ldaps://127.0.0.1:1636", "ldaps://127.0.0.1:2636")

ENTRIES = [
    (SERVICE, {"objectClass": "person", "cn": "svc", "userPassword": "svcpw"}),
    (f"uid=alice,{PEOPLE}", {"objectClass": "person", "uid": "alice",
                             "userPassword": "pw-alice", "mailbox": "/m/alice",
                             "ntHash": NT, "secret": "apop-alice",
                             "pop3": "TRUE", "mailQuota": "5000,10"}),
    (f"uid=bob,{PEOPLE}", {"objectClass": "person", "uid": "bob",
                           "userPassword": "pw-bob"}),
    (f"uid=dave,{PEOPLE}", {"objectClass": "person", "uid": "dave",
                            "userPassword": "pw-dave", "pop3": "FALSE",
                            "ntHash": "not-hex"}),
    (f"uid=erin,{PEOPLE}", {"objectClass": "person", "uid": "erin",
                            "userPassword": "pw-erin"}),
    (f"uid=odd*(x),{PEOPLE}", {"objectClass": "person", "uid": "odd*(x)",
                               "userPassword": "pw-odd"}),
    (GROUP, {"objectClass": "groupOfNames", "member": [
        f"uid=alice,{PEOPLE}", f"uid=dave,{PEOPLE}", f"uid=erin,{PEOPLE}",
        f"uid=odd*(x),{PEOPLE}"]}),
    (DENIED, {"objectClass": "groupOfNames", "member": [f"uid=erin,{PEOPLE}"]}),
]


class MockDirectory:
    """
    A connection factory making MOCK_SYNC connections; counts connections
    and records filters; servers in C{down} refuse to connect.
    """

    def __init__(self):
        self.down = set()
        self.opened = []
        self.filters = []

    def __call__(self, server, user, password):
        if server.port in self.down:
            raise LDAPSocketOpenError("connection refused")
        self.opened.append(server.port)
        connection = ldap3.Connection(
            server, user=user, password=password,
            client_strategy=ldap3.MOCK_SYNC, raise_exceptions=False)
        for dn, attributes in ENTRIES:
            connection.strategy.add_entry(dn, attributes)
        directory = self
        search = connection.search

        def recording_search(base, search_filter, *args, **kwargs):
            directory.filters.append(search_filter)
            return search(base, search_filter, *args, **kwargs)

        connection.search = recording_search
        return connection


def inline(function):
    return maybeDeferred(function)


def settings_for(**overrides):
    """L{LDAPSettings} for the mock directory, two servers."""
    values = dict(urls=URLS, base_dn=PEOPLE, bind_dn=SERVICE, required_group=GROUP,
                  mailbox_attribute="mailbox", request_timeout=10,
                  retry_down_after=30)
    values.update(overrides)
    return LDAPSettings(**values)


def make_source(directory=None, run_in_thread=inline, **overrides):
    """@return: C{(reactor, directory, source)}."""
    reactor = MemoryReactorClock()
    directory = directory or MockDirectory()
    source = LDAPCredentialSource(
        settings_for(**overrides), reactor, connection_factory=directory,
        run_in_thread=run_in_thread, bind_password="svcpw")
    return reactor, directory, source


def result(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    return outcome[0]


def failure_of(deferred, *types):
    value = result(deferred)
    assert hasattr(value, "check"), f"expected a failure, got {value!r}"
    assert value.check(*types), value
    return value
