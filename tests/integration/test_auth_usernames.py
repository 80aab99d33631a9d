"""
User names against the real daemon and the real securepop command: one rule
(securepop/auth/usernames.py) for `securepop user add`, `deliver`, every
mechanism and the users file.

`securepop user add Eve` and `deliver Eve` must store and write what a login
(folded to `eve`) finds; with strip_domain off, `EXAMPLE\\alice` and
`alice@example.com` (the server's own domains) are accepted like
`pop.example.com\\alice`.

The daemon is `pop.example.com` with NetBIOS domain EXAMPLE; clients reach
it on 127.0.0.1 and check the certificate for that name.
"""

import base64
import hmac
import poplib
import socket
import subprocess

import pytest

from tests.integration.clients import ADDRESS, client_context, crlf_normalise
from tests.integration.daemon import LISTENERS, Daemon, require_tool
from tests.integration.test_sasl_clients import LogCursor, scram_login

HOST = "pop.example.com"
EVE_PASSWORD = "Eve's-Horse-9"
BOB_PASSWORD = "Bob-Battery-4"
ALICE_PASSWORD = "Alice-Staple-2"
WRONG = "Wrong-Horse-8"
MESSAGE = b"From: a@example.test\nSubject: for Eve\n\nbody line\n"

CONFIG = """
[server]
hostname = "pop.example.com"
data_dir = "{data_dir}"
""" + LISTENERS + """[auth]
mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "NTLM", "CRAM-MD5"]
netbios_domain = "EXAMPLE"
failure_delay = 0.05
failure_delay_max = 0.2
max_attempts = 3
[access]
max_connections_per_ip = 200
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """
    Eve added and mailed as `Eve` through the real CLI with this
    configuration; Bob written as `Bob` the way the CLI wrote names before
    (an old users file) and mailed into `mail/Bob`; alice in lower case.
    """
    from securepop.auth import userfile

    daemon = Daemon(tmp_path_factory.mktemp("usernames"), CONFIG)
    added = daemon.cli("user", "add", "Eve", input=f"{EVE_PASSWORD}\n".encode())
    daemon.add_output = added.stdout.decode()
    daemon.cli("user", "add", "alice", input=f"{ALICE_PASSWORD}\n".encode())
    daemon.cli("deliver", "Eve", input=MESSAGE)
    kinds = userfile.kinds_for_mechanisms(
        ["PLAIN", "LOGIN", "SCRAM-SHA-256", "NTLM", "CRAM-MD5"], False)
    userfile.set_password(daemon.data_dir / "users", "Bob", BOB_PASSWORD, kinds, create=True)
    old = daemon.maildir("Bob")
    for sub in ("tmp", "new", "cur"):
        (old / sub).mkdir(parents=True, exist_ok=True)
    (old / "new" / "1.old.test").write_bytes(MESSAGE)
    daemon.start()
    yield daemon
    daemon.stop()


class POP3S(poplib.POP3_SSL):
    """poplib over implicit TLS to 127.0.0.1, checking the certificate for HOST."""

    def __init__(self, daemon):
        super().__init__(HOST, daemon.pop3s_port, context=client_context(daemon), timeout=15)

    def _create_socket(self, timeout):
        sock = socket.create_connection((ADDRESS, self.port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self.host)

    def command(self, line: bytes) -> bytes:
        """One command line, one response line (for the SASL exchanges)."""
        self._putline(line)
        return self._getline()[0]


def body(client, number=1):
    _, lines, _ = client.retr(number)
    return b"".join(line + b"\r\n" for line in lines)


def login(daemon, how, user, password):
    """
    Log in with poplib and one mechanism; return (first reply line, the
    message list of the session or None).
    """
    client = POP3S(daemon)
    try:
        if how == "USER":
            try:
                client.user(user)
                reply = client.pass_(password)
            except poplib.error_proto as e:
                return e.args[0], None
        elif how == "PLAIN":
            token = base64.b64encode(f"\0{user}\0{password}".encode())
            reply = client.command(b"AUTH PLAIN " + token)
        elif how == "CRAM-MD5":
            reply = client.command(b"AUTH CRAM-MD5")
            if reply.startswith(b"+ "):
                challenge = base64.b64decode(reply[2:])
                digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
                reply = client.command(base64.b64encode(f"{user} {digest}".encode()))
        elif how == "SCRAM-SHA-256":
            reply, server_ok = scram_login(client, user, password)
            assert server_ok in (True, None)
        else:
            raise AssertionError(how)
        if not reply.startswith(b"+OK"):
            return reply, None
        listing = client.list()[1]
        messages = [body(client, n + 1) for n in range(len(listing))]
        client.quit()
        return reply, messages
    finally:
        client.close()


def curl(daemon, user, password, mechanism, path="1"):
    exe = require_tool("curl")
    port = daemon.pop3s_port
    return subprocess.run(
        [exe, "-sS", "--max-time", "30", "--resolve", f"{HOST}:{port}:{ADDRESS}",
         "--cacert", daemon.ca_file, "--user", f"{user}:{password}",
         "--login-options", f"AUTH={mechanism}", f"pop3s://{HOST}:{port}/{path}"],
        capture_output=True, timeout=40)


# -- item 3: Eve added, mailed and logging in as Eve and as eve --------------------

MECHANISMS = ["USER", "PLAIN", "CRAM-MD5", "SCRAM-SHA-256"]


@pytest.mark.parametrize("how", MECHANISMS)
@pytest.mark.parametrize("name", ["Eve", "eve", "EVE"])
def test_user_added_as_Eve_logs_in_and_gets_the_mail_delivered_to_Eve(server, how, name):
    reply, messages = login(server, how, name, EVE_PASSWORD)
    assert reply.startswith(b"+OK"), reply
    assert messages == [crlf_normalise(MESSAGE)]


@pytest.mark.parametrize("how", MECHANISMS)
def test_a_wrong_password_still_fails(server, how):
    cursor = LogCursor(server)
    reply, messages = login(server, how, "Eve", WRONG)
    assert reply.startswith(b"-ERR [AUTH]"), reply
    assert messages is None
    assert cursor.wait("auth.failure", user="eve"), cursor.text()[-2000:]


@pytest.mark.parametrize("name", ["Eve", "eve"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "CRAM-MD5", "NTLM"])
def test_curl_as_Eve(server, name, mechanism):
    good = curl(server, name, EVE_PASSWORD, mechanism)
    assert good.returncode == 0, good.stderr.decode(errors="replace")
    assert good.stdout == crlf_normalise(MESSAGE)
    bad = curl(server, name, WRONG, mechanism)
    assert bad.returncode == 67, bad.stderr.decode(errors="replace")


def test_user_add_stored_eve_and_deliver_wrote_eves_maildir(server):
    assert "'Eve' is 'eve' for every login" in server.add_output
    assert "every mechanism has its secret for eve" in server.add_output
    names = server.cli("user", "list").stdout.decode().splitlines()
    assert "eve" in names and "Eve" not in names
    assert server.messages("eve") and not server.maildir("Eve").exists()


@pytest.mark.parametrize("how", ["USER", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest.mark.parametrize("name", ["Bob", "bob"])
def test_an_old_mixed_case_entry_logs_in(server, how, name):
    reply, messages = login(server, how, name, BOB_PASSWORD)
    assert reply.startswith(b"+OK"), reply
    assert messages == []       # its old mail is in mail/Bob; check-config says so
    reply, _ = login(server, how, name, WRONG)
    assert reply.startswith(b"-ERR [AUTH]"), reply


def test_check_config_names_the_old_entry_and_its_mail(server):
    result = server.cli("check-config", check=False)
    out = result.stdout.decode()
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert any("'Bob' logs in as 'bob'" in w for w in warnings), out
    assert any(str(server.maildir("Bob")) in w and "move its messages" in w
               for w in warnings), out
    assert not any("'Eve'" in w or "alice" in w for w in warnings), out


def test_test_auth_tries_the_name_a_login_uses(server):
    ok = server.cli("test-auth", "Eve", input=f"{EVE_PASSWORD}\n".encode(), check=False)
    assert ok.returncode == 0 and "login_name:     eve" in ok.stdout.decode()
    bad = server.cli("test-auth", "EVE", input=f"{WRONG}\n".encode(), check=False)
    assert bad.returncode == 1, bad.stdout.decode()
    old = server.cli("test-auth", "BOB", "--mechanism", "cram-md5",
                     input=f"{BOB_PASSWORD}\n".encode(), check=False)
    assert old.returncode == 0, old.stdout.decode()


# -- item 7: the server's own domains, in both forms -------------------------------

OWN = ["EXAMPLE\\alice", "example\\Alice", "alice@example.com", "Alice@EXAMPLE.COM",
       "pop.example.com\\alice", "alice@pop.example.com", "POP\\alice"]
FOREIGN = ["OTHER\\alice", "alice@other.org", "evil.example.com\\alice",
           "alice@example.com.evil.org"]


@pytest.mark.parametrize("user", OWN)
def test_curl_ntlm_in_the_servers_own_domain(server, user):
    good = curl(server, user, ALICE_PASSWORD, "NTLM", path="")
    assert good.returncode == 0, good.stderr.decode(errors="replace")
    bad = curl(server, user, WRONG, "NTLM", path="")
    assert bad.returncode == 67, bad.stderr.decode(errors="replace")


@pytest.mark.parametrize("user", FOREIGN)
def test_curl_ntlm_in_another_domain_is_refused(server, user):
    cursor = LogCursor(server)
    result = curl(server, user, ALICE_PASSWORD, "NTLM", path="")
    assert result.returncode == 67, result.stderr.decode(errors="replace")
    hits = cursor.wait("auth.failure", mechanism="NTLM", reason="foreign-domain")
    assert hits, cursor.text()[-2000:]
    assert not cursor.events("auth.success")


@pytest.mark.parametrize("how", ["USER", "PLAIN", "SCRAM-SHA-256"])
def test_every_mechanism_applies_the_same_domain_rule(server, how):
    for user in ("EXAMPLE\\alice", "alice@example.com", "pop.example.com\\alice"):
        reply, _ = login(server, how, user, ALICE_PASSWORD)
        assert reply.startswith(b"+OK"), (user, reply)
    for user in ("OTHER\\alice", "alice@other.org"):
        reply, _ = login(server, how, user, ALICE_PASSWORD)
        assert reply == b"-ERR [AUTH] Authentication failed", (user, reply)


def test_user_add_refuses_a_name_in_another_domain(server):
    result = server.cli("user", "add", "carol@other.org", input=b"pw\n", check=False)
    assert result.returncode == 65, result.stderr
    assert b"not this server's" in result.stderr
    own = server.cli("user", "add", "Carol@Example.COM", input=b"Carol-pw-1\n")
    assert b"added user carol" in own.stdout
    reply, _ = login(server, "USER", "EXAMPLE\\carol", "Carol-pw-1")
    assert reply.startswith(b"+OK"), reply
