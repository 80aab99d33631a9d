"""
Prometheus metrics (prometheus-client) and the C{[metrics] endpoint}.

L{Metrics.count} is what L{securepop.protocol.context.ServerContext} calls
(C{("login", mechanism, result)}, C{("declined", rule)}, and
C{("tls", version)} once per completed handshake); L{instrument} adds what
the context does not count itself (connections, bytes sent, login latency)
by observing the session hooks and the structured events.  With worker
processes, prometheus-client's multiprocess mode (C{PROMETHEUS_MULTIPROC_DIR},
set by the supervisor before the workers start) lets the supervisor serve
the sum over all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.logger import globalLogPublisher
from twisted.web import resource, server

from securepop import events

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MAX_LABEL = 64


def _label(value) -> str:
    return events.clean(value)[:_MAX_LABEL]


class Metrics:
    """
    The counters securepop exports, in their own registry (so several
    servers in one process, and tests, do not collide).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Counter("securepop_connections", "Connections accepted",
                                   registry=r)
        self.open_connections = Gauge("securepop_open_connections", "Connections open now",
                                      registry=r, multiprocess_mode="livesum")
        self.logins = Counter("securepop_logins", "Login attempts by mechanism and result",
                              ["mechanism", "result"], registry=r)
        self.declined = Counter("securepop_declined", "Connections declined, by rule",
                                ["rule"], registry=r)
        self.tls = Counter("securepop_tls_sessions", "TLS sessions by protocol version",
                           ["version"], registry=r)
        self.bytes_sent = Counter("securepop_message_bytes_sent",
                                  "Message octets sent by RETR and TOP", registry=r)
        self.login_latency = Histogram("securepop_login_seconds",
                                       "Time from credentials to mailbox open",
                                       ["mechanism"], buckets=LATENCY_BUCKETS, registry=r)
        self.verification_queue = Gauge(
            "securepop_verification_queue", "Password verifications waiting for a thread",
            registry=r, multiprocess_mode="livesum")
        self.verification_wait = Histogram(
            "securepop_verification_wait_seconds",
            "Time a password verification waited for a hashing thread",
            buckets=LATENCY_BUCKETS, registry=r)
        self.verification_renewals = Counter(
            "securepop_verification_renewals",
            "Password verifications renewing an auth-cache entry in the background",
            registry=r)
        self.lmtp_deliveries = Counter(
            "securepop_lmtp_deliveries", "LMTP recipients by outcome (delivered, "
            "unknown_user, over_quota, too_big, temp_failure, disk_full, refused)",
            ["result"], registry=r)
        self.other = Counter("securepop_events", "Other counted events", ["event"],
                             registry=r)

    def count(self, *labels):
        """The L{ServerContext} hook: C{count("login", "PLAIN", "success")}."""
        if not labels:
            return
        kind, rest = labels[0], labels[1:]
        if kind == "login" and len(rest) == 2:
            self.logins.labels(_label(rest[0]), _label(rest[1])).inc()
        elif kind == "declined" and len(rest) == 1:
            self.declined.labels(_label(rest[0])).inc()
        elif kind == "connection":
            self.connections.inc()
        elif kind == "lmtp_delivery" and len(rest) == 1:
            self.lmtp_deliveries.labels(_label(rest[0])).inc()
        elif kind == "tls" and len(rest) == 1:
            self.tls.labels(_label(rest[0])).inc()
        else:
            self.other.labels(_label(kind)).inc()

    def observe_event(self, event):
        """A twisted.logger observer: latency from C{auth.success}, bytes from C{session.end}."""
        name = event.get("securepop_event")
        if name == "auth.success":
            try:
                seconds = float(event.get("sp_ms")) / 1000.0
            except (TypeError, ValueError):
                return
            self.login_latency.labels(_label(event.get("sp_mechanism"))).observe(seconds)
        elif name == "session.end":
            try:
                sent = int(event.get("sp_bytes") or 0)
            except (TypeError, ValueError):
                return
            if sent > 0:
                self.bytes_sent.inc(sent)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def tls_version(session):
    """The negotiated protocol (e.g. C{TLSv1.3}) of a TLS session, or None."""
    try:
        return session.transport.getHandle().get_protocol_version_name()
    except Exception:       # no TLS (or no connection) under this session
        return None


class Instrumentation:
    """
    Counts connections through a context's session hooks (TLS versions come
    from each session's handshake, through C{context.count}), and latency
    and bytes through the log events.  L{uninstall} undoes it.
    """

    def __init__(self, context, metrics, publisher=globalLogPublisher):
        self.context = context
        self.metrics = metrics
        self.publisher = publisher
        self._started = context.session_started
        self._ended = context.session_ended
        context.metrics = metrics
        if context.verifications is not None:
            context.verifications.metrics = metrics
        context.session_started = self.session_started
        context.session_ended = self.session_ended
        publisher.addObserver(metrics.observe_event)

    def session_started(self, session):
        self.metrics.count("connection")
        self.metrics.open_connections.inc()
        return self._started(session)

    def session_ended(self, session):
        # TLS versions are not counted here: the session counts each
        # completed handshake (C{context.count("tls", version)}) once.
        self.metrics.open_connections.dec()
        return self._ended(session)

    def uninstall(self):
        self.publisher.removeObserver(self.metrics.observe_event)
        for name in ("session_started", "session_ended"):
            self.context.__dict__.pop(name, None)


def instrument(context, metrics, publisher=globalLogPublisher):
    """Plug L{Metrics} into a L{ServerContext}; returns the L{Instrumentation}."""
    return Instrumentation(context, metrics, publisher)


class MetricsResource(resource.Resource):
    """C{GET /metrics} (any path) in Prometheus' text format."""

    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self._render()


def multiprocess_render(directory):
    """A renderer summing every worker's values (prometheus-client multiprocess mode)."""
    from prometheus_client import multiprocess

    def render():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)

    return render


def metrics_service(reactor, endpoint_description, render):
    """A service serving C{render()} over HTTP on a Twisted endpoint string."""
    endpoint = endpoints.serverFromString(reactor, endpoint_description)
    site = server.Site(MetricsResource(render))
    site.noisy = False
    site.displayTracebacks = False
    svc = StreamServerEndpointService(endpoint, site)
    svc._raiseSynchronously = True
    svc.setName("metrics")
    return svc


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
