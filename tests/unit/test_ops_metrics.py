"""Tests for securepop.ops.metrics: counters, instrumentation, the HTTP page."""

from twisted.logger import LogPublisher
from twisted.web.test.requesthelper import DummyRequest

from securepop import events
from securepop.ops import metrics


def value(m, name, labels=None):
    return m.registry.get_sample_value(name, labels or {})


def test_count_dispatch():
    m = metrics.Metrics()
    m.count("login", "PLAIN", "success")
    m.count("login", "PLAIN", "success")
    m.count("login", "NTLM", "failure")
    m.count("declined", "10.0.0.0/8")
    m.count("connection")
    m.count("tls", "TLSv1.3")
    m.count("something-new", "x")
    m.count()
    assert value(m, "securepop_logins_total", {"mechanism": "PLAIN", "result": "success"}) == 2
    assert value(m, "securepop_logins_total", {"mechanism": "NTLM", "result": "failure"}) == 1
    assert value(m, "securepop_declined_total", {"rule": "10.0.0.0/8"}) == 1
    assert value(m, "securepop_connections_total") == 1
    assert value(m, "securepop_tls_sessions_total", {"version": "TLSv1.3"}) == 1
    assert value(m, "securepop_events_total", {"event": "something-new"}) == 1


def test_hostile_labels_are_cleaned_and_bounded():
    m = metrics.Metrics()
    m.count("declined", 'x"}\nsecurepop_fake 1\n' + "A" * 500)
    text = m.render().decode()
    assert "\nsecurepop_fake 1" not in text
    (label,) = [s.labels["rule"] for s in m.declined.collect()[0].samples
                if s.name.endswith("_total")]
    assert len(label) <= 64 and "\n" not in label and " " not in label


def test_events_feed_latency_and_bytes():
    m = metrics.Metrics()
    m.observe_event({"securepop_event": "auth.success", "sp_ms": "12.5", "sp_mechanism": "PLAIN"})
    m.observe_event({"securepop_event": "auth.success", "sp_ms": "garbage"})
    m.observe_event({"securepop_event": "session.end", "sp_bytes": 1000})
    m.observe_event({"securepop_event": "session.end", "sp_bytes": "x"})
    m.observe_event({"log_format": "unrelated"})
    assert value(m, "securepop_login_seconds_count", {"mechanism": "PLAIN"}) == 1
    assert value(m, "securepop_login_seconds_sum", {"mechanism": "PLAIN"}) == 0.0125
    assert value(m, "securepop_message_bytes_sent_total") == 1000


class Handle:
    def get_protocol_version_name(self):
        return "TLSv1.3"


class Transport:
    def getHandle(self):
        return Handle()


class Session:
    secure = True
    username = "alice"
    transport = Transport()


class Context:
    def __init__(self):
        self.sessions = set()
        self.metrics = None
        self.verifications = None

    def session_started(self, s):
        self.sessions.add(s)

    def session_ended(self, s):
        self.sessions.discard(s)


def test_instrument_counts_connections_and_uninstalls():
    ctx, m, pub = Context(), metrics.Metrics(), LogPublisher()
    inst = metrics.instrument(ctx, m, pub)
    assert ctx.metrics is m
    s = Session()
    ctx.session_started(s)
    assert s in ctx.sessions
    assert value(m, "securepop_open_connections") == 1
    ctx.session_ended(s)
    assert not ctx.sessions
    assert value(m, "securepop_open_connections") == 0
    # TLS versions are counted once, at the handshake (ctx.count), not at the end
    assert value(m, "securepop_tls_sessions_total", {"version": "TLSv1.3"}) is None
    pub({"securepop_event": "session.end", "sp_bytes": 5})
    assert value(m, "securepop_message_bytes_sent_total") == 5
    inst.uninstall()
    pub({"securepop_event": "session.end", "sp_bytes": 5})
    assert value(m, "securepop_message_bytes_sent_total") == 5
    ctx.session_started(Session())
    assert value(m, "securepop_connections_total") == 1


def test_plain_session_counts_no_tls():
    ctx, m = Context(), metrics.Metrics()
    metrics.instrument(ctx, m, LogPublisher())
    s = Session()
    s.secure = False
    ctx.session_started(s)
    ctx.session_ended(s)
    assert value(m, "securepop_tls_sessions_total", {"version": "TLSv1.3"}) is None


def test_tls_version_tolerates_odd_transports():
    s = Session()
    s.transport = object()
    assert metrics.tls_version(s) is None


def test_resource_serves_prometheus_text():
    m = metrics.Metrics()
    m.count("login", "PLAIN", "success")
    request = DummyRequest([b"metrics"])
    body = metrics.MetricsResource(m.render).render_GET(request)
    assert b'securepop_logins_total{mechanism="PLAIN",result="success"} 1.0' in body
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")


def test_separate_registries_do_not_collide():
    a, b = metrics.Metrics(), metrics.Metrics()
    a.count("connection")
    assert value(b, "securepop_connections_total") == 0


def test_multiprocess_render_sums_directory(tmp_path):
    render = metrics.multiprocess_render(str(tmp_path))
    assert isinstance(render(), bytes)


def test_metrics_service_rejects_bad_endpoint():
    import pytest
    from twisted.internet.testing import MemoryReactor

    with pytest.raises(ValueError):
        metrics.metrics_service(MemoryReactor(), "bogus:1", lambda: b"")
    svc = metrics.metrics_service(MemoryReactor(), "tcp:0:interface=127.0.0.1", lambda: b"")
    assert svc.name == "metrics"


def test_events_module_is_the_source_of_names():
    assert events.clean("a b") == "a\\x20b"


def test_lmtp_deliveries_by_result():
    m = metrics.Metrics()
    m.count("lmtp_delivery", "delivered")
    m.count("lmtp_delivery", "delivered")
    m.count("lmtp_delivery", "over_quota")
    assert value(m, "securepop_lmtp_deliveries_total", {"result": "delivered"}) == 2
    assert value(m, "securepop_lmtp_deliveries_total", {"result": "over_quota"}) == 1
    assert value(m, "securepop_lmtp_deliveries_total", {"result": "unknown_user"}) in (None, 0)
