"""Tests for securepop.tap: Options, and makeService's start or refusal."""

import signal

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from securepop import tap
from securepop.assembly import OperatingRoot
from securepop.service import ServerRoot


from tests.unit.daemon_fixtures import config_for, keep_sighup  # noqa: F401 (fixture)


def options_for(tmp_path, text=""):
    path = config_for(tmp_path, text)
    o = tap.Options()
    o.parseOptions(["--config", str(path)])
    return o


def test_bad_configuration_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nworkers = \"many\"\n")
    with pytest.raises(usage.UsageError, match="server.workers"):
        tap.Options().parseOptions(["--config", str(path)])


def test_make_service_builds_the_operating_root(tmp_path):
    root = tap.makeService(options_for(tmp_path), MemoryReactorClock())
    assert isinstance(root, OperatingRoot)
    assert isinstance(root.inner, ServerRoot)
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)


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
    with pytest.raises(SystemExit) as e:
        tap.makeService(o, MemoryReactorClock())
    assert e.value.code == 78
    assert "no such user" in capsys.readouterr().err


def test_tap_holds_options_and_make_service_only():
    public = {n for n in vars(tap) if not n.startswith("_") and callable(getattr(tap, n))
              and getattr(getattr(tap, n), "__module__", None) == tap.__name__}
    assert public == {"Options", "makeService"}
