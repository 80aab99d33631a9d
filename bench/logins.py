"""
Login lines of the benchmark: cold and warm logins against Dovecot with hashed
passwords, the polling scenario, and the A/B line against another checkout.

Run through C{bench/run.py}::

    python bench/run.py --logins          # cold/warm logins vs Dovecot {ARGON2ID}/{SHA512-CRYPT}
    python bench/run.py --polling         # N users polling every 5 min (compressed), 1 h TTL
    python bench/run.py --ab /work/main   # warm sessions: another checkout against this one
    python bench/run.py --concurrency-check   # warm ratio at 16 and 50 concurrent sessions

Any of them alone runs only those lines and writes their tables between the
C{<!-- logins: ... -->} markers of RESULTS.md (the default run's block stays).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.servers import (
    CLIENT_ADDRESS, CLIENT_CPU, PASSWORD, SERVER_CPU, Dovecot, FloorServer, SecurePOP,
    cpu_seconds, poll_users,
)

HERE = Path(__file__).resolve().parent


def verification_cost(testbed, rounds=20):
    """
    CPU ms of one argon2id verification of the testbed's hash on the server
    core: as securepop verifies it (L{securepop.schemes.verify_hash}:
    libsodium for a one-lane hash) and with argon2-cffi alone; alternated,
    medians.
    """
    h = testbed.hashes["u0000"]
    code = ("import time, statistics, argon2\n"
            "from securepop.schemes import verify_hash\n"
            "h, pw = %r, %r\n"
            "ph = argon2.PasswordHasher()\n"
            "runs = {'sp': lambda: verify_hash(h, pw), 'cffi': lambda: ph.verify(h, pw)}\n"
            "cpu, wall = {k: [] for k in runs}, {k: [] for k in runs}\n"
            "for f in runs.values(): f()\n"
            "for _ in range(%d):\n"
            "    for k, f in runs.items():\n"
            "        t, w = time.process_time(), time.perf_counter(); assert f()\n"
            "        cpu[k].append(time.process_time() - t); wall[k].append(time.perf_counter() - w)\n"
            "print(*(statistics.median(v) * 1000 for v in (cpu['sp'], wall['sp'], cpu['cffi'])))"
            % (h, PASSWORD, rounds))
    out = subprocess.run(["taskset", "-c", str(SERVER_CPU), sys.executable, "-c", code],
                         capture_output=True, text=True, check=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    cpu, wall, cffi = map(float, out.stdout.split())
    return {"cpu_ms": round(cpu, 2), "wall_ms": round(wall, 2), "cffi_cpu_ms": round(cffi, 2)}


def login_servers(bench):
    """(label, server, warm?) for the cold/warm line, all in one repetition."""
    tb, a = bench.testbed, bench.args
    sp = lambda cache, tag: SecurePOP(tb, cache=cache, checkout=a.checkout, tag=tag)  # noqa
    dc = lambda scheme, cache: Dovecot(tb, "best", cache=cache, scheme=scheme)  # noqa
    return [
        ("securepop-cold", sp(False, "securepop-cold"), False),
        ("securepop-warm", sp(True, "securepop-warm"), True),
        ("dovecot-argon2id-cold", dc("argon2id", False), False),
        ("dovecot-argon2id-warm", dc("argon2id", True), True),
        ("dovecot-sha512crypt-cold", dc("sha512-crypt", False), False),
        ("dovecot-sha512crypt-warm", dc("sha512-crypt", True), True),
        # RESULTS.md's warm baseline: {SHA1}, what Dovecot's cache verifies against.
        ("dovecot-sha1-warm", Dovecot(tb, "best", cache=True), True),
        ("floor", FloorServer(tb), False),
    ]


def logins(bench):
    from bench.run import measured, warm
    a = bench.args
    bench.results["verification"] = verification_cost(bench.testbed)
    print(f"  one argon2id verification: {bench.results['verification']}", flush=True)
    for rep in range(a.runs):
        print(f"logins run {rep + 1}/{a.runs}", flush=True)
        for label, server, is_warm in login_servers(bench):
            with server:
                if is_warm:
                    warm(server)
                scenario = "floor" if label == "floor" else "session"
                bench.record(f"{label}/login", measured(
                    server, "implicit", scenario, duration=a.duration))


def ab(bench):
    """Warm sessions: C{--ab CHECKOUT} (A) against this checkout (B), alternating."""
    from bench.run import measured, warm
    a = bench.args
    pair = [("A", a.ab), ("B", a.checkout)]
    for rep in range(a.ab_runs):
        print(f"A/B run {rep + 1}/{a.ab_runs}", flush=True)
        for side, checkout in (pair if rep % 2 == 0 else pair[::-1]):
            with SecurePOP(bench.testbed, cache=True, checkout=checkout,
                           tag=f"securepop-{side}") as server:
                warm(server)
                bench.record(f"ab-{side}/implicit", measured(
                    server, "implicit", duration=a.duration))


def concurrency_check(bench):
    """securepop warm and Dovecot hp+reuse ({SHA1}) at 50 and at 16 sessions."""
    from bench.run import measured, warm
    a, tb = bench.args, bench.testbed
    shapes = [(50, "u0000:u0049"), (16, f"u0000:u{tb.sessions - 1:04d}")]
    for rep in range(a.runs):
        print(f"concurrency run {rep + 1}/{a.runs}", flush=True)
        for server in (SecurePOP(tb, checkout=a.checkout), Dovecot(tb, "hp+reuse"),
                       Dovecot(tb, "best", cores=2)):
            label = server.name + ("-cores2" if getattr(server, "cores", None) else "")
            with server:
                warm(server, f"u0000:u{tb.sessions - 1:04d}", count=tb.sessions)
                for conc, users in shapes:
                    bench.record(f"{label}/c{conc}", measured(
                        server, "implicit", users=users, concurrency=conc,
                        duration=a.duration))


def handshake_check(bench):
    """
    TLS handshakes alone (C{openssl s_time -new}: handshake, no POP3
    command, no login) on securepop and Dovecot hp+reuse: the share of a
    session that is TLS, on each side's own OpenSSL.
    """
    import re
    for server in (SecurePOP(bench.testbed, checkout=bench.args.checkout),
                   Dovecot(bench.testbed, "hp+reuse")):
        with server:
            before = cpu_seconds(server)
            out = subprocess.run(
                ["taskset", "-c", str(CLIENT_CPU), "openssl", "s_time", "-connect",
                 f"127.0.0.1:{server.implicit_port}", "-new", "-time", "4"],
                capture_output=True, text=True, timeout=60).stdout
            used = cpu_seconds(server) - before
            found = re.search(r"(\d+) connections in ([\d.]+)s", out)
            n = int(found.group(1)) if found else 0
            bench.record(f"{server.name}/handshake", {
                "sessions": n, "errors": 0 if n else 1,
                "sessions_per_s": round(n / float(found.group(2)), 1) if n else None,
                "cpu_ms_per_session": round(used * 1000 / n, 3) if n else None})


def _window(rows, start, end):
    """Login latencies (ms) of sessions that began in [start, end)."""
    return sorted(login for t, _, login in rows if start <= t < end)


def polling(bench):
    """
    C{--users} users, each polling (login, STAT, QUIT) every 300 s on
    average (Poisson), time compressed by C{--time-scale}: the poll interval
    and the auth cache's TTL (3600 s) are divided by it, so the cache sees
    the same number of polls per TTL as in real time.  The first compressed
    TTL (every user's first login is cold) is a warm-up; the share of
    logins served from the cache, the server CPU per login and the login
    latency are taken over the rest.  Cache hits are counted by the daemon:
    successful logins (C{securepop_logins}) minus password verifications
    run on the hashing pool (C{securepop_verification_wait_seconds_count}).
    """
    from bench.loadgen import percentile
    a = bench.args
    scale = a.time_scale
    interval, ttl = 300.0 / scale, 3600.0 / scale
    rate = a.users / interval
    duration = a.polling_duration or 2.5 * ttl
    users = poll_users(a.users)
    out = {"users": a.users, "time_scale": scale, "interval_s": interval, "ttl_s": ttl,
           "rate": round(rate, 1), "duration_s": duration}
    dump = bench.testbed.root / "poll-latencies.txt"
    with SecurePOP(bench.testbed, cache=ttl, checkout=a.checkout, tag="securepop-poll",
                   metrics=True) as server:
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--bind", CLIENT_ADDRESS,
               "--cpu", str(CLIENT_CPU), "--password", PASSWORD, "--port",
               str(server.implicit_port), "--scenario", "poll", "--users",
               f"{users[0]}:{users[-1]}", "--rate", str(rate), "--poisson",
               "--duration", str(duration), "--session-timeout", "60",
               "--dump-latencies", str(dump)]
        marks = []

        def mark():
            m = server.scrape()
            marks.append({"t": time.monotonic(), "cpu": cpu_seconds(server),
                          "ok": sum(v for k, v in m.items()
                                    if k.startswith("securepop_logins_total")
                                    and 'result="success"' in k),
                          "verifications": m.get("securepop_verification_wait_seconds_count",
                                                 0.0)})
        mark()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        time.sleep(max(0.0, t0 + ttl - time.monotonic()))
        mark()
        stdout, _ = proc.communicate(timeout=duration + 300)
        mark()
        result = json.loads(stdout.strip().splitlines()[-1])
    rows = []
    for line in dump.read_text().splitlines():
        start, total, login = line.split()
        rows.append((float(start), float(total), float(login)))
    steady = _window(rows, ttl, duration)
    first = _window(rows, 0, ttl)
    for name, (m0, m1) in (("all", (marks[0], marks[2])), ("steady", (marks[1], marks[2]))):
        ok = m1["ok"] - m0["ok"]
        verified = m1["verifications"] - m0["verifications"]
        out[name] = {"logins": int(ok), "verifications": int(verified),
                     "cache_share": round(1 - verified / ok, 4) if ok else None,
                     "cpu_ms_per_login": round((m1["cpu"] - m0["cpu"]) * 1000 / ok, 3)
                     if ok else None,
                     "seconds": round(m1["t"] - m0["t"], 1)}
    out["steady"]["login_p50_ms"] = percentile(steady, 50)
    out["steady"]["login_p99_ms"] = percentile(steady, 99)
    out["steady"]["login_p999_ms"] = percentile(steady, 99.9)
    out["warmup_login_p50_ms"] = percentile(first, 50)
    out["warmup_login_p99_ms"] = percentile(first, 99)
    # Expected at steady state: a user's entry lives one TTL from its cold
    # login (a hit never extends it), then the next poll is cold again, so
    # per cycle 1 cold and ttl/interval hits.
    out["expected_cache_share"] = round((ttl / interval) / (ttl / interval + 1), 4)
    out["loadgen"] = {k: result.get(k) for k in ("sessions", "errors", "error_kinds",
                                                 "busy_skips", "sessions_per_s",
                                                 "login_p50_ms", "login_p99_ms")}
    out["floor"] = floor_at(bench, rate, min(duration, FLOOR_SECONDS),
                            f"{users[0]}:{users[-1]}")
    if a.real_time > 0:
        out["real_time"] = real_time(bench, users, a.real_time)
    bench.results["polling"] = out
    print(f"  polling: {json.dumps(out)}", flush=True)


#: How long the floor runs at the polling arrivals (its tail settles in minutes).
FLOOR_SECONDS = 300.0

#: Cold logins/s of the real-time line's warm-up: below what one core verifies
#: (~54/s), so the hashing queue never refuses one.
WARMUP_RATE = 40.0


def _percentiles(dump, column):
    from bench.loadgen import percentile
    values = sorted(float(line.split()[column]) for line in dump.read_text().splitlines())
    return percentile(values, 50), percentile(values, 99), len(values)


def real_time(bench, users, seconds):
    """
    The polling scenario at its real arrival rate: C{--users} users every
    300 s on average is C{users / 300} logins/s (33/s for 10,000), where the
    compressed line runs C{--time-scale} times as many.  The cache TTL is
    the real hour; every user logs in once first (the warm-up, at
    L{WARMUP_RATE}/s: the state one TTL of polling leaves), then Poisson
    arrivals for C{seconds}, well inside the first half-TTL: every login
    should come from the cache, and the login p99/p50 is that of the
    scenario's own rate.  The floor then runs at the same arrivals.
    """
    rate = len(users) / 300.0
    spec = f"{users[0]}:{users[-1]}"
    out = {"users": len(users), "rate": round(rate, 1), "seconds": seconds,
           "ttl_s": 3600.0}
    dump = bench.testbed.root / "poll-real-latencies.txt"
    with SecurePOP(bench.testbed, cache=3600.0, checkout=bench.args.checkout,
                   tag="securepop-poll-real", metrics=True) as server:
        base = [sys.executable, str(HERE / "loadgen.py"), "--bind", CLIENT_ADDRESS,
                "--cpu", str(CLIENT_CPU), "--password", PASSWORD, "--port",
                str(server.implicit_port), "--scenario", "poll", "--users", spec,
                "--session-timeout", "60"]
        warmup = json.loads(subprocess.run(
            base + ["--rate", str(WARMUP_RATE), "--max-sessions", str(len(users)),
                    "--duration", str(len(users) / WARMUP_RATE + 60)],
            capture_output=True, text=True, check=True,
            timeout=len(users) / WARMUP_RATE + 600).stdout.strip().splitlines()[-1])
        out["warmup"] = {"sessions": warmup.get("sessions"), "errors": warmup.get("errors")}

        def counters():
            m = server.scrape()
            return (cpu_seconds(server),
                    sum(v for k, v in m.items() if k.startswith("securepop_logins_total")
                        and 'result="success"' in k),
                    m.get("securepop_verification_wait_seconds_count", 0.0))
        cpu0, ok0, ver0 = counters()
        result = json.loads(subprocess.run(
            base + ["--rate", str(rate), "--poisson", "--duration", str(seconds),
                    "--dump-latencies", str(dump)],
            capture_output=True, text=True, check=True,
            timeout=seconds + 300).stdout.strip().splitlines()[-1])
        cpu1, ok1, ver1 = counters()
    ok, verified = ok1 - ok0, ver1 - ver0
    p50, p99, n = _percentiles(dump, 2)
    out.update({"logins": int(ok), "verifications": int(verified),
                "cache_share": round(1 - verified / ok, 4) if ok else None,
                "cpu_ms_per_login": round((cpu1 - cpu0) * 1000 / ok, 3) if ok else None,
                "login_p50_ms": p50, "login_p99_ms": p99, "samples": n,
                "errors": result.get("errors"), "error_kinds": result.get("error_kinds"),
                "busy_skips": result.get("busy_skips")})
    out["floor"] = floor_at(bench, rate, min(seconds, FLOOR_SECONDS), spec)
    print(f"  polling in real time: {json.dumps(out)}", flush=True)
    return out


def floor_at(bench, rate, duration, users):
    """
    The same open-loop Poisson arrivals against the floor server (TLS
    handshake, greeting, QUIT: no login, no mailbox): the p99/p50 this
    machine and load generator show for a session that does nothing, the
    yardstick for the polling line's login p99/p50.
    """
    dump = bench.testbed.root / "poll-floor-latencies.txt"
    with FloorServer(bench.testbed) as server:
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--bind", CLIENT_ADDRESS,
               "--cpu", str(CLIENT_CPU), "--password", PASSWORD, "--port",
               str(server.implicit_port), "--scenario", "floor", "--users", users,
               "--rate", str(rate), "--poisson", "--duration", str(duration),
               "--session-timeout", "60", "--dump-latencies", str(dump)]
        before = cpu_seconds(server)
        result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                           timeout=duration + 300).stdout.strip()
                            .splitlines()[-1])
        used = cpu_seconds(server) - before
    p50, p99, _ = _percentiles(dump, 1)     # column 1: the whole session
    return {"seconds": duration, "sessions": result.get("sessions"),
            "errors": result.get("errors"), "p50_ms": p50, "p99_ms": p99,
            "cpu_ms_per_session": round(used * 1000 / result["sessions"], 3)
            if result.get("sessions") else None}


# -- report ----------------------------------------------------------------------

def tables(results):
    from bench.run import fmt, medians, ratio
    m = medians(results)
    g = lambda key, metric: m.get(key, {}).get(metric)  # noqa: E731
    out = []
    ver = results.get("verification")
    if any(k.endswith("/login") for k in m):
        out += ["Cold and warm logins, implicit TLS, 50 concurrent sessions (connect, USER/PASS, "
                "STAT, RETR 10 KB, QUIT), 50 users; Dovecot in its best configuration "
                "(`service pop3-login { service_count = 0; process_min_avail = 1; "
                "client_limit = 1000 }`, `service pop3 { service_count = 0; process_min_avail = 1; "
                "client_limit = 1 }`; 1 = the cores the server is pinned to), auth cache 64M "
                "when warm, off when cold; the same argon2id strings (m=19456 KiB, t=2, p=1) "
                "on both sides:", "",
                "| | sessions/s | server CPU ms/session | errors | sp/this (sessions/s) | "
                "this/sp (CPU) |", "|---|---|---|---|---|---|"]
        spc, spw = "securepop-cold/login", "securepop-warm/login"
        for label, ref in (("securepop-cold", spc), ("securepop-warm", spw),
                           ("dovecot-argon2id-cold", spc), ("dovecot-argon2id-warm", spw),
                           ("dovecot-sha512crypt-cold", spc), ("dovecot-sha512crypt-warm", spw),
                           ("dovecot-sha1-warm", spw), ("floor", spw)):
            k = f"{label}/login"
            if k not in m:
                continue
            rate, cpu = g(k, "sessions_per_s"), g(k, "cpu_ms_per_session")
            same = k == ref
            out.append(f"| {label} | {fmt(rate)} | {fmt(cpu, 2)} | {m[k]['errors']} | "
                       f"{'–' if same else ratio(g(ref, 'sessions_per_s'), rate)} | "
                       f"{'–' if same else ratio(cpu, g(ref, 'cpu_ms_per_session'))} |")
        r = lambda k, metric: g(f"{k}/login", metric)  # noqa: E731
        out += ["", "Targets (issue 23), this run:", ""]
        out.append(f"- cold logins/s >= 1.0x Dovecot {{ARGON2ID}} cold: "
                   f"{ratio(r('securepop-cold', 'sessions_per_s'), r('dovecot-argon2id-cold', 'sessions_per_s'))}")
        for dc in ("dovecot-argon2id-warm", "dovecot-sha512crypt-warm", "dovecot-sha1-warm"):
            out.append(f"- warm sessions/s >= 1.3x Dovecot with reuse, against {dc}: "
                       f"{ratio(r('securepop-warm', 'sessions_per_s'), r(dc, 'sessions_per_s'))}"
                       f" (CPU per session {ratio(r(dc, 'cpu_ms_per_session'), r('securepop-warm', 'cpu_ms_per_session'))} less)")
        out.append(f"- warm CPU/session <= 2.5x the floor's: "
                   f"{ratio(r('securepop-warm', 'cpu_ms_per_session'), r('floor', 'cpu_ms_per_session'))}")
        if ver:
            lib = (f"; argon2-cffi alone: {ver['cffi_cpu_ms']:.2f} ms CPU"
                   if "cffi_cpu_ms" in ver else " (argon2-cffi)")
            out += ["", f"One argon2id verification on the server core, as securepop "
                    f"verifies it (securepop.schemes.verify_hash, in process, median): "
                    f"{ver['cpu_ms']:.2f} ms CPU ({ver['wall_ms']:.2f} ms wall){lib}."]
            cold, warmcpu = g(spc, "cpu_ms_per_session"), g(spw, "cpu_ms_per_session")
            if cold and warmcpu:
                bound = ver["cpu_ms"] + warmcpu
                out.append(f"- CPU per cold login within 1.2x of one verification plus a warm "
                           f"session: {cold / bound:.2f}x")
                out.append(f"  (securepop cold login CPU {cold:.2f} ms against one verification "
                           f"plus a warm session {bound:.2f} ms.)")
        out.append("")
    if any(k.startswith("ab-") for k in m):
        a, b = m.get("ab-A/implicit", {}), m.get("ab-B/implicit", {})
        runs = results["runs"]
        each = lambda side, metric: ", ".join(  # noqa: E731
            fmt(r.get(metric), 2 if "cpu" in metric else 1)
            for r in runs.get(f"ab-{side}/implicit", []))
        out += ["A/B, warm sessions, implicit TLS, 50 concurrent (A: "
                f"`{results['meta'].get('ab_checkout')}`, B: this branch), alternating "
                "A B / B A, one server start per point:", "",
                "| | sessions/s (median) | each point | CPU ms/session (median) | each point | "
                "errors |", "|---|---|---|---|---|---|",
                f"| A (before) | {fmt(a.get('sessions_per_s'))} | {each('A', 'sessions_per_s')} | "
                f"{fmt(a.get('cpu_ms_per_session'), 2)} | {each('A', 'cpu_ms_per_session')} | "
                f"{a.get('errors')} |",
                f"| B (after) | {fmt(b.get('sessions_per_s'))} | {each('B', 'sessions_per_s')} | "
                f"{fmt(b.get('cpu_ms_per_session'), 2)} | {each('B', 'cpu_ms_per_session')} | "
                f"{b.get('errors')} |",
                f"| B/A | {ratio(b.get('sessions_per_s'), a.get('sessions_per_s'))} | | "
                f"{ratio(b.get('cpu_ms_per_session'), a.get('cpu_ms_per_session'))} | | |", ""]
    conc = [k for k in m if k.endswith("/c16") or k.endswith("/c50")]
    if conc:
        out += ["Warm sessions at 50 concurrent (50 users) and 16 concurrent "
                "(all testbed users), implicit TLS:", "",
                "| | sessions/s c50 | CPU ms c50 | sessions/s c16 | CPU ms c16 |",
                "|---|---|---|---|---|"]
        names = sorted({k.rsplit("/", 1)[0] for k in conc})
        for n in names:
            out.append(f"| {n} | {fmt(g(n + '/c50', 'sessions_per_s'))} | "
                       f"{fmt(g(n + '/c50', 'cpu_ms_per_session'), 2)} | "
                       f"{fmt(g(n + '/c16', 'sessions_per_s'))} | "
                       f"{fmt(g(n + '/c16', 'cpu_ms_per_session'), 2)} |")
        sp = "securepop"
        for n in names:
            if n != sp:
                out.append(f"| securepop / {n} | "
                           f"{ratio(g(sp + '/c50', 'sessions_per_s'), g(n + '/c50', 'sessions_per_s'))} | "
                           f"{ratio(g(n + '/c50', 'cpu_ms_per_session'), g(sp + '/c50', 'cpu_ms_per_session'))} | "
                           f"{ratio(g(sp + '/c16', 'sessions_per_s'), g(n + '/c16', 'sessions_per_s'))} | "
                           f"{ratio(g(n + '/c16', 'cpu_ms_per_session'), g(sp + '/c16', 'cpu_ms_per_session'))} |")
        out.append("")
    hs = [k for k in m if k.endswith("/handshake")]
    if hs:
        out += ["TLS handshake alone (`openssl s_time -new`, 4 s, no POP3 command):", "",
                "| | handshakes/s | server CPU ms/handshake |", "|---|---|---|"]
        for k in sorted(hs):
            out.append(f"| {k.rsplit('/', 1)[0]} | {fmt(g(k, 'sessions_per_s'))} | "
                       f"{fmt(g(k, 'cpu_ms_per_session'), 3)} |")
        out.append("")
    p = results.get("polling")
    if p:
        s, al = p["steady"], p["all"]
        lg = p["loadgen"]
        out += [f"Polling: {p['users']} users, each polling (login, STAT, QUIT) every 300 s "
                f"on average (Poisson), time compressed {p['time_scale']:g}x: every "
                f"{p['interval_s']:g} s, auth cache TTL {p['ttl_s']:g} s (1 h / "
                f"{p['time_scale']:g}), {p['rate']} logins/s open loop, "
                f"{p['duration_s']:g} s; steady state = after the first TTL:", "",
                "| | logins | argon2 verifications | from the cache | expected | server CPU "
                "ms/login | login p50 ms | login p99 ms | p99/p50 |",
                "|---|---|---|---|---|---|---|---|---|",
                f"| steady state ({s['seconds']:g} s) | {s['logins']} | {s['verifications']} | "
                f"{s['cache_share']:.1%} | {p['expected_cache_share']:.1%} | "
                f"{fmt(s['cpu_ms_per_login'], 2)} | {fmt(s['login_p50_ms'])} | "
                f"{fmt(s['login_p99_ms'])} | {ratio(s['login_p99_ms'], s['login_p50_ms'])} |",
                f"| whole run, first TTL included | {al['logins']} | {al['verifications']} | "
                f"{al['cache_share']:.1%} | – | {fmt(al['cpu_ms_per_login'], 2)} | "
                f"{fmt(p['warmup_login_p50_ms'])} (first TTL) | "
                f"{fmt(p['warmup_login_p99_ms'])} (first TTL) | – |", "",
                f"Load generator: {lg['sessions']} sessions, {lg['errors']} errors, "
                f"{lg['busy_skips']} polls skipped because the user was still in its previous "
                "session.", ""]
        fl = p.get("floor")
        if fl:
            out += [_floor_line(fl, p["rate"], fmt, ratio), ""]
        rt = p.get("real_time")
        if rt:
            out += [f"The same {rt['users']} users at the scenario's real arrival rate "
                    f"(every 300 s on average: {rt['rate']} logins/s, Poisson, "
                    f"{rt['seconds']:g} s; auth cache TTL 1 h, uncompressed), after each "
                    f"logged in once ({rt['warmup']['sessions']} warm-up logins at "
                    f"{WARMUP_RATE:g}/s, {rt['warmup']['errors']} errors):", "",
                    "| | logins | argon2 verifications | from the cache | server CPU ms/login "
                    "| login p50 ms | login p99 ms | p99/p50 | errors |",
                    "|---|---|---|---|---|---|---|---|---|",
                    f"| real time | {rt['logins']} | {rt['verifications']} | "
                    f"{rt['cache_share']:.1%} | {fmt(rt['cpu_ms_per_login'], 2)} | "
                    f"{fmt(rt['login_p50_ms'])} | {fmt(rt['login_p99_ms'])} | "
                    f"{ratio(rt['login_p99_ms'], rt['login_p50_ms'])} | {rt['errors']} |", ""]
            if rt.get("floor"):
                out += [_floor_line(rt["floor"], rt["rate"], fmt, ratio), ""]
    return "\n".join(out)


def _floor_line(fl, rate, fmt, ratio):
    return (f"The floor at the same arrivals ({rate} sessions/s, Poisson, "
            f"{fl['seconds']:g} s; TLS handshake, greeting and QUIT, no login: what "
            "this machine and load generator give a session that does nothing): "
            f"p50 {fmt(fl['p50_ms'])} ms, p99 {fmt(fl['p99_ms'])} ms, p99/p50 "
            f"{ratio(fl['p99_ms'], fl['p50_ms'])}; server CPU "
            f"{fmt(fl['cpu_ms_per_session'], 2)} ms/session; {fl['sessions']} "
            f"sessions, {fl['errors']} errors.")


START = "<!-- logins: written by bench/run.py --logins/--polling/--ab -->\n"
END = "<!-- /logins -->\n"


def write_report(results, path):
    meta = results["meta"]
    block = (START + f"Run {meta.get('date')}: `bench/run.py {' '.join(meta.get('args', []))}` "
             f"took {meta.get('seconds')} s; load average "
             f"{' '.join(meta.get('loadavg_start', []))} at the start, "
             f"{' '.join(meta.get('loadavg_end', []))} at the end (2 cores; other "
             "sessions' work included). Medians of the repetitions.\n\n"
             + tables(results) + END)
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        new = old[:old.index(START)] + block + old[old.index(END) + len(END):]
    else:
        marker = "<!-- /measured -->\n"
        at = old.index(marker) + len(marker) if marker in old else len(old)
        new = old[:at] + "\n" + block + old[at:]
    path.write_text(new)
