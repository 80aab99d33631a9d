"""
Tests for securepop.auth.ldappool: servers, failover, pooled connections,
the thread pool and the request deadline (MOCK_SYNC directory inline).
"""

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from securepop.auth.ldappool import LDAPPool, Refused, ServerFailure
from securepop.errors import SourceUnavailable
from tests.unit.ldap_directory import (
    PEOPLE,
    SERVICE,
    MockDirectory,
    failure_of,
    inline,
    result,
    settings_for,
)


def make_pool(directory=None, run_in_thread=inline, bind_password="svcpw", **overrides):
    """@return: C{(reactor, directory, pool)}."""
    reactor = MemoryReactorClock()
    directory = directory or MockDirectory()
    pool = LDAPPool(settings_for(**overrides), reactor, "ldap",
                    bind_password=bind_password, connection_factory=directory,
                    run_in_thread=run_in_thread)
    return reactor, directory, pool


def login(user, password):
    """Work for L{LDAPPool.run}: search the user, bind as them."""

    def work(session):
        entries = session.search(PEOPLE, f"(uid={user})", ["uid"], size_limit=2)
        if len(entries) != 1:
            raise Refused("no such user")
        session.bind_as(entries[0]["dn"], password)
        return session.server.url

    return work


def test_a_login_runs_on_the_first_server():
    _, _, pool = make_pool()
    assert result(pool.run(login("alice", "pw-alice"))) == "ldaps://127.0.0.1:1636"


def test_invalid_credentials_are_a_refusal_not_an_outage():
    _, _, pool = make_pool()
    failure_of(pool.run(login("alice", "pw-bob")), UnauthorizedLogin)
    failure_of(pool.run(login("nobody", "x")), UnauthorizedLogin)


def test_a_missing_base_finds_nothing():
    _, _, pool = make_pool()
    assert result(pool.run(lambda s: s.search("ou=none,dc=t", "(uid=alice)", []))) == []


def test_unexpected_errors_are_an_outage():
    _, _, pool = make_pool()

    def work(session):
        raise KeyError("bug")

    failure_of(pool.run(work), SourceUnavailable)


def test_cleartext_urls_refused_at_construction():
    with pytest.raises(ValueError, match="insecure_cleartext"):
        make_pool(urls=("ldap://127.0.0.1:389",))
    make_pool(urls=("ldap://127.0.0.1:389",), insecure_cleartext=True)
    with pytest.raises(ValueError):
        make_pool(urls=())


def test_start_tls_on_ldap_urls():
    _, _, pool = make_pool(urls=("ldap://h", "ldaps://h2", "ldap://h3"), start_tls=True)
    assert [server.start_tls for server in pool.servers] == [True, False, True]
    assert [server.ldap_server.ssl for server in pool.servers] == [False, True, False]
    assert all(server.ldap_server.tls is not None for server in pool.servers)
    _, _, clear = make_pool(urls=("ldap://h",), insecure_cleartext=True)
    assert clear.servers[0].start_tls is False
    assert clear.servers[0].ldap_server.tls is None


def test_start_tls_refused_is_an_outage():
    class NoStartTLS(MockDirectory):
        def __call__(self, server, user, password):
            connection = super().__call__(server, user, password)
            connection.start_tls = lambda: False
            return connection

    _, _, pool = make_pool(NoStartTLS(), urls=("ldap://127.0.0.1:1389",), start_tls=True)
    failure = failure_of(pool.run(login("alice", "pw-alice")), SourceUnavailable)
    assert "StartTLS refused" in str(failure.value)


def test_password_file_and_missing_password(tmp_path):
    secret = tmp_path / "pw"
    secret.write_bytes(b"svcpw\n")
    _, _, pool = make_pool(bind_password=None, bind_password_file=str(secret))
    assert pool._bind_password == "svcpw"
    assert result(pool.run(login("alice", "pw-alice")))
    with pytest.raises(ValueError):
        make_pool(bind_password=None, bind_dn=SERVICE)
    make_pool(bind_password=None, bind_dn="")


def test_failover_to_the_second_server_and_back_after_the_retry_delay():
    reactor, directory, pool = make_pool()
    directory.down.add(1636)
    assert result(pool.run(login("alice", "pw-alice"))) == "ldaps://127.0.0.1:2636"
    assert pool.servers[0].down_until == 30
    # the first server is skipped while it is marked down ...
    directory.down.clear()
    opened = len(directory.opened)
    result(pool.run(login("alice", "pw-alice")))
    assert 1636 not in directory.opened[opened:]
    # ... and tried again after retry_down_after
    reactor.advance(30)
    assert result(pool.run(login("alice", "pw-alice"))) == "ldaps://127.0.0.1:1636"
    assert pool.servers[0].down_until is None


def test_all_servers_down_is_an_outage_not_a_refusal():
    _, directory, pool = make_pool()
    directory.down.update({1636, 2636})
    failure_of(pool.run(login("alice", "pw-alice")), SourceUnavailable)
    # they come back: the next login works at once (all were down, so all
    # are tried), without restarting anything
    directory.down.clear()
    assert result(pool.run(login("alice", "pw-alice")))


def test_service_bind_failure_is_an_outage():
    _, _, pool = make_pool(bind_password="wrong", urls=("ldaps://h:1",))
    failure = failure_of(pool.run(login("alice", "pw-alice")), SourceUnavailable)
    assert "service bind failed" in str(failure.value)


def test_server_failure_raised_by_work_fails_over():
    _, _, pool = make_pool()
    seen = []

    def work(session):
        seen.append(session.server.url)
        if len(seen) == 1:
            raise ServerFailure("lost")
        return "ok"

    assert result(pool.run(work)) == "ok"
    assert seen == list(settings_for().urls)


def test_connections_are_reused():
    _, directory, pool = make_pool()
    for _ in range(5):
        result(pool.run(login("alice", "pw-alice")))
    # one search connection and one bind connection, reused
    assert len(directory.opened) == 2


def test_idle_connections_are_bounded_by_pool_size():
    _, _, pool = make_pool(pool_size=1)
    server = pool.servers[0]
    first, second = (pool.checkout(server, "search") for _ in range(2))
    pool.checkin(server, "search", first)
    pool.checkin(server, "search", second)
    assert server.idle["search"] == [first]
    assert second.closed


def test_request_timeout_is_an_outage():
    reactor, _, pool = make_pool(run_in_thread=lambda f: Deferred(), request_timeout=7)
    deferred = pool.run(login("alice", "pw-alice"))
    assert not deferred.called
    reactor.advance(6.9)
    assert not deferred.called
    reactor.advance(0.2)
    failure_of(deferred, SourceUnavailable)


def test_bounded_queue():
    hanging = []

    def hang(function):
        hanging.append(Deferred())
        return hanging[-1]

    _, _, pool = make_pool(run_in_thread=hang, max_pending=2)
    first = pool.run(login("alice", "pw-alice"))
    second = pool.run(login("alice", "pw-alice"))
    failure_of(pool.run(login("alice", "pw-alice")), SourceUnavailable)
    assert len(hanging) == 2
    hanging[0].callback("done")
    assert result(first) == "done"
    assert not second.called
    pool.run(login("alice", "pw-alice"))  # room again
    assert len(hanging) == 3


def test_dedicated_thread_pool_starts_and_stops_with_the_reactor():
    reactor = MemoryReactorClock()
    pool = LDAPPool(settings_for(pool_size=3, bind_dn=""), reactor, "ldap")
    threads = pool.threadpool
    assert threads.max == 3
    assert threads.name == "securepop-ldap"
    assert not threads.started
    assert [hook[0] for hook in reactor.whenRunningHooks] == [threads.start]
    assert reactor.triggers["during"]["shutdown"] == [(pool.shutdown, (), {})]
    threads.start()
    pool.shutdown()
    assert not threads.started


def test_shutdown_closes_idle_connections():
    _, _, pool = make_pool()
    result(pool.run(login("alice", "pw-alice")))
    idle = [c for role in pool.servers[0].idle.values() for c in role]
    assert len(idle) == 2 and not any(c.closed for c in idle)
    pool.shutdown()
    assert all(c.closed for c in idle)
    assert pool.servers[0].idle == {"search": [], "bind": []}

