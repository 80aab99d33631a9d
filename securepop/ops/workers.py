"""
C{[server] workers = N | "auto"}: use every core.

One supervisor process binds the listening sockets (as root, before the
privilege drop), then starts N worker processes that adopt the very same
sockets (passed as file descriptors 3, 4, ...; the kernel hands each new
connection to one worker).  The supervisor:

 - restarts a worker that dies (with a growing delay when one keeps dying);
 - forwards SIGHUP (after checking the new file itself) and SIGTERM;
 - relays each worker's log events (JSON lines on the worker's stdout)
   into its own log, so text or JSON output and fail2ban see one stream;
 - serves the metrics endpoint, summing every worker's counters through
   prometheus-client's multiprocess mode.

Per-user mailbox locks are file locks, so they hold across workers.  The
connection limits (C{max_connections}, C{max_connections_per_ip},
C{max_connections_per_user}), the failure penalty and the lockout hold for
the whole server: with no C{[state]} backend other than memory the
supervisor keeps one memory store and serves it to each worker over a
socketpair of its own (L{securepop.state.supervisor}, passed after the
listening sockets); with C{backend = "redis"} every worker uses the Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace

from twisted.application import service
from twisted.internet import address as twaddress
from twisted.internet import defer, endpoints, protocol
from twisted.logger import globalLogBeginner, globalLogPublisher

from securepop import config as configmodule
from securepop import events
from securepop.ops import heap
from securepop.ops.jsonlog import JSONLineObserver, event_from_json
from securepop.service import compose_server
from securepop.state import supervisor as supervisor_state

RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0     # a worker alive this long resets the restart delay
KILL_AFTER_GRACE = 5.0  # SIGKILL this long after the grace period


def worker_count(value, cpu_count=os.cpu_count) -> int:
    """C{"auto"} -> number of CPUs; otherwise the number (1..256)."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, cpu_count() or 1)
    n = int(value)
    if not 1 <= n <= 256:
        raise ValueError("workers must be from 1 to 256")
    return n


def family_name(host) -> str:
    if isinstance(host, twaddress.IPv6Address):
        return "INET6"
    if isinstance(host, twaddress.UNIXAddress):
        return "UNIX"
    return "INET"


class _RefuseFactory(protocol.Factory):
    """The supervisor never accepts: its listening ports stop reading at once."""

    noisy = False

    def buildProtocol(self, addr):
        return None


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: relays its log lines, tells the supervisor when it ends."""

    def __init__(self, supervisor, index):
        self.supervisor = supervisor
        self.index = index
        self.started = time.monotonic()
        self._buffers = {1: b"", 2: b""}
        self.ended = defer.Deferred()
        self.pid = None

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, fd, data):
        buf = self._buffers.get(fd, b"") + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > 65536:          # a runaway line: flush it anyway
            lines.append(rest)
            rest = b""
        self._buffers[fd] = rest
        for line in lines:
            self.supervisor.relay(self.index, line.decode("utf-8", "replace"))

    def processEnded(self, reason):
        for fd, rest in self._buffers.items():
            if rest:
                self.supervisor.relay(self.index, rest.decode("utf-8", "replace"))
        self._buffers = {}
        # ProcessDone or ProcessTerminated: both carry exitCode and signal.
        self.supervisor.worker_ended(self, reason.value.exitCode, reason.value.signal)
        self.ended.callback(None)


class WorkerSupervisor(service.MultiService):
    """
    Binds the listeners and keeps C{count} workers running.

    @param settings: the L{securepop.config.Settings} in force.
    @param reactor: provides L{IReactorProcess}, L{IReactorTime}.
    @param count: number of worker processes.
    @param worker_argv: the command starting one worker, before the
        per-worker arguments (default: this module run by this Python).
    @param state_hub: a L{securepop.state.supervisor.StateHub} whose store
        the workers share (each gets its own channel), or None.
    """

    def __init__(self, settings, reactor, count, worker_argv=None, publisher=None,
                 state_hub=None):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.count = count
        self.worker_argv = list(worker_argv or [sys.executable, "-m", "securepop.ops.workers"])
        self.publisher = publisher or globalLogPublisher
        self.ports = []
        self.workers = {}
        self.restarts = 0
        self._delays = {}
        self._pending = {}
        self.stopping = False
        self.metrics_dir = None
        self.state_hub = state_hub

    # -- sockets ---------------------------------------------------------------

    def privilegedStartService(self):
        for listener in self.settings.listen:
            endpoint = endpoints.serverFromString(self.reactor, listener.endpoint)
            bound = []
            d = endpoint.listen(_RefuseFactory())
            d.addCallback(bound.append)
            failures = []
            d.addErrback(failures.append)
            if failures:
                failures[0].raiseException()
            port = bound[0]
            port.stopReading()
            self.ports.append((listener, port))
        super().privilegedStartService()

    def listening_fds(self):
        """[(fd number in the worker, fd here, family)] in [[listen]] order."""
        return [(3 + i, port.fileno(), family_name(port.getHost()))
                for i, (listener, port) in enumerate(self.ports)]

    def state_fd(self):
        """The fd number of the state channel in a worker: after the listeners."""
        return 3 + len(self.ports)

    # -- workers ------------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.state_hub is not None:
            self.state_hub.start()
        if self.settings.metrics.endpoint and self.metrics_dir is None:
            self.metrics_dir = tempfile.mkdtemp(prefix="securepop-metrics-")
        for index in range(self.count):
            self.spawn(index)
        for listener, port in self.ports:
            events.emit("listen", endpoint=listener.endpoint, tls=listener.tls,
                        workers=self.count)

    def worker_command(self, index):
        argv = self.worker_argv + ["--index", str(index), "--data-dir",
                                   os.path.abspath(self.settings.server.data_dir)]
        if self.settings.path:
            argv += ["--config", os.path.abspath(self.settings.path)]
        argv += ["--fds", ",".join(f"{child}:{family}"
                                   for child, _, family in self.listening_fds())]
        if self.state_hub is not None:
            argv += ["--state-fd", str(self.state_fd())]
        return argv

    def worker_environment(self):
        env = dict(os.environ)
        for name in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
                     "WATCHDOG_PID", "WATCHDOG_USEC"):
            env.pop(name, None)
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def spawn(self, index):
        self._pending.pop(index, None)
        if self.stopping:
            return None
        child = WorkerProcess(self, index)
        fds = {0: "w", 1: "r", 2: "r"}
        for child_fd, fd, _ in self.listening_fds():
            fds[child_fd] = fd
        argv = self.worker_command(index)
        channel = None
        if self.state_hub is not None:
            channel = self.state_hub.channel_for(index)
            fds[self.state_fd()] = channel.fileno()
        try:
            self.reactor.spawnProcess(child, argv[0], argv, env=self.worker_environment(),
                                      childFDs=fds)
        finally:
            if channel is not None:
                channel.close()   # the worker has its copy
        self.workers[index] = child
        events.emit("worker.started", worker=index, pid=child.pid)
        return child

    def worker_ended(self, child, code, sig):
        if self.workers.get(child.index) is child:
            del self.workers[child.index]
        if self.metrics_dir and child.pid:
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(child.pid, self.metrics_dir)
            except Exception:
                pass
        if self.stopping:
            events.emit("worker.stopped", worker=child.index, pid=child.pid, code=code,
                        signal=sig)
            return
        lived = time.monotonic() - child.started
        delay = self._delays.get(child.index, RESTART_DELAY)
        if lived >= STABLE_AFTER:
            delay = RESTART_DELAY
        self._delays[child.index] = min(delay * 2, RESTART_DELAY_MAX)
        self.restarts += 1
        events.emit("worker.died", "error", worker=child.index, pid=child.pid, code=code,
                    signal=sig, restart_in=delay)
        self._pending[child.index] = self.reactor.callLater(delay, self.spawn, child.index)

    def relay(self, index, line):
        """One log line of a worker, into this process's log."""
        if not line.strip():
            return
        event = event_from_json(line, {"securepop_worker": index})
        if event is None:
            event = {"log_format": "{securepop_text}", "securepop_text": line,
                     "log_namespace": "securepop.worker", "log_source": None,
                     "securepop_worker": index}
            from twisted.logger import LogLevel

            event["log_level"] = LogLevel.info
        event.setdefault("log_time", time.time())
        self.publisher(event)

    def signal_workers(self, signum):
        for child in list(self.workers.values()):
            try:
                child.transport.signalProcess(signum)
            except Exception:
                pass

    # -- reload and stop -----------------------------------------------------------

    def reload(self):
        """
        SIGHUP: check the file here first (a broken file is logged once and
        nothing changes), then each worker reloads.
        """
        path = self.settings.path
        if path:
            try:
                fresh = configmodule.load(path, self.settings.server.data_dir)
            except Exception as e:
                events.emit("config.reload_failed", "error", error=str(e))
                return False
            self.settings = replace(fresh, listen=self.settings.listen)
        self.signal_workers(signal.SIGHUP)
        events.emit("config.reload_forwarded", workers=len(self.workers))
        return True

    def stopService(self):
        self.stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        for listener, port in self.ports:
            port.stopListening()
        self.ports = []
        waits = [child.ended for child in self.workers.values()]
        self.signal_workers(signal.SIGTERM)
        grace = self.settings.server.shutdown_grace + KILL_AFTER_GRACE
        killer = self.reactor.callLater(grace, self.signal_workers, signal.SIGKILL)
        d = defer.DeferredList(waits)

        def done(_):
            if killer.active():
                killer.cancel()
            if self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if self.state_hub is not None:
                self.state_hub.stop()
            return service.MultiService.stopService(self)

        return d.addCallback(done)


# -- the worker process --------------------------------------------------------------


def _die_with_parent():
    """PR_SET_PDEATHSIG: a worker whose supervisor is gone stops."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def adopt_listeners(listeners, reactor, fds):
    """
    Point C{listeners} (a SecurePOPService's listener services) at the
    inherited sockets, in [[listen]] order.
    """
    if len(listeners) != len(fds):
        raise RuntimeError(f"{len(fds)} sockets for {len(listeners)} listeners")
    for svc, (fd, family) in zip(listeners, fds):
        svc.endpoint = endpoints.AdoptedStreamServerEndpoint(reactor, fd, FAMILIES[family])


#: The address families an inherited socket may have, by the name --fds gives.
FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def parse_fds(text):
    result = []
    for item in filter(None, text.split(",")):
        fd, _, family = item.partition(":")
        if family not in FAMILIES:
            raise ValueError(f"unknown address family {family!r}")
        result.append((int(fd), family))
    return result


def worker_main(argv=None):
    """Entry point of one worker process (started by the supervisor)."""
    parser = argparse.ArgumentParser(prog="securepop-worker")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--config", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--fds", default="")
    parser.add_argument("--state-fd", type=int, default=None)
    args = parser.parse_args(argv)
    _die_with_parent()
    if args.state_fd is not None:
        supervisor_state.inherit_channel(args.state_fd)

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([JSONLineObserver(sys.stdout)],
                                     redirectStandardIO=False)
    fds = parse_fds(args.fds)
    try:
        settings = configmodule.load(args.config, args.data_dir)
        # The addresses are the supervisor's business: parse nothing that
        # would try to find systemd's sockets here.
        settings = replace(settings, listen=tuple(
            replace(l, endpoint=f"tcp:0:interface=127.0.0.1:backlog={50 + i}")
            for i, l in enumerate(settings.listen)))
        root = compose_server(settings, reactor, serve_metrics=False)
        adopt_listeners(root.server.listeners, reactor, fds)
    except Exception as e:
        events.emit("worker.failed", "critical", worker=args.index, error=str(e))
        return 78
    events.emit("worker.ready", worker=args.index, pid=os.getpid())

    def on_hup(signum, frame):
        reactor.callFromThread(root.reload)

    signal.signal(signal.SIGHUP, on_hup)

    def start():
        root.privilegedStartService()
        root.startService()
        heap.freeze_startup_heap()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
