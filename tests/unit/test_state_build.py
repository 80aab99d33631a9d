"""securepop.state.build: which store the settings ask for, and how check-config names it."""

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from securepop import config
from securepop.interfaces import IStateStore
from securepop.state import build
from securepop.state.memory import MemoryStateStore


def test_the_default_is_the_memory_store(tmp_path):
    settings = config.parse("", "f.toml", tmp_path)
    store = build.build_state(settings, Clock())
    assert isinstance(store, MemoryStateStore) and verifyObject(IStateStore, store)
    assert build.backend_of(settings) == "memory"
    assert build.describe(settings) == "state: memory (this process only)"


def test_two_builds_are_two_stores(tmp_path):
    """A store is the process's: each call makes its own (the service keeps one)."""
    settings = config.parse("", "f.toml", tmp_path)
    assert build.build_state(settings, Clock()) is not build.build_state(settings, Clock())
