"""securepop.state.build: which store the settings ask for, and how check-config names it."""

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from securepop import config
from securepop.errors import ConfigError
from securepop.interfaces import IStateStore
from securepop.state import build
from securepop.state.memory import MemoryStateStore
from securepop.state.outage import OutageGuard
from securepop.state.redis import RedisStateStore


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


def test_redis_is_the_redis_store_behind_the_outage_guard(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    settings = config.parse(f'[state]\nbackend = "redis"\nurl = "redis://10.0.0.5:6380/1"\n'
                            f'password_file = "{secret}"\non_outage = "refuse"\n'
                            f'lease_ttl = 12\n', "f.toml", tmp_path)
    store = build.build_state(settings, Clock())
    assert isinstance(store, OutageGuard) and verifyObject(IStateStore, store)
    assert isinstance(store._store, RedisStateStore) and store._store._link._password == "pw"
    assert isinstance(store._local, MemoryStateStore)
    assert store.kind == "redis" and store.on_outage == "refuse" and store.lease_ttl == 12
    assert build.backend_of(settings) == "redis"
    assert build.describe(settings) == ("state: redis (every worker and node sharing it) at "
                                        "redis://10.0.0.5:6380/1, on_outage = refuse")
    sentinel = config.parse('[state]\nbackend = "redis"\nsentinels = ["10.0.0.7:26379"]\n',
                            "f.toml", tmp_path)
    assert build.describe(sentinel).endswith(
        "at sentinels 10.0.0.7:26379 (mymaster), on_outage = local")
    # a password file others can read stops the start
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="state.password_file"):
        build.build_state(settings, Clock())
