"""
The benchmark's stall instruments (L{bench.stalls}): the host's steal
share of one core, read from C{/proc/stat}.
"""

from bench import run, stalls

HEADER = "cpu  100 0 50 800 0 0 0 10 0 0\n"


def _stat(tmp_path, name, cpu0, cpu1):
    """A /proc/stat with two cores: (user, system, idle, steal) each."""
    def line(n, t):
        user, system, idle, steal = t
        return f"cpu{n} {user} 0 {system} {idle} 0 0 0 {steal} 0 0\n"
    path = tmp_path / name
    path.write_text(HEADER + line(0, cpu0) + line(1, cpu1) + "intr 1 2 3\n")
    return str(path)


def test_steal_percent_of_one_core(tmp_path):
    before = stalls.cpuTimes(_stat(tmp_path, "a", (100, 50, 800, 10), (10, 10, 10, 0)))
    after = stalls.cpuTimes(_stat(tmp_path, "b", (160, 70, 820, 60), (20, 20, 20, 0)))
    # cpu0: 150 jiffies passed, 50 of them stolen by the host
    assert stalls.stealPercent(before, after, 0) == 33.3
    assert stalls.stealPercent(before, after, 1) == 0.0
    # a core that is not there, or no time passed: no figure, not a zero
    assert stalls.stealPercent(before, after, 5) is None
    assert stalls.stealPercent(before, before, 0) is None


def test_cpu_times_without_proc(tmp_path):
    assert stalls.cpuTimes(str(tmp_path / "missing")) == {}
    assert stalls.stealPercent({}, {}, 0) is None


def test_cpu_times_ignore_the_total_and_hostile_lines(tmp_path):
    path = tmp_path / "stat"
    path.write_text(HEADER + "cpu0 1 2 3\ncpux 1 2 3 4 5 6 7 8\n\ncpu1 1 1 1 1 1 1 1 1 1 1\n"
                    "cpu2 1 2 x 4 5 6 7 8\ncpu3 " + "9" * 40 + "\n")
    times = stalls.cpuTimes(str(path))
    # short line: no steal column; a non-number: the core is left out
    assert times == {0: (6, 0), 1: (8, 1), 3: (int("9" * 40), 0)}


def test_latency_table_gives_the_steal_of_each_run():
    def r(steal):
        out = {"sessions_per_s": 200, "cpu_ms_per_session": 3.0, "p50_ms": 5.0,
               "p99_ms": 10.0, "errors": 0}
        if steal != "absent":
            out["steal_pct"] = steal
        return out
    results = {"runs": {
        "securepop/implicit": [r(0.0)] * 3,
        "securepop/latency": [r(3.14), r(None), r("absent")],
    }, "latency": {"rate": 200}, "idle": {}}
    text, _ = run.tables(results)
    header = next(line for line in text.splitlines() if line.startswith("| | p50 ms"))
    assert "host steal on the server core" in header
    row = next(line for line in text.splitlines() if line.startswith("| securepop | 5.0"))
    assert "| 3.1%, –, – |" in row
    assert header.count("|") == row.count("|")
