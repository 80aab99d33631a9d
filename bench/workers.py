"""
Login throughput with 1 and 2 worker processes (`workers = 2`).

    sudo .venv/bin/python bench/workers.py [--runs 4] [--duration 6] [--cold]

Starts securepop with ``server.workers = 1`` and ``2`` in turn (alternating,
``--rounds`` times), 64 users with one 10 KB message each and warm auth
caches, and drives each with ``bench/loadgen.py`` pinned to CPU 1 (implicit
TLS, 32 concurrent sessions: connect, login, STAT, RETR, QUIT).  Prints the
sessions/s of every run and the medians.  On a 2-core machine the load
generator needs about half a core, so two workers can gain at most ~1.5x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from argon2 import PasswordHasher  # noqa: E402

from securepop import schemes  # noqa: E402
from securepop.auth import userfile  # noqa: E402
from tests.integration.daemon import DEFAULT_CONFIG, Daemon  # noqa: E402

USERS = 64
PASSWORD = "pw-bench"


def start(base, workers, cold=False):
    config = DEFAULT_CONFIG.replace("[server]\n", f'[server]\nworkers = "{workers}"\n')
    if cold:  # every login hashes: what a second worker's core is for
        config = config.replace("[auth]\n", "[auth]\ncache_ttl = 0.0\n")
    d = Daemon(base, config, name=f"workers{workers}-{time.time_ns()}")
    d.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The benchmark's hash cost (argon2id m=19 MiB, t=2, p=1), one hash for all.
    schemes._hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
    entry = userfile.make_entry("u0000", PASSWORD, set())
    users = {f"u{i:04d}": userfile.UserEntry(f"u{i:04d}", entry.password_hash, {})
             for i in range(USERS)}
    userfile.UsersFile(d.data_dir / "users").save(users)
    for name in users:
        d.deliver(name, b"Subject: bench\n\n" + b"y" * 10000 + b"\n")
    d.start()
    return d


def load(port, duration):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--port", str(port),
         "--tls", "implicit", "--users", f"u0000:u{USERS - 1:04d}", "--password", PASSWORD,
         "--concurrency", "32", "--duration", str(duration), "--cpu", "1",
         "--bind", "127.0.0.2"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--cold", action="store_true", help="auth cache off: argon2 per login")
    a = p.parse_args(argv)
    rates = {1: [], 2: []}
    errors = 0
    with tempfile.TemporaryDirectory() as base:
        for _ in range(a.rounds):
            for workers in (1, 2):
                d = start(base, workers, a.cold)
                try:
                    load(d.pop3s_port, 2.0)            # warm the auth caches
                    for _ in range(a.runs):
                        result = load(d.pop3s_port, a.duration)
                        rates[workers].append(result["sessions_per_s"])
                        errors += result["errors"]
                finally:
                    d.stop()
                print(f"workers={workers}: " + ", ".join(f"{r:.1f}" for r in rates[workers]))
    m1, m2 = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median sessions/s{' (auth cache off)' if a.cold else ''}: 1 worker {m1:.1f}, "
          f"2 workers {m2:.1f} ({m2 / m1:.2f}x); errors {errors}")


if __name__ == "__main__":
    main()
