"""
Smoke tests of the benchmark's load generator and report logic, in-process.

A tiny asyncio POP3 server over real TLS (a throwaway ECDSA P-256
certificate) stands in for the servers; no timing is asserted.
"""

import asyncio
import datetime
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import loadgen, run
from securepop.testing.pop3 import stuff_whole

MESSAGE = b"Subject: x\r\n\r\n.dotted\r\nplain\r\n..two\r\n"


def _certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


async def _serve(ctx, message, password, implicit):
    """A POP3 server just good enough for the load generator."""

    async def handle(reader, writer):
        writer.write(b"+OK ready\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            verb, _, arg = line.strip().partition(b" ")
            verb = verb.upper()
            if verb == b"STLS":
                writer.write(b"+OK go\r\n")
                await writer.drain()
                await writer.start_tls(ctx)
            elif verb == b"USER":
                writer.write(b"+OK\r\n")
            elif verb == b"PASS":
                writer.write(b"+OK\r\n" if arg == password.encode() else b"-ERR no\r\n")
            elif verb == b"STAT":
                writer.write(b"+OK 1 %d\r\n" % len(message))
            elif verb == b"RETR":
                writer.write(b"+OK\r\n" + stuff_whole(message))
            elif verb == b"QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0,
                                      ssl=ctx if implicit else None)


def _drive(tmp_path, tls, password="pw", message=MESSAGE, scenario="session", users="a,b",
           **extra):
    ctx = _certificate(tmp_path)

    async def main():
        server = await _serve(ctx, message, "pw", tls == "implicit")
        port = server.sockets[0].getsockname()[1]
        argv = ["--port", str(port), "--tls", tls, "--bind", "", "--cpu", "-1",
                "--users", users, "--password", password, "--concurrency", "2",
                "--scenario", scenario, "--max-sessions", "6", "--duration", "30"]
        for k, v in extra.items():
            argv += [f"--{k}"] + ([str(v)] if v != "" else [])
        try:
            return await loadgen.run(loadgen.parse_args(argv))
        finally:
            server.close()

    return asyncio.run(main())


def test_sessions_over_implicit_tls(tmp_path):
    result = _drive(tmp_path, "implicit")
    assert (result["sessions"], result["errors"]) == (6, 0)
    assert result["bytes"] == 6 * (len(stuff_whole(MESSAGE)))
    assert result["p50_ms"] is not None and result["p99_ms"] >= result["p50_ms"]


def test_sessions_over_stls(tmp_path):
    result = _drive(tmp_path, "stls")
    assert (result["sessions"], result["errors"]) == (6, 0)


def test_wrong_password_counts_as_error(tmp_path):
    result = _drive(tmp_path, "implicit", password="wrong")
    assert result["sessions"] == 0
    assert result["errors"] == 6
    assert any("-ERR" in kind for kind in result["error_kinds"])


def test_open_loop_rate_is_bounded_by_count(tmp_path):
    result = _drive(tmp_path, "implicit", users="a,b,c,d,e,f", rate=5)
    assert result["sessions"] + result["errors"] == 6
    assert result["errors"] == 0


def test_parse_stat():
    assert loadgen.parse_stat(b"+OK 3 1200\r\n") == (3, 1200)
    for bad in (b"-ERR no\r\n", b"+OK\r\n", b""):
        try:
            loadgen.parse_stat(bad)
        except loadgen.SessionError:
            pass
        else:
            raise AssertionError(bad)


def test_unstuffed_length_matches_the_stored_message():
    for message in (MESSAGE, b".first\r\n", b"no dots\r\n", b"..\r\n.\r\n"):
        wire = stuff_whole(message)
        assert loadgen.unstuffed_length(wire[:-3]) == len(message)
    # A line the server forgot to stuff (Twisted's bug) loses its dot at the
    # client, so the length check catches it.
    assert loadgen.unstuffed_length(b"a\r\n.b\r\n") != len(b"a\r\n.b\r\n")
    assert loadgen.unstuffed_length(b".first\r\n") != len(b".first\r\n")


def test_expand_users_and_percentile():
    assert loadgen.expand_users("u0008:u0011") == ["u0008", "u0009", "u0010", "u0011"]
    assert loadgen.expand_users("a,b") == ["a", "b"]
    values = list(range(1, 101))
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile([], 50) is None


def test_report_tables_and_ratios():
    def r(rate, cpu, errors=0, mb=0.0):
        return {"sessions_per_s": rate, "cpu_ms_per_session": cpu, "mb_per_s": mb,
                "p50_ms": 10.0, "p99_ms": 15.0, "errors": errors}
    results = {"runs": {
        "securepop/implicit": [r(90, 4.0), r(100, 3.0), r(110, 5.0)],
        "dovecot-hp/implicit": [r(20, 30.0)] * 3,
        "dovecot-hp+reuse/implicit": [r(50, 10.0, errors=1)] * 3,
        "floor/implicit": [r(200, 1.0)] * 3,
    }, "latency": {"rate": 50}, "idle": {}}
    text, m = run.tables(results)
    assert m["securepop/implicit"]["sessions_per_s"] == 100
    row = next(line for line in text.splitlines() if line.startswith("| sessions/s, implicit"))
    assert "| 5.00x | 2.00x | 0.50x |" in row
    cpu = next(line for line in text.splitlines() if "CPU ms/session, implicit" in line)
    assert "| 7.50x | 2.50x | 0.25x |" in cpu   # lower is better: Dovecot / securepop
    assert "Errors over all runs: 3" in text


def test_latency_table_shows_cpu_and_core_busy_at_the_rate():
    """The tail is read against how busy the core was: both are in the row."""
    def r(rate, cpu, p50=5.0, p99=10.0):
        return {"sessions_per_s": rate, "cpu_ms_per_session": cpu, "p50_ms": p50,
                "p99_ms": p99, "errors": 0}
    results = {"runs": {
        "securepop/implicit": [r(400, 2.0)] * 3,
        "securepop/latency": [r(200, 3.5), r(200, 4.0, p99=30.0), r(200, 3.0)],
        "floor/latency": [r(200, 1.0)] * 3,
    }, "latency": {"rate": 200}, "idle": {}}
    text, _ = run.tables(results)
    row = next(line for line in text.splitlines() if line.startswith("| securepop | 5.0"))
    assert "| 2.00x, 6.00x, 2.00x |" in row
    assert "| 3.50 (2.00) | 70% |" in row     # 3.5 ms x 200/s: the core is 70% busy
    floor = next(line for line in text.splitlines() if line.startswith("| floor (greeting"))
    assert "| 1.00 (–) | 20% |" in floor
    assert run.busy([{"sessions_per_s": 0, "cpu_ms_per_session": None}]) == "–"


def test_top_functions(tmp_path):
    folded = tmp_path / "p.folded"
    folded.write_text("main;ReactorBase.run;f 3\nthread;g 1\nbad line\n")
    text = run.top_functions(folded)
    assert "samples: 4" in text and "75.0  f" in text
    only = run.top_functions(folded, only="ReactorBase.run")
    assert "samples: 3" in only and "  g" not in only


def test_report_header_names_the_openssl_of_each_side(tmp_path):
    """securepop (cryptography's own OpenSSL) and Dovecot (the system's) differ."""
    results = {"runs": {}, "latency": {}, "idle": {}, "meta": {
        "date": "d", "pyopenssl": "26.4.0", "openssl_pyopenssl": "OpenSSL 4.0.3",
        "openssl": "OpenSSL 3.0.22", "openssl_loadgen": "OpenSSL 3.0.9", "dovecot": "2.3"}}
    report = tmp_path / "RESULTS.md"
    run.write_report(results, report)
    head = next(line for line in report.read_text().splitlines() if line.startswith("Run d:"))
    assert "pyOpenSSL 26.4.0 on OpenSSL 4.0.3 (securepop, floor)" in head
    assert "Dovecot 2.3 on the system's OpenSSL 3.0.22" in head
    assert "load generator on Python's ssl with OpenSSL 3.0.9" in head


def test_poll_scenario_logs_in_and_quits_without_retr(tmp_path):
    result = _drive(tmp_path, "implicit", scenario="poll")
    assert (result["sessions"], result["errors"], result["bytes"]) == (6, 0, 0)
    assert result["login_p50_ms"] is not None
    assert result["login_p50_ms"] <= result["p99_ms"]


def test_poisson_arrivals_skip_a_user_still_in_session(tmp_path):
    # One user, arrivals far faster than a TLS session: most draws find it busy.
    dump = tmp_path / "lat.txt"
    result = _drive(tmp_path, "implicit", users="a", rate=2000, poisson="",
                    **{"dump-latencies": dump})
    assert result["errors"] == 0
    assert result["busy_skips"] > 0
    assert result["sessions"] + result["busy_skips"] == 6
    rows = [line.split() for line in dump.read_text().splitlines()]
    assert len(rows) == result["sessions"] and all(len(r) == 3 for r in rows)
    # start, session ms, login ms: a login ends before its session does
    assert all(float(r[2]) <= float(r[1]) for r in rows)


def test_poisson_needs_the_flag(tmp_path):
    # Without --poisson the same rate is the fixed-interval loop: no skips counted.
    result = _drive(tmp_path, "implicit", users="a,b,c,d,e,f", rate=5)
    assert result["busy_skips"] == 0 and result["sessions"] == 6
