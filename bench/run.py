"""
Side-by-side benchmark: securepop against Dovecot (three modes) and a floor.

One command (as root; Dovecot from Debian's dovecot-core + dovecot-pop3d)::

    /work/venv/bin/python bench/run.py            # full run, under ~10 minutes
    /work/venv/bin/python bench/run.py --quick    # about 2 minutes, rougher
    /work/venv/bin/python bench/run.py --profile  # also py-spy securepop under load
    /work/venv/bin/python bench/run.py --lmtp --migrate   # mail in (bench/mailin.py)

It builds a testbed in C{--work} (one ECDSA P-256 certificate, the same
argon2id hashes and Maildirs for every server), then, C{--runs} times,
interleaving the servers so that load from other processes hits all alike:

  - sessions/s at 50 concurrent sessions over implicit TLS and over STLS
    (connect, USER/PASS, STAT, RETR of a 10 KB message, QUIT), with server
    CPU per session from /proc/PID/stat (all of Dovecot's processes, reaped
    children included), auth caches warm (every user logged in once first);
  - the same with auth caches off (cold: argon2id dominates on both sides);
  - RETR MB/s on 10 MB messages with 4 concurrent sessions;

then p50/p99 session latency at half of securepop's median maximum rate,
and PSS per logged-in idle TLS session (/proc/PID/smaps_rollup, server
total after minus before, divided by the sessions).  Servers run on CPU 0,
the load generator (L{bench.loadgen}) on CPU 1.  Results: C{bench/results.json},
C{bench/RESULTS.md} (the measured tables; the prose around them is kept
between its markers) and C{bench/results.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.servers import (  # noqa: E402
    CLIENT_ADDRESS, CLIENT_CPU, PASSWORD, SERVER_CPU, Dovecot, FloorServer, SecurePOP, Testbed,
    cpu_seconds, pss_bytes,
)
from bench.stalls import cpuTimes, stealPercent  # noqa: E402

SESSION_USERS = "u0000:u0049"
RETR_USERS = "r0:r3"


def loadgen(server, *args, timeout=300):
    """Run one bounded load-generator process; return its JSON result."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--bind", CLIENT_ADDRESS,
           "--cpu", str(CLIENT_CPU), "--password", PASSWORD, *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def port(server, tls):
    return server.implicit_port if tls == "implicit" else server.stls_port


def measured(server, tls, scenario="session", users=SESSION_USERS, concurrency=50,
             duration=5.0, **extra):
    """A load run with the server's CPU seconds per session."""
    args = ["--port", port(server, tls), "--tls", tls, "--scenario", scenario,
            "--users", users, "--concurrency", concurrency, "--duration", duration]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    before = cpu_seconds(server)
    result = loadgen(server, *args)
    used = cpu_seconds(server) - before
    result["server_cpu_s"] = round(used, 3)
    result["cpu_ms_per_session"] = (round(used * 1000 / result["sessions"], 3)
                                    if result["sessions"] else None)
    result["client_cpu_ms_per_session"] = (
        round(result["client_cpu_s"] * 1000 / result["sessions"], 3)
        if result["sessions"] else None)
    return result


def warm(server, users=SESSION_USERS, count=50):
    """Log every user in once: both auth caches then hold them."""
    if server.name == "floor":
        return
    r = loadgen(server, "--port", server.implicit_port, "--users", users,
                "--concurrency", count, "--max-sessions", count, "--duration", 120)
    if r["errors"]:
        raise RuntimeError(f"warm-up failed on {server.name}: {r['error_kinds']}")


def idle_pss(server, count, timeout=600):
    """PSS per logged-in idle TLS session (bytes), and the login errors."""
    before = pss_bytes(server)
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--bind", CLIENT_ADDRESS,
           "--cpu", str(CLIENT_CPU), "--password", PASSWORD, "--port",
           str(server.implicit_port), "--scenario", "idle", "--users",
           f"i00000:i{count - 1:05d}", "--idle", str(count), "--concurrency", "100",
           "--hold", "300", "--session-timeout", "120"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline().split()
        held = int(ready[1]) if ready and ready[0] == "READY" else 0
        time.sleep(1.0)
        after = pss_bytes(server)
        proc.stdin.close()
        result = json.loads(proc.stdout.read().strip().splitlines()[-1])
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"sessions": held, "pss_before": before, "pss_after": after,
            "pss_per_session": (after - before) / held if held else None,
            "login_seconds": float(ready[2]) if len(ready) > 2 else None,
            "errors": result["errors"], "error_kinds": result["error_kinds"]}


def stall_probe(cpu, duration):
    """Start L{bench.stalls} on C{cpu} for C{duration} seconds."""
    return subprocess.Popen([sys.executable, str(HERE / "stalls.py"), "--cpu", str(cpu),
                             "--duration", str(duration)], stdout=subprocess.PIPE, text=True)


def finish_probe(proc):
    out, _ = proc.communicate(timeout=60)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.results = {"runs": {}, "latency": {}, "idle": {}, "meta": {}}
        self.testbed = Testbed(args.work, sessions=args.session_users, retr=4, idle=args.idle,
                               poll=args.users if args.polling else 0).build()

    def servers(self, cache=True):
        tb = self.testbed
        found = [SecurePOP(tb, cache=cache, checkout=self.args.checkout)]
        found += [Dovecot(tb, mode, cache=cache) for mode in self.args.dovecot_modes]
        return found

    def record(self, key, result):
        self.results["runs"].setdefault(key, []).append(result)
        line = {k: result.get(k) for k in ("sessions_per_s", "mb_per_s", "cpu_ms_per_session",
                                           "p50_ms", "p90_ms", "p99_ms", "errors")}
        print(f"  {key}: {line}", flush=True)

    def throughput(self):
        d = self.args.duration
        for rep in range(self.args.runs):
            print(f"run {rep + 1}/{self.args.runs}", flush=True)
            for server in self.servers() + [FloorServer(self.testbed)]:
                with server:
                    warm(server)
                    scenario = "floor" if server.name == "floor" else "session"
                    for tls in ("implicit", "stls"):
                        self.record(f"{server.name}/{tls}",
                                    measured(server, tls, scenario, duration=d))
                    if server.name in ("securepop",) or server.name.startswith("dovecot-hp"):
                        self.record(f"{server.name}/retr", measured(
                            server, "implicit", "retr", RETR_USERS, 4, d))
            for server in self.servers(cache=False):
                if server.name not in ("securepop", "dovecot-hp+reuse"):
                    continue
                with server:
                    self.record(f"{server.name}/cold", measured(
                        server, "implicit", duration=self.args.cold_duration))

    def directory(self):
        """
        Users in slapd: securepop's [auth.ldap] and Dovecot's ldap passdb
        (auth_bind) against one slapd, auth caches warm and off.
        """
        from bench.directory import BenchDirectory
        from bench.servers import session_users

        d = self.args.duration
        with BenchDirectory(self.testbed.root / "slapd", session_users(50)) as ldap:
            for rep in range(self.args.runs):
                print(f"slapd run {rep + 1}/{self.args.runs}", flush=True)
                for cache in (True, False):
                    for server in (SecurePOP(self.testbed, cache=cache, directory=ldap,
                                             checkout=self.args.checkout,
                                             tag="securepop-ldap"),
                                   Dovecot(self.testbed, "hp+reuse", cache=cache,
                                           directory=ldap)):
                        with server:
                            if cache:
                                warm(server)
                            key = f"{server.name}/ldap-{'warm' if cache else 'cold'}"
                            self.record(key, measured(server, "implicit", duration=d))

    def latency(self):
        """
        p50/p99 at half of securepop's median maximum rate.  securepop, Dovecot
        hp+reuse and the floor run at once and take turns run by run (so a noisy
        minute of this VM hits all), each after one discarded warm-up run, each
        run next to a stall probe on each core (L{bench.stalls}).
        """
        import contextlib

        rate = median(r["sessions_per_s"] for r in self.results["runs"]["securepop/implicit"])
        half = round(rate / 2, 1)
        self.results["latency"]["rate"] = half
        chosen = [s for s in self.servers() if s.name in ("securepop", "dovecot-hp+reuse")]
        chosen.append(FloorServer(self.testbed))  # the same load on Python + TLS alone
        with contextlib.ExitStack() as stack:
            for server in chosen:
                stack.enter_context(server)
                warm(server)
            for server in chosen:
                # One discarded run at the same arrivals: the first seconds after
                # a start were the slowest for every server (allocator, caches).
                measured(server, "implicit", "floor" if server.name == "floor" else "session",
                         rate=half, duration=min(3.0, self.args.latency_duration))
            for rep in range(self.args.runs):
                for server in (chosen if rep % 2 == 0 else chosen[::-1]):
                    probes = [stall_probe(cpu, self.args.latency_duration + 0.5)
                              for cpu in (SERVER_CPU, CLIENT_CPU)]
                    scenario = "floor" if server.name == "floor" else "session"
                    before = cpuTimes()
                    r = measured(server, "implicit", scenario, rate=half,
                                 duration=self.args.latency_duration)
                    r["steal_pct"] = stealPercent(before, cpuTimes(), SERVER_CPU)
                    r["stalls"] = [finish_probe(p) for p in probes]
                    self.record(f"{server.name}/latency", r)

    def idle(self):
        for server in self.servers():
            if server.name not in ("securepop", "dovecot-hp"):
                continue
            count = self.args.idle if server.name == "securepop" else self.args.idle_dovecot
            with server:
                warm(server)
                r = idle_pss(server, count)
            self.results["idle"][server.name] = r
            print(f"  {server.name}/idle: {r}", flush=True)

    def meta(self):
        def cmd(*c):
            try:
                return subprocess.run(c, capture_output=True, text=True, timeout=30).stdout.strip()
            except OSError:
                return ""
        import OpenSSL
        import twisted
        from OpenSSL import SSL

        cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
               .splitlines() if line.startswith("model name")]
        self.results["meta"] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cpu": f"{len(cpu)} x {cpu[0] if cpu else '?'}",
            "kernel": platform.release(), "python": platform.python_version(),
            "twisted": twisted.__version__, "pyopenssl": OpenSSL.__version__,
            # Three OpenSSL builds take part: cryptography's wheel carries its
            # own (securepop, the floor), Dovecot links the system's, and the
            # load generator uses Python's ssl module.
            "openssl": cmd("openssl", "version"),
            "openssl_pyopenssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
            "openssl_loadgen": ssl.OPENSSL_VERSION,
            "dovecot": cmd("dovecot", "--version"),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
            "args": sys.argv[1:],
        }

    def logins_only(self):
        """C{--logins}, C{--polling}, C{--ab}, C{--concurrency-check}: those lines only."""
        from bench import logins
        t0 = time.monotonic()
        self.meta()
        self.results["meta"]["ab_checkout"] = self.args.ab
        if self.args.ab:
            logins.ab(self)
        if self.args.logins:
            logins.logins(self)
        if self.args.concurrency_check:
            logins.concurrency_check(self)
            logins.handshake_check(self)
        if self.args.polling:
            logins.polling(self)
        self.results["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.results["meta"]["seconds"] = round(time.monotonic() - t0)
        return self.results

    def mailin_only(self):
        """C{--lmtp}, C{--migrate}: those lines only (L{bench.mailin})."""
        from bench import mailin
        t0 = time.monotonic()
        self.meta()
        if self.args.lmtp:
            mailin.lmtp(self)
        if self.args.migrate:
            mailin.migrate(self)
        self.results["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.results["meta"]["seconds"] = round(time.monotonic() - t0)
        return self.results

    def run(self):
        t0 = time.monotonic()
        self.meta()
        self.throughput()
        if not self.args.skip_ldap:
            self.directory()
        self.latency()
        self.idle()
        self.results["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.results["meta"]["seconds"] = round(time.monotonic() - t0)
        if self.args.profile:
            self.results["profile"] = profile(self.testbed, self.args)
        return self.results


def profile(testbed, args):
    """
    py-spy record securepop during an implicit-TLS session run.

    Two views: every sample (threads in fsync or argon2 included), and the
    reactor thread alone (what limits a single-process server; pyOpenSSL's
    C calls release the GIL, so C{--gil} would hide the TLS work).
    """
    out = HERE / "profile-securepop.txt"
    with SecurePOP(testbed, checkout=args.checkout, tag="securepop-profile") as server:
        warm(server)
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
             str(server.proc.pid), "--duration", "12", "--rate", "200", "--format", "raw",
             "--output", str(HERE / "profile-securepop.folded"), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        measured(server, "implicit", duration=10)
        spy.wait(60)
    text = top_functions(HERE / "profile-securepop.folded")
    text += "\n\nReactor thread only\n" + top_functions(
        HERE / "profile-securepop.folded", only="ReactorBase.run")
    out.write_text(text)
    return str(out)


def top_functions(folded, limit=40, only=None):
    """Inclusive and self sample shares per function from py-spy's raw output."""
    total = 0
    inclusive, own = {}, {}
    for line in Path(folded).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or (only and only not in stack):
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"py-spy samples: {total}", "", "self %  function"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    lines += ["", "incl %  function"]
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    return "\n".join(lines) + "\n"


# -- report ----------------------------------------------------------------------

def medians(results):
    """{key: {metric: median}} over the repeated runs."""
    table = {}
    for key, runs in results["runs"].items():
        table[key] = {m: median(r.get(m) for r in runs)
                      for m in ("sessions_per_s", "cpu_ms_per_session", "mb_per_s",
                                "p50_ms", "p99_ms", "client_cpu_ms_per_session")}
        table[key]["errors"] = sum(r["errors"] for r in runs)
        table[key]["n"] = len(runs)
    return table


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def busy(runs):
    """The server core's busy share over latency runs (median), from CPU and rate."""
    shares = [r["cpu_ms_per_session"] * r["sessions_per_s"] / 1000 for r in runs
              if r.get("cpu_ms_per_session") and r.get("sessions_per_s")]
    return f"{median(shares):.0%}" if shares else "–"


def fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def tables(results):
    m = medians(results)
    g = lambda key, metric: m.get(key, {}).get(metric)  # noqa: E731
    modes = ["dovecot-default", "dovecot-hp", "dovecot-hp+reuse"]
    out = []
    head = "| | securepop | " + " | ".join(modes) + " | floor | sp/dc-hp | sp/dc-reuse | sp/floor |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]

    def row(label, metric, suffix, digits=1, floor=True, lower_better=False):
        vals = [g(f"securepop/{suffix}", metric)] + [g(f"{d}/{suffix}", metric) for d in modes]
        fl = g(f"floor/{suffix}", metric) if floor else None
        sp = vals[0]
        inv = (lambda a, b: ratio(b, a)) if lower_better else ratio
        cells = [fmt(v, digits) for v in vals] + [fmt(fl, digits)]
        cells += [inv(sp, vals[2]), inv(sp, vals[3]), inv(sp, fl) if floor else "–"]
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    row("sessions/s, implicit TLS (warm)", "sessions_per_s", "implicit")
    row("sessions/s, STLS (warm)", "sessions_per_s", "stls")
    row("server CPU ms/session, implicit TLS", "cpu_ms_per_session", "implicit", 2,
        lower_better=True)
    row("server CPU ms/session, STLS", "cpu_ms_per_session", "stls", 2, lower_better=True)
    row("load generator CPU ms/session, implicit TLS", "client_cpu_ms_per_session",
        "implicit", 2, lower_better=True)
    row("sessions/s, implicit TLS, cache cold", "sessions_per_s", "cold", floor=False)
    row("server CPU ms/session, cache cold", "cpu_ms_per_session", "cold", 2, floor=False,
        lower_better=True)
    row("RETR MB/s, 10 MB, 4 sessions", "mb_per_s", "retr", floor=False)
    row("sessions/s, users in slapd, caches warm", "sessions_per_s", "ldap-warm", floor=False)
    row("sessions/s, users in slapd, caches off", "sessions_per_s", "ldap-cold", floor=False)
    lat = results.get("latency", {})
    out += ["", f"Latency at {lat.get('rate')} sessions/s (half of securepop's median "
            "implicit-TLS maximum), implicit TLS, open-loop arrivals; the servers up together, "
            "taking turns run by run after one discarded warm-up run each; a stall probe (bench/stalls.py) on each core:", "",
            "| | p50 ms | p99 ms | p99/p50, median of runs | p99/p50 of each run | "
            "server CPU ms/session here (at full load) | server core busy | probe stalls > 2 ms "
            "(server core / client core), each run | host steal on the server core, each run | "
            "errors |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("securepop", "dovecot-hp+reuse", "floor"):
        runs = results.get("runs", {}).get(f"{name}/latency", [])
        if not runs:
            continue
        p50, p99 = g(f"{name}/latency", "p50_ms"), g(f"{name}/latency", "p99_ms")
        each = ", ".join(ratio(r.get("p99_ms"), r.get("p50_ms")) for r in runs) or "–"
        stalls = ", ".join(
            " / ".join(str(p.get("stalls_over_2ms", "?")) if p else "?"
                       for p in r.get("stalls", [])) or "–" for r in runs) or "–"
        steal = ", ".join("–" if r.get("steal_pct") is None else f"{r['steal_pct']:.1f}%"
                          for r in runs)
        ratios = [r["p99_ms"] / r["p50_ms"] for r in runs if r.get("p99_ms") and r.get("p50_ms")]
        label = "floor (greeting and QUIT only)" if name == "floor" else name
        cpu, full = g(f"{name}/latency", "cpu_ms_per_session"), g(f"{name}/implicit",
                                                                  "cpu_ms_per_session")
        out.append(f"| {label} | {fmt(p50)} | {fmt(p99)} | "
                   f"{f'{median(ratios):.2f}x' if ratios else '–'} | {each} | "
                   f"{fmt(cpu, 2)} ({fmt(full, 2)}) | {busy(runs)} | {stalls} | {steal} | "
                   f"{m.get(f'{name}/latency', {}).get('errors', '–')} |")
    out += ["", "Memory per logged-in idle TLS session (PSS, all server processes):", "",
            "| | sessions held | PSS before | PSS after | per session | login errors |",
            "|---|---|---|---|---|---|"]
    for name, r in results.get("idle", {}).items():
        per = r["pss_per_session"]
        out.append(f"| {name} | {r['sessions']} | {r['pss_before'] / 2**20:.1f} MiB | "
                   f"{r['pss_after'] / 2**20:.1f} MiB | "
                   f"{'–' if per is None else f'{per / 1024:.1f} KiB'} | {r['errors']} |")
    errors = sum(v["errors"] for v in m.values())
    out += ["", f"Errors over all runs: {errors} "
            f"(sessions with a non-+OK reply, a short RETR or a timeout)."]
    return "\n".join(out) + "\n", m


def write_report(results, path):
    text, _ = tables(results)
    meta = results["meta"]
    measured_block = (
        "<!-- measured: written by bench/run.py -->\n"
        f"Run {meta.get('date')}: {meta.get('cpu')}, Linux {meta.get('kernel')}, "
        f"Python {meta.get('python')}, Twisted {meta.get('twisted')}, pyOpenSSL "
        f"{meta.get('pyopenssl')} on {meta.get('openssl_pyopenssl', '?')} (securepop, floor), "
        f"Dovecot {meta.get('dovecot')} on the system's {meta.get('openssl')}, load generator "
        f"on Python's ssl with {meta.get('openssl_loadgen', '?')}; "
        f"`bench/run.py {' '.join(meta.get('args', []))}` took {meta.get('seconds')} s; "
        f"load average {' '.join(meta.get('loadavg_start', []))} at the start, "
        f"{' '.join(meta.get('loadavg_end', []))} at the end. Medians of "
        f"{max((v['n'] for v in medians(results).values()), default=0)} runs.\n\n"
        + text + "<!-- /measured -->\n")
    old = path.read_text() if path.exists() else ""
    start, end = "<!-- measured: written by bench/run.py -->\n", "<!-- /measured -->\n"
    if start in old and end in old:
        new = old[:old.index(start)] + measured_block + old[old.index(end) + len(end):]
    else:
        new = "# securepop benchmark results\n\n" + measured_block + old
    path.write_text(new)


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = medians(results)
    names = ["securepop", "dovecot-default", "dovecot-hp", "dovecot-hp+reuse", "floor"]
    panels = [("sessions/s, implicit TLS", "implicit", "sessions_per_s"),
              ("sessions/s, STLS", "stls", "sessions_per_s"),
              ("server CPU ms / TLS session", "implicit", "cpu_ms_per_session"),
              ("RETR MB/s (10 MB, 4 sessions)", "retr", "mb_per_s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    for ax, (title, suffix, metric) in zip(axes, panels):
        shown = [(n, m.get(f"{n}/{suffix}", {}).get(metric)) for n in names]
        shown = [(n, v) for n, v in shown if v is not None]
        ax.bar([n.replace("dovecot-", "dc-") for n, _ in shown], [v for _, v in shown],
               color=["tab:green" if n == "securepop" else "tab:gray" if n == "floor"
                      else "tab:blue" for n, _ in shown])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("securepop vs Dovecot 2.3 (server on 1 core, medians)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--quick", action="store_true", help="about 2 minutes, rougher")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "securepop-bench"))
    p.add_argument("--checkout", default=str(HERE.parent), help="securepop source to run")
    p.add_argument("--idle", type=int, default=None, help="idle TLS sessions (securepop)")
    p.add_argument("--profile", action="store_true", help="py-spy securepop under load")
    p.add_argument("--skip-ldap", action="store_true", help="no 'users in slapd' line")
    p.add_argument("--results", default=str(HERE / "results.json"))
    p.add_argument("--report", default=str(HERE / "RESULTS.md"))
    p.add_argument("--chart", default=str(HERE / "results.png"))
    p.add_argument("--logins", action="store_true",
                   help="only: cold/warm logins vs Dovecot {ARGON2ID} and {SHA512-CRYPT}")
    p.add_argument("--polling", action="store_true",
                   help="only: N users polling every 5 min (compressed), 1 h auth cache")
    p.add_argument("--users", type=int, default=10000, help="--polling: users")
    p.add_argument("--time-scale", type=float, default=60.0,
                   help="--polling: time compression (interval and TTL divided by it)")
    p.add_argument("--polling-duration", type=float, default=0.0,
                   help="--polling: seconds (default 2.5 compressed TTLs)")
    p.add_argument("--real-time", type=float, default=600.0,
                   help="--polling: seconds of the same users at the real arrival rate "
                   "(every 5 min, 1 h TTL, uncompressed) after a warm-up; 0: skip")
    p.add_argument("--ab", default="", help="only: warm sessions of this checkout (A) "
                   "against --checkout (B), e.g. /work/main")
    p.add_argument("--ab-runs", type=int, default=6)
    p.add_argument("--concurrency-check", action="store_true",
                   help="only: securepop and Dovecot reuse, warm, at 50 and 16 sessions")
    p.add_argument("--session-users", type=int, default=50,
                   help="users with a 10 KB message (the --concurrency-check uses them all)")
    p.add_argument("--lmtp", action="store_true",
                   help="only: LMTP deliveries/s of 10 KB messages vs Dovecot LMTP")
    p.add_argument("--lmtp-clients", type=int, default=8,
                   help="--lmtp: concurrent LMTP clients (one user each)")
    p.add_argument("--lmtp-messages", type=int, default=None,
                   help="--lmtp: messages per client and run (default 100, --quick 25)")
    p.add_argument("--migrate", action="store_true",
                   help="only: securepop migrate from Dovecot (STLS), messages/s and MB/s")
    p.add_argument("--migrate-messages", type=int, default=None,
                   help="--migrate: messages of 10 KB on the source (default 2000, "
                        "--quick 500)")
    args = p.parse_args(argv)
    args.only_mailin = bool(args.lmtp or args.migrate)
    if args.lmtp_messages is None:
        args.lmtp_messages = 25 if args.quick else 100
    if args.migrate_messages is None:
        args.migrate_messages = 500 if args.quick else 2000
    if not 1 <= args.lmtp_clients <= args.session_users:
        p.error("--lmtp-clients must be 1 to --session-users")
    if args.only_mailin and args.results == str(HERE / "results.json"):
        args.results = str(HERE / "results-mailin.json")
    args.only_logins = bool(args.logins or args.polling or args.ab or args.concurrency_check)
    if args.only_logins and args.results == str(HERE / "results.json"):
        args.results = str(HERE / "results-logins.json")
    if args.quick:
        args.duration, args.cold_duration, args.latency_duration = 1.5, 2.0, 3.0
        args.idle = args.idle or 1000
        args.idle_dovecot = 200
        args.dovecot_modes = ["dovecot-hp", "dovecot-hp+reuse"]
    else:
        args.duration, args.cold_duration, args.latency_duration = 5.0, 5.0, 8.0
        args.idle = args.idle or 5000
        args.idle_dovecot = 1000
        args.dovecot_modes = ["dovecot-default", "dovecot-hp", "dovecot-hp+reuse"]
    args.dovecot_modes = [m.removeprefix("dovecot-") for m in args.dovecot_modes]
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: Dovecot drops privileges to its own users")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # servers inherit it
    if args.only_mailin:
        from bench import mailin
        results = Bench(args).mailin_only()
        Path(args.results).write_text(json.dumps(results, indent=1))
        print(mailin.tables(results))
        return
    if args.only_logins:
        from bench import logins
        results = Bench(args).logins_only()
        Path(args.results).write_text(json.dumps(results, indent=1))
        logins.write_report(results, Path(args.report))
        print(logins.tables(results))
        return
    results = Bench(args).run()
    Path(args.results).write_text(json.dumps(results, indent=1))
    write_report(results, Path(args.report))
    try:
        chart(results, Path(args.chart))
    except ImportError:
        print("no matplotlib: chart not drawn", file=sys.stderr)
    print(tables(results)[0])


if __name__ == "__main__":
    main()
