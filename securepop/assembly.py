"""
What running securepop for real puts around the server, under twistd.

L{build_root} is the body of L{securepop.tap.makeService}: it checks the
secret files and the identity to run as, builds the serving part (one
L{securepop.service.ServerRoot}, or with C{workers} above 1 a
L{securepop.ops.workers.WorkerSupervisor}), and wraps it in an
L{OperatingRoot}: systemd notification, the privilege drop after binding,
the log observer twistd uses, and SIGHUP.
"""

from __future__ import annotations

import signal
import sys

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver
from twisted.python.components import Componentized

from securepop import events, serversecret
from securepop.ops import heap, privileges, workers
from securepop.ops.metrics import metrics_service, multiprocess_render
from securepop.ops.notify import NotifyService, SystemdNotifier
from securepop.ops.twistdlog import observer_for_twistd
from securepop.service import compose_server, prepare_data_dir
from securepop.state import supervisor as supervisor_state
from securepop.tls import certificates


class OperatingRoot(service.MultiService):
    """
    The top service under twistd: the serving part (a L{ServerRoot} or a
    L{securepop.ops.workers.WorkerSupervisor}), systemd notification,
    privilege drop after binding, and the log observer twistd uses.
    """

    def __init__(self, settings, inner, notifier, identity=None, log_observer=None):
        super().__init__()
        self.settings = settings
        self.inner = inner
        self.notifier = notifier
        self.identity = identity
        self.log_observer = log_observer
        inner.setServiceParent(self)
        NotifyService(notifier).setServiceParent(self)    # last: READY after the rest

    def setServiceParent(self, parent):
        # twistd asks the application for an ILogObserver before it starts
        # logging: that is how securepop's text or JSON observer replaces
        # twistd's.  A plain MultiService parent (embedding) has no components.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        try:
            super().privilegedStartService()     # every listener binds here, as root
        except CannotListenError as e:
            # A port another program holds: one clear line and exit status
            # 69 (EX_UNAVAILABLE), not twistd's traceback.
            error = e.socketError
            reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
            where = f"{e.interface or '*'}:{e.port}"
            events.emit("listen.failed", "error", address=where, error=reason)
            sys.stderr.write(f"securepop: cannot listen on {where}: {reason}\n")
            raise SystemExit(69) from None
        if self.identity is not None:
            privileges.drop(self.identity)

    def startService(self):
        super().startService()
        heap.freeze_startup_heap()

    def reload(self):
        self.notifier.reloading()
        try:
            return self.inner.reload()
        finally:
            self.notifier.ready("serving (reloaded)")


def build_root(settings, reactor, twistd_options=None):
    """
    The L{OperatingRoot} for C{settings}, SIGHUP installed.

    @param twistd_options: twistd's own options (C{logfile}, C{syslog},
        ...), or None outside twistd.
    @raise ConfigError: the configuration cannot work.
    @raise ValueError: e.g. an unknown C{server.user}.
    """
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
        inner = build_serving(settings, reactor, count)
    observer = None
    if twistd_options is not None or settings.log.format == "json":
        observer = observer_for_twistd(settings.log.format, twistd_options)
    root = OperatingRoot(settings, inner, SystemdNotifier.fromEnvironment(), identity,
                         observer)
    install_reload(root, reactor)
    return root


def build_serving(settings, reactor, count):
    """The serving part: one process, or the supervisor of C{count} workers."""
    if count == 1:
        return compose_server(settings, reactor)
    # The server secret, made (or refused) here once: the workers share it.
    prepare_data_dir(settings)
    serversecret.for_settings(settings)
    if not settings.tls.certificate:
        # The embedded default's certificate, made once before the workers
        # start (they would otherwise all try at the same moment).
        certificates.ensure_selfsigned(str(settings.data_path), settings.server.hostname)
    inner = workers.WorkerSupervisor(settings, reactor, count,
                                     state_hub=supervisor_state.hub_for(settings, reactor, count))
    if settings.metrics.endpoint:
        def render():
            return multiprocess_render(inner.metrics_dir)()

        metrics_service(reactor, settings.metrics.endpoint, render).setServiceParent(inner)
    return inner


def install_reload(svc, reactor):
    """SIGHUP reloads the configuration (systemctl reload)."""
    def on_hup(signum, frame):
        reactor.callFromThread(svc.reload)

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except ValueError:
        pass   # not the main thread (embedded): the host application decides
