"""
Mail in and mail moved (issue 21): LMTP deliveries against Dovecot LMTP, and
C{securepop migrate} pulling from Dovecot.

Run through C{bench/run.py}::

    python bench/run.py --lmtp       # deliveries/s of 10 KB messages, securepop vs Dovecot LMTP
    python bench/run.py --migrate    # migrate from Dovecot (STLS): messages/s and MB/s

Both print their tables and write C{bench/results-mailin.json}; RESULTS.md
keeps a hand-written section with them (the default run's block stays).
"""

from __future__ import annotations

import json
import os
import poplib
import pwd
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

from bench.servers import (
    CLIENT_CPU, PASSWORD, Dovecot, SecurePOP, cpu_seconds, message,
)

HERE = Path(__file__).resolve().parent
LMTP_USERS = "u0000:u0049"
MIGRATE_USER = "u0049"


# -- pure helpers ----------------------------------------------------------------

def per_delivery_ms(cpu_s, deliveries):
    """Server CPU ms per delivery; None without deliveries."""
    return round(cpu_s * 1000 / deliveries, 3) if deliveries else None


def migrate_rates(report, wall_s):
    """
    Messages/s and MB/s of one C{securepop migrate --json} report (one user):
    over the engine's own C{seconds} (listing to last store) and over the
    command's wall time (process start, TLS, login and the exit included).
    """
    user = report["users"][0]
    fetched, octets, seconds = user["fetched"], user["bytes"], user["seconds"]
    rate = lambda n, s: round(n / s, 1) if s else None  # noqa: E731
    return {"fetched": fetched, "bytes": octets, "status": report["status"],
            "error": user.get("error"), "engine_s": round(seconds, 3),
            "wall_s": round(wall_s, 3),
            "messages_per_s": rate(fetched, seconds), "mb_per_s": rate(octets / 1e6, seconds),
            "wall_messages_per_s": rate(fetched, wall_s),
            "wall_mb_per_s": rate(octets / 1e6, wall_s)}


def median_of(runs, key):
    values = sorted(r[key] for r in runs if r.get(key) is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def tables(results):
    """The markdown tables of whatever of the two lines ran."""
    out = []
    lmtp = results.get("lmtp")
    if lmtp:
        runs = lmtp["runs"]
        sp, dc = runs.get("securepop", []), runs.get("dovecot", [])
        out += [f"LMTP over a Unix socket: {lmtp['clients']} concurrent clients, each "
                f"delivering {lmtp['messages']} messages of {lmtp['size']} octets to one "
                f"user (one connection per client), servers on CPU 0, clients on CPU 1; "
                f"medians of {len(sp)} runs:", "",
                "| | deliveries/s | each run | server CPU ms/delivery | delivery p50 ms | "
                "p99 ms | errors |", "|---|---|---|---|---|---|---|"]
        for label, rs in (("securepop", sp), ("Dovecot LMTP", dc)):
            each = ", ".join(_fmt(r.get("deliveries_per_s")) for r in rs)
            out.append(f"| {label} | {_fmt(median_of(rs, 'deliveries_per_s'))} | {each} | "
                       f"{_fmt(median_of(rs, 'cpu_ms_per_delivery'), 2)} | "
                       f"{_fmt(median_of(rs, 'p50_ms'), 2)} | {_fmt(median_of(rs, 'p99_ms'), 2)} | "
                       f"{sum(r['errors'] for r in rs)} |")
        a, b = median_of(sp, "deliveries_per_s"), median_of(dc, "deliveries_per_s")
        ca, cb = median_of(sp, "cpu_ms_per_delivery"), median_of(dc, "cpu_ms_per_delivery")
        out.append(f"| securepop/Dovecot | {f'{a / b:.2f}x' if a and b else '–'} | | "
                   f"{f'{ca / cb:.2f}x' if ca and cb else '–'} | | | |")
        out.append("")
    mig = results.get("migrate")
    if mig:
        rs = mig["runs"]
        out += [f"`securepop migrate pop3://127.0.0.1:PORT` (STLS, certificate checked) "
                f"pulling {mig['messages']} messages of {mig['size']} octets from Dovecot "
                f"(pinned to CPU 0; migrate on CPU 1) into an empty Maildir; medians of "
                f"{len(rs)} runs:", "",
                "| | messages/s | MB/s | each run (msg/s) | seconds | migrate CPU s | "
                "Dovecot CPU s | errors |", "|---|---|---|---|---|---|---|---|"]
        each = ", ".join(_fmt(r.get("messages_per_s")) for r in rs)
        out.append(f"| engine (listing to last message stored) | "
                   f"{_fmt(median_of(rs, 'messages_per_s'))} | {_fmt(median_of(rs, 'mb_per_s'), 2)} | "
                   f"{each} | {_fmt(median_of(rs, 'engine_s'), 2)} | "
                   f"{_fmt(median_of(rs, 'client_cpu_s'), 2)} | "
                   f"{_fmt(median_of(rs, 'server_cpu_s'), 2)} | "
                   f"{sum(1 for r in rs if r.get('status'))} |")
        each = ", ".join(_fmt(r.get("wall_messages_per_s")) for r in rs)
        out.append(f"| whole command (start, TLS, login, exit) | "
                   f"{_fmt(median_of(rs, 'wall_messages_per_s'))} | "
                   f"{_fmt(median_of(rs, 'wall_mb_per_s'), 2)} | {each} | "
                   f"{_fmt(median_of(rs, 'wall_s'), 2)} | | | |")
        out.append("")
    return "\n".join(out)


# -- LMTP ------------------------------------------------------------------------

def lmtp_load(path, users, clients, messages, size, timeout=300):
    cmd = [sys.executable, str(HERE / "lmtpload.py"), "--socket", str(path),
           "--users", users, "--concurrency", str(clients), "--messages", str(messages),
           "--size", str(size), "--cpu", str(CLIENT_CPU)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"lmtpload failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lmtp(bench):
    """Per repetition: securepop and Dovecot LMTP (order alternating), fresh Maildirs."""
    a, tb = bench.args, bench.testbed
    sock_dir = tb.root / "lmtp-sockets"
    sock_dir.mkdir(exist_ok=True)
    first = LMTP_USERS.split(":")[0]
    users = f"{first}:{first[:-4]}{a.lmtp_clients - 1:04d}"
    results = {"clients": a.lmtp_clients, "messages": a.lmtp_messages, "size": tb.small,
               "runs": {"securepop": [], "dovecot": []}}

    def servers():
        for s in (sock_dir / "securepop", sock_dir / "dovecot"):
            if s.exists():
                s.unlink()
        return [SecurePOP(tb, checkout=a.checkout, tag="securepop-lmtp",
                          lmtp_socket=sock_dir / "securepop"),
                Dovecot(tb, "default", lmtp_socket=sock_dir / "dovecot")]

    for rep in range(a.runs):
        print(f"lmtp run {rep + 1}/{a.runs}", flush=True)
        chosen = servers()
        for server in (chosen if rep % 2 == 0 else chosen[::-1]):
            with server:
                # One short discarded run: process start, first Maildir opens.
                lmtp_load(server.lmtp_socket, users, a.lmtp_clients, 5, tb.small)
                before = cpu_seconds(server)
                r = lmtp_load(server.lmtp_socket, users, a.lmtp_clients, a.lmtp_messages,
                              tb.small)
                r["server_cpu_s"] = round(cpu_seconds(server) - before, 3)
                r["cpu_ms_per_delivery"] = per_delivery_ms(r["server_cpu_s"], r["deliveries"])
            key = "securepop" if server.name == "securepop" else "dovecot"
            results["runs"][key].append(r)
            print(f"  {key}: {r}", flush=True)
    bench.results["lmtp"] = results


# -- migrate ---------------------------------------------------------------------

def securepop_command(checkout):
    """The C{securepop} CLI under this Python (C{PYTHONPATH=checkout} picks the code)."""
    return [sys.executable, "-c",
            "import sys; from securepop.cli.main import main; sys.exit(main())"]


def fill_source(server, user, count, size):
    """Put C{count} more messages of C{size} octets in C{user}'s Maildir on Dovecot."""
    cur = server.dir / "mail" / user / "Maildir" / "cur"
    nobody = pwd.getpwnam("nobody")
    for i in range(count):
        f = cur / f"{1700000100 + i}.M{i}P1.bench,S={size}:2,S"
        f.write_bytes(message(size, 1000 + i))
        os.chown(f, nobody.pw_uid, nobody.pw_gid)


def source_listing(server, user, cafile):
    """Log in once over STLS (Dovecot indexes the new files) and count the messages."""
    pop = poplib.POP3("127.0.0.1", server.stls_port, timeout=120)
    try:
        pop.stls(ssl.create_default_context(cafile=str(cafile)))
        pop.user(user)
        pop.pass_(PASSWORD)
        return pop.stat()
    finally:
        pop.quit()


def migrate(bench):
    """C{securepop migrate} from Dovecot into an empty data directory, C{--runs} times."""
    a, tb = bench.args, bench.testbed
    work = tb.root / "migrate"
    work.mkdir(exist_ok=True)
    pw = work / "password"
    pw.write_text(PASSWORD + "\n")
    os.chmod(pw, 0o600)
    runs = []
    env = dict(os.environ, PYTHONPATH=str(a.checkout))
    with Dovecot(tb, "hp+reuse") as server:
        fill_source(server, MIGRATE_USER, a.migrate_messages - 1, tb.small)
        count, octets = source_listing(server, MIGRATE_USER, tb.cert)
        print(f"migrate source: {count} messages, {octets} octets", flush=True)
        for rep in range(a.runs):
            data = work / "data"
            if data.exists():
                shutil.rmtree(data)
            data.mkdir(mode=0o700)
            cmd = ["taskset", "-c", str(CLIENT_CPU), *securepop_command(a.checkout),
                   "--data-dir", str(data), "migrate",
                   f"pop3://127.0.0.1:{server.stls_port}", "--user", MIGRATE_USER,
                   "--password-file", str(pw), "--cafile", str(tb.cert), "--json",
                   "--progress", "off"]
            before, children = cpu_seconds(server), os.times()
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            wall = time.perf_counter() - t0
            used = os.times()
            server_cpu = cpu_seconds(server) - before
            try:
                report = json.loads(out.stdout)
            except ValueError:
                raise RuntimeError(f"migrate failed ({out.returncode}): {out.stderr[-2000:]}")
            r = migrate_rates(report, wall)
            r["client_cpu_s"] = round(used.children_user + used.children_system
                                      - children.children_user - children.children_system, 3)
            r["server_cpu_s"] = round(server_cpu, 3)
            runs.append(r)
            print(f"  migrate run {rep + 1}/{a.runs}: {r}", flush=True)
    bench.results["migrate"] = {"messages": count, "size": tb.small, "octets": octets,
                                "runs": runs}
