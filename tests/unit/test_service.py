"""makeService: listeners from the settings, reload that keeps the old on error."""

import dataclasses

import pytest
from argon2 import PasswordHasher
from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop import config, schemes, service
from securepop.auth import userfile
from securepop.errors import ConfigError
from securepop.lmtp.server import LMTPFactory

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
    monkeypatch.setattr(schemes, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
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
    store = context.state
    assert store is svc.state and store.kind == "memory"

    def now(d):
        out = []
        d.addBoth(out.append)
        return out[0]

    lease = now(context.acquire_connection("192.0.2.50"))
    now(context.penalty_failure("198.51.100.7", None))
    setup.write_text(setup.read_text() + "max_connections_per_ip = 7\n"
                     "[auth]\nfailure_delay = 1.0\nfailure_delay_max = 4.0\n")
    assert svc.reload() is True
    assert context.state is store and context.gate.store is store
    assert context.limits.maxPerIP == 7
    assert now(store.count("ip", "192.0.2.50")) == 1      # the open session still counts
    assert context.penalty.base == 1.0 and context.penalty.maximum == 4.0
    assert context.gate.penalty is context.penalty
    assert now(store.login_state("198.51.100.7", None)).failures == 1   # history survives
    lease.release()
    assert now(store.count("ip", "192.0.2.50")) == 0


def test_implicit_listener_follows_the_tls_in_force(setup):
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    svc.startService()
    try:
        factory = [p[1] for p in reactor.tcpServers if p[0] == 1995][0].wrappedFactory
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


def _scram_decoy_key(svc):
    return svc.context.mechanisms["SCRAM-SHA-256"].decoy_key


def test_scram_decoy_salts_come_from_the_data_dirs_secret(setup, tmp_path):
    """
    The server secret is made 0600 in the data dir at the first start; a
    second service on the same data dir (a restart, another worker) and a
    reload key unknown users' SCRAM salts the same; another data dir does not.
    """
    from securepop.serversecret import SECRET_FILE

    settings = config.load(setup)
    first = service.makeService(settings, MemoryReactorClock())
    secret = tmp_path / "data" / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600
    second = service.makeService(config.load(setup), MemoryReactorClock())
    assert _scram_decoy_key(first) == _scram_decoy_key(second)
    assert first.reload() is True
    assert _scram_decoy_key(first) == _scram_decoy_key(second)
    other = tmp_path / "other.toml"
    other.write_text(setup.read_text().replace(str(tmp_path / "data"),
                                               str(tmp_path / "data2")))
    third = service.makeService(config.load(other), MemoryReactorClock())
    assert _scram_decoy_key(third) != _scram_decoy_key(first)


def test_an_exposed_server_secret_stops_the_start(setup, tmp_path):
    from securepop.serversecret import SECRET_FILE

    service.makeService(config.load(setup), MemoryReactorClock())
    (tmp_path / "data" / SECRET_FILE).chmod(0o644)
    with pytest.raises(ConfigError) as e:
        service.makeService(config.load(setup), MemoryReactorClock())
    assert e.value.key == "server.data_dir" and "chmod 600" in e.value.reason


def _proxies(svc):
    return {str(n) for l in svc if getattr(l, "proxy", None) is not None
            for n in l.proxy.trustedProxies}


def test_reload_switches_trusted_proxies_on_changes_and_off(setup):
    svc = service.makeService(config.load(setup), MemoryReactorClock())
    listeners = [l for l in svc if getattr(l, "listener", None) is not None]
    assert len(listeners) == 2 and _proxies(svc) == set()
    text = setup.read_text()
    setup.write_text(text + 'trusted_proxies = ["127.0.0.1/32"]\n')
    assert svc.reload() is True
    assert _proxies(svc) == {"127.0.0.1/32"}
    setup.write_text(text + 'trusted_proxies = ["10.0.0.0/8", "::1"]\n')
    assert svc.reload() is True
    assert _proxies(svc) == {"10.0.0.0/8", "::1/128"}
    setup.write_text(text + 'trusted_proxies = ["10.0.0.1/8"]\n')    # host bits set
    assert svc.reload() is False
    assert _proxies(svc) == {"10.0.0.0/8", "::1/128"}
    setup.write_text(text)
    assert svc.reload() is True
    assert _proxies(svc) == set()


def test_bad_trusted_proxies_stop_the_start(setup):
    setup.write_text(setup.read_text() + 'trusted_proxies = ["300.0.0.0/8"]\n')
    with pytest.raises(ConfigError) as e:
        service.makeService(config.load(setup), MemoryReactorClock())
    assert e.value.key == "access.trusted_proxies"


def test_start_and_a_reload_changing_max_connections_check_open_files(setup, monkeypatch):
    from securepop.ops import limits

    seen = []
    monkeypatch.setattr(limits, "raise_open_files_limit",
                        lambda settings: seen.append(settings.access.max_connections))
    svc = service.makeService(config.load(setup), MemoryReactorClock())
    svc.startService()
    try:
        assert seen == [5000]
        assert svc.reload() is True                 # same limit: nothing to say again
        assert seen == [5000]
        setup.write_text(setup.read_text() + "max_connections = 40000\n")
        assert svc.reload() is True
        assert seen == [5000, 40000]
    finally:
        svc.stopService()
def password_checker(context):
    from twisted.cred.credentials import IUsernamePassword

    return context.portal.checkers[IUsernamePassword]


def test_auth_cache_and_hash_parameters_follow_the_settings(setup, tmp_path):
    from securepop.schemes import HashParameters

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


# -- one serving process, and retiring what a reload replaced -------------------------


def test_compose_server_is_one_serving_process(setup):
    """ServerRoot: the server, graceful stop, protocol log through the context."""
    setup.write_text(setup.read_text() + '[log]\nprotocol_log = "p.log"\n'
                     '[metrics]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
    root = service.compose_server(config.load(setup), MemoryReactorClock(),
                                  serve_metrics=False)
    assert isinstance(root, service.ServerRoot)
    assert list(root.server)[0] is root.shutdown
    assert root.server.context._protocol_log is root.protocol_log is not None
    assert root.metrics is not None and root.server.context.metrics is root.metrics
    with pytest.raises(KeyError):
        root.getServiceNamed("metrics")          # a worker: the supervisor serves them
    served = service.compose_server(config.load(setup), MemoryReactorClock())
    assert served.getServiceNamed("metrics") is not None


def test_workers_run_the_services_composition():
    from securepop.ops import workers

    assert workers.compose_server is service.compose_server


def test_listeners_are_listed_in_listen_order(setup):
    svc = service.makeService(config.load(setup), MemoryReactorClock())
    assert [l.listener.endpoint for l in svc.listeners] == [
        "tcp:1110:interface=127.0.0.1", "tcp:1995:interface=127.0.0.1"]
    assert all(l.parent is svc for l in svc.listeners)


def _ad_source(tmp_path, helpers):
    from securepop.auth.ad import ADCredentialSource

    helper = tmp_path / "ntlm_auth"
    helper.write_text("#!/bin/sh\n")
    helper.chmod(0o755)
    path = tmp_path / "ad.toml"
    path.write_text(
        '[auth]\nsource = "ad"\nmechanisms = ["PLAIN", "NTLM"]\n'
        '[auth.ad]\nurls = ["ldaps://dc1.example.test"]\n'
        f'base_dn = "DC=example,DC=test"\ndomain = "EXAMPLE"\nhelpers = {helpers}\n'
        f'ntlm_auth = "{helper}"\n')
    settings = config.load(str(path), str(tmp_path))
    return ADCredentialSource.fromSettings(settings.auth.ad, MemoryReactorClock(), settings)


def _recording(obj, method, calls):
    setattr(obj, method, lambda: calls.append((obj, method)))


def test_retire_source_stops_the_source_and_its_dc_helpers(tmp_path):
    source = _ad_source(tmp_path, helpers=2)
    verifier = service.ntlm_verifier_of(source)
    assert verifier is source.ntlmVerifier is not None
    calls = []
    _recording(source, "shutdown", calls)
    _recording(verifier, "stop", calls)
    service.retire_source(source)
    assert calls == [(source, "shutdown"), (verifier, "stop")]


def test_retire_source_without_dc_helpers_stops_the_source_only(tmp_path):
    source = _ad_source(tmp_path, helpers=0)
    assert service.ntlm_verifier_of(source) is None
    calls = []
    _recording(source, "shutdown", calls)
    service.retire_source(source)
    assert calls == [(source, "shutdown")]
    users = userfile.FileCredentialSource(tmp_path / "users")
    assert service.ntlm_verifier_of(users) is None
    service.retire_source(users)                 # nothing to stop, no error


def test_reload_retires_the_old_source_after_the_grace(setup):
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    old = svc.context.source
    calls = []
    _recording(old, "shutdown", calls)
    assert svc.reload() is True
    assert svc.context.source is not old
    reactor.advance(service.RETIRE_AFTER - 1)
    assert calls == []                           # sessions in flight may still use it
    reactor.advance(1)
    assert calls == [(old, "shutdown")]


def test_lmtp_listener_on_a_unix_socket_with_its_mode(setup, tmp_path):
    setup.write_text(setup.read_text() + f'[[lmtp]]\nendpoint = "unix:{tmp_path}/lmtp"\n'
                     f'mode = 0o600\n[[lmtp]]\nendpoint = "tcp:2424:interface=127.0.0.1"\n')
    reactor = MemoryReactorClock()
    svc = service.makeService(config.load(setup), reactor)
    svc.startService()
    try:
        assert [(s[0], s[3]) for s in reactor.unixServers] == [(f"{tmp_path}/lmtp", 0o600)]
        assert isinstance(reactor.unixServers[0][1], LMTPFactory)
        assert sorted(p[0] for p in reactor.tcpServers) == [1110, 1995, 2424]
        assert len(svc.listeners) == 2             # the POP3 ones only
    finally:
        svc.stopService()
    plain = service.makeService(config.load(None, tmp_path / "d2"), MemoryReactorClock())
    assert plain.lmtp_listeners == []


def test_a_bad_lmtp_endpoint_is_a_config_error(setup):
    setup.write_text(setup.read_text() + '[[lmtp]]\nendpoint = "bogus:1"\n')
    with pytest.raises(ConfigError) as e:
        service.makeService(config.load(setup), MemoryReactorClock())
    assert e.value.key == "lmtp[0].endpoint"
