"""Tests for securepop.assembly: what runs around the server under twistd."""

import signal

from twisted.application import service
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver

from securepop import assembly, config
from securepop.ops.jsonlog import JSONLineObserver
from securepop.ops.workers import WorkerSupervisor
from tests.unit.daemon_fixtures import config_for, keep_sighup  # noqa: F401 (fixture)


def root_for(tmp_path, text="", twistd_options=None, reactor=None):
    settings = config.load(str(config_for(tmp_path, text)))
    return assembly.build_root(settings, reactor or MemoryReactorClock(), twistd_options)


def test_single_process_composition(tmp_path):
    root = root_for(tmp_path, '[log]\nprotocol_log = "proto.log"\n'
                              '[metrics]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
    assert isinstance(root, assembly.OperatingRoot)
    inner = root.inner
    assert inner.server.context.metrics is inner.metrics is not None
    assert inner.server.context._protocol_log is inner.protocol_log
    assert inner.protocol_log.path == str(tmp_path / "data" / "proto.log")
    assert list(inner.server)[0] is inner.shutdown
    assert inner.getServiceNamed("metrics") is not None
    assert list(root)[-1].name == "systemd-notify"
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)


def test_no_metrics_no_protocol_log_by_default(tmp_path):
    root = root_for(tmp_path)
    assert root.inner.metrics is None and root.inner.protocol_log is None
    assert root.log_observer is None


def test_workers_build_a_supervisor(tmp_path):
    root = root_for(tmp_path, 'workers = "2"\n')
    assert isinstance(root.inner, WorkerSupervisor)
    assert root.inner.count == 2


def test_json_format_sets_twistd_observer(tmp_path):
    root = root_for(tmp_path, '[log]\nformat = "json"\n')
    assert isinstance(root.log_observer, JSONLineObserver)
    application = service.Application("test")
    root.setServiceParent(application)
    assert application.getComponent(ILogObserver) is root.log_observer
    assert root.parent is service.IServiceCollection(application)


def test_json_format_under_a_plain_parent_sets_no_component(tmp_path):
    """Embedded under a MultiService: nothing to ask for an observer, none set."""
    root = root_for(tmp_path, '[log]\nformat = "json"\n')
    parent = service.MultiService()
    root.setServiceParent(parent)
    assert root.parent is parent


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
    root = root_for(tmp_path)
    path = config_for(tmp_path)
    notifier = root.notifier = RecordingNotifier()
    before = root.inner.server.settings
    path.write_text("[access\n")
    assert root.reload() is False
    assert root.inner.server.settings is before
    assert notifier.sent == ["RELOADING", "READY"]
    path.write_text('[server]\nhostname = "localhost"\nshutdown_grace = 3\n'
                    f'data_dir = "{tmp_path / "data"}"\n'
                    '[log]\nprotocol_log = "p.log"\n')
    assert root.reload() is True
    assert root.inner.shutdown.grace == 3
    assert root.inner.protocol_log is not None
    assert root.inner.server.context._protocol_log is root.inner.protocol_log


def test_privileged_start_binds_before_drop(tmp_path, monkeypatch):
    from securepop.ops import privileges

    reactor = MemoryReactorClock()
    root = root_for(tmp_path, reactor=reactor)
    root.identity = privileges.Identity("svc", 1234, 1234, (1234,))
    seen = []
    monkeypatch.setattr(privileges, "drop", lambda who: seen.append(len(reactor.tcpServers)))
    root.privilegedStartService()
    assert seen == [2]        # both listeners were bound when the drop came
