"""
Hardening of the running daemon (issue 17), each attack performed on the
real daemon over loopback:

 - SCRAM must not tell which users exist: an unknown user's salt is as
   stable as a real user's, across a restart and between workers (it is
   keyed by the data directory's server secret).
"""

from __future__ import annotations

import base64
import json

from tests.integration.daemon import DEFAULT_CONFIG, Daemon, wait_for
from tests.integration.ops_client import POP3

PASSWORD = "Hardening-pw-17"


# -- item 4: SCRAM's made-up salt ----------------------------------------------------


def scram_server_first(port, user):
    """
    Start a SCRAM-SHA-256 exchange as C{user} over implicit TLS, cancel it.

    @return: (the server's pid from the APOP timestamp, salt, iteration count).
    """
    c = POP3(port)
    try:
        stamp = c.greeting[c.greeting.index(b"<"):]
        pid = int(stamp.split(b".")[1].split(b"@")[0])
        first = base64.b64encode(b"n,,n=" + user.encode() + b",r=hardeningnonce")
        reply = c.cmd(b"AUTH SCRAM-SHA-256 " + first)
        assert reply.startswith(b"+ "), reply
        attrs = dict(part.split(b"=", 1)
                     for part in base64.b64decode(reply[2:]).split(b","))
        assert c.cmd(b"*").startswith(b"-ERR")
        return pid, base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    finally:
        c.close()


def test_unknown_users_scram_salt_survives_a_restart_like_a_real_one(tmp_path):
    """
    The probe: ask for the salt of a real user and of a made-up one, restart
    the server, ask again.  Before the fix the made-up salt changed (a key
    drawn per process) while the real one did not.  Another data directory
    (another installation) gives other made-up salts.
    """
    d = Daemon(tmp_path, name="scram-restart")
    d.add_user("alice", PASSWORD)
    d.start()
    try:
        _, real, real_rounds = scram_server_first(d.pop3s_port, "alice")
        _, ghost, ghost_rounds = scram_server_first(d.pop3s_port, "ghost")
        d.restart()
        assert scram_server_first(d.pop3s_port, "alice")[1:] == (real, real_rounds)
        assert scram_server_first(d.pop3s_port, "ghost")[1:] == (ghost, ghost_rounds)
        secret = d.data_dir / "server.secret"
        assert secret.stat().st_mode & 0o777 == 0o600
        # same form as a real user's: 16 bytes of salt, the same rounds
        assert (len(ghost), ghost_rounds) == (len(real), real_rounds)
        assert scram_server_first(d.pop3s_port, "ghost2")[1] != ghost
    finally:
        d.stop()
    other = Daemon(tmp_path, name="scram-other")
    other.add_user("alice", PASSWORD)
    other.start()
    try:
        assert scram_server_first(other.pop3s_port, "ghost")[1] != ghost
    finally:
        other.stop()


def test_unknown_users_scram_salt_is_the_same_in_every_worker(tmp_path):
    """
    With two workers a client that reconnects lands in either; the made-up
    salt must not differ between them (the APOP timestamp names the worker).
    """
    config = DEFAULT_CONFIG.replace("[server]\n", '[server]\nworkers = "2"\n') + \
        '[log]\nformat = "json"\n'
    d = Daemon(tmp_path, config, name="scram-workers")
    d.add_user("alice", PASSWORD)
    d.start()
    try:
        assert wait_for(lambda: d.log().count('"event":"worker.ready"') == 2, 30)
        salts = {}
        for _ in range(200):
            pid, salt, _rounds = scram_server_first(d.pop3s_port, "ghost")
            salts.setdefault(pid, set()).add(salt)
            if len(salts) == 2:
                break
        assert len(salts) == 2, "both workers should have answered"
        assert len(set().union(*salts.values())) == 1, salts
    finally:
        d.stop()
