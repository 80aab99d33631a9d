"""
C{securepop migrate} against Debian's Dovecot as the old server (STLS with
a checked certificate, or implicit TLS): afterwards securepop serves the
same UIDLs, sizes and octets in the same order (poplib on both), a second
run changes nothing, a message added on Dovecot later comes over with its
UIDL, a wrong password or an untrusted certificate changes nothing,
C{--verify} notices a difference, and fetchmail with C{uidl keep}, pointed
at the new server under the same poll name, downloads nothing again.
"""

import json
import os
import poplib
import ssl
import subprocess
import textwrap

import pytest

from tests.integration.daemon import require_tool
from tests.integration.fixtures_dovecot import SECURE, DovecotServer, dovecotAvailable

PASSWORD = "wonderland-7"
USERS = {"alice": PASSWORD, "carol": PASSWORD, "dave": PASSWORD, "gina": PASSWORD}

MESSAGES = [
    b"From: a@example.com\nSubject: dots\n\n.leading dot\n..two dots\n.\nend\n",
    b"From: a@example.com\r\nSubject: crlf\r\n\r\nline one\r\nline two\r\n",
    b"From: a@example.com\nSubject: 8bit\nContent-Transfer-Encoding: 8bit\n\n"
    b"caf\xc3\xa9 \xe9\xff\x80 bytes\n",
    b"From: a@example.com\nSubject: long\n\n" + b"0123456789" * 2048 + b"\n",
    b"From: a@example.com\nSubject: short\n\nx\n",
]


@pytest.fixture(scope="module")
def dovecot():
    if not dovecotAvailable():
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot-core, dovecot-pop3d and openssl must be installed in CI")
        pytest.skip("dovecot not installed")
    server = DovecotServer(mode=SECURE, users=dict(USERS))
    server.start()
    for i, message in enumerate(MESSAGES):
        server.deliver("alice", message, name=f"17000000{i:02d}.M{i}P1.old")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def target(daemon_factory):
    return daemon_factory(users=tuple(USERS.items()) + (("frank", PASSWORD), ("hank", PASSWORD),
                                                        ("iris", PASSWORD)), name="migrate")


@pytest.fixture(scope="module")
def password_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("migrate") / "password"
    path.write_text(PASSWORD + "\n")
    os.chmod(path, 0o600)
    return str(path)


def migrate(target, *args):
    proc = target.cli("migrate", *args, "--json", check=False)
    report = None
    if proc.stdout.strip():
        report = json.loads(proc.stdout)
    return proc, report


def from_dovecot(dovecot, password_file, user="alice", *extra):
    return (f"pop3://localhost:{dovecot.popPort}", "--user", user,
            "--password-file", password_file, "--cafile", dovecot.certificate, *extra)


def listing(port, cafile, user):
    """UIDL, LIST and every message over STLS with poplib."""
    poplib._MAXLINE = 1 << 20      # the 20 KB line
    client = poplib.POP3("localhost", port, timeout=30)
    try:
        client.stls(ssl.create_default_context(cafile=cafile))
        client.user(user)
        client.pass_(PASSWORD)
        uidls = client.uidl()[1]
        sizes = client.list()[1]
        bodies = [client.retr(i + 1)[1] for i in range(len(sizes))]
        return uidls, sizes, bodies
    finally:
        client.quit()


def files(maildir):
    return sorted(name for sub in ("new", "cur") if (maildir / sub).exists()
                  for name in os.listdir(maildir / sub))


def test_migrate_keeps_uidls_sizes_octets_and_order(dovecot, target, password_file):
    old = listing(dovecot.popPort, dovecot.certificate, "alice")
    assert len(old[0]) == len(MESSAGES)

    proc, report = migrate(target, *from_dovecot(dovecot, password_file))
    assert proc.returncode == 0, proc.stderr
    user = report["users"][0]
    assert (user["fetched"], user["already"], user["error"]) == (len(MESSAGES), 0, None)
    assert user["size_mismatches"] == []
    new = listing(target.pop3_port, target.ca_file, "alice")
    assert new == old

    # A second run changes nothing.
    maildir = target.maildir("alice")
    before = (files(maildir), (maildir / "securepop-uidlist.json").read_bytes())
    proc, report = migrate(target, *from_dovecot(dovecot, password_file))
    assert proc.returncode == 0, proc.stderr
    assert (report["users"][0]["fetched"], report["users"][0]["already"]) == (0, len(MESSAGES))
    assert (files(maildir), (maildir / "securepop-uidlist.json").read_bytes()) == before
    assert listing(target.pop3_port, target.ca_file, "alice") == old

    # Never deleted on the source.
    assert listing(dovecot.popPort, dovecot.certificate, "alice") == old

    # --verify agrees; a message added on Dovecot makes it disagree ...
    proc, report = migrate(target, *from_dovecot(dovecot, password_file, "alice", "--verify"))
    assert proc.returncode == 0, proc.stdout
    dovecot.deliver("alice", b"Subject: later\n\nadded after the first run\n",
                    name="1700000099.M99P1.old")
    proc, report = migrate(target, *from_dovecot(dovecot, password_file, "alice", "--verify"))
    assert proc.returncode == 1
    assert any("only on the source" in d for d in report["users"][0]["differences"])

    # ... and the next run brings it over with its UIDL.
    proc, report = migrate(target, *from_dovecot(dovecot, password_file))
    assert proc.returncode == 0, proc.stderr
    assert report["users"][0]["fetched"] == 1
    old = listing(dovecot.popPort, dovecot.certificate, "alice")
    assert listing(target.pop3_port, target.ca_file, "alice") == old
    assert len(old[0]) == len(MESSAGES) + 1


def test_from_dovecot_maildir(dovecot, target):
    """A cut-over by copying files: Dovecot's own Maildir and dovecot-uidlist."""
    old = listing(dovecot.popPort, dovecot.certificate, "alice")   # dovecot-uidlist written
    maildir = os.path.join(dovecot._paths()["home"], "alice", "Maildir")
    proc, report = migrate(target, "--from-maildir", maildir, "--user", "frank")
    assert proc.returncode == 0, proc.stderr
    assert report["users"][0]["fetched"] == len(old[0])
    assert listing(target.pop3_port, target.ca_file, "frank") == old


def make_courier_maildir(root):
    """
    A Maildir as courier-pop3d leaves it: cur/ with flags in the names and a
    courierpop3dsizelist (version 3: name, LIST size, uid:uidvalidity:utf8)
    whose uid 0 line falls back to the file name's UIDL.  A file the list
    does not name (Courier would give it a new uid) stays behind.
    """
    messages = [("1700000001.M1P1.courier:2,S", MESSAGES[0], 3),
                ("1700000002.M2P2.courier:2,", MESSAGES[3], 4),         # the 20 KB line
                ("1700000003.M3P3.courier:2,RS", MESSAGES[2], 0),
                ("1700000004.M4P4.courier:2,", b"From: a@example.com\n\nno final line end", 9)]
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    lines = [b"/3 10 1700000900\n"]
    for name, data, uid in messages:
        (root / "cur" / name).write_bytes(data)
        # calcsize(): octets + lines, and the CRLF RETR adds after a last line without one
        size = len(data) + data.count(b"\n") + (0 if data.endswith(b"\n") else 2)
        lines.append(f"{name} {size} {uid}:1700000900:0\n".encode())
    (root / "new" / "1700000099.M9P9.courier").write_bytes(MESSAGES[4])
    (root / "courierpop3dsizelist").write_bytes(b"".join(lines))
    return [("UID3-1700000900", messages[0][1]), ("UID4-1700000900", messages[1][1]),
            ("1700000003.M3P3.courier", messages[2][1]), ("UID9-1700000900", messages[3][1])]


def test_from_courier_maildir(target, tmp_path):
    """
    A cut-over by copying files from a Courier server: securepop serves
    courier-pop3d's UIDLs (UID<uid>-<uidvalidity>, the file name for uid 0)
    in its order, with the same octets; a file the list does not name is
    reported and left; a second run changes nothing.
    """
    root = tmp_path / "Maildir"
    expected = make_courier_maildir(root)
    unlisted = [str(root / "new" / "1700000099.M9P9.courier")]
    proc, report = migrate(target, "--from-maildir", str(root), "--user", "hank")
    assert proc.returncode == 1, proc.stderr           # the unlisted file is reported
    assert report["users"][0]["unlisted"] == unlisted
    assert report["users"][0]["fetched"] == len(expected)
    uidls, sizes, bodies = listing(target.pop3_port, target.ca_file, "hank")
    assert [line.split()[1].decode() for line in uidls] == [uidl for uidl, _ in expected]
    assert [b"\n".join(body) for body in bodies] == [data.rstrip(b"\n") for _, data in expected]
    assert report["users"][0]["size_mismatches"] == []
    before = files(target.maildir("hank"))
    proc, report = migrate(target, "--from-maildir", str(root), "--user", "hank")
    assert proc.returncode == 1 and report["users"][0]["unlisted"] == unlisted
    assert (report["users"][0]["fetched"], report["users"][0]["already"]) == (0, len(expected))
    assert files(target.maildir("hank")) == before


def test_from_courier_maildir_malformed_changes_nothing(target, tmp_path):
    """A broken courierpop3dsizelist line stops the run, naming file and line."""
    root = tmp_path / "Maildir"
    make_courier_maildir(root)
    with open(root / "courierpop3dsizelist", "ab") as f:
        f.write(b"1700000005.M5P5.courier:2, 12 7-1700000900\n")
    proc, report = migrate(target, "--from-maildir", str(root), "--user", "iris")
    assert proc.returncode != 0
    assert f"{root / 'courierpop3dsizelist'}: line 6:" in report["users"][0]["error"]
    assert not target.maildir("iris").exists() or files(target.maildir("iris")) == []


def test_message_without_final_line_end(dovecot, target, password_file):
    """
    Same UIDL and RETR octets; LIST is 2 more here (Dovecot does not count
    the CRLF its RETR adds), which --verify accepts.
    """
    dovecot.deliver("gina", b"Subject: no final newline\n\nlast line")
    proc, report = migrate(target, *from_dovecot(dovecot, password_file, "gina"))
    assert proc.returncode == 0, proc.stderr
    assert report["users"][0]["size_mismatches"] == []
    old = listing(dovecot.popPort, dovecot.certificate, "gina")
    new = listing(target.pop3_port, target.ca_file, "gina")
    assert (new[0], new[2]) == (old[0], old[2])
    (theirs,), (ours,) = old[1], new[1]
    assert int(ours.split()[1]) == int(theirs.split()[1]) + 2
    proc, report = migrate(target, *from_dovecot(dovecot, password_file, "gina", "--verify"))
    assert proc.returncode == 0, report


def test_wrong_password_changes_nothing(dovecot, target, tmp_path):
    dovecot.deliver("carol", b"Subject: c\n\nc\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    proc, report = migrate(target, *from_dovecot(dovecot, str(wrong), "carol"))
    assert proc.returncode == 77
    assert "refused the login of carol" in report["users"][0]["error"]
    assert PASSWORD not in proc.stdout.decode() + proc.stderr.decode()
    assert not target.maildir("carol").exists()


def test_untrusted_certificate_changes_nothing(dovecot, target, password_file):
    proc, report = migrate(target, f"pop3://localhost:{dovecot.popPort}", "--user", "carol",
                           "--password-file", password_file)
    assert proc.returncode == 69
    assert "certificate" in report["users"][0]["error"]
    assert not target.maildir("carol").exists()


def test_implicit_tls_and_users_csv(dovecot, target, password_file, tmp_path):
    dovecot.deliver("dave", b"Subject: d\n\nd\n")
    csv_path = tmp_path / "users.csv"
    csv_path.write_text(f"carol,{password_file}\ndave,{password_file}\n")
    proc, report = migrate(target, f"pop3s://localhost:{dovecot.popsPort}",
                           "--users", str(csv_path), "--cafile", dovecot.certificate)
    assert proc.returncode == 0, proc.stderr
    assert [(u["user"], u["fetched"]) for u in report["users"]] == [("carol", 1), ("dave", 1)]
    for user in ("carol", "dave"):
        assert (listing(target.pop3_port, target.ca_file, user)
                == listing(dovecot.popPort, dovecot.certificate, user))


def _fetchmail(workdir, port, cafile, user):
    exe = require_tool("fetchmail")
    out = workdir / "mail"
    out.mkdir(parents=True, exist_ok=True)
    mda = workdir / "mda.sh"
    mda.write_text('#!/bin/sh\ncat > "%s/$(date +%%s%%N).$$"\n' % out)
    mda.chmod(0o700)
    rc = workdir / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no bouncemail
        poll mail.example.test via 127.0.0.1 service {port} proto pop3 uidl timeout 60
          user '{user}' there with password '{PASSWORD}' is 'root' here
          sslproto 'tls1.2+' sslcertck sslcertfile '{cafile}' sslcommonname 'localhost'
          keep no rewrite no stripcr no forcecr
          mda '{mda}'
        """))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(workdir), HOME=str(workdir))
    proc = subprocess.run([exe, "-f", str(rc), "--nosyslog", "--invisible"],
                          capture_output=True, timeout=120, env=env)
    return proc, len(os.listdir(out))


def test_fetchmail_downloads_nothing_again(dovecot, target, password_file, tmp_path):
    for i in range(3):
        dovecot.deliver("dave", b"Subject: f%d\n\nfetch me\n" % i)
    on_dovecot = len(listing(dovecot.popPort, dovecot.certificate, "dave")[0])
    proc, count = _fetchmail(tmp_path, dovecot.popPort, dovecot.certificate, "dave")
    assert proc.returncode == 0 and count == on_dovecot, proc.stderr
    proc, report = migrate(target, *from_dovecot(dovecot, password_file, "dave"))
    assert proc.returncode == 0, proc.stderr
    # Same poll name, now the new server: nothing is new.
    proc, count = _fetchmail(tmp_path, target.pop3_port, target.ca_file, "dave")
    assert proc.returncode == 1, proc.stderr   # 1: no mail
    assert count == on_dovecot
    # A message the new server gets is new to fetchmail: exactly one more.
    target.deliver("dave", b"Subject: arrived here\r\n\r\nnew\r\n")
    proc, count = _fetchmail(tmp_path, target.pop3_port, target.ca_file, "dave")
    assert proc.returncode == 0 and count == on_dovecot + 1, proc.stderr


def test_no_migration_while_a_session_holds_the_maildrop(dovecot, target, password_file):
    dovecot.deliver("gina", b"Subject: while locked\n\nx\n")
    session = poplib.POP3("localhost", target.pop3_port, timeout=30)
    session.stls(ssl.create_default_context(cafile=target.ca_file))
    session.user("gina")
    session.pass_(PASSWORD)
    try:
        before = files(target.maildir("gina"))
        proc, report = migrate(target, *from_dovecot(dovecot, password_file, "gina"))
        assert proc.returncode == 75
        assert "in use" in report["users"][0]["error"]
        assert files(target.maildir("gina")) == before
    finally:
        session.quit()
    proc, report = migrate(target, *from_dovecot(dovecot, password_file, "gina"))
    assert proc.returncode == 0 and report["users"][0]["fetched"] == 1, proc.stderr
