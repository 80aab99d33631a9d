"""
Tests for L{securepop.cli.audit}: the sub-command's arguments and their
checks (no network: every case here stops before connecting).
"""

import argparse
import io
import os

import pytest

from securepop.cli import audit as cli


def parse(argv):
    parser = argparse.ArgumentParser(prog="securepop")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    return parser.parse_args(argv)


def test_add_parser_registers_audit():
    args = parse(["audit", "pop3://h", "--source-address", "127.0.0.9", "--servername", "n",
                  "--cafile", "ca.pem", "--user", "alice", "--password-file", "pw", "--json",
                  "--timeout", "3"])
    assert args.func is cli.run
    assert (args.url, args.source_address, args.servername, args.cafile, args.user,
            args.password_file, args.json, args.timeout) == (
        "pop3://h", "127.0.0.9", "n", "ca.pem", "alice", "pw", True, 3.0)


def test_defaults():
    args = parse(["audit", "pop3s://h"])
    assert args.json is False and args.timeout == 10.0 and args.user is None


def test_read_password(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\r\nsecond line\n")
    assert cli.readPassword(str(path)) == b"s3cret"


@pytest.mark.parametrize("content", [b"", b"\n", b"x" * 5000])
def test_read_password_refuses(tmp_path, content):
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        cli.readPassword(str(path))


def test_build_options(tmp_path):
    path = tmp_path / "pw"
    path.write_text("pw\n")
    args = parse(["audit", "pop3://h:1110", "--user", "alice", "--password-file", str(path),
                  "--source-address", "::1"])
    options = cli.buildOptions(args)
    assert options.target.port == 1110 and options.password == b"pw"
    assert options.sourceAddress == "::1"


@pytest.mark.parametrize("extra", [
    ["--user", "alice"],
    ["--password-file", "/nonexistent"],
    ["--source-address", "not-an-ip"],
    ["--timeout", "0"],
    ["--timeout", "1000"],
    ["--user", "al ice", "--password-file", os.devnull],
])
def test_usage_errors(extra):
    err = io.StringIO()
    out = io.StringIO()
    args = parse(["audit", "pop3://127.0.0.1:1"] + extra)
    assert cli.run(args, out=out, err=err) == cli.EXIT_USAGE
    assert out.getvalue() == ""
    assert err.getvalue().startswith("securepop audit: ")


def test_bad_url_is_a_usage_error():
    err = io.StringIO()
    args = parse(["audit", "pop3://alice:secret@h"])
    assert cli.run(args, out=io.StringIO(), err=err) == cli.EXIT_USAGE
    assert "secret" not in err.getvalue()


def test_missing_password_file_is_a_usage_error(tmp_path):
    err = io.StringIO()
    args = parse(["audit", "pop3://h", "--user", "a", "--password-file", str(tmp_path / "none")])
    assert cli.run(args, out=io.StringIO(), err=err) == cli.EXIT_USAGE
