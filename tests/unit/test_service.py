"""makeService: listeners from the settings, reload that keeps the old on error."""

import pytest
from argon2 import PasswordHasher
from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop import config, service
from securepop.auth import userfile
from securepop.errors import ConfigError

CONFIG = """
[server]
hostname = "localhost"
data_dir = "{data}"
[[listen]]
endpoint = "tcp:1110:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:1995:interface=127.0.0.1"
tls = "implicit"
[access]
mode = "deny-listed"
rules = ["192.0.2.0/24"]
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(userfile, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))
    path = tmp_path / "securepop.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data"))
    return path


def test_listeners_and_default_certificate(setup, tmp_path):
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    verifyObject(IService, svc)
    svc.startService()
    try:
        ports = sorted(p[0] for p in reactor.tcpServers)
        assert ports == [1110, 1995]
        assert all(p[3] == "127.0.0.1" for p in reactor.tcpServers)
        key = tmp_path / "data" / "tls" / "key.pem"
        assert key.exists() and (key.stat().st_mode & 0o077) == 0
        assert (tmp_path / "data").stat().st_mode & 0o077 == 0
    finally:
        svc.stopService()


def test_reload_applies_new_rules_and_keeps_old_on_error(setup):
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    context = svc.context
    assert context.policy.rules[0].text == "192.0.2.0/24"
    setup.write_text(setup.read_text().replace("192.0.2.0/24", "198.51.100.0/24"))
    assert svc.reload() is True
    assert svc.context is context                  # sessions keep their context object
    assert context.policy.rules[0].text == "198.51.100.0/24"
    setup.write_text(setup.read_text().replace('"198.51.100.0/24"', '"300.1.1.1"'))
    assert svc.reload() is False
    assert context.policy.rules[0].text == "198.51.100.0/24"


def test_bad_endpoint_is_a_config_error(setup):
    setup.write_text(setup.read_text().replace("tcp:1110:interface=127.0.0.1", "bogus:1"))
    with pytest.raises(ConfigError) as e:
        service.makeService(config.load(setup), MemoryReactorClock())
    assert e.value.key == "listen.endpoint"


def test_bad_rule_names_its_index(setup):
    setup.write_text(setup.read_text().replace('"192.0.2.0/24"', '"192.0.2.0/24", "1.2.3.0 255.0.255.0"'))
    with pytest.raises(ConfigError) as e:
        service.makeService(config.load(setup), MemoryReactorClock())
    assert e.value.key == "access.rules[1]"
    assert "contiguous" in e.value.reason


def test_reload_keeps_counts_and_penalties_but_applies_new_limits(setup):
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    context = svc.context
    limits, penalty = context.limits, context.penalty
    lease = limits.acquireConnection("192.0.2.50")
    penalty.record_failure("198.51.100.7")
    setup.write_text(setup.read_text() + "max_connections_per_ip = 7\n"
                     "[auth]\nfailure_delay = 1.0\nfailure_delay_max = 4.0\n")
    assert svc.reload() is True
    assert context.limits is limits and limits.maxPerIP == 7
    assert limits.connectionsFrom("192.0.2.50") == 1      # the open session still counts
    assert context.penalty is penalty and penalty.base == 1.0 and penalty.maximum == 4.0
    assert penalty.failures("198.51.100.7") == 1           # an attacker's history survives
    lease.release()
    assert limits.connectionsFrom("192.0.2.50") == 0


def test_implicit_listener_follows_the_tls_in_force(setup):
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    svc.startService()
    try:
        factory = [p[1] for p in reactor.tcpServers if p[0] == 1995][0]
        seen = []

        class Connection:
            def set_accept_state(self):
                pass

            def set_app_data(self, data):
                pass

        connection = Connection()

        class Recorder:
            def serverConnectionForTLS(self, tlsProtocol):
                seen.append(tlsProtocol)
                return connection

        svc.context.tls = Recorder()        # what a reload does
        assert factory._creatorCallable("proto") is connection
        assert seen == ["proto"]
    finally:
        svc.stopService()


def password_checker(context):
    from twisted.cred.credentials import IUsernamePassword

    return context.portal.checkers[IUsernamePassword]


def test_auth_cache_and_hash_parameters_follow_the_settings(setup, tmp_path):
    from securepop.auth.userfile import HashParameters

    setup.write_text(setup.read_text() + "[auth]\ncache_ttl = 120\ncache_max_entries = 7\n"
                     "[auth.file]\nargon2_memory_kib = 12288\nargon2_time_cost = 3\n")
    svc = service.makeService(config.load(setup), MemoryReactorClock())
    cache = password_checker(svc.context).cache
    assert (cache.ttl, cache.negative_ttl, cache.max_entries) == (120.0, 5.0, 7)
    hasher = svc.context.source._hasher
    assert (hasher.memory_cost, hasher.time_cost, hasher.parallelism) == (12288, 3, 1)
    assert HashParameters.from_settings(svc.settings.auth.file) == HashParameters(12288, 3, 1)
    setup.write_text(setup.read_text().replace("cache_ttl = 120", "cache_ttl = 0"))
    assert svc.reload() is True
    assert password_checker(svc.context).cache is None          # 0: off


def test_reload_forgets_every_cached_login(setup):
    """SIGHUP: the portal in force has a new, empty cache (and a new HMAC key)."""
    svc = service.makeService(config.load(setup), MemoryReactorClock())
    old = password_checker(svc.context)
    assert old.cache.ttl == 3600.0
    old.cache.putPositive(old.cache.keyFor("alice", b"pw", ""), "cached")
    assert svc.reload() is True
    new = password_checker(svc.context)
    assert new is not old and new.cache is not old.cache
    assert len(new.cache) == 0
    assert new.cache.keyFor("alice", b"pw", "") != old.cache.keyFor("alice", b"pw", "")
