"""
SIGHUP: a changed access rule set takes effect for new connections while an
open session completes its RETR; a broken file keeps the old settings and
the log says why.
"""

import time

from tests.integration.daemon import DEFAULT_CONFIG, Daemon
from tests.integration.ops_client import POP3, read_exactly_until_dot, try_greeting

PASSWORD = "Reload-pw-42"
ALLOW_ONLY_127_0_0_2 = DEFAULT_CONFIG.replace(
    "[access]\n", '[access]\nmode = "allow-listed"\nrules = ["127.0.0.2"]\n')


def big_message(megabytes):
    line = b"X" * 76 + b"\r\n"
    body = line * (megabytes * 1024 * 1024 // len(line))
    return b"From: a@example.test\r\nSubject: big\r\n\r\n" + body


def test_sighup_new_rules_for_new_connections_open_retr_completes(tmp_path):
    d = Daemon(tmp_path, name="reload")
    d.add_user("alice", PASSWORD)
    d.deliver("alice", big_message(8))
    d.start()
    try:
        assert try_greeting(d.pop3s_port).startswith(b"+OK")
        c = POP3(d.pop3s_port, rcvbuf=16384)
        c.login("alice", PASSWORD)
        size = int(c.cmd("LIST 1").split()[2])
        c.send("RETR 1")
        assert c.line().startswith(b"+OK")
        first = c.file.read(100_000)              # RETR in flight, client slow
        assert len(first) == 100_000
        mark = len(d.log())
        d.config_path.write_text(ALLOW_ONLY_127_0_0_2.format(data_dir=d.data_dir, **d.ports))
        d.sighup()
        assert d.wait_log("config.reloaded", start=mark), d.log()[mark:]
        declined = try_greeting(d.pop3s_port)
        assert declined.startswith(b"-ERR"), declined
        assert try_greeting(d.pop3s_port, source="127.0.0.2").startswith(b"+OK")
        rest = read_exactly_until_dot(c)
        assert len(first) + rest >= size           # whole message arrived
        assert c.quit().startswith(b"+OK")
        assert "access.declined ip=127.0.0.1" in d.log()
    finally:
        d.stop()


def test_sighup_with_broken_file_keeps_old_settings(tmp_path):
    d = Daemon(tmp_path, name="reload-broken")
    d.add_user("alice", PASSWORD)
    d.start()
    try:
        mark = len(d.log())
        d.config_path.write_text(d.config_text.replace("[access]\n", "[access]\nmode = \"nope\"\n"))
        d.sighup()
        assert d.wait_log("config.reload_failed", start=mark), d.log()[mark:]
        failed = [l for l in d.log()[mark:].splitlines() if "config.reload_failed" in l][0]
        assert "access.mode" in failed             # the log says why
        assert "config.reloaded" not in d.log()[mark:]
        c = POP3(d.pop3s_port)                     # old settings still serve
        c.login("alice", PASSWORD)
        assert c.quit().startswith(b"+OK")
        # and a later good file is taken
        d.config_path.write_text(ALLOW_ONLY_127_0_0_2.format(data_dir=d.data_dir, **d.ports))
        mark = len(d.log())
        d.sighup()
        assert d.wait_log("config.reloaded", start=mark)
        time.sleep(0.2)
        assert try_greeting(d.pop3s_port).startswith(b"-ERR")
    finally:
        d.stop()
