"""
The LMTP and migrate lines of the benchmark (bench/lmtpload.py,
bench/mailin.py): framing, reply parsing, rates and tables, and the load
generator against a tiny asyncio LMTP server on a Unix socket.  No timing
is asserted.
"""

import asyncio

import pytest

from bench import lmtpload, mailin, run


def test_stuffed_doubles_leading_dots_and_terminates():
    assert lmtpload.stuffed(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert lmtpload.stuffed(b".first\r\n") == b"..first\r\n.\r\n"
    # No final line end: one is added before the terminator.
    assert lmtpload.stuffed(b"no end") == b"no end\r\n.\r\n"
    # A dot not at a line start is left alone.
    assert lmtpload.stuffed(b"a.b\r\n") == b"a.b\r\n.\r\n"


def _reply(data):
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await lmtpload.read_reply(reader)
    return asyncio.run(main())


def test_read_reply_single_and_multiline():
    assert _reply(b"250 2.1.0 ok\r\n") == (250, "2.1.0 ok")
    assert _reply(b"250-host\r\n250-PIPELINING\r\n250 SIZE\r\n") == (
        250, "host\nPIPELINING\nSIZE")


def test_read_reply_refuses_garbage_and_eof():
    with pytest.raises(ValueError):
        _reply(b"hello\r\n")
    with pytest.raises(ConnectionError):
        _reply(b"250-partial\r\n")


def test_percentile_and_summary():
    assert lmtpload.percentile([], 0.99) is None
    assert lmtpload.percentile([3, 1, 2], 0.5) == 2
    assert lmtpload.percentile(list(range(1, 101)), 0.99) == 99
    s = lmtpload.summary([0.001, 0.003, 0.002], 0.5, 0, {})
    assert s["deliveries"] == 3 and s["deliveries_per_s"] == 6.0
    assert s["p50_ms"] == 2.0 and s["p99_ms"] == 3.0
    empty = lmtpload.summary([], 0.0, 2, {"x": 2})
    assert empty["deliveries_per_s"] is None and empty["p50_ms"] is None
    assert empty["errors"] == 2


def test_per_delivery_ms():
    assert mailin.per_delivery_ms(0.5, 250) == 2.0
    assert mailin.per_delivery_ms(0.5, 0) is None


def test_migrate_rates_from_the_json_report():
    report = {"status": 0, "users": [{"fetched": 1000, "bytes": 10_240_000,
                                      "seconds": 2.0, "error": None}]}
    r = mailin.migrate_rates(report, 4.0)
    assert (r["messages_per_s"], r["mb_per_s"]) == (500.0, 5.1)
    assert (r["wall_messages_per_s"], r["wall_mb_per_s"]) == (250.0, 2.6)
    failed = {"status": 77, "users": [{"fetched": 0, "bytes": 0, "seconds": 0.0,
                                       "error": "login refused"}]}
    r = mailin.migrate_rates(failed, 1.0)
    assert r["messages_per_s"] is None and r["status"] == 77
    assert r["error"] == "login refused"


def test_median_of_skips_missing():
    runs = [{"x": 3}, {"x": None}, {"x": 1}, {}]
    assert mailin.median_of(runs, "x") == 2
    assert mailin.median_of([{}], "x") is None


def test_tables_ratio_and_errors():
    def r(rate, cpu, errors=0):
        return {"deliveries_per_s": rate, "cpu_ms_per_delivery": cpu, "p50_ms": 1.0,
                "p99_ms": 2.0, "errors": errors}
    results = {"lmtp": {"clients": 8, "messages": 10, "size": 10240, "runs": {
        "securepop": [r(300, 2.0), r(320, 2.0), r(310, 2.0)],
        "dovecot": [r(200, 4.0), r(100, 4.0, errors=1), r(155, 4.0)]}}}
    text = mailin.tables(results)
    assert "| securepop | 310.0 | 300.0, 320.0, 310.0 | 2.00 |" in text
    assert "| Dovecot LMTP | 155.0 |" in text and "| 1 |" in text
    assert "| securepop/Dovecot | 2.00x | | 0.50x |" in text
    assert "migrate" not in text
    mig = {"migrate": {"messages": 10, "size": 10240, "octets": 102400, "runs": [
        dict(mailin.migrate_rates({"status": 0, "users": [
            {"fetched": 10, "bytes": 102400, "seconds": 0.5}]}, 1.0),
            client_cpu_s=0.3, server_cpu_s=0.1)]}}
    text = mailin.tables(mig)
    assert "| engine (listing to last message stored) | 20.0 | 0.20 |" in text
    assert "LMTP" not in text


async def _lmtp_server(path, refuse=()):
    """Just enough LMTP: one reply per command, one per recipient after DATA."""
    stored = []

    async def handle(reader, writer):
        writer.write(b"220 test LMTP\r\n")
        rcpts = []
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(b"250-test\r\n250 PIPELINING\r\n")
            elif verb == b"MAIL":
                rcpts = []
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                who = line.split(b"<")[1].split(b">")[0].decode()
                if who in refuse:
                    writer.write(b"550 5.1.1 unknown\r\n")
                else:
                    rcpts.append(who)
                    writer.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                body = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk
                stored.append(body)
                for _ in rcpts:
                    writer.write(b"250 2.0.0 stored\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    return server, stored


def _drive(tmp_path, users="a,b", refuse=()):
    path = str(tmp_path / "lmtp")

    async def main():
        server, stored = await _lmtp_server(path, refuse)
        try:
            args = lmtpload.parse_args(["--socket", path, "--users", users, "--concurrency",
                                        "2", "--messages", "3", "--size", "2048"])
            return await lmtpload.main_async(args), stored
        finally:
            server.close()

    return asyncio.run(main())


def test_load_generator_delivers_count_messages(tmp_path):
    result, stored = _drive(tmp_path)
    assert (result["deliveries"], result["errors"]) == (6, 0)
    assert len(stored) == 6
    # The dot-stuffed body arrives: the bench message has dotted lines.
    assert all(b"\r\n..a dotted line" in body and len(body) > 2048 for body in stored)


def test_refused_recipient_is_an_error_and_no_delivery(tmp_path):
    result, stored = _drive(tmp_path, refuse=("b",))
    assert result["deliveries"] == 3 and result["errors"] == 1
    assert any("RCPT: 550" in kind for kind in result["error_kinds"])
    assert len(stored) == 3


def test_run_options_for_the_mailin_lines():
    args = run.parse_args(["--lmtp"])
    assert args.only_mailin and not args.only_logins
    assert (args.lmtp_clients, args.lmtp_messages, args.migrate_messages) == (8, 100, 2000)
    assert args.results.endswith("results-mailin.json")
    quick = run.parse_args(["--migrate", "--quick"])
    assert (quick.lmtp_messages, quick.migrate_messages) == (25, 500)
    default = run.parse_args([])
    assert not default.only_mailin and default.results.endswith("results.json")
    with pytest.raises(SystemExit):
        run.parse_args(["--lmtp", "--lmtp-clients", "51"])
