"""
Whole POP3 sessions with ``[state] backend = "redis"`` against ``"memory"``, same run.

    .venv/bin/python bench/state_sessions.py [--rounds 2] [--runs 3] [--duration 6]

Starts a redis-server on loopback, then securepop with each backend in turn
(``--rounds`` times, alternating), 64 users with one 10 KB message each and
warm auth caches, and drives each with ``bench/loadgen.py`` pinned to CPU 1
(implicit TLS, 32 concurrent sessions: connect, login, STAT, RETR, QUIT).
Prints sessions/s, securepop's CPU per session (``/proc``), redis-server's
CPU per session, and the Redis commands per session (``INFO commandstats``:
the scripts' calls, i.e. round trips).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench.workers as workers  # noqa: E402
from bench.state import server_cpu  # noqa: E402
from bench.workers import PASSWORD, USERS  # noqa: E402
from tests.integration.fixtures_redis import RedisServer  # noqa: E402


def load(port, duration):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--port", str(port),
         "--tls", "implicit", "--users", f"u0000:u{USERS - 1:04d}", "--password", PASSWORD,
         "--concurrency", "32", "--duration", str(duration), "--cpu", "1",
         "--bind", "127.0.0.2"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def round_trips(redis):
    """EVALSHA + plain commands the server ran since the last reset."""
    stats = redis.command("INFO", "commandstats").decode()
    calls = dict((m.group(1), int(m.group(2)))
                 for m in re.finditer(r"cmdstat_([a-z|]+):calls=(\d+)", stats))
    # commands run inside scripts are counted too: count only those the store
    # sends itself on a session's path (its scripts, the cache's GET/SET/DEL)
    return sum(calls.get(c, 0) for c in ("evalsha", "eval", "get", "set", "del"))


def start(base, backend, redis):
    """bench/workers.py's daemon (one worker), with the backend's [state]."""
    config = workers.DEFAULT_CONFIG
    if backend == "redis":
        workers.DEFAULT_CONFIG = config + f'[state]\nbackend = "redis"\nurl = "{redis.url}"\n'
    try:
        return workers.start(base, 1)
    finally:
        workers.DEFAULT_CONFIG = config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0)
    a = p.parse_args(argv)
    results = {"memory": [], "redis": []}
    errors = 0
    with tempfile.TemporaryDirectory() as base:
        redis = RedisServer(Path(base) / "redis").start()
        try:
            for _ in range(a.rounds):
                for backend in ("memory", "redis"):
                    d = start(base, backend, redis)
                    try:
                        load(d.pop3s_port, 2.0)            # warm the auth caches
                        for _ in range(a.runs):
                            redis.command("CONFIG", "RESETSTAT")
                            cpu = server_cpu(d.proc.pid)
                            rcpu = server_cpu(redis.process.pid)
                            result = load(d.pop3s_port, a.duration)
                            sessions = max(result["sessions"], 1)
                            results[backend].append((
                                result["sessions_per_s"],
                                (server_cpu(d.proc.pid) - cpu) * 1000 / sessions,
                                (server_cpu(redis.process.pid) - rcpu) * 1000 / sessions,
                                round_trips(redis) / sessions))
                            errors += result["errors"]
                    finally:
                        d.stop()
                    time.sleep(0.5)
        finally:
            redis.stop()
    print(f"{a.rounds} rounds x {a.runs} runs of {a.duration:g} s, 32 sessions in flight")
    for backend, values in results.items():
        rate, cpu, rcpu, trips = (statistics.median(v[i] for v in values) for i in range(4))
        print(f"{backend:7s} {rate:7.1f} sessions/s  securepop CPU {cpu:.3f} ms/session  "
              f"redis-server CPU {rcpu:.3f} ms/session  round trips {trips:.2f}/session  "
              f"(runs: {', '.join(f'{v[0]:.1f}' for v in values)})")
    m, r = (statistics.median(v[1] for v in results[b]) for b in ("memory", "redis"))
    print(f"redis - memory: {r - m:.3f} ms securepop CPU per session; errors {errors}")


if __name__ == "__main__":
    main()
