"""
The command table (L{securepop.protocol.commands}) and the dispatcher's
rules: unknown command, arity, a command switched off, then the state.
"""

import pytest

from securepop import config
from securepop.protocol import commands, responses as R
from securepop.protocol.session import POP3Session
from securepop.protocol.states import AUTHORIZATION, TRANSACTION
from tests.unit.protocol_harness import (  # noqa: F401 (fixtures)
    TOML, Harness, identity, login, secure,
)


def test_every_command_has_a_handler_and_every_handler_a_command():
    handlers = {name[3:].encode("ascii"): getattr(POP3Session, name)
                for name in dir(POP3Session) if name.startswith("do_")}
    assert set(commands.COMMANDS) == set(handlers)
    for name, declared in commands.COMMANDS.items():
        assert declared.name == name
        assert declared.handler is handlers[name], name
        assert declared.states <= {AUTHORIZATION, TRANSACTION}, name


def test_the_table_says_where_each_command_is_valid():
    states = {name.decode(): declared.states for name, declared in commands.COMMANDS.items()}
    for name in ("STAT", "LIST", "UIDL", "DELE", "RSET", "RETR", "TOP", "NOOP"):
        assert states[name] == {TRANSACTION}, name
    for name in ("STLS", "USER", "PASS", "APOP", "AUTH"):
        assert states[name] == {AUTHORIZATION}, name
    for name in ("CAPA", "QUIT"):
        assert states[name] == {AUTHORIZATION, TRANSACTION}, name
    assert [n for n, c in commands.COMMANDS.items() if c.raw] == [b"PASS"]


def test_a_command_is_declared_once():
    with pytest.raises(ValueError):
        commands.command("CAPA")(lambda session: None)
    assert commands.COMMANDS[b"CAPA"].handler is POP3Session.do_CAPA


@pytest.mark.parametrize("word, args, logged", [
    (b"PASS", [b"secret", b"words"], b"PASS <redacted>"),
    (b"APOP", [b"alice", b"0123456789abcdef0123456789abcdef"], b"APOP alice <redacted>"),
    (b"AUTH", [b"PLAIN", b"AGFsaWNlAHNlY3JldA=="], b"AUTH PLAIN <redacted>"),
    (b"AUTH", [b"PLAIN"], b"AUTH PLAIN"),
    (b"USER", [b"alice"], b"USER alice"),
])
def test_redact_hides_credentials_only(word, args, logged):
    assert commands.redact(word, args) == logged


def test_arity_is_checked_before_the_state(secure):
    assert secure.send(b"STAT 1\r\n") == [R.BAD_SYNTAX]
    assert secure.send(b"STAT\r\n") == [R.NOT_NOW]
    assert secure.send(b"USER\r\n") == [R.BAD_SYNTAX]     # an argument is required
    assert secure.send(b"USER a b\r\n") == [R.BAD_SYNTAX]


def test_pass_takes_the_rest_of_the_line_as_one_argument(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    h.source.users["bob"] = b"two  words "
    h.connect()
    h.lines()
    assert h.send(b"USER bob\r\nPASS two  words \r\n")[1].startswith(b"+OK Logged in")


def test_wrong_state_refusals_name_the_command_and_count_only_before_login(secure):
    login(secure)
    for _ in range(6):                              # more than max_bad_commands
        assert secure.send(b"STLS\r\n") == [R.STLS_NOT_AVAILABLE]
        assert secure.send(b"USER alice\r\n") == [R.ALREADY_LOGGED_IN]
        assert secure.send(b"AUTH\r\n") == [R.ALREADY_LOGGED_IN]
    assert not secure.transport.disconnecting


def test_a_command_switched_off_is_refused_before_its_state_and_counted(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    h.ctx.settings = config.parse(TOML.replace("[auth]\n", "[auth]\nuser_pass = false\n"),
                                  data_dir=str(tmp_path))
    h.connect()
    h.lines()
    for _ in range(4):
        assert h.send(b"USER alice\r\n") == [R.USER_PASS_DISABLED]
    assert h.send(b"PASS x\r\n") == [R.TOO_MANY_ERRORS]
    assert h.send(b"APOP alice 0123456789abcdef0123456789abcdef\r\n") == []


@pytest.mark.parametrize("line", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"UIDL", b"TOP 1 0",
                                  b"RSET", b"NOOP"])
def test_transaction_commands_need_login(secure, line):
    assert secure.send(line + b"\r\n") == [b"-ERR Command not valid in this state"]


def test_commands_refused_before_login_count_toward_the_bad_command_limit(secure):
    # NOOP before login counts as a bad command: it cannot hold a pre-login slot for ever.
    for _ in range(4):
        assert secure.send(b"NOOP\r\n") == [b"-ERR Command not valid in this state"]
    assert secure.send(b"NOOP\r\n") == [b"-ERR [SYS/PERM] Too many errors, closing connection"]
    assert secure.transport.disconnecting


def test_commands_refused_after_login_do_not_count(secure):
    login(secure)
    for _ in range(8):
        assert secure.send(b"NOOP\r\n") == [b"+OK"]
    assert not secure.transport.disconnecting
