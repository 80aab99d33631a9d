"""makeService: listeners from the settings, reload that keeps the old on error."""

import dataclasses

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


def _users_none(svc):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        svc.startService()
    finally:
        globalLogPublisher.removeObserver(seen.append)
        svc.stopService()
    return [e["securepop_text"] for e in seen if e.get("securepop_event") == "users.none"]


def test_no_users_hint_names_the_configuration(setup):
    """The hint names --config: the file decides which secrets user add stores."""
    lines = _users_none(service.makeService(config.load(setup), MemoryReactorClock()))
    assert len(lines) == 1 and f"securepop --config {setup} --data-dir " in lines[0], lines


def test_no_users_hint_without_a_file_still_names_config(tmp_path):
    settings = config.load(None, str(tmp_path / "data"))
    settings = dataclasses.replace(settings, listen=())
    lines = _users_none(service.makeService(settings, MemoryReactorClock()))
    assert len(lines) == 1, lines
    assert f"securepop --data-dir {tmp_path / 'data'} user add NAME" in lines[0]
    assert "--config FILE" in lines[0] and "auth.mechanisms" in lines[0]


def test_no_users_hint_absent_once_a_user_exists(setup):
    settings = config.load(setup)
    userfile.set_password(settings.resolve("users"), "alice", "pw", set(), create=True)
    assert _users_none(service.makeService(settings, MemoryReactorClock())) == []
