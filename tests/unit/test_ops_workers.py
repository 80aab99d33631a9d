"""Tests for securepop.ops.workers (in memory; real processes are integration tests)."""

import signal
import socket

import pytest
from twisted.internet.task import Clock
from twisted.internet import address

from securepop import config
from securepop.ops import workers


def test_worker_count():
    assert workers.worker_count("1") == 1
    assert workers.worker_count("4") == 4
    assert workers.worker_count("auto") >= 1
    for bad in ("0", "257", "-1", "x"):
        with pytest.raises(ValueError):
            workers.worker_count(bad)


def test_parse_fds():
    assert workers.parse_fds("3:INET,4:INET6") == [(3, "INET"), (4, "INET6")]
    assert workers.parse_fds("") == []
    for bad in ("3:PACKET", "x:INET", "3"):
        with pytest.raises(ValueError):
            workers.parse_fds(bad)


def test_family_name():
    assert workers.family_name(address.IPv4Address("TCP", "127.0.0.1", 1)) == "INET"
    assert workers.family_name(address.IPv6Address("TCP", "::1", 1)) == "INET6"
    assert workers.family_name(address.UNIXAddress(b"/x")) == "UNIX"


class FakeTransport:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, sig):
        self.signals.append(sig)


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None, **kw):
        proto.makeConnection(FakeTransport(1000 + len(self.spawned)))
        self.spawned.append((proto, args, env, childFDs))
        return proto.transport


class Ended:
    def __init__(self, code=1, signal=None):
        self.value = type("V", (), {"exitCode": code, "signal": signal})()


@pytest.fixture
def supervisor(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[server]\nworkers = "2"\n')
    settings = config.load(str(path), str(tmp_path / "data"))
    reactor = FakeReactor()
    events = []
    sup = workers.WorkerSupervisor(settings, reactor, 2, worker_argv=["/bin/worker"],
                                   publisher=events.append)
    sup.events = events
    return sup


def test_spawns_count_workers_with_clean_environment(supervisor, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    monkeypatch.setenv("LISTEN_FDS", "2")
    supervisor.startService()
    assert len(supervisor.reactor.spawned) == 2
    proto, args, env, fds = supervisor.reactor.spawned[0]
    assert args[:3] == ["/bin/worker", "--index", "0"]
    assert "--config" in args and "--fds" in args
    assert "NOTIFY_SOCKET" not in env and "LISTEN_FDS" not in env
    assert fds[1] == "r" and fds[2] == "r"


def test_dead_worker_restarted_with_backoff(supervisor):
    supervisor.startService()
    first = supervisor.workers[0]
    first.processEnded(Ended(signal=9))
    assert 0 not in supervisor.workers
    supervisor.reactor.advance(workers.RESTART_DELAY)
    second = supervisor.workers[0]
    assert second is not first and supervisor.restarts == 1
    second.processEnded(Ended())
    supervisor.reactor.advance(workers.RESTART_DELAY)
    assert 0 not in supervisor.workers            # the delay doubled
    supervisor.reactor.advance(workers.RESTART_DELAY)
    assert 0 in supervisor.workers


def test_stop_signals_workers_and_does_not_restart(supervisor):
    supervisor.startService()
    children = list(supervisor.workers.values())
    d = supervisor.stopService()
    assert all(c.transport.signals == [signal.SIGTERM] for c in children)
    fired = []
    d.addCallback(fired.append)
    for c in children:
        c.processEnded(Ended(code=0))
    assert fired and not supervisor.workers
    supervisor.reactor.advance(60)
    assert len(supervisor.reactor.spawned) == 2


def test_stop_kills_workers_that_overstay(supervisor):
    supervisor.startService()
    (c0, c1) = supervisor.workers.values()
    supervisor.stopService()
    c0.processEnded(Ended(code=0))
    supervisor.reactor.advance(supervisor.settings.server.shutdown_grace
                               + workers.KILL_AFTER_GRACE)
    assert c1.transport.signals == [signal.SIGTERM, signal.SIGKILL]


def test_reload_forwards_sighup(supervisor):
    supervisor.startService()
    assert supervisor.reload() is True
    assert all(c.transport.signals == [signal.SIGHUP] for c in supervisor.workers.values())


def test_reload_with_broken_file_forwards_nothing(supervisor):
    supervisor.startService()
    open(supervisor.settings.path, "w").write("[server\n")
    assert supervisor.reload() is False
    assert all(c.transport.signals == [] for c in supervisor.workers.values())


def test_relay_json_and_raw_lines(supervisor):
    supervisor.startService()
    proto = supervisor.workers[1]
    proto.childDataReceived(1, b'{"message": "securepop auth.success ip=1", "event": "auth.')
    assert supervisor.events == []                 # incomplete line held back
    proto.childDataReceived(1, b'success", "fields": {"ip": "1"}, "level": "info"}\n')
    proto.childDataReceived(2, b"Traceback (most recent call last):\n\n")
    (first, second) = supervisor.events
    assert first["securepop_event"] == "auth.success" and first["securepop_worker"] == 1
    assert second["securepop_text"].startswith("Traceback")
    assert second["securepop_worker"] == 1


def test_adopt_listeners_checks_count():
    class Svc:
        listener = object()
        endpoint = None

    with pytest.raises(RuntimeError):
        workers.adopt_listeners([Svc()], Clock(), [])
    svc = Svc()
    workers.adopt_listeners([svc], Clock(), [(3, "INET")])
    assert svc.endpoint.fileno == 3


class RecordingHub:
    """Stands for a StateHub: hands out real socketpair ends and records them."""

    def __init__(self):
        self.ends, self.started, self.stopped = [], 0, 0

    def start(self):
        self.started += 1

    def stop(self):
        self.stopped += 1

    def channel_for(self, worker):
        mine, theirs = socket.socketpair()
        self.ends.append((worker, mine, theirs, theirs.fileno()))
        return theirs


def test_each_worker_gets_its_state_channel_after_the_listeners(supervisor):
    hub = RecordingHub()
    supervisor.state_hub = hub
    listener = supervisor.settings.listen[0]
    supervisor.ports = [(listener, None), (listener, None)]      # two listeners: fds 3, 4
    supervisor.listening_fds = lambda: [(3, 10, "INET"), (4, 11, "INET")]
    supervisor.startService()
    assert hub.started == 1 and [end[0] for end in hub.ends] == [0, 1]
    for (proto, args, env, fds), (_, mine, theirs, fd) in zip(supervisor.reactor.spawned,
                                                              hub.ends):
        assert args[args.index("--state-fd") + 1] == "5"
        assert fds[5] == fd and fds[3] == 10 and fds[4] == 11
        assert theirs.fileno() == -1      # closed here once the worker has it
        mine.close()
    supervisor.ports = []
    supervisor.stopService()
    for proto, *_ in supervisor.reactor.spawned:
        proto.processEnded(Ended(0))
    assert hub.stopped == 1


def test_without_a_hub_no_state_channel(supervisor):
    supervisor.startService()
    proto, args, env, fds = supervisor.reactor.spawned[0]
    assert "--state-fd" not in args
    assert set(fds) == {0, 1, 2} | {child for child, _, _ in supervisor.listening_fds()}
