"""
The benchmark's load generator: POP3 sessions over TLS, in its own process.

asyncio, pinned to its own CPU (C{os.sched_setaffinity}), bounded in time
(C{--duration}) and in count (C{--max-sessions}); every session has a
deadline.  Prints one JSON object on stdout.  Scenarios:

  - C{session}: connect, (STLS,) USER/PASS, STAT, RETR 1, QUIT;
  - C{retr}: as C{session}, for RETR throughput (large messages);
  - C{floor}: connect, (STLS,) greeting, QUIT (the floor server speaks no more);
  - C{idle}: log in C{--idle} sessions, print C{READY n}, hold them until
    stdin closes or C{--hold} seconds pass, then QUIT them all.

C{--rate R} makes arrivals open-loop at R sessions/s (latency runs); without
it each of C{--concurrency} workers starts a new session when its last ends.
A session counts as an error unless every reply is C{+OK} and the message
arrives whole (its unstuffed length equals the size STAT reported).

    python bench/loadgen.py --port 9995 --tls implicit --users u0000:u0049 \\
        --password PW --concurrency 50 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import ssl
import sys
import time

BIG = 64 * 1024 * 1024   # stream buffer limit: a whole 10 MB RETR fits


class SessionError(Exception):
    pass


def parse_stat(line: bytes):
    """C{+OK n size} -> (n, size)."""
    parts = line.split()
    if len(parts) < 3 or parts[0] != b"+OK":
        raise SessionError(f"bad STAT reply {line[:60]!r}")
    return int(parts[1]), int(parts[2])


def unstuffed_length(body: bytes) -> int:
    """
    Octets of a message from its wire form (terminator removed): a client
    strips the first "." of every line that starts with one (RFC 1939), so
    a server that forgets to stuff a line is caught by the length check.
    """
    extra = body.count(b"\r\n.") + (1 if body.startswith(b".") else 0)
    return len(body) - extra


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def expand_users(spec: str):
    """C{"u0000:u0049"} (a numbered range) or C{"a,b,c"}."""
    if ":" in spec:
        first, last = spec.split(":")
        prefix = first.rstrip("0123456789")
        width = len(first) - len(prefix)
        lo, hi = int(first[len(prefix):]), int(last[len(prefix):])
        return [f"{prefix}{i:0{width}d}" for i in range(lo, hi + 1)]
    return [u for u in spec.split(",") if u]


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Client:
    def __init__(self, args):
        self.args = args
        self.ctx = client_context()
        self.ok = 0
        self.errors = {}
        self.latencies = []
        self.login_latencies = []   # connect to the +OK after PASS
        self.starts = []
        self.busy_skips = 0         # --poisson: the drawn user was still in a session
        self.bytes = 0

    def error(self, exc):
        key = f"{type(exc).__name__}: {str(exc)[:80]}"
        self.errors[key] = self.errors.get(key, 0) + 1

    async def _reply(self, reader):
        line = await reader.readline()
        if not line.startswith(b"+OK"):
            raise SessionError(f"reply {line[:60]!r}")
        return line

    async def open(self, user=None):
        """Connect (and log in when C{user}); returns (reader, writer)."""
        a = self.args
        local = (a.bind, 0) if a.bind else None
        if a.tls == "implicit":
            reader, writer = await asyncio.open_connection(
                a.host, a.port, ssl=self.ctx, server_hostname="localhost",
                local_addr=local, limit=BIG)
            await self._reply(reader)
        else:
            reader, writer = await asyncio.open_connection(
                a.host, a.port, local_addr=local, limit=BIG)
            await self._reply(reader)
            writer.write(b"STLS\r\n")
            await self._reply(reader)
            await writer.start_tls(self.ctx, server_hostname="localhost")
        if user is not None:
            writer.write(b"USER " + user.encode() + b"\r\n")
            await self._reply(reader)
            writer.write(b"PASS " + a.password.encode() + b"\r\n")
            await self._reply(reader)
        return reader, writer

    async def session(self, user):
        started = time.perf_counter()
        writer = None
        try:
            if self.args.scenario == "floor":
                reader, writer = await self.open()
            else:
                reader, writer = await self.open(user)
                logged_in = time.perf_counter() - started
                writer.write(b"STAT\r\n")
                count, size = parse_stat(await reader.readline())
            if self.args.scenario == "poll":
                pass    # a poll that finds nothing new: login, STAT, QUIT
            elif self.args.scenario != "floor":
                if count < 1:
                    raise SessionError("mailbox is empty")
                writer.write(b"RETR 1\r\n")
                await self._reply(reader)
                data = await reader.readuntil(b"\r\n.\r\n")
                body = data[:-3]
                if unstuffed_length(body) != size:
                    raise SessionError(f"RETR {unstuffed_length(body)} octets, STAT said {size}")
                self.bytes += len(data)
            writer.write(b"QUIT\r\n")
            await self._reply(reader)
            self.latencies.append(time.perf_counter() - started)
            if self.args.scenario != "floor":
                self.login_latencies.append(logged_in)
            self.starts.append(started)
            self.ok += 1
        finally:
            if writer is not None:
                writer.close()

    async def bounded(self, user):
        try:
            await asyncio.wait_for(self.session(user), self.args.session_timeout)
        except Exception as e:  # counted, reported; the run goes on
            self.error(e)

    async def closed_loop(self):
        a = self.args
        users = a.user_list
        deadline = time.monotonic() + a.duration
        started = 0

        async def worker(index):
            nonlocal started
            user = users[index % len(users)]
            while time.monotonic() < deadline and started < a.max_sessions:
                started += 1
                await self.bounded(user)

        await asyncio.gather(*(worker(i) for i in range(a.concurrency)))

    async def open_loop(self):
        """Arrivals at C{--rate}/s; a user is never in two sessions at once."""
        a = self.args
        free = asyncio.Queue()
        for u in a.user_list:
            free.put_nowait(u)
        tasks = set()
        begin = time.monotonic()
        n = 0
        while n < a.max_sessions:
            due = begin + n / a.rate
            if due - begin >= a.duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if free.empty():
                self.error(SessionError("no free user (server fell behind)"))
                n += 1
                continue
            user = free.get_nowait()

            async def one(u=user):
                try:
                    await self.bounded(u)
                finally:
                    free.put_nowait(u)

            t = asyncio.ensure_future(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.gather(*tasks)

    async def poisson_loop(self):
        """
        Polling clients: Poisson arrivals at C{--rate}/s in all (each of the
        users polls on average every len(users)/rate seconds), each arrival
        a user drawn at random (C{--seed}); a user still in its previous
        session skips this poll (counted as C{busy_skips}, not an error).
        """
        a = self.args
        rng = random.Random(a.seed)
        users = a.user_list
        busy = set()
        tasks = set()
        begin = time.monotonic()
        due, n = 0.0, 0
        while n < a.max_sessions:
            due += rng.expovariate(a.rate)
            if due >= a.duration:
                break
            delay = begin + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            user = users[rng.randrange(len(users))]
            if user in busy:
                self.busy_skips += 1
                continue
            busy.add(user)

            async def one(u=user):
                try:
                    await self.bounded(u)
                finally:
                    busy.discard(u)

            t = asyncio.ensure_future(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def idle(self):
        """Log in C{--idle} sessions (C{--concurrency} at a time) and hold them."""
        a = self.args
        held = []
        sem = asyncio.Semaphore(a.concurrency)

        async def login(user):
            async with sem:
                try:
                    held.append(await asyncio.wait_for(self.open(user), a.session_timeout))
                except Exception as e:
                    self.error(e)

        t0 = time.perf_counter()
        await asyncio.gather(*(login(u) for u in a.user_list[:a.idle]))
        sys.stdout.write(f"READY {len(held)} {time.perf_counter() - t0:.2f}\n")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        try:
            await asyncio.wait_for(stdin_closed, a.hold)
        except asyncio.TimeoutError:
            pass

        async def quit(reader, writer):
            try:
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self._reply(reader), a.session_timeout)
                self.ok += 1
            except Exception as e:
                self.error(e)
            finally:
                writer.close()

        for i in range(0, len(held), 500):
            await asyncio.gather(*(quit(r, w) for r, w in held[i:i + 500]))


def summary(client, elapsed, args):
    lat = sorted(client.latencies)
    login = sorted(client.login_latencies)
    if args.dump_latencies:
        with open(args.dump_latencies, "w") as out:
            t0 = min(client.starts, default=0.0)
            logins = client.login_latencies or [0.0] * len(client.latencies)
            out.writelines(f"{s - t0:.4f} {v * 1000:.3f} {g * 1000:.3f}\n"
                           for s, v, g in zip(client.starts, client.latencies, logins))
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {
        "scenario": args.scenario, "tls": args.tls, "port": args.port,
        "concurrency": args.concurrency, "rate": args.rate,
        "sessions": client.ok, "errors": sum(client.errors.values()),
        "error_kinds": client.errors, "elapsed": round(elapsed, 3),
        "sessions_per_s": round(client.ok / elapsed, 2) if elapsed else 0,
        "bytes": client.bytes,
        "mb_per_s": round(client.bytes / elapsed / 1e6, 2) if elapsed else 0,
        "p50_ms": ms(percentile(lat, 50)), "p90_ms": ms(percentile(lat, 90)),
        "p99_ms": ms(percentile(lat, 99)),
        "login_p50_ms": ms(percentile(login, 50)), "login_p99_ms": ms(percentile(login, 99)),
        "busy_skips": client.busy_skips,
        "client_cpu_s": round(sum(os.times()[:2]) - getattr(client, "cpu_at_start", 0.0), 3),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.2", help="client address ('' = any)")
    p.add_argument("--tls", choices=("implicit", "stls"), default="implicit")
    p.add_argument("--scenario", choices=("session", "retr", "floor", "idle", "poll"),
                   default="session")
    p.add_argument("--users", default="u0000:u0049")
    p.add_argument("--dump-latencies", default="", help="file: start time and ms per session")
    p.add_argument("--password", default="")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--max-sessions", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=0.0, help="open-loop arrivals/s")
    p.add_argument("--poisson", action="store_true",
                   help="with --rate: Poisson arrivals, a random user each")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--session-timeout", type=float, default=60.0)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--hold", type=float, default=120.0)
    p.add_argument("--cpu", type=int, default=1, help="-1: do not pin")
    args = p.parse_args(argv)
    args.user_list = expand_users(args.users)
    return args


async def run(args):
    client = Client(args)
    client.cpu_at_start = sum(os.times()[:2])   # start-up (imports) not counted
    t0 = time.perf_counter()
    if args.scenario == "idle":
        await client.idle()
    elif args.rate > 0 and args.poisson:
        await client.poisson_loop()
    elif args.rate > 0:
        await client.open_loop()
    else:
        await client.closed_loop()
    return summary(client, time.perf_counter() - t0, args)


def main(argv=None):
    args = parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
