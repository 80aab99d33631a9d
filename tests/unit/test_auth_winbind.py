"""
Tests for securepop.auth.winbind.WinbindNTLMVerifier with fake helper
processes (the integration tests run the real ntlm_auth against Samba).
"""

import base64
import struct

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.error import ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from securepop import config
from securepop.auth.winbind import (
    NTLMExchange,
    WinbindNTLMVerifier,
    WinbindSettings,
    ntResponseLength,
)
from securepop.errors import SourceUnavailable

NEGOTIATE = b"NTLMSSP\x00" + struct.pack("<I", 1) + b"\x07\x82\x08\xa2" + b"\x00" * 16
CHALLENGE = b"NTLMSSP\x00" + struct.pack("<I", 2) + b"\x00" * 40


def authenticate(ntLength):
    header = bytearray(b"NTLMSSP\x00" + struct.pack("<I", 3) + b"\x00" * 52)
    struct.pack_into("<HHI", header, 20, ntLength, ntLength, len(header))
    return bytes(header) + b"\x11" * ntLength


NTLMV2 = authenticate(120)
NTLMV1 = authenticate(24)


class FakeTransport:
    def __init__(self, pid):
        self.pid = pid
        self.written = []
        self.signals = []
        self.stdinClosed = False

    def write(self, data):
        self.written.append(data)

    def signalProcess(self, signal):
        self.signals.append(signal)

    def closeStdin(self):
        self.stdinClosed = True


class ProcessReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args=(), env=None, **kwargs):
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append((protocol, executable, list(args), env))
        return transport


def makeVerifier(**overrides):
    reactor = ProcessReactor()
    verifier = WinbindNTLMVerifier(reactor, WinbindSettings(**overrides),
                                   autostart=False)
    verifier.start()
    return reactor, verifier


def helper(reactor, number):
    return reactor.spawned[number][0]


def answer(protocol, line):
    protocol.outReceived(line.encode() + b"\n")


def end(protocol):
    protocol.processEnded(Failure(ProcessTerminated(signal=9)))


def result(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    return outcome[0]


def pending(deferred):
    outcome = []
    deferred.addBoth(lambda value: outcome.append(value) or value)
    return not outcome


def failureOf(deferred, kind):
    value = result(deferred)
    assert isinstance(value, Failure) and value.check(kind), value
    return value


def negotiated(reactor, verifier, number=0):
    exchange = verifier.newExchange()
    deferred = exchange.negotiate(NEGOTIATE)
    answer(helper(reactor, number), "TT " + base64.b64encode(CHALLENGE).decode())
    assert result(deferred) == CHALLENGE
    return exchange


def test_command_line():
    reactor, verifier = makeVerifier(configfile="/x/smb.conf", helpers=2)
    assert len(reactor.spawned) == 2
    _, executable, args, env = reactor.spawned[0]
    assert executable == "/usr/bin/ntlm_auth"
    assert args == ["/usr/bin/ntlm_auth", "--helper-protocol=squid-2.5-ntlmssp",
                    "--configfile=/x/smb.conf"]
    assert set(env) == {"PATH", "LANG"}


def test_autostart_with_the_reactor():
    reactor = ProcessReactor()
    verifier = WinbindNTLMVerifier(reactor, WinbindSettings(helpers=1))
    assert reactor.spawned == []
    assert [hook[0] for hook in reactor.whenRunningHooks] == [verifier.start]
    assert reactor.triggers["before"]["shutdown"] == [(verifier.stop, (), {})]


def test_at_least_one_helper():
    with pytest.raises(ValueError):
        WinbindNTLMVerifier(ProcessReactor(), WinbindSettings(helpers=0))


def test_successful_exchange_is_pinned_to_one_helper():
    reactor, verifier = makeVerifier(helpers=2)
    exchange = negotiated(reactor, verifier)
    first = helper(reactor, 0).transport
    assert first.written == [b"YR " + base64.b64encode(NEGOTIATE) + b"\n"]
    deferred = exchange.authenticate(NTLMV2)
    assert first.written[1] == b"KK " + base64.b64encode(NTLMV2) + b"\n"
    assert helper(reactor, 1).transport.written == []
    answer(helper(reactor, 0), "AF EXAMPLE\\alice")
    assert result(deferred) == "EXAMPLE\\alice"


def test_second_exchange_takes_another_helper_while_the_first_is_pinned():
    reactor, verifier = makeVerifier(helpers=2)
    negotiated(reactor, verifier, 0)
    negotiated(reactor, verifier, 1)
    assert len(helper(reactor, 1).transport.written) == 1


def test_wrong_password_refused():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    deferred = exchange.authenticate(NTLMV2)
    answer(helper(reactor, 0), "NA NT_STATUS_LOGON_FAILURE")
    failureOf(deferred, UnauthorizedLogin)
    # the helper is free again
    negotiated(reactor, verifier)


def test_domain_controller_unreachable_is_an_outage():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    deferred = exchange.authenticate(NTLMV2)
    answer(helper(reactor, 0), "NA NT_STATUS_NO_LOGON_SERVERS")
    failureOf(deferred, SourceUnavailable)


def test_broken_helper_is_replaced():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    deferred = exchange.authenticate(NTLMV2)
    answer(helper(reactor, 0), "BH something broke")
    failureOf(deferred, SourceUnavailable)
    assert helper(reactor, 0).transport.signals == ["KILL"]
    end(helper(reactor, 0))
    assert len(reactor.spawned) == 2
    negotiated(reactor, verifier, 1)


def test_negotiate_refused_by_helper():
    reactor, verifier = makeVerifier(helpers=1)
    deferred = verifier.newExchange().negotiate(NEGOTIATE)
    answer(helper(reactor, 0), "NA NT_STATUS_INVALID_PARAMETER")
    failureOf(deferred, UnauthorizedLogin)
    negotiated(reactor, verifier)


def test_ntlmv1_refused_unless_insecure_switch():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    failure = failureOf(exchange.authenticate(NTLMV1), UnauthorizedLogin)
    assert str(failure.value) == "ntlmv1-refused"   # a policy refusal, not a guess
    assert len(helper(reactor, 0).transport.written) == 1  # never asked
    negotiated(reactor, verifier)  # and released

    reactor, verifier = makeVerifier(helpers=1, insecure_allow_ntlmv1=True)
    exchange = negotiated(reactor, verifier)
    deferred = exchange.authenticate(NTLMV1)
    answer(helper(reactor, 0), "AF EXAMPLE\\alice")
    assert result(deferred) == "EXAMPLE\\alice"


def test_anonymous_refused_even_when_insecure():
    reactor, verifier = makeVerifier(helpers=1, insecure_allow_ntlmv1=True)
    exchange = negotiated(reactor, verifier)
    failureOf(exchange.authenticate(authenticate(0)), UnauthorizedLogin)


@pytest.mark.parametrize("token", [
    b"", b"garbage", b"NTLMSSP\x00" + struct.pack("<I", 3) + b"\x00" * 60,
    NEGOTIATE + b"\x00" * 9000, "a string",
])
def test_bad_negotiate_tokens_never_reach_the_helper(token):
    reactor, verifier = makeVerifier(helpers=1)
    failureOf(verifier.newExchange().negotiate(token), UnauthorizedLogin)
    assert helper(reactor, 0).transport.written == []


@pytest.mark.parametrize("token", [
    b"", NEGOTIATE, b"NTLMSSP\x00" + struct.pack("<I", 3),
    authenticate(120)[:60], NTLMV2 + b"\x00" * 9000,
])
def test_bad_authenticate_tokens_never_reach_the_helper(token):
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    failureOf(exchange.authenticate(token), UnauthorizedLogin)
    assert len(helper(reactor, 0).transport.written) == 1


def test_tokens_cannot_inject_lines():
    reactor, verifier = makeVerifier(helpers=1)
    token = NEGOTIATE + b"\nKK AAAA\n"
    verifier.newExchange().negotiate(token)
    written = helper(reactor, 0).transport.written[0]
    assert written.count(b"\n") == 1 and written.endswith(b"\n")


def test_authenticate_before_negotiate_refused():
    reactor, verifier = makeVerifier(helpers=1)
    failureOf(verifier.newExchange().authenticate(NTLMV2), UnauthorizedLogin)


def test_negotiate_twice_refused():
    reactor, verifier = makeVerifier(helpers=2)
    exchange = negotiated(reactor, verifier)
    failureOf(exchange.negotiate(NEGOTIATE), UnauthorizedLogin)


def test_helper_dies_mid_exchange():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    deferred = exchange.authenticate(NTLMV2)
    end(helper(reactor, 0))
    failureOf(deferred, SourceUnavailable)
    assert len(reactor.spawned) == 2  # restarted at once: it had answered
    negotiated(reactor, verifier, 1)


def test_helper_dies_between_negotiate_and_authenticate():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    end(helper(reactor, 0))
    # An outage, not a wrong password: no penalty, no lockout for the user.
    failureOf(exchange.authenticate(NTLMV2), SourceUnavailable)


def test_helper_that_never_starts_is_retried_with_backoff():
    reactor, verifier = makeVerifier(helpers=1, restart_delay_max=5)
    end(helper(reactor, 0))
    assert len(reactor.spawned) == 1
    reactor.advance(0.1)
    assert len(reactor.spawned) == 2
    end(helper(reactor, 1))
    reactor.advance(0.1)
    assert len(reactor.spawned) == 2
    reactor.advance(0.1)
    assert len(reactor.spawned) == 3
    for number in range(3, 15):
        end(helper(reactor, number - 1))
        reactor.advance(5)
    assert len(reactor.spawned) == 15


def test_silent_helper_times_out_and_is_killed():
    reactor, verifier = makeVerifier(helpers=1, timeout=10)
    deferred = verifier.newExchange().negotiate(NEGOTIATE)
    reactor.advance(9.9)
    assert pending(deferred)
    reactor.advance(0.2)
    failureOf(deferred, SourceUnavailable)
    assert helper(reactor, 0).transport.signals == ["KILL"]


def test_queue_waits_for_a_free_helper():
    reactor, verifier = makeVerifier(helpers=1, max_queue=1, timeout=10)
    first = negotiated(reactor, verifier)
    waiting = verifier.newExchange().negotiate(NEGOTIATE)
    assert pending(waiting)
    failureOf(verifier.newExchange().negotiate(NEGOTIATE), SourceUnavailable)
    deferred = first.authenticate(NTLMV2)
    answer(helper(reactor, 0), "AF EXAMPLE\\alice")
    assert result(deferred) == "EXAMPLE\\alice"
    # the waiting exchange now has the helper
    assert helper(reactor, 0).transport.written[-1].startswith(b"YR ")
    answer(helper(reactor, 0), "TT " + base64.b64encode(CHALLENGE).decode())
    assert result(waiting) == CHALLENGE


def test_queued_exchange_times_out():
    reactor, verifier = makeVerifier(helpers=1, timeout=10,
                                     exchange_timeout=100)
    negotiated(reactor, verifier)
    waiting = verifier.newExchange().negotiate(NEGOTIATE)
    reactor.advance(10)
    failureOf(waiting, SourceUnavailable)


def test_silent_client_loses_its_helper():
    reactor, verifier = makeVerifier(helpers=1, exchange_timeout=30)
    exchange = negotiated(reactor, verifier)
    reactor.advance(30)
    failureOf(exchange.authenticate(NTLMV2), UnauthorizedLogin)
    negotiated(reactor, verifier)


def test_abort_releases_the_helper():
    reactor, verifier = makeVerifier(helpers=1)
    exchange = negotiated(reactor, verifier)
    exchange.abort()
    exchange.abort()
    negotiated(reactor, verifier)


def test_unasked_output_kills_the_helper():
    reactor, verifier = makeVerifier(helpers=1)
    answer(helper(reactor, 0), "AF EXAMPLE\\mallory")
    assert helper(reactor, 0).transport.signals == ["KILL"]


def test_endless_line_kills_the_helper():
    reactor, verifier = makeVerifier(helpers=1)
    deferred = verifier.newExchange().negotiate(NEGOTIATE)
    helper(reactor, 0).outReceived(b"T" * 70000)
    failureOf(deferred, SourceUnavailable)
    assert helper(reactor, 0).transport.signals == ["KILL"]


def test_stop_closes_stdin_then_kills():
    reactor, verifier = makeVerifier(helpers=2)
    waiting = verifier.stop()
    assert all(helper(reactor, n).transport.stdinClosed for n in range(2))
    end(helper(reactor, 0))
    reactor.advance(1)
    assert helper(reactor, 1).transport.signals == ["KILL"]
    assert helper(reactor, 0).transport.signals == []
    assert pending(waiting)
    end(helper(reactor, 1))
    assert result(waiting) is None
    assert len(reactor.spawned) == 2  # nothing restarted after stop
    failureOf(verifier.newExchange().negotiate(NEGOTIATE), SourceUnavailable)


def test_nt_response_length():
    assert ntResponseLength(NTLMV2) == 120
    assert ntResponseLength(NTLMV1) == 24
    assert ntResponseLength(b"short") is None
    truncated = authenticate(120)[:100]
    assert ntResponseLength(truncated) is None


def test_new_exchange_is_fresh():
    _, verifier = makeVerifier(helpers=1)
    one, two = verifier.newExchange(), verifier.newExchange()
    assert isinstance(one, NTLMExchange) and one is not two


def test_settings_defaults_are_the_configuration_defaults():
    ad, auth = config.AD_DEFAULTS, config.AuthSettings()
    assert WinbindSettings() == WinbindSettings.from_settings(auth)
    assert (WinbindSettings().ntlm_auth, WinbindSettings().helpers) == (ad.ntlm_auth, ad.helpers)


def test_settings_from_the_configuration():
    settings = config.parse(
        '[auth]\ninsecure_allow_ntlmv1 = true\n[auth.ad]\nntlm_auth = "/opt/ntlm_auth"\n'
        'ntlm_auth_config = "/etc/samba/smb.conf"\nhelpers = 2\nntlm_timeout = 3.0\n'
        'ntlm_exchange_timeout = 7.0\nntlm_max_queue = 5\n', "f")
    assert WinbindSettings.from_settings(settings.auth) == WinbindSettings(
        ntlm_auth="/opt/ntlm_auth", configfile="/etc/samba/smb.conf", helpers=2,
        timeout=3.0, exchange_timeout=7.0, max_queue=5, insecure_allow_ntlmv1=True)
