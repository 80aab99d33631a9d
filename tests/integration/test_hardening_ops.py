"""
Hardening of the running daemon, each attack performed on the
real daemon over loopback:

 - SCRAM must not tell which users exist: an unknown user's salt is as
   stable as a real user's, across a restart and between workers (it is
   keyed by the data directory's server secret).
 - Open files: started with the soft RLIMIT_NOFILE of a shell (1024), the
   daemon raises it to the hard limit; a hard limit below what
   max_connections needs is warned about, and the server still serves.
 - SIGHUP applies C{access.trusted_proxies}: adding the proxy makes its
   PROXY headers count (rules and logs see the client they name), removing
   it makes them an unknown command again.
 - What the README says about TLS session tickets, on real handshakes.
"""

from __future__ import annotations

import base64
import socket
import ssl
import struct

from tests.integration.daemon import DEFAULT_CONFIG, Daemon, require_tool, wait_for
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
    the server, ask again: the made-up salt must not change (a key drawn per
    process would), as the real one does not.  Another data directory
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


# -- item 6: open files ----------------------------------------------------------------


def open_files_limits(pid):
    """(soft, hard) 'Max open files' of a process, from /proc."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open files line")


def limited_daemon(tmp_path, name, nofile):
    prlimit = require_tool("prlimit")
    d = Daemon(tmp_path, name=name, wrapper=[prlimit, f"--nofile={nofile}", "--"])
    d.add_user("alice", PASSWORD)
    return d


def test_inherited_soft_open_files_limit_is_raised_to_the_hard_one(tmp_path):
    """
    Started as from a login shell (soft 1024) with max_connections = 5000
    (the default), the daemon must not keep 1024 (past ~1000 clients every
    accept would fail): it runs with the hard limit, which covers 5000
    connections (3 files each, plus 64), so no warning.
    """
    d = limited_daemon(tmp_path, "nofile-raised", "1024:16384")
    d.start()
    try:
        assert open_files_limits(d.proc.pid) == (16384, 16384)
        assert "limits.open_files soft=16384 hard=16384 needed=15064 raised_from=1024" \
            in d.log()
        assert "limits.open_files_low" not in d.log()
    finally:
        d.stop()


def test_a_hard_limit_too_low_for_max_connections_is_warned_and_the_server_serves(tmp_path):
    d = limited_daemon(tmp_path, "nofile-low", "128:256")
    d.start()
    try:
        assert open_files_limits(d.proc.pid) == (256, 256)
        assert d.wait_log("limits.open_files_low soft=256 hard=256 needed=15064 "
                          "max_connections=5000")
        c = POP3(d.pop3s_port)
        c.login("alice", PASSWORD)
        assert c.quit().startswith(b"+OK")
    finally:
        d.stop()


# -- item 8: trusted_proxies on reload ----------------------------------------------

PROXY_CONFIG = DEFAULT_CONFIG.replace(
    "[access]\n", '[access]\nmode = "deny-listed"\nrules = ["192.0.2.66"]\n')
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(client, port):
    return f"PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n".encode()


def proxy_v2(client, port):
    addresses = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + \
        struct.pack("!HH", 40000, port)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


class Raw:
    """A cleartext connection from 127.0.0.1, as a proxy (or a client posing as one)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=("127.0.0.1", 0))
        self.file = self.sock.makefile("rb")

    def greeted_unasked(self):
        """Whether the server spoke before we sent anything."""
        self.sock.settimeout(1.0)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except (socket.timeout, TimeoutError):
            return False
        finally:
            self.sock.settimeout(10)

    def line(self):
        return self.file.readline().rstrip(b"\r\n")

    def close(self):
        self.file.close()
        self.sock.close()


def reload_with(d, config):
    mark = len(d.log())
    d.config_path.write_text(config.format(data_dir=d.data_dir, **d.ports))
    d.sighup()
    assert d.wait_log("config.reloaded", start=mark), d.log()[mark:]


def test_sighup_applies_trusted_proxies_both_ways(tmp_path):
    """
    The proxy at 127.0.0.1 is added to trusted_proxies and the daemon gets
    SIGHUP: its PROXY headers must now be read before the greeting, and the
    access rules must judge the client they name (192.0.2.66 is declined).
    Then the reverse: removed again, a header from 127.0.0.1 is only a bad
    command from 127.0.0.1 (a client cannot claim an address).
    """
    d = Daemon(tmp_path, PROXY_CONFIG, name="proxy-reload")
    d.add_user("alice", PASSWORD)
    d.start()
    port = d.pop3_port
    try:
        mark = len(d.log())
        c = Raw(port)                                  # not trusted yet
        assert c.greeted_unasked() and c.line().startswith(b"+OK")
        c.sock.sendall(proxy_v1("192.0.2.66", port))
        assert c.line().startswith(b"-ERR")
        c.sock.sendall(b"QUIT\r\n")
        assert c.line().startswith(b"+OK")
        c.close()
        assert d.wait_log("session.end ip=127.0.0.1 ", start=mark)
        assert "192.0.2.66" not in d.log()[mark:]

        reload_with(d, PROXY_CONFIG.replace(
            "[access]\n", '[access]\ntrusted_proxies = ["127.0.0.1/32"]\n'))
        mark = len(d.log())
        c = Raw(port)
        assert not c.greeted_unasked()                 # the header comes first
        c.sock.sendall(proxy_v2("192.0.2.66", port))   # a client the rules decline
        assert c.line().startswith(b"-ERR [SYS/PERM]")
        c.close()
        assert d.wait_log("access.declined ip=192.0.2.66 ", start=mark), d.log()[mark:]
        c = Raw(port)
        c.sock.sendall(proxy_v1("192.0.2.77", port))
        assert c.line().startswith(b"+OK")
        c.sock.sendall(b"QUIT\r\n")
        assert c.line().startswith(b"+OK")
        c.close()
        assert d.wait_log("session.end ip=192.0.2.77 ", start=mark), d.log()[mark:]

        reload_with(d, PROXY_CONFIG)                   # and off again
        mark = len(d.log())
        c = Raw(port)
        assert c.greeted_unasked() and c.line().startswith(b"+OK")
        c.sock.sendall(proxy_v1("192.0.2.77", port))
        assert c.line().startswith(b"-ERR")
        c.sock.sendall(b"QUIT\r\n")
        assert c.line().startswith(b"+OK")
        c.close()
        assert d.wait_log("session.end ip=127.0.0.1 ", start=mark)
        assert "192.0.2.77" not in d.log()[mark:]
    finally:
        d.stop()


def test_sighup_switches_off_trusted_proxies_given_at_start(tmp_path):
    """
    Started trusting 127.0.0.1, the daemon must stop waiting for its header
    once the proxy is removed: before the fix the list of the start stayed,
    and every direct client from that address got nothing, then was cut off.
    """
    trusted = PROXY_CONFIG.replace("[access]\n", '[access]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    d = Daemon(tmp_path, trusted, name="proxy-off")
    d.add_user("alice", PASSWORD)
    d.start()
    port = d.pop3_port
    try:
        c = Raw(port)
        assert not c.greeted_unasked()
        c.sock.sendall(proxy_v1("192.0.2.77", port))
        assert c.line().startswith(b"+OK")
        c.close()
        reload_with(d, PROXY_CONFIG)
        mark = len(d.log())
        c = Raw(port)
        assert c.greeted_unasked() and c.line().startswith(b"+OK")
        c.sock.sendall(b"QUIT\r\n")
        assert c.line().startswith(b"+OK")
        c.close()
        assert d.wait_log("session.end ip=127.0.0.1 ", start=mark)
    finally:
        d.stop()


# -- item 11: TLS session tickets, as the README states them ------------------------


def client_context(version):
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def tls_session(port, ctx, session=None):
    """One handshake (and greeting) with C{ctx}; return (session, reused)."""
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                         session=session) as s:
        assert s.recv(100).startswith(b"+OK")    # TLS 1.3 tickets come before it
        s.sendall(b"QUIT\r\n")
        s.recv(100)
        return s.session, s.session_reused


def test_tls_tickets_are_as_the_readme_says(daemon):
    """
    TLS 1.2: no ticket, an empty session ID.  TLS 1.3: a ticket arrives (the
    README says so) but presenting it gets a full handshake.
    """
    port = daemon.pop3s_port
    tls12 = client_context(ssl.TLSVersion.TLSv1_2)
    session, _ = tls_session(port, tls12)
    assert not session.has_ticket and session.id == b""
    assert tls_session(port, tls12, session)[1] is False
    tls13 = client_context(ssl.TLSVersion.TLSv1_3)
    session, _ = tls_session(port, tls13)
    assert session.has_ticket and session.ticket_lifetime_hint > 0
    assert tls_session(port, tls13, session)[1] is False
