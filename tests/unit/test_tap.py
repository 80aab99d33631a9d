"""Tests for securepop.tap: Options, makeService and what it composes."""

import signal

import pytest
from twisted.application import service
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.python import usage

from securepop import tap
from securepop.ops.jsonlog import JSONLineObserver
from securepop.ops.workers import WorkerSupervisor


@pytest.fixture(autouse=True)
def keep_sighup():
    old = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGHUP, old[0])
    signal.signal(signal.SIGUSR1, old[1])


def options_for(tmp_path, text=""):
    path = tmp_path / "securepop.toml"
    path.write_text(f'[server]\nhostname = "localhost"\ndata_dir = "{tmp_path / "data"}"\n'
                    + text)
    o = tap.Options()
    o.parseOptions(["--config", str(path)])
    return o


def test_bad_configuration_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nworkers = \"many\"\n")
    with pytest.raises(usage.UsageError, match="server.workers"):
        tap.Options().parseOptions(["--config", str(path)])


def test_single_process_composition(tmp_path):
    o = options_for(tmp_path, '[log]\nprotocol_log = "proto.log"\n'
                              '[metrics]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
    root = tap.makeService(o, MemoryReactorClock())
    assert isinstance(root, tap.OperatingRoot)
    inner = root.inner
    assert isinstance(inner, tap.ServerRoot)
    assert inner.server.context.metrics is inner.metrics is not None
    assert inner.server.context._protocol_log is inner.protocol_log
    assert inner.protocol_log.path == str(tmp_path / "data" / "proto.log")
    assert list(inner.server)[0] is inner.shutdown
    assert inner.getServiceNamed("metrics") is not None
    assert list(root)[-1].name == "systemd-notify"
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)


def test_no_metrics_no_protocol_log_by_default(tmp_path):
    root = tap.makeService(options_for(tmp_path), MemoryReactorClock())
    assert root.inner.metrics is None and root.inner.protocol_log is None
    assert root.log_observer is None


def test_workers_build_a_supervisor(tmp_path):
    root = tap.makeService(options_for(tmp_path, 'workers = "2"\n'), MemoryReactorClock())
    assert isinstance(root.inner, WorkerSupervisor)
    assert root.inner.count == 2


def test_json_format_sets_twistd_observer(tmp_path):
    root = tap.makeService(options_for(tmp_path, '[log]\nformat = "json"\n'),
                           MemoryReactorClock())
    assert isinstance(root.log_observer, JSONLineObserver)
    application = service.Application("test")
    root.setServiceParent(application)
    assert application.getComponent(ILogObserver) is root.log_observer
    assert root.parent is service.IServiceCollection(application)


def test_text_format_under_twistd_sets_the_fast_text_observer(tmp_path):
    from twisted.logger import FileLogObserver

    o = options_for(tmp_path)
    o.parent = {"logfile": str(tmp_path / "twistd.log"), "nodaemon": True, "syslog": False}
    root = tap.makeService(o, MemoryReactorClock())
    assert isinstance(root.log_observer, FileLogObserver)
    o.parent["syslog"] = True            # twistd's syslog observer is kept
    assert tap.makeService(o, MemoryReactorClock()).log_observer is None


def test_world_readable_users_file_stops_start(tmp_path, capsys):
    o = options_for(tmp_path)
    (tmp_path / "data").mkdir(mode=0o700)
    users = tmp_path / "data" / "users"
    users.write_text("")
    users.chmod(0o644)
    with pytest.raises(SystemExit) as e:
        tap.makeService(o, MemoryReactorClock())
    assert e.value.code == 78
    assert "chmod 600" in capsys.readouterr().err


def test_unknown_user_stops_start(tmp_path, capsys):
    o = options_for(tmp_path, 'user = "no-such-user-securepop"\n')
    with pytest.raises(SystemExit):
        tap.makeService(o, MemoryReactorClock())
    assert "no such user" in capsys.readouterr().err


class RecordingNotifier:
    def __init__(self):
        self.sent = []

    def reloading(self):
        self.sent.append("RELOADING")

    def ready(self, status=""):
        self.sent.append("READY")

    def stopping(self):
        self.sent.append("STOPPING")


def test_reload_notifies_and_keeps_old_settings_on_error(tmp_path):
    o = options_for(tmp_path)
    root = tap.makeService(o, MemoryReactorClock())
    notifier = root.notifier = RecordingNotifier()
    before = root.inner.server.settings
    open(o["config"], "w").write("[access\n")
    assert root.reload() is False
    assert root.inner.server.settings is before
    assert notifier.sent == ["RELOADING", "READY"]
    open(o["config"], "w").write('[server]\nhostname = "localhost"\nshutdown_grace = 3\n'
                                 f'data_dir = "{tmp_path / "data"}"\n'
                                 '[log]\nprotocol_log = "p.log"\n')
    assert root.reload() is True
    assert root.inner.shutdown.grace == 3
    assert root.inner.protocol_log is not None
    assert root.inner.server.context._protocol_log is root.inner.protocol_log


def test_privileged_start_binds_before_drop(tmp_path, monkeypatch):
    from securepop.ops import privileges

    reactor = MemoryReactorClock()
    root = tap.makeService(options_for(tmp_path), reactor)
    root.identity = privileges.Identity("svc", 1234, 1234, (1234,))
    seen = []
    monkeypatch.setattr(privileges, "drop", lambda who: seen.append(len(reactor.tcpServers)))
    root.privilegedStartService()
    assert seen == [2]        # both listeners were bound when the drop came
