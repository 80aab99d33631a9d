"""
Tests for securepop.cli.test_auth (the `securepop test-auth` command).
"""

import argparse
import io

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import ensureDeferred, fail, succeed

from securepop.auth.records import UserRecord
from securepop.cli import test_auth
from securepop.errors import SourceUnavailable
from securepop.interfaces import CLEARTEXT_SECRET, NT_HASH

# MD4(UTF-16LE("Secret-pass-3"))
CAROL_NT = bytes.fromhex("0701327011" + "73C003589BA38563C67B5F")


class FakeSource:
    name = "fake"

    def __init__(self, outcome=None):
        self.outcome = outcome
        self.calls = []

    def verifyPassword(self, username, password):
        self.calls.append(("verify", username, password))
        if self.outcome is not None:
            return fail(self.outcome)
        return succeed(UserRecord(username, info={"dn": f"uid={username}"}))

    def lookupUser(self, username):
        self.calls.append(("lookup", username))
        if self.outcome is not None:
            return fail(self.outcome)
        return succeed(UserRecord(username))

    def lookupSecret(self, username, kind):
        self.calls.append(("secret", username, kind))
        if self.outcome is not None:
            return fail(self.outcome)
        secret = CAROL_NT if kind == NT_HASH else b"apop-secret"
        return succeed((UserRecord(username), secret))


class Ticks:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 0.25
        return self.now


def run(source, mechanism, password):
    results = []
    ensureDeferred(test_auth.tryLogin(source, "carol", mechanism, password,
                                      Ticks())).addBoth(results.append)
    return results[0]


def test_parser_registration():
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    test_auth.add_parser(subparsers)
    args = parser.parse_args(["test-auth", "alice", "--mechanism", "ntlm"])
    assert args.user == "alice" and args.mechanism == "ntlm"
    assert args.func is test_auth.run
    assert not hasattr(args, "config")  # never overrides a global --config
    args = parser.parse_args(["test-auth", "bob", "--config", "/x.toml"])
    assert args.config == "/x.toml" and args.mechanism == "plain"


def test_password_from_stdin():
    args = argparse.Namespace(user="a", password_stdin=True)
    assert test_auth.readPassword(args, io.StringIO("s3cret\r\nmore\n")) == b"s3cret"


def test_password_from_terminal():
    class TTY(io.StringIO):
        def isatty(self):
            return True

    args = argparse.Namespace(user="a", password_stdin=False)
    prompts = []
    password = test_auth.readPassword(
        args, TTY(), prompt=lambda text: prompts.append(text) or "pw")
    assert password == b"pw" and prompts == ["Password for a: "]


def test_plain_ok():
    source = FakeSource()
    report = run(source, "plain", b"pw")
    assert report["result"] == "ok"
    assert report["dn"] == "uid=carol"
    assert report["seconds"] == 0.25
    assert source.calls == [("verify", "carol", b"pw")]


def test_refused_and_unavailable():
    assert run(FakeSource(UnauthorizedLogin("no")), "plain", b"x")["result"] == "refused"
    report = run(FakeSource(SourceUnavailable("down")), "plain", b"x")
    assert report["result"] == "unavailable" and report["reason"] == "down"


def test_ntlm_compares_the_stored_nt_hash():
    assert run(FakeSource(), "ntlm", b"Secret-pass-3")["result"] == "ok"
    report = run(FakeSource(), "ntlm", b"Secret-pass-4")
    assert report["result"] == "refused"


def test_secret_mechanisms():
    source = FakeSource()
    assert run(source, "cram-md5", b"apop-secret")["result"] == "ok"
    assert source.calls[-1][2] == CLEARTEXT_SECRET
    assert run(source, "apop", b"other")["result"] == "refused"


def test_lookup_needs_no_password():
    source = FakeSource()
    assert run(source, "lookup", b"")["result"] == "ok"
    assert source.calls == [("lookup", "carol")]


def test_explain_is_preferred():
    class Explaining(FakeSource):
        def explain(self, username, password=None):
            self.calls.append(("explain", username, password))
            return succeed({"result": "refused", "dn": "x", "groups": []})

    source = Explaining()
    report = run(source, "plain", b"pw")
    assert report["result"] == "refused"
    assert source.calls == [("explain", "carol", b"pw")]


def test_format_report_never_shows_the_password():
    text = test_auth.formatReport({"result": "ok", "user": "a", "groups": [],
                                   "seconds": 0.1, "zzz": 1})
    lines = text.splitlines()
    assert lines[0].startswith("result:") and lines[0].endswith("ok")
    assert "groups:         (none)" in lines
    assert lines[-1].startswith("zzz:")


def _rule(name):
    from securepop.auth.usernames import normalise_username
    from securepop.config import AuthSettings

    return normalise_username(name, AuthSettings(netbios_domain="EXAMPLE"), "pop.example.com")


def _tryWithRule(source, user, mechanism, password, verifier=None):
    results = []
    ensureDeferred(test_auth.tryLogin(source, user, mechanism, password, Ticks(),
                                      verifier, normalise=_rule)).addBoth(results.append)
    return results[0]


def test_the_user_name_is_normalised_as_a_login_would_be():
    """test-auth Carol tries what a login as Carol tries: carol."""
    for mechanism, call in (("plain", ("verify", "carol", b"pw")), ("lookup", ("lookup", "carol")),
                            ("ntlm", ("secret", "carol", NT_HASH))):
        source = FakeSource()
        report = _tryWithRule(source, "EXAMPLE\\Carol", mechanism, b"pw")
        assert source.calls == [call]
        assert report["user"] == "EXAMPLE\\Carol" and report["login_name"] == "carol"
        assert "login_name:     carol" in test_auth.formatReport(report)


def test_a_name_no_login_can_use_is_refused_without_a_lookup():
    source = FakeSource()
    report = _tryWithRule(source, "OTHER\\carol", "plain", b"pw")
    assert report["result"] == "refused" and "domain" in report["reason"]
    assert source.calls == []


def test_the_name_the_dc_verified_is_normalised(monkeypatch):
    class Verifier:
        def newExchange(self):
            return self

        def negotiate(self, token):
            return succeed(b"challenge")

        def authenticate(self, token):
            return succeed("EXAMPLE\\Carol")

    class Client:
        def step(self, token=None):
            return b"token"

    monkeypatch.setattr("spnego.client", lambda *a, **k: Client())
    source = FakeSource()
    report = _tryWithRule(source, "EXAMPLE\\Carol", "ntlm", b"pw", Verifier())
    assert report["verified_by_dc"] == "EXAMPLE\\Carol"
    assert source.calls == [("lookup", "carol")] and report["result"] == "ok"


def _kerberos(tmp_path, keytab):
    import dataclasses

    from securepop import config

    settings = config.Settings()
    return dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, hostname="mail.example.com",
                                             data_dir=str(tmp_path)),
        auth=dataclasses.replace(settings.auth, gssapi=config.GSSAPISettings(keytab=keytab)))


def test_gssapi_without_a_keytab_or_a_ticket_is_refused_and_says_why(tmp_path, monkeypatch):
    from tests.unit.test_auth_keytab import GOOD, write

    source = FakeSource()
    report = _result(ensureDeferred(test_auth.tryKerberos(
        _kerberos(tmp_path, ""), source, "alice", Ticks())))
    assert report["result"] == "refused" and "keytab" in report["reason"]
    write(tmp_path, GOOD)
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path}/no-such-cache")
    report = _result(ensureDeferred(test_auth.tryKerberos(
        _kerberos(tmp_path, "pop.keytab"), source, "alice", Ticks())))
    assert report["result"] == "refused" and "kinit" in report["reason"]
    assert source.calls == []               # nobody was looked up


def _result(d):
    box = []
    d.addBoth(box.append)
    assert box, "the report is not ready"
    return box[0]
