"""
Session-wide real servers for the integration tests.

C{daemon}: one securepop (STLS + implicit TLS, every mechanism, APOP on,
short failure delays) with users alice and bob, started once per session.
C{daemon_factory}: further daemons with their own configuration, each started
once per session per configuration and stopped at the end.
"""

import pytest

from tests.integration.daemon import DEFAULT_CONFIG, Daemon

ALICE_PASSWORD = "Correct-Horse-7"
BOB_PASSWORD = "b0b's pa:ss w0rd"


@pytest.fixture(scope="session")
def daemon_factory(tmp_path_factory):
    started = {}

    def make(config=DEFAULT_CONFIG, users=(("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)),
             name=None, **kwargs):
        key = (config, tuple(users), name, tuple(sorted(kwargs.items())) if not kwargs.get("env")
               else repr(kwargs))
        if key in started:
            return started[key]
        d = Daemon(tmp_path_factory.mktemp(name or "securepop"), config, **kwargs)
        for user, password in users:
            d.add_user(user, password)
        d.start()
        started[key] = d
        return d

    yield make
    for d in started.values():
        d.stop()


@pytest.fixture(scope="session")
def daemon(daemon_factory):
    return daemon_factory()


# A real redis-server for the shared-state tests (session-wide, started on first use).
from tests.integration.fixtures_redis import (  # noqa: E402,F401
    redis, redis_sentinel, redis_server, redis_tls_server)
