"""
LMTP load generator: N concurrent clients over a Unix socket, each
delivering M messages (one connection per client, LHLO once, then MAIL,
RCPT, DATA per message, as an MTA with connection caching does).

Run in its own process, pinned with C{--cpu}; prints one JSON line::

    python bench/lmtpload.py --socket PATH --users u0000:u0049 \\
        --concurrency 8 --messages 50 --size 10240

A delivery counts when the recipient's reply after the final dot is 2xx;
anything else (a refused command, a timeout, a dropped connection) is an
error and ends that client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadgen import expand_users  # noqa: E402
from bench.servers import message  # noqa: E402


def stuffed(data):
    """
    C{data} as DATA sends it: CRLF line ends kept, a leading dot doubled,
    the final CRLF ensured, then the terminating C{.CRLF}.
    """
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def read_reply(reader):
    """
    One (possibly multi-line) reply.

    @return: C{(code, text)}: the three-digit code as an int and the lines'
        texts joined by newlines.
    @raise ValueError: a line that is no reply line.
    """
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if len(line) < 4 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r"):
            raise ValueError(f"not a reply line: {line[:80]!r}")
        lines.append(line[4:].rstrip(b"\r\n").decode("ascii", "replace"))
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


def percentile(values, q):
    """The C{q} quantile (0..1) of C{values} by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(latencies, seconds, errors, error_kinds):
    """The JSON result of a run: deliveries/s and delivery latency (ms)."""
    n = len(latencies)
    return {"deliveries": n, "seconds": round(seconds, 3),
            "deliveries_per_s": round(n / seconds, 1) if seconds > 0 else None,
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if n else None,
            "errors": errors, "error_kinds": error_kinds}


class Client:
    """One LMTP connection delivering messages to one recipient."""

    def __init__(self, path, recipient, payload, timeout):
        self.path, self.recipient, self.payload = path, recipient, payload
        self.timeout = timeout

    async def expect(self, reader, what):
        code, text = await asyncio.wait_for(read_reply(reader), self.timeout)
        if not 200 <= code < 400:
            raise RuntimeError(f"{what}: {code} {text[:60]}")
        return code

    async def run(self, count, latencies):
        reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
        try:
            await self.expect(reader, "greeting")
            writer.write(b"LHLO bench.example\r\n")
            await self.expect(reader, "LHLO")
            for _ in range(count):
                started = time.perf_counter()
                writer.write(b"MAIL FROM:<bench@example.com>\r\n")
                await self.expect(reader, "MAIL")
                writer.write(b"RCPT TO:<%s>\r\n" % self.recipient.encode())
                await self.expect(reader, "RCPT")
                writer.write(b"DATA\r\n")
                await self.expect(reader, "DATA")
                writer.write(self.payload)
                await self.expect(reader, "delivery")
                latencies.append(time.perf_counter() - started)
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()


async def main_async(args):
    users = expand_users(args.users)
    payload = stuffed(message(args.size, 7))
    latencies, kinds = [], {}
    clients = [Client(args.socket, users[i % len(users)], payload, args.timeout)
               for i in range(args.concurrency)]

    async def one(client):
        try:
            await client.run(args.messages, latencies)
        except Exception as e:  # noqa: BLE001 - every failure is counted
            kind = type(e).__name__ + (f": {e}" if isinstance(e, RuntimeError) else "")
            kinds[kind] = kinds.get(kind, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    seconds = time.perf_counter() - started
    return summary(latencies, seconds, sum(kinds.values()), kinds)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="LMTP load over a Unix socket")
    p.add_argument("--socket", required=True)
    p.add_argument("--users", required=True, help="a,b,c or first:last (u0000:u0049)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--messages", type=int, default=50, help="per client")
    p.add_argument("--size", type=int, default=10 * 1024)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--cpu", type=int, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(main_async(args))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = round(after.ru_utime + after.ru_stime
                                   - before.ru_utime - before.ru_stime, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
