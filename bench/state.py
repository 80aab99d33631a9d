"""
What the shared state store costs a login: CPU time and Redis round trips.

    .venv/bin/python bench/state.py [--logins 2000] [--runs 5] [--concurrency 1]

Starts a redis-server on a free loopback port, then times N "logins" against
the C{redis} store and against the C{memory} store, in turn, C{--runs}
times each, and prints the medians.  A login is the store calls the
credentials check makes: C{login_state} (penalty and lockout, read before
every check) and C{cache_get} (the auth cache); C{--session} adds the rest
of a POP3 session: the connection's slots at connect (C{acquire} total +
ip), the user's slot after the login, and C{release} at the end.

CPU is this process's (C{time.process_time}: the client, Twisted's reactor
and txredisapi included), per login, in ms; the redis-server's own CPU is
printed apart.  Round trips are the commands the store sent, per login.
Target (issue 20): Redis costs at most 0.3 ms CPU and 2 round trips per
login.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor  # noqa: E402

from securepop.state.redis import RedisStateStore  # noqa: E402
from tests.integration.fixtures_redis import RedisServer  # noqa: E402

try:
    from securepop.state.memory import MemoryStateStore  # noqa: E402
except ImportError:   # the memory backend is not in this tree
    MemoryStateStore = None


def server_cpu(pid):
    """User + system CPU seconds of process C{pid}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_login(store, n, session):
    address, user = f"192.0.2.{n % 250}", f"user{n % 64}"
    lease = f"bench:{n}"
    if session:
        await store.acquire(lease, [("total", "*", 5000), ("ip", address, 20)])
    await store.login_state(address, user)
    await store.cache_get(b"cache-key-%d" % (n % 64))
    if session:
        await store.acquire(lease, [("user", user, 4)])
        await store.release(lease)


async def run(store, logins, concurrency, session):
    """@return: (CPU ms per login, wall ms per login)."""
    cpu, wall = time.process_time(), time.perf_counter()
    per = logins // concurrency

    async def worker(k):
        for i in range(per):
            await one_login(store, k * per + i, session)
    await defer.gatherResults([defer.ensureDeferred(worker(k)) for k in range(concurrency)])
    done = per * concurrency
    return ((time.process_time() - cpu) * 1000 / done, (time.perf_counter() - wall) * 1000 / done)


async def main(args):
    server = RedisServer(tempfile.mkdtemp(prefix="bench-state-")).start()
    try:
        redis = RedisStateStore(reactor, server.url, timeout=2.0)
        await redis.start()
        stores = [("redis", redis)]
        if MemoryStateStore is not None:
            stores.append(("memory", MemoryStateStore(reactor)))
        else:
            print("memory: securepop.state.memory is not in this tree; redis only")
        results = {name: [] for name, _ in stores}
        trips, redis_cpu = [], []
        for name, store in stores:      # warm up: scripts loaded, code paths hot
            await run(store, 200, args.concurrency, args.session)
        for _ in range(args.runs):
            for name, store in stores:
                sent, before = redis.round_trips, server_cpu(server.process.pid)
                results[name].append(await run(store, args.logins, args.concurrency,
                                               args.session))
                if name == "redis":
                    trips.append((redis.round_trips - sent) / args.logins)
                    redis_cpu.append((server_cpu(server.process.pid) - before) * 1000
                                     / args.logins)
        what = "session (acquire, login_state, cache_get, acquire user, release)" \
            if args.session else "login (login_state + cache_get)"
        print(f"{args.runs} runs x {args.logins} logins, concurrency {args.concurrency}; "
              f"one {what}")
        for name, values in results.items():
            cpu = statistics.median(v[0] for v in values)
            wall = statistics.median(v[1] for v in values)
            print(f"{name:7s} CPU {cpu:.3f} ms/login   wall {wall:.3f} ms/login   "
                  f"runs: {', '.join(f'{v[0]:.3f}' for v in values)}")
        if "memory" in results:
            extra = statistics.median(v[0] for v in results["redis"]) \
                - statistics.median(v[0] for v in results["memory"])
            print(f"redis - memory: {extra:.3f} ms CPU per login")
        print(f"redis round trips per login: {statistics.median(trips):.2f}; "
              f"redis-server CPU {statistics.median(redis_cpu):.3f} ms/login")
        await redis.stop()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--session", action="store_true",
                        help="a whole session's store calls, not only the login's")
    options = parser.parse_args()

    def go():
        d = defer.ensureDeferred(main(options))
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(go)
    reactor.run()
