"""Fixtures shared by the tests of the daemon's assembly (tap, assembly)."""

import signal

import pytest


@pytest.fixture(autouse=True)
def keep_sighup():
    """Building a root installs SIGHUP/SIGUSR1 handlers: put the old ones back."""
    old = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGHUP, old[0])
    signal.signal(signal.SIGUSR1, old[1])


def config_for(tmp_path, text=""):
    """A configuration file with a data dir in C{tmp_path}, plus C{text}."""
    path = tmp_path / "securepop.toml"
    path.write_text(f'[server]\nhostname = "localhost"\ndata_dir = "{tmp_path / "data"}"\n'
                    + text)
    return path
