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


def _tls_events(settings):
    """The tls.* events build_tls logs (a start that then fails still logs them)."""
    import time

    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    clock = Clock()
    clock.advance(time.time())
    seen, error = [], None
    globalLogPublisher.addObserver(seen.append)
    try:
        service.build_tls(settings, clock)
    except ConfigError as e:
        error = e
    finally:
        globalLogPublisher.removeObserver(seen.append)
    return [e for e in seen if str(e.get("securepop_event", "")).startswith("tls.")], error


def test_build_tls_logs_the_names_of_the_default_certificate(setup, tmp_path):
    settings = config.load(setup)
    first, error = _tls_events(settings)
    assert error is None
    made = [e for e in first if e["securepop_event"] == "tls.default_certificate"]
    assert len(made) == 1 and made[0]["sp_action"] == "made"
    text = made[0]["securepop_text"]
    assert "covers DNS:localhost" in text and "IP:127.0.0.1, IP:::1" in text
    assert not [e for e in first if e["securepop_event"] == "tls.certificate_warning"]
    again, error = _tls_events(settings)
    assert error is None
    assert [e["sp_action"] for e in again
            if e["securepop_event"] == "tls.default_certificate"] == ["kept"]


def test_build_tls_warns_when_its_own_certificate_cannot_be_remade(setup, tmp_path):
    from securepop.tls import certificates as certs

    settings = config.load(setup)
    certPath, keyPath = certs.default_paths(str(settings.data_path))
    (tmp_path / "data" / "tls").mkdir(parents=True, mode=0o700)
    key = certs.generate_private_key()
    certs.write_private_key(keyPath, certs.generate_private_key())   # not the cert's key
    certs.write_certificates(certPath, [certs.make_selfsigned(key, "localhost")])
    events, error = _tls_events(settings)
    assert "does not match" in str(error)    # the start then stops, naming the key
    warnings = [e for e in events if e["securepop_event"] == "tls.certificate_warning"]
    assert any("cannot re-make it" in e["securepop_text"] and "does not cover" in
               e["securepop_text"] for e in warnings), warnings
