"""
The protocol log of a session that used USER/PASS, APOP, PLAIN and NTLM
holds none of the secrets; JSON log lines parse; the metrics endpoint serves
counters that change after a login; the text log under twistd's C{--logfile}
has twistd's line and rotates on SIGUSR1.
"""

import json
import urllib.request

import pytest

from tests.integration.daemon import DEFAULT_CONFIG, Daemon, wait_for
from tests.integration.ops_client import POP3

PASSWORD = "Pr0tocol-Secret-Pw"
CONFIG = DEFAULT_CONFIG + """
[log]
format = "json"
protocol_log = "protocol.log"
[metrics]
endpoint = "tcp:{port3}:interface=127.0.0.1"
"""


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("observed"), CONFIG, name="observed")
    d.add_user("alice", PASSWORD)
    d.start()
    yield d
    d.stop()


def scrape(d):
    url = f"http://127.0.0.1:{d.ports['port3']}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


def sample(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix + " ") or line.startswith(prefix + "{") and "} " in line \
                and line.split("} ")[0] + "}" == prefix:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_protocol_log_has_no_secret(observed):
    secrets = [PASSWORD.encode()]
    c = POP3(observed.pop3s_port)
    c.login("alice", PASSWORD)
    c.quit()
    c = POP3(observed.pop3s_port)
    secrets.append(c.apop("alice", PASSWORD).encode())
    c.quit()
    c = POP3(observed.pop3s_port)
    secrets.append(c.plain("alice", PASSWORD))
    c.quit()
    c = POP3(observed.pop3s_port)
    secrets.extend(c.ntlm("alice", PASSWORD))
    c.quit()
    log = (observed.data_dir / "protocol.log").read_bytes()
    for mechanism in (b"C PASS <redacted>", b"C APOP alice <redacted>",
                      b"C AUTH PLAIN <redacted>", b"C AUTH NTLM"):
        assert mechanism in log, mechanism         # the sessions are in the log
    for secret in secrets:
        assert secret not in log, secret
        assert secret[:24] not in log
    assert PASSWORD.encode() not in observed.log_path.read_bytes()


def test_json_log_lines_parse(observed):
    c = POP3(observed.pop3s_port)
    c.cmd("USER alice")
    c.cmd("PASS wrong-password")
    c.close()
    assert observed.wait_log('"event":"auth.failure"')
    records = [json.loads(line) for line in observed.log().splitlines() if line.strip()]
    names = {r["event"] for r in records}
    assert {"listen", "auth.success", "auth.failure", "session.end"} <= names
    failure = [r for r in records if r["event"] == "auth.failure"][-1]
    assert failure["fields"]["user"] == "alice" and failure["fields"]["ip"] == "127.0.0.1"


def test_metrics_change_after_login(observed):
    before = scrape(observed)
    key = 'securepop_logins_total{mechanism="USER",result="success"}'
    n0 = sample(before, key)
    c = POP3(observed.pop3s_port)
    c.login("alice", PASSWORD)
    c.quit()
    after = scrape(observed)
    assert sample(after, key) == n0 + 1
    assert sample(after, "securepop_connections_total") > sample(before,
                                                                 "securepop_connections_total")
    assert "securepop_login_seconds_bucket" in after
    assert 'securepop_tls_sessions_total{version="TLSv1.3"}' in after
    failures = 'securepop_logins_total{mechanism="USER",result="failure"}'
    assert sample(after, failures) >= 0


# -- the text log under twistd: twistd's own line, a --logfile rotated by SIGUSR1 --------

def greet_and_quit(port):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")


def test_text_log_is_twistds_line_and_rotates_on_usr1(tmp_path):
    import re
    import signal

    log = tmp_path / "securepop-twistd.log"
    rotated = log.with_name(log.name + ".1")
    d = Daemon(tmp_path, DEFAULT_CONFIG, name="textlog", twistd_args=[f"--logfile={log}"])
    d.start()
    try:
        line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[securepop#info\] "
                          r"securepop listen endpoint=\S+ tls=\S+$", re.M)
        assert wait_for(lambda: log.exists() and len(line.findall(log.read_text())) == 2)
        assert "Traceback" not in log.read_text()
        assert not rotated.exists()                     # nothing rotates by itself

        d.proc.send_signal(signal.SIGUSR1)
        assert wait_for(rotated.exists)
        old = rotated.read_text()
        assert len(line.findall(old)) == 2              # the old lines moved there
        greet_and_quit(d.pop3_port)
        assert wait_for(lambda: "securepop session.end" in log.read_text())
        assert rotated.read_text() == old               # and nothing more is written there
        assert d.log_path.read_text().strip() == ""     # nothing went to stdout
    finally:
        d.stop()
