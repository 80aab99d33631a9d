"""
A probe for stalls that no server causes.

It runs pinned to one CPU at real-time priority (so a busy server on that
core cannot delay it), asks to sleep 1 ms again and again, and records how
late it wakes.  Waking several milliseconds late means the CPU itself was
taken away (the hypervisor ran something else, an interrupt storm): every
session in flight on that core waited as long.  L{bench.run} runs one on
the server core and one on the load generator's core during each latency
run, so a p99 can be read next to the stalls of the same seconds::

    python bench/stalls.py --cpu 0 --duration 8      # one JSON line

The hypervisor's own account of the same thing is the "steal" column of
C{/proc/stat}: time this vCPU was ready but the host ran something else.
L{cpuTimes} and L{stealPercent} read it for one core around a run.
"""

import argparse
import json
import os
import sys
import time

STALL_MS = 2.0


def probe(duration, interval=0.001):
    """Lateness of each wake-up, in ms."""
    late = []
    end = time.monotonic() + duration
    while True:
        before = time.perf_counter()
        if before > end:
            break
        time.sleep(interval)
        late.append((time.perf_counter() - before - interval) * 1000)
    return late


def summary(late, realtime):
    ordered = sorted(late)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
    stalls = [v for v in late if v > STALL_MS]
    return {
        "wakes": len(late), "realtime": realtime,
        "p50_ms": pick(0.5) if late else None, "p99_ms": pick(0.99) if late else None,
        "max_ms": round(ordered[-1], 3) if late else None,
        f"stalls_over_{STALL_MS:g}ms": len(stalls),
        "stalled_ms": round(sum(stalls), 1),
    }


def cpuTimes(stat="/proc/stat"):
    """
    @return: C{{cpu number: (total jiffies, steal jiffies)}} from C{stat}
        (empty when it cannot be read, e.g. no /proc).
    """
    times = {}
    try:
        with open(stat) as source:
            lines = source.read().splitlines()
    except OSError:
        return times
    for line in lines:
        fields = line.split()
        if not (fields and fields[0].startswith("cpu") and fields[0][3:].isdigit()):
            continue
        try:
            # user nice system idle iowait irq softirq steal (guest time is
            # already inside user)
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            continue  # not a kernel's line: no figure rather than a wrong one
        steal = values[7] if len(values) > 7 else 0
        times[int(fields[0][3:])] = (sum(values), steal)
    return times


def stealPercent(before, after, cpu):
    """Share of C{cpu}'s time the host took between two L{cpuTimes}, in %."""
    if cpu not in before or cpu not in after:
        return None
    total = after[cpu][0] - before[cpu][0]
    if total <= 0:
        return None
    return round(100.0 * (after[cpu][1] - before[cpu][1]) / total, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    a = p.parse_args(argv)
    os.sched_setaffinity(0, {a.cpu})
    realtime = True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (PermissionError, AttributeError, OSError):
        realtime = False   # still useful, but a busy core then delays it too
    result = summary(probe(a.duration), realtime)
    result["cpu"] = a.cpu
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
