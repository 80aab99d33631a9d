"""
twistd integration: Options + makeService(options), as twisted.mail.tap.

L{makeService} builds the server (L{securepop.service.SecurePOPService}) and
composes around it what running it for real needs, from L{securepop.ops}:
metrics, the protocol log, graceful stop, systemd notification, the
privilege drop and, with C{workers} above 1, the worker supervisor.  Under
twistd the log observer comes from L{securepop.ops.twistdlog} (twistd's text
line made cheaply, or JSON lines with C{[log] format = "json"}).
"""

from __future__ import annotations

import signal
import sys

from twisted.application import service
from twisted.python import usage

from securepop import config, events
from securepop.errors import ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the securepop POP3 server.  With no options it serves the embedded "
        "default: data in ./securepop-data, STLS on 127.0.0.1:1110 and implicit "
        "TLS on 127.0.0.1:1995, credentials only over TLS."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (TOML); none: the embedded default."],
        ["data-dir", "d", None, "Data directory (overrides server.data_dir)."],
    ]

    def postOptions(self):
        try:
            self.settings = config.load(self["config"], self["data-dir"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}")


class ServerRoot(service.MultiService):
    """
    One process serving POP3: the L{SecurePOPService} plus metrics,
    protocol log and graceful stop.  C{reload()} reloads all of them.

    @ivar server: the L{securepop.service.SecurePOPService}.
    @ivar metrics: the L{securepop.ops.metrics.Metrics} or None.
    @ivar protocol_log: the L{securepop.ops.protolog.ProtocolLog} or None.
    """

    def __init__(self, server, serve_metrics=True):
        super().__init__()
        from securepop.ops.shutdown import add_graceful_shutdown

        self.server = server
        self.reactor = server.reactor
        self.metrics = None
        self.instrumentation = None
        self.protocol_log = None
        server.setServiceParent(self)
        self.shutdown = add_graceful_shutdown(server, server.settings.server.shutdown_grace)
        self._configure_protocol_log(server.settings)
        self._configure_metrics(server.settings, serve_metrics)

    def _configure_metrics(self, settings, serve):
        from securepop.ops import metrics as metricsmodule

        multiprocess = metricsmodule.multiprocess_enabled()
        if not (settings.metrics.endpoint or multiprocess):
            return
        self.metrics = metricsmodule.Metrics()
        self.instrumentation = metricsmodule.instrument(self.server.context, self.metrics)
        if serve and settings.metrics.endpoint:
            try:
                svc = metricsmodule.metrics_service(self.reactor, settings.metrics.endpoint,
                                                    self.metrics.render)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(settings.path or "(defaults)", "metrics.endpoint", str(e))
            svc.setServiceParent(self)

    def _configure_protocol_log(self, settings):
        from securepop.ops.protolog import ProtocolLog

        wanted = str(settings.resolve(settings.log.protocol_log)) \
            if settings.log.protocol_log else None
        current = self.protocol_log.path if self.protocol_log is not None else None
        if wanted == current:
            if self.protocol_log is not None:
                self.protocol_log.reopen()
            return
        old = self.protocol_log
        self.protocol_log = ProtocolLog(wanted) if wanted else None
        self.server.context._protocol_log = self.protocol_log
        if old is not None:
            old.close()

    def reload(self):
        """SIGHUP: the server's reload, then the protocol log (logrotate) and grace."""
        ok = self.server.reload()
        settings = self.server.settings
        try:
            self._configure_protocol_log(settings)
        except OSError as e:
            events.emit("protocol_log.reopen_failed", "error", error=e.strerror or str(e))
        self.shutdown.grace = settings.server.shutdown_grace
        return ok

    def stopService(self):
        d = service.MultiService.stopService(self)

        def closed(result):
            if self.protocol_log is not None:
                self.protocol_log.close()
            if self.instrumentation is not None:
                self.instrumentation.uninstall()
            return result

        return d.addBoth(closed)


def compose_server(settings, reactor, serve_metrics=True):
    """
    The L{ServerRoot} for C{settings}: one serving process (the only one, or
    one worker).

    @raise ConfigError: the configuration cannot work.
    """
    from securepop.service import makeService as build

    return ServerRoot(build(settings, reactor), serve_metrics)


class OperatingRoot(service.MultiService):
    """
    The top service under twistd: the serving part (a L{ServerRoot} or a
    L{securepop.ops.workers.WorkerSupervisor}), systemd notification,
    privilege drop after binding, and the log observer twistd uses.
    """

    def __init__(self, settings, inner, notifier, identity=None, log_observer=None):
        super().__init__()
        from securepop.ops.notify import NotifyService

        self.settings = settings
        self.inner = inner
        self.notifier = notifier
        self.identity = identity
        self.log_observer = log_observer
        inner.setServiceParent(self)
        NotifyService(notifier).setServiceParent(self)    # last: READY after the rest

    def setServiceParent(self, parent):
        # twistd asks the application for an ILogObserver before it starts
        # logging: that is how securepop's text or JSON observer replaces twistd's.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        super().privilegedStartService()     # every listener binds here, as root
        if self.identity is not None:
            from securepop.ops import privileges

            privileges.drop(self.identity)

    def reload(self):
        self.notifier.reloading()
        try:
            return self.inner.reload()
        finally:
            self.notifier.ready("serving (reloaded)")


def _fail(message):
    sys.stderr.write(f"securepop: configuration error: {message}\n")
    raise SystemExit(78)      # EX_CONFIG


def makeService(options, reactor=None):
    """Build the service; a bad configuration stops the start with its reason."""
    from securepop.ops import privileges, workers
    from securepop.ops.notify import SystemdNotifier

    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    try:
        privileges.check_secret_files(settings)
        identity = None
        if settings.server.user:
            identity = privileges.resolve(settings.server.user, settings.server.group,
                                          settings.path or "(defaults)")
            privileges.check_data_dir(settings, identity)
        count = workers.worker_count(settings.server.workers)
        if identity is not None:
            privileges.preload_modules()
        with privileges.acting_as(identity):
            inner = _build_inner(settings, reactor, count)
    except ConfigError as e:
        _fail(e)
    except ValueError as e:
        _fail(e)
    observer = None
    twistd_options = getattr(options, "parent", None)
    if twistd_options is not None or settings.log.format == "json":
        from securepop.ops.twistdlog import observer_for_twistd

        observer = observer_for_twistd(settings.log.format, twistd_options)
    root = OperatingRoot(settings, inner, SystemdNotifier.fromEnvironment(), identity,
                         observer)
    _install_reload(root, reactor)
    return root


def _build_inner(settings, reactor, count):
    """The serving part: one process, or the supervisor of C{count} workers."""
    from securepop.ops import workers

    if count == 1:
        return compose_server(settings, reactor)
    # The server secret, made (or refused) here once: the workers share it.
    from securepop import serversecret
    from securepop.service import prepare_data_dir

    prepare_data_dir(settings)
    serversecret.for_settings(settings)
    if not settings.tls.certificate:
        # The embedded default's certificate, made once before the workers
        # start (they would otherwise all try at the same moment).
        from securepop.tls import certificates

        certificates.ensure_selfsigned(str(settings.data_path), settings.server.hostname)
    inner = workers.WorkerSupervisor(settings, reactor, count)
    if settings.metrics.endpoint:
        from securepop.ops.metrics import metrics_service, multiprocess_render

        def render():
            return multiprocess_render(inner.metrics_dir)()

        metrics_service(reactor, settings.metrics.endpoint, render).setServiceParent(inner)
    return inner


def _install_reload(svc, reactor):
    """SIGHUP reloads the configuration (systemctl reload)."""
    if not hasattr(signal, "SIGHUP"):
        return

    def on_hup(signum, frame):
        reactor.callFromThread(svc.reload)

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except ValueError:
        pass   # not the main thread (embedded): the host application decides
