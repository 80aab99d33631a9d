"""
Bounded soak: many concurrent sessions against the real daemon, with an
exact ledger.

Workers (threads) each own one user and loop until the time is up: connect
(STLS or implicit TLS), log in (USER/PASS, AUTH PLAIN or AUTH NTLM with
pyspnego), RETR and check messages against the ledger, DELE some, maybe
RSET, then QUIT -- or drop the connection at a random point.  Two delivery
threads add mail meanwhile (the C{securepop deliver} CLI and direct Maildir
writes).  At the end, for every user: delivered = stored + deleted by
completed QUITs, exactly (SHA-256 of every message), nothing twice; and the
daemon's RSS and open file descriptors (from /proc) are compared with the
baseline taken after a warm-up.

CI default: 60 s, 50 sessions.  The long run:
  SECUREPOP_SOAK_SECONDS=600 SECUREPOP_SOAK_SESSIONS=200 \\
      python -m pytest -q -s tests/integration/test_soak.py
(C{SECUREPOP_SOAK_REPORT=FILE} also writes the figures as JSON.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import threading
import time
import uuid

import pytest

from tests.integration.clients import (
    IMPLICIT, STARTTLS, RawPOP3, clone_users, crlf_normalise, store_message, vmrss_kib,
)

SOAK_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{data_dir}"
idle_timeout_login = 30
idle_timeout = 60
shutdown_grace = 5
[[listen]]
endpoint = "tcp:{pop3_port}:interface=127.0.0.1:backlog=1024"
tls = "starttls"
[[listen]]
endpoint = "tcp:{pop3s_port}:interface=127.0.0.1:backlog=1024"
tls = "implicit"
[auth]
mechanisms = ["PLAIN", "LOGIN", "NTLM"]
failure_delay = 0.1
failure_delay_max = 0.5
max_attempts = 3
cache_ttl = 600
[access]
max_connections = 5000
max_connections_per_ip = 2000
max_connections_per_user = 4
"""

PASSWORD = "Soak-Password-9"
_MSGID = re.compile(rb"X-Soak-Id: ([0-9a-f]{32})")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Ledger:
    """What was delivered and what completed QUITs deleted, per user."""

    def __init__(self):
        self.lock = threading.Lock()
        self.delivered = {}          # user -> {id: sha256 of the client-visible form}
        self.deleted = {}            # user -> set of ids
        self.ambiguous = {}          # user -> ids marked in a QUIT whose answer was lost
        self.counts = dict(sessions=0, quits=0, drops=0, retrieved=0, dele=0, rset=0,
                           deliveries=0, errors=0, in_use=0, bad_content=0, duplicates=0)
        self.errors = []

    def new_message(self, user, size):
        ident = uuid.uuid4().hex
        body = b"".join(b"line %d %s\n" % (i, b"." * (i % 3)) for i in range(size // 16 + 1))
        data = (b"From: soak@example.test\nSubject: soak\nX-Soak-Id: " + ident.encode()
                + b"\n\n" + body)
        with self.lock:
            self.delivered.setdefault(user, {})[ident] = sha(crlf_normalise(data))
            self.counts["deliveries"] += 1
        return data

    def bump(self, name, n=1):
        with self.lock:
            self.counts[name] += n

    def error(self, text):
        with self.lock:
            self.counts["errors"] += 1
            if len(self.errors) < 20:
                self.errors.append(text)

    def check(self, daemon, users):
        """
        @return: (lost, duplicated, corrupt, problems) over every user.
        """
        lost = duplicated = corrupt = 0
        problems = []
        for user in users:
            seen = {}
            md = daemon.maildir(user)
            for sub in ("new", "cur"):
                d = md / sub
                if not d.is_dir():
                    continue
                for path in d.iterdir():
                    data = path.read_bytes()
                    m = _MSGID.search(data)
                    if not m:
                        problems.append(f"{user}: unknown file {path.name}")
                        continue
                    ident = m.group(1).decode()
                    if ident in seen:
                        duplicated += 1
                    seen[ident] = sha(crlf_normalise(data))
            delivered = self.delivered.get(user, {})
            deleted = self.deleted.get(user, set())
            ambiguous = self.ambiguous.get(user, set())
            for ident, digest in delivered.items():
                if ident in seen:
                    if seen[ident] != digest:
                        corrupt += 1
                        problems.append(f"{user}: {ident} changed")
                    if ident in deleted:
                        problems.append(f"{user}: {ident} deleted by QUIT but still there")
                elif ident not in deleted and ident not in ambiguous:
                    lost += 1
                    problems.append(f"{user}: {ident} lost")
            for ident in seen:
                if ident not in delivered:
                    problems.append(f"{user}: {ident} never delivered")
            for tmp in (md / "tmp").iterdir() if (md / "tmp").is_dir() else ():
                problems.append(f"{user}: left in tmp/: {tmp.name}")
        return lost, duplicated, corrupt, problems


# -- one POP3 session --------------------------------------------------------------------------

def ntlm_login(client, user, password):
    import spnego

    ctx = spnego.client(user, password, hostname="localhost", service="pop", protocol="ntlm")
    reply = client.command(b"AUTH NTLM")
    assert reply.startswith(b"+"), reply
    reply = client.command(base64.b64encode(ctx.step()))
    assert reply.startswith(b"+ "), reply
    return client.command(base64.b64encode(ctx.step(base64.b64decode(reply[2:]))))


def login(client, user, password, mechanism):
    if mechanism == "USER":
        return client.login(user, password)
    if mechanism == "PLAIN":
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        return client.command(b"AUTH PLAIN " + token)
    return ntlm_login(client, user, password)


def one_session(daemon, ledger, user, rng, tls=None, mechanism=None, drop_chance=0.2):
    """A random session; updates the ledger only for what the server confirmed."""
    tls = tls or rng.choice([STARTTLS, IMPLICIT])
    mechanism = mechanism or rng.choice(["USER", "PLAIN", "NTLM"])
    client = RawPOP3(daemon, tls="implicit" if tls == IMPLICIT else "plain", timeout=60)
    try:
        if tls == STARTTLS:
            client.starttls()
        reply = login(client, user, PASSWORD, mechanism)
        if reply.startswith(b"-ERR [IN-USE]"):
            ledger.bump("in_use")
            return
        if not reply.startswith(b"+OK"):
            ledger.error(f"{user} {mechanism}: {reply!r}")
            return
        ledger.bump("sessions")
        listing = client.command(b"LIST")
        assert listing.startswith(b"+OK"), listing
        numbers = [int(l.split()[0]) for l in client.multiline()]
        marked = set()
        for n in rng.sample(numbers, min(len(numbers), rng.randint(0, 4))):
            body = client.retr(n)
            ledger.bump("retrieved")
            m = _MSGID.search(body)
            if not m or ledger.delivered[user].get(m.group(1).decode()) != sha(body):
                ledger.bump("bad_content")
                ledger.error(f"{user}: RETR {n} content does not match the ledger")
                continue
            if rng.random() < 0.7:
                assert client.command(b"DELE %d" % n).startswith(b"+OK")
                marked.add(m.group(1).decode())
                ledger.bump("dele")
        if marked and rng.random() < 0.1:
            assert client.command(b"RSET").startswith(b"+OK")
            marked.clear()
            ledger.bump("rset")
        if rng.random() < drop_chance:
            ledger.bump("drops")
            return                          # no QUIT: nothing may be removed
        with ledger.lock:
            ledger.ambiguous.setdefault(user, set()).update(marked)
        reply = client.command(b"QUIT")
        with ledger.lock:
            ledger.ambiguous[user].difference_update(marked)
            if reply.startswith(b"+OK"):
                ledger.deleted.setdefault(user, set()).update(marked)
                ledger.counts["quits"] += 1
            else:
                ledger.errors.append(f"{user}: QUIT answered {reply!r}")
                ledger.counts["errors"] += 1
    except (OSError, EOFError, AssertionError) as e:
        ledger.error(f"{user}: {type(e).__name__}: {e}")
    finally:
        client.close()


# -- the soak ---------------------------------------------------------------------------------------

def run_soak(daemon, seconds, sessions, seed=1):
    rng = random.Random(seed)
    users = [f"soak{i:03d}" for i in range(sessions)]
    clone_users(daemon, "soak", users)
    time.sleep(1.5)                               # the daemon reloads the users file
    ledger = Ledger()
    for user in users:
        for _ in range(3):
            store_message(daemon, user, ledger.new_message(user, rng.randint(100, 4000)))
    # Warm-up, then the baseline.
    for user in users[:5]:
        one_session(daemon, ledger, user, random.Random(user), drop_chance=0)
    time.sleep(1)
    pid = daemon.proc.pid
    base_rss, base_fds = vmrss_kib(pid), open_fds(pid)
    peak = {"rss": base_rss, "fds": base_fds}
    stop = time.monotonic() + seconds

    def worker(user, seed):
        r = random.Random(seed)
        while time.monotonic() < stop:
            one_session(daemon, ledger, user, r)

    def deliver_direct():
        r = random.Random(seed + 1)
        while time.monotonic() < stop:
            user = r.choice(users)
            store_message(daemon, user, ledger.new_message(user, r.randint(100, 60000)))
            time.sleep(0.05)

    def deliver_cli():
        r = random.Random(seed + 2)
        while time.monotonic() < stop:
            user = r.choice(users)
            data = ledger.new_message(user, r.randint(100, 20000))
            try:
                daemon.deliver(user, data)
            except Exception as e:                 # the message never arrived: forget it
                ledger.error(f"deliver {user}: {e}")
                with ledger.lock:
                    ledger.delivered[user].pop(_MSGID.search(data).group(1).decode())

    def sampler():
        while time.monotonic() < stop:
            try:
                peak["rss"] = max(peak["rss"], vmrss_kib(pid))
                peak["fds"] = max(peak["fds"], open_fds(pid))
            except OSError:
                return
            time.sleep(0.5)

    threads = [threading.Thread(target=worker, args=(u, seed * 1000 + i), daemon=True)
               for i, u in enumerate(users)]
    threads += [threading.Thread(target=f, daemon=True) for f in (deliver_direct, deliver_cli,
                                                                   sampler)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.monotonic() - started
    time.sleep(2)                                  # sessions closed, timers fired
    end_rss, end_fds = vmrss_kib(pid), open_fds(pid)
    lost, duplicated, corrupt, problems = ledger.check(daemon, users)
    figures = dict(
        seconds=round(elapsed, 1), concurrent_sessions=sessions,
        messages_delivered=sum(len(v) for v in ledger.delivered.values()),
        deleted_by_quit=sum(len(v) for v in ledger.deleted.values()),
        lost=lost, duplicated=duplicated, corrupt=corrupt,
        rss_kib_baseline=base_rss, rss_kib_peak=peak["rss"], rss_kib_end=end_rss,
        fds_baseline=base_fds, fds_peak=peak["fds"], fds_end=end_fds,
        **ledger.counts,
    )
    return figures, problems, ledger


@pytest.fixture(scope="module")
def soak_daemon(daemon_factory):
    return daemon_factory(SOAK_CONFIG, users=(("soak", PASSWORD),), name="soak")


def test_soak_no_mail_lost_or_duplicated_and_no_leak(soak_daemon):
    seconds = float(os.environ.get("SECUREPOP_SOAK_SECONDS", "60"))
    sessions = int(os.environ.get("SECUREPOP_SOAK_SESSIONS", "50"))
    figures, problems, ledger = run_soak(soak_daemon, seconds, sessions)
    print("\nsoak figures:", json.dumps(figures, indent=1))
    if os.environ.get("SECUREPOP_SOAK_REPORT"):
        with open(os.environ["SECUREPOP_SOAK_REPORT"], "w") as f:
            json.dump(dict(figures, problems=problems[:50], errors=ledger.errors), f, indent=1)
    assert problems == []
    assert (figures["lost"], figures["duplicated"], figures["corrupt"]) == (0, 0, 0)
    assert figures["sessions"] > sessions and figures["quits"] > 0 and figures["drops"] > 0
    assert figures["retrieved"] > 0 and figures["dele"] > 0
    assert figures["bad_content"] == 0
    # Errors are sessions that failed on the client side.  With hundreds of
    # TLS client threads in one Python process on 2 cores, the clients (not
    # the server) can starve past the 30 s login idle timeout: tolerated up
    # to 10 %, never a lost or changed message.
    assert figures["errors"] <= max(5, figures["sessions"] // 10), ledger.errors
    assert figures["fds_end"] - figures["fds_baseline"] <= 5
    assert figures["rss_kib_end"] - figures["rss_kib_baseline"] < 96 * 1024


def test_ledger_detects_a_lost_message(soak_daemon, tmp_path):
    """The negative case: the ledger check is able to fail."""
    ledger = Ledger()
    user = "soak-negative"
    clone_users(soak_daemon, "soak", [user])
    store_message(soak_daemon, user, ledger.new_message(user, 100))
    name = store_message(soak_daemon, user, ledger.new_message(user, 100))
    (soak_daemon.maildir(user) / "new" / name).unlink()
    lost, duplicated, corrupt, problems = ledger.check(soak_daemon, [user])
    assert lost == 1 and problems
