"""
NTLM verified by the domain controller through Samba winbind's C{ntlm_auth}.

An Active Directory never reveals NT hashes, so securepop hands the client's
NTLM messages to C{ntlm_auth --helper-protocol=squid-2.5-ntlmssp} (as Squid
and Dovecot do): C{YR <NEGOTIATE>} is answered C{TT <CHALLENGE>}, and
C{KK <AUTHENTICATE>} is answered C{AF DOMAIN\\user} or C{NA <NT status>}.

A helper process keeps the NTLMSSP state of one exchange between those two
messages, so an exchange is pinned to one helper from its NEGOTIATE until
its AUTHENTICATE (or until C{exchange_timeout}).  Helpers are a small pool
of child processes run through L{ProcessProtocol}; a helper that dies or
stops answering is replaced; exchanges wait in a bounded queue for a free
helper.
"""

import base64
import struct
from collections import deque
from dataclasses import dataclass, field

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from securepop.config import AD_DEFAULTS, AuthSettings
from securepop.errors import SourceUnavailable

_SIGNATURE = b"NTLMSSP\x00"
_NEGOTIATE = 1
_AUTHENTICATE = 3

# ntlm_auth answers NA with these when it could not ask the DC at all: an
# outage, not a wrong password.
UNAVAILABLE_STATUSES = frozenset({
    "NT_STATUS_NO_LOGON_SERVERS",
    "NT_STATUS_DOMAIN_CONTROLLER_NOT_FOUND",
    "NT_STATUS_NO_SUCH_DOMAIN",
    "NT_STATUS_CANT_ACCESS_DOMAIN_INFO",
    "NT_STATUS_IO_TIMEOUT",
    "NT_STATUS_INTERNAL_ERROR",
    "NT_STATUS_NETLOGON_NOT_STARTED",
    "NT_STATUS_TRUSTED_RELATIONSHIP_FAILURE",
    "NT_STATUS_UNSUCCESSFUL",
})


@dataclass(frozen=True)
class WinbindSettings:
    """
    What L{WinbindNTLMVerifier} needs: C{[auth.ad]}'s helper keys, C{[auth]}'s
    C{insecure_allow_ntlmv1}, and process limits that are no configuration
    key.  The defaults of the configured ones are the configuration's.

    @ivar ntlm_auth: path of Samba's helper.
    @ivar configfile: smb.conf for the helper (empty: Samba's default).
    @ivar helpers: number of helper processes.
    @ivar max_queue: exchanges that may wait for a helper; more are refused
        with L{SourceUnavailable} at once.
    @ivar timeout: seconds for a helper to answer one line (and for a
        queued exchange to get a helper).
    @ivar exchange_timeout: seconds an exchange may keep its helper between
        NEGOTIATE and AUTHENTICATE (a slow or silent client).
    @ivar insecure_allow_ntlmv1: accept NTLMv1 / NTLM2-session responses
        (the DC must also allow them: smb.conf C{ntlm auth}).
    """

    ntlm_auth: str = AD_DEFAULTS.ntlm_auth
    configfile: str = AD_DEFAULTS.ntlm_auth_config
    helpers: int = AD_DEFAULTS.helpers
    max_queue: int = AD_DEFAULTS.ntlm_max_queue
    timeout: float = AD_DEFAULTS.ntlm_timeout
    exchange_timeout: float = AD_DEFAULTS.ntlm_exchange_timeout
    insecure_allow_ntlmv1: bool = AuthSettings.insecure_allow_ntlmv1
    max_token_size: int = 8192
    restart_delay_max: float = 5.0
    extra_args: tuple = ()
    env: tuple = field(default=())

    @classmethod
    def from_settings(cls, auth):
        """
        @param auth: the configuration's L{securepop.config.AuthSettings}
            (its C{ad} section and C{insecure_allow_ntlmv1}).
        """
        ad = auth.ad
        return cls(ntlm_auth=ad.ntlm_auth, configfile=ad.ntlm_auth_config,
                   helpers=ad.helpers, max_queue=ad.ntlm_max_queue,
                   timeout=ad.ntlm_timeout, exchange_timeout=ad.ntlm_exchange_timeout,
                   insecure_allow_ntlmv1=auth.insecure_allow_ntlmv1)


def _messageType(token):
    if len(token) < 12 or not token.startswith(_SIGNATURE):
        return None
    return struct.unpack_from("<I", token, 8)[0]


def ntResponseLength(authenticateToken):
    """
    @return: the length of the NtChallengeResponse of an AUTHENTICATE
        message (24 for NTLMv1, more for NTLMv2, 0 for anonymous), or
        L{None} when the message is malformed.
    """
    if len(authenticateToken) < 28:
        return None
    length, _, offset = struct.unpack_from("<HHI", authenticateToken, 20)
    if length and offset + length > len(authenticateToken):
        return None
    return length


class _HelperProtocol(ProcessProtocol):
    """
    One C{ntlm_auth} process: one question at a time, answered by a line.
    """

    MAX_LINE = 65536

    def __init__(self, pool, number):
        self._pool = pool
        self.number = number
        self._buffer = b""
        self._waiting = None
        self._timer = None
        self.pinnedTo = None
        self.alive = True
        self.answered = False

    def ask(self, line, timeout):
        """
        @param line: bytes without the newline.
        @return: Deferred firing with the answer line (str).
        """
        if not self.alive:
            return fail(SourceUnavailable("ntlm_auth helper is not running"))
        if self._waiting is not None:
            return fail(SourceUnavailable("ntlm_auth helper is busy"))
        self._waiting = Deferred()
        self._timer = self._pool.reactor.callLater(timeout, self._timedOut)
        self.transport.write(line + b"\n")
        return self._waiting

    def _timedOut(self):
        self._timer = None
        self._pool.log.warn("ntlm_auth helper {number} did not answer; "
                            "killing it", number=self.number)
        self._fire(SourceUnavailable("ntlm_auth helper did not answer"))
        self.kill()

    def kill(self):
        self.alive = False
        try:
            self.transport.signalProcess("KILL")
        except (ProcessExitedAlready, OSError):
            pass

    def _fire(self, result):
        waiting, self._waiting = self._waiting, None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if waiting is not None:
            if isinstance(result, Exception):
                waiting.errback(result)
            else:
                waiting.callback(result)

    def outReceived(self, data):
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            text = line.rstrip(b"\r").decode("utf-8", "replace")
            if self._waiting is None:
                self._pool.log.warn("ntlm_auth helper {number} said something "
                                    "unasked; killing it", number=self.number)
                self.kill()
                return
            self.answered = True
            self._fire(text)
        if len(self._buffer) > self.MAX_LINE:
            self._buffer = b""
            self._fire(SourceUnavailable("ntlm_auth answered an endless line"))
            self.kill()

    def errReceived(self, data):
        # ntlm_auth's own diagnostics; they never contain the tokens.
        self._pool.log.debug("ntlm_auth helper {number}: {text}",
                             number=self.number,
                             text=data[:500].decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.alive = False
        self._fire(SourceUnavailable("ntlm_auth helper ended"))
        self._pool._helperEnded(self, reason)


class _Waiter:
    def __init__(self, deferred, timer):
        self.deferred = deferred
        self.timer = timer


class WinbindNTLMVerifier:
    """
    A pool of C{ntlm_auth} helpers verifying NTLM through the domain
    controller.
    """

    log = Logger()

    def __init__(self, reactor, settings=WinbindSettings(), autostart=True):
        """
        @param reactor: provides IReactorProcess, IReactorTime, IReactorCore.
        @param settings: L{WinbindSettings}.
        @param autostart: start the helpers when the reactor runs and stop
            them at shutdown (L{False}: call L{start} and L{stop} yourself).
        """
        if settings.helpers < 1:
            raise ValueError("at least one ntlm_auth helper is needed")
        self.reactor = reactor
        self.settings = settings
        self._helpers = []
        self._idle = deque()
        self._queue = deque()
        self._numbers = 0
        self._failuresInARow = 0
        self._running = False
        self._stopped = False
        self._ended = []
        if autostart:
            reactor.callWhenRunning(self.start)
            reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def command(self):
        """
        @return: the helper's argv (list of str).
        """
        argv = [self.settings.ntlm_auth,
                "--helper-protocol=squid-2.5-ntlmssp"]
        if self.settings.configfile:
            argv.append(f"--configfile={self.settings.configfile}")
        argv.extend(self.settings.extra_args)
        return argv

    def start(self):
        """
        Spawn the helpers.  Idempotent.
        """
        if self._running:
            return
        self._running = True
        for _ in range(self.settings.helpers):
            self._spawn()

    def stop(self):
        """
        Stop the helpers (their stdin is closed, then they are killed).

        @return: Deferred firing when every helper has ended.
        """
        self._running = False
        self._stopped = True
        while self._queue:
            waiter = self._queue.popleft()
            waiter.timer.cancel()
            waiter.deferred.errback(SourceUnavailable("NTLM verifier stopped"))
        waits = []
        for helper in list(self._helpers):
            ended = Deferred()
            killer = self.reactor.callLater(1.0, helper.kill)
            ended.addBoth(lambda result, killer=killer: killer.active()
                          and killer.cancel())
            self._ended.append((helper, ended))
            waits.append(ended)
            try:
                helper.transport.closeStdin()
            except Exception:
                helper.kill()
        if not waits:
            return succeed(None)
        return gatherResults(waits).addCallback(lambda _: None)

    def helperPIDs(self):
        """
        @return: the PIDs of the running helpers (for tests and status).
        """
        return [helper.transport.pid for helper in self._helpers
                if helper.alive and helper.transport.pid]

    def newExchange(self):
        """
        @return: an L{NTLMExchange} for one AUTH command.
        """
        return NTLMExchange(self)

    # -- pool --------------------------------------------------------------

    def _spawn(self):
        if not self._running:
            return
        self._numbers += 1
        helper = _HelperProtocol(self, self._numbers)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8"}
        env.update(dict(self.settings.env))
        try:
            self.reactor.spawnProcess(helper, self.settings.ntlm_auth,
                                      self.command(), env=env)
        except OSError as error:
            self.log.error("cannot start ntlm_auth: {error}", error=str(error))
            self._scheduleRespawn()
            return
        self._helpers.append(helper)
        self._giveOut(helper)

    def _scheduleRespawn(self):
        self._failuresInARow += 1
        delay = min(0.05 * (2 ** min(self._failuresInARow, 10)),
                    self.settings.restart_delay_max)
        self.reactor.callLater(delay, self._spawn)

    def _helperEnded(self, helper, reason):
        if helper in self._helpers:
            self._helpers.remove(helper)
        if helper in self._idle:
            self._idle.remove(helper)
        if helper.pinnedTo is not None:
            helper.pinnedTo._helperLost()
            helper.pinnedTo = None
        for pair in list(self._ended):
            if pair[0] is helper:
                self._ended.remove(pair)
                pair[1].callback(None)
        if not self._running:
            return
        self.log.warn("ntlm_auth helper {number} ended ({reason}); "
                      "starting another", number=helper.number,
                      reason=reason.getErrorMessage())
        if helper.answered:
            self._failuresInARow = 0
            self._spawn()
        else:
            self._scheduleRespawn()

    def _acquire(self, exchange):
        """
        @return: Deferred firing with a helper pinned to C{exchange}.
        """
        if not self._running and not self._stopped:
            self.start()  # first use before the reactor ran its hooks
        while self._idle:
            helper = self._idle.popleft()
            if helper.alive:
                helper.pinnedTo = exchange
                return succeed(helper)
        if not self._running:
            return fail(SourceUnavailable("NTLM verifier is not running"))
        if len(self._queue) >= self.settings.max_queue:
            return fail(SourceUnavailable("too many NTLM logins waiting"))
        deferred = Deferred()

        def expired():
            self._queue.remove(waiter)
            deferred.errback(SourceUnavailable("no ntlm_auth helper free"))

        waiter = _Waiter(deferred, self.reactor.callLater(
            self.settings.timeout, expired))
        waiter.exchange = exchange
        self._queue.append(waiter)
        return deferred

    def _release(self, helper):
        helper.pinnedTo = None
        if helper.alive and helper in self._helpers:
            self._giveOut(helper)

    def _giveOut(self, helper):
        while self._queue:
            waiter = self._queue.popleft()
            waiter.timer.cancel()
            helper.pinnedTo = waiter.exchange
            waiter.deferred.callback(helper)
            return
        self._idle.append(helper)

    def _discard(self, helper):
        """
        A helper said something broken: replace it.
        """
        helper.pinnedTo = None
        helper.kill()


class NTLMExchange:
    """
    One NTLM exchange (NEGOTIATE, then AUTHENTICATE) on one pinned helper.

    L{negotiate} fires with the CHALLENGE token; L{authenticate} fires with
    the user name the domain controller verified (C{DOMAIN\\user}).  Both
    fail with L{UnauthorizedLogin} for a refused login and with
    L{SourceUnavailable} when the helpers or the DC cannot answer.
    """

    def __init__(self, verifier):
        self._verifier = verifier
        self._helper = None
        self._timer = None
        self._state = "new"

    def negotiate(self, token):
        settings = self._verifier.settings
        if self._state != "new":
            return fail(UnauthorizedLogin("NTLM NEGOTIATE sent twice"))
        self._state = "negotiating"
        if (not isinstance(token, bytes) or len(token) > settings.max_token_size
                or _messageType(token) != _NEGOTIATE):
            self._state = "done"
            return fail(UnauthorizedLogin("not an NTLM NEGOTIATE message"))

        def pinned(helper):
            if self._state != "negotiating":
                self._verifier._release(helper)
                raise UnauthorizedLogin("NTLM exchange was abandoned")
            self._helper = helper
            self._timer = self._verifier.reactor.callLater(
                settings.exchange_timeout, self._expired)
            return helper.ask(b"YR " + base64.b64encode(token),
                              settings.timeout)

        def answered(line):
            if line.startswith("TT "):
                challenge = _b64(line[3:])
                if _messageType(challenge or b"") == 2:
                    self._state = "challenged"
                    return challenge
            return self._refusedBy(line, "NEGOTIATE")

        return self._verifier._acquire(self).addCallback(pinned).addCallback(
            answered).addErrback(self._failed)

    def authenticate(self, token):
        settings = self._verifier.settings
        if self._state == "lost":
            # The helper died between NEGOTIATE and AUTHENTICATE: an outage,
            # not a wrong password (no penalty, no lockout).
            self.abort()
            return fail(SourceUnavailable("NTLM helper died during the exchange"))
        if self._state != "challenged" or self._helper is None:
            self.abort()
            return fail(UnauthorizedLogin("NTLM AUTHENTICATE out of order"))
        self._state = "authenticating"
        if (not isinstance(token, bytes) or len(token) > settings.max_token_size
                or _messageType(token) != _AUTHENTICATE):
            self.abort()
            return fail(UnauthorizedLogin("not an NTLM AUTHENTICATE message"))
        ntLength = ntResponseLength(token)
        if ntLength is None or ntLength == 0:
            self.abort()
            return fail(UnauthorizedLogin("anonymous or malformed NTLM response"))
        if ntLength <= 24 and not settings.insecure_allow_ntlmv1:
            self.abort()
            return fail(UnauthorizedLogin(
                "ntlmv1-refused"))

        def answered(line):
            if line.startswith("AF ") and line[3:].strip():
                self._finish()
                return line[3:].strip()
            return self._refusedBy(line, "AUTHENTICATE")

        return self._helper.ask(b"KK " + base64.b64encode(token),
                                settings.timeout).addCallback(
            answered).addErrback(self._failed)

    def abort(self):
        """
        Give the helper back (the client cancelled with C{*}, or the
        exchange is over).  Idempotent.
        """
        self._state = "done"
        self._finish()

    def _refusedBy(self, line, step):
        helper = self._helper
        verb, _, detail = line.partition(" ")
        if verb == "NA":
            status = detail.strip()
            self._finish()
            if status in UNAVAILABLE_STATUSES:
                raise SourceUnavailable(f"NTLM {step}: {status}")
            raise UnauthorizedLogin(f"NTLM {step}: {status or 'refused'}")
        # BH (broken helper) or anything unexpected: replace the helper.
        self._helper = None
        self._state = "done"
        self._cancelTimer()
        if helper is not None:
            self._verifier._discard(helper)
        raise SourceUnavailable(f"NTLM {step}: helper answered {verb or '?'}")

    def _failed(self, failure):
        if not failure.check(UnauthorizedLogin, SourceUnavailable):
            failure = SourceUnavailable(f"NTLM: {failure.value!r}")
            self._finish()
            raise failure
        if self._state != "challenged":
            self._finish()
        return failure

    def _expired(self):
        self._timer = None
        if self._state == "authenticating":
            return  # the helper's own answer timeout covers this
        self._verifier.log.info("NTLM exchange expired before AUTHENTICATE")
        self.abort()

    def _helperLost(self):
        self._helper = None
        self._state = "lost"
        self._cancelTimer()

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish(self):
        self._cancelTimer()
        self._state = "done"
        helper, self._helper = self._helper, None
        if helper is not None:
            self._verifier._release(helper)


def _b64(text):
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        return None
