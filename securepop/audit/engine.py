"""
The audit's checks: the "How to confirm" steps of an administrator's
checklist, run against any POP3 server.

Each check yields L{Finding}s (check name, PASS/WARN/FAIL/INFO, reason).
No real credential is ever sent before TLS: cleartext exposure is probed
with a made-up user name and every SASL exchange is cancelled with C{*}
before a response would be needed.  The optional login runs only under
TLS, and only after the certificate has been verified.  What each observed
fact means is decided in L{securepop.audit.judge}.
"""

import base64
import secrets
from dataclasses import dataclass, field

from securepop.audit.tlsprobe import (
    PROTOCOL_VERSIONS,
    WEAK_SUITE_CATEGORIES,
    describeKey,
    handshakeFacts,
    makeContext,
    offerSuites,
    signatureHash,
    utcNow,
    validityWindow,
    verifyChain,
    verifyName,
)
from securepop.audit.judge import (
    FAIL,
    INFO,
    PASS,
    WARN,
    AuditResult,
    describe_exposure,
    describeCapabilities,
    judge_capa_after_stls,
    judge_cleartext_probe,
    judge_expiry,
    judge_kerberos,
    judge_suite_answer,
    judge_version,
    judgeApopGreeting,
    judgeKey,
    judgeSignature,
    judge_bearer,
    mechanismsOf,
    shorten,
)
from securepop.audit.pop3client import (
    BudgetExhausted,
    ConnectionClosed,
    POP3Probe,
    ProbeBudget,
    ProbeError,
    ProbeTimeout,
    openSocket,
)

@dataclass(frozen=True)
class AuditOptions:
    """
    What to audit and how.

    @ivar target: L{securepop.audit.pop3client.Target}.
    @ivar password: bytes, only used under verified TLS; never printed.
    @ivar injectionWait: seconds to wait for an answer to a command that was
        pipelined after STLS.
    """

    target: object
    sourceAddress: str = None
    servername: str = None
    cafile: str = None
    user: str = None
    password: bytes = field(default=None, repr=False)
    timeout: float = 10.0
    injectionWait: float = 1.0
    maxConnections: int = 32
    maxSeconds: float = 300.0

    @property
    def checkedName(self):
        """The name the certificate must carry."""
        return self.servername or self.target.host


class Audit:
    """
    Run every check against one server.

    Usage: C{Audit(AuditOptions(...)).run()} returns an L{AuditResult}.
    """

    def __init__(self, options, now=utcNow):
        self.options = options
        self.now = now
        self.budget = ProbeBudget(options.maxConnections, options.maxSeconds)
        self.result = AuditResult(options.target, sourceAddress=options.sourceAddress)
        self.capabilitiesBefore = {}
        self.capabilitiesUnderTLS = None
        self.facts = None
        self.tlsWorks = False
        self.certificateTrusted = False
        self.cleartextAccepted = []
        self.greeting = None
        self.mainProbe = None

    # -- helpers -----------------------------------------------------------

    def _probe(self):
        return POP3Probe(self.options.target, self.options.sourceAddress,
                         self.options.timeout, self.budget)

    def _context(self, version=None):
        return makeContext(version)

    def _connect(self, probe, context=None):
        """Connect and demand a +OK greeting."""
        greeting = probe.connect(context or self._context(), self.options.checkedName)
        if not greeting.ok:
            raise ProbeError(f"greeting was {greeting.status} {shorten(greeting.text)}")
        return greeting

    def _openAtTLSStart(self):
        """
        A probe whose socket is where the ClientHello goes: right after
        STLS's +OK, or at once for pop3s.
        """
        probe = self._probe()
        if self.options.target.implicitTLS:
            self.budget.spend()
            probe.sock = openSocket(self.options.target, self.options.sourceAddress,
                                    self.options.timeout)
            return probe
        try:
            self._connect(probe)
            answer = probe.command("STLS")
            if not answer.ok:
                raise ProbeError(f"STLS answered {answer.status} {shorten(answer.text)}")
        except Exception:
            probe.close()
            raise
        return probe

    # -- the run -------------------------------------------------------------

    def run(self):
        r = self.result
        try:
            if self._connection():
                if self.options.target.implicitTLS:
                    self._implicitSession()
                else:
                    self._cleartextSession()
                    self._cleartextProbes()
                    self._injection()
                if self.tlsWorks:
                    self._versions()
                    self._weakSuites()
                    self._certificate()
                self._authentication()
                self._login()
        except BudgetExhausted as e:
            r.add("audit.budget", WARN, f"audit stopped early: {e}")
        return r

    # -- connection ------------------------------------------------------------

    def _connection(self):
        """
        Greeting and whether our (source) address is declined.

        @return: True when the server greeted us and the audit can go on.
        """
        r = self.result
        o = self.options
        probe = self._probe()
        source = o.sourceAddress or "this host's default address"
        try:
            greeting = probe.connect(self._context(), o.checkedName)
        except (ConnectionClosed,) as e:
            probe.close()
            r.declined = True
            r.add("connection.greeting", INFO,
                  f"connection declined: server closed it before greeting ({e})")
            r.add("connection.source-address", INFO,
                  f"server declined connections from {source}")
            return False
        except ProbeTimeout as e:
            probe.close()
            r.add("connection.greeting", FAIL, f"no greeting: {e}")
            return False
        except ProbeError as e:
            probe.close()
            r.add("connection.greeting", FAIL, f"cannot audit: {e}")
            return False
        if not greeting.ok:
            probe.close()
            r.declined = True
            r.add("connection.greeting", INFO,
                  f"connection declined: {greeting.status} {shorten(greeting.text)}")
            r.add("connection.source-address", INFO,
                  f"server declined connections from {source}")
            return False
        r.add("connection.greeting", PASS, f"+OK {shorten(greeting.text)}")
        if o.sourceAddress:
            r.add("connection.source-address", INFO,
                  f"server accepted connections from {o.sourceAddress}")
        try:
            local, peer = probe.sock.getsockname()[0], probe.sock.getpeername()[0]
        except (OSError, AttributeError):
            local = peer = None
        if local is not None and local == peer:
            r.add("connection.vantage", INFO,
                  f"client and server share the address {local}: some servers (Dovecot) "
                  "treat such connections as secure, so remote clients may see less; "
                  "use --source-address with another address")
        r.add("cleartext.apop", *judgeApopGreeting(greeting, o.target.implicitTLS))
        self.greeting = greeting
        self.mainProbe = probe
        return True

    # -- pop3:// -------------------------------------------------------------------

    def _cleartextSession(self):
        r = self.result
        probe = self.mainProbe
        try:
            response, self.capabilitiesBefore = probe.capa()
            if response.ok:
                r.add("cleartext.capa", INFO,
                      f"CAPA before TLS offers: {describeCapabilities(self.capabilitiesBefore)}")
            else:
                r.add("cleartext.capa", WARN, f"CAPA refused before TLS: {shorten(response.text)}")
            if "STLS" in self.capabilitiesBefore:
                r.add("stls.offered", PASS, "STLS is offered")
            else:
                r.add("stls.offered", FAIL,
                      "STLS is not offered: nothing on this port can be protected by TLS")
            answer = probe.command("STLS")
            if not answer.ok:
                r.add("stls.works", FAIL, f"STLS refused: {answer.status} {shorten(answer.text)}")
                return
            try:
                probe.startTLS(self._context(), self.options.checkedName)
            except ProbeError as e:
                r.add("stls.works", FAIL, f"STLS answered +OK but {e}")
                return
            self.facts = handshakeFacts(probe.tls)
            self.tlsWorks = True
            r.add("stls.works", PASS,
                  f"TLS started: {self.facts.version} {self.facts.cipher} "
                  f"({self.facts.bits}-bit)")
            response, self.capabilitiesUnderTLS = probe.capa()
            r.add("stls.capa-after", *judge_capa_after_stls(response, self.capabilitiesUnderTLS))
        except ProbeError as e:
            r.add("stls.works", FAIL, f"session failed: {e}")
        finally:
            probe.quit()

    def _cleartextProbes(self):
        """
        USER, AUTH PLAIN and AUTH LOGIN before TLS, each on its own
        connection, with a made-up user name and no password.
        """
        r = self.result
        fakeUser = "audit-probe-" + secrets.token_hex(6)
        probes = (
            ("cleartext.user-pass", "USER", f"USER {fakeUser}", "USER/PASS"),
            ("cleartext.auth-plain", "PLAIN", "AUTH PLAIN", "AUTH PLAIN"),
            ("cleartext.auth-login", "LOGIN", "AUTH LOGIN", "AUTH LOGIN"),
        )
        self.cleartextAccepted = []
        for check, mechanism, line, label in probes:
            probe = self._probe()
            try:
                self._connect(probe)
                answer = probe.command(line)
                if answer.continuation:
                    probe.sendRaw(b"*\r\n")   # cancel: nothing secret is ever sent
                advertised = (mechanism in self.capabilitiesBefore if mechanism == "USER"
                              else mechanism in self.capabilitiesBefore.get("SASL", ()))
                status, reason = judge_cleartext_probe(label, line, mechanism, answer,
                                                       advertised)
                if status == FAIL:
                    self.cleartextAccepted.append(label)
                r.add(check, status, reason)
            except ProbeError as e:
                r.add(check, WARN, f"{label} probe failed: {e}")
            finally:
                probe.quit()

    def _injection(self):
        """
        STLS and CAPA in one packet: a correct server discards the CAPA; a
        broken one answers it, in clear or inside TLS (CVE-2011-0411 class).
        """
        r = self.result
        check = "stls.injection"
        probe = self._probe()
        try:
            self._connect(probe)
            probe.sendRaw(b"STLS\r\nCAPA\r\n")
            answer = probe.readResponse()
            if not answer.ok:
                r.add(check, INFO, f"not tested: STLS refused ({shorten(answer.text)})")
                return
            leftover = probe.pollData(min(self.options.injectionWait, 0.2))
            if leftover:
                r.add(check, FAIL,
                      "command pipelined after STLS was answered in clear before TLS: "
                      + shorten(leftover.decode("utf-8", "replace"), 60))
                return
            try:
                probe.startTLS(self._context(), self.options.checkedName)
            except ProbeError as e:
                # The server fed the pipelined bytes to its TLS layer (or
                # dropped them and us): it cannot answer them in TLS.
                r.add(check, PASS,
                      f"command pipelined after STLS was not answered (TLS then failed: {e})")
                return
            unsolicited = probe.pollData(self.options.injectionWait)
            if unsolicited:
                r.add(check, FAIL,
                      "command pipelined after STLS was answered inside TLS "
                      "(command injection): "
                      + shorten(unsolicited.decode("utf-8", "replace"), 60))
            else:
                r.add(check, PASS, "command pipelined after STLS was discarded")
        except ProbeError as e:
            r.add(check, WARN, f"injection probe failed: {e}")
        finally:
            probe.quit()

    # -- pop3s:// ------------------------------------------------------------------

    def _implicitSession(self):
        r = self.result
        probe = self.mainProbe
        try:
            self.facts = handshakeFacts(probe.tls)
            self.tlsWorks = True
            r.add("tls.implicit", PASS,
                  f"implicit TLS: {self.facts.version} {self.facts.cipher} ({self.facts.bits}-bit)")
            r.add("cleartext.exposure", PASS, "implicit TLS: nothing is sent in clear on this port")
            response, self.capabilitiesUnderTLS = probe.capa()
            if not response.ok:
                r.add("tls.capa", WARN, f"CAPA refused: {shorten(response.text)}")
            else:
                r.add("tls.capa", INFO,
                      f"CAPA under TLS offers: {describeCapabilities(self.capabilitiesUnderTLS)}")
                if "STLS" in self.capabilitiesUnderTLS:
                    r.add("stls.capa-after", FAIL, "CAPA under implicit TLS offers STLS")
        except ProbeError as e:
            r.add("tls.capa", WARN, f"session failed: {e}")
        finally:
            probe.quit()
        self.cleartextAccepted = []

    # -- TLS -----------------------------------------------------------------------

    def _versions(self):
        r = self.result
        accepted = {}
        for name, version in PROTOCOL_VERSIONS:
            refusal = ""
            try:
                probe = self._openAtTLSStart()
            except ProbeError as e:
                r.add(f"tls.version.{name}", WARN, f"TLS {name} not tested: {e}")
                continue
            try:
                probe.startTLS(self._context(version), self.options.checkedName)
                accepted[name] = handshakeFacts(probe.tls)
            except ProbeError as e:
                accepted[name] = None
                refusal = str(e)
            finally:
                probe.close()
            r.add(f"tls.version.{name}", *judge_version(name, accepted[name], refusal))

    def _weakSuites(self):
        r = self.result
        for key, (label, suites) in WEAK_SUITE_CATEGORIES.items():
            check = f"tls.cipher.{key}"
            try:
                probe = self._openAtTLSStart()
            except ProbeError as e:
                r.add(check, WARN, f"{label} suites not tested: {e}")
                continue
            try:
                answer = offerSuites(probe.sock, suites, self.options.checkedName,
                                              self.options.timeout)
            finally:
                probe.close()
            r.add(check, *judge_suite_answer(label, suites, answer))

    def _certificate(self):
        r = self.result
        o = self.options
        chain = self.facts.chain if self.facts else ()
        if not chain:
            r.add("tls.cert.chain", FAIL, "server sent no certificate")
            return
        leaf = chain[0]
        chainOK, why = verifyChain(chain, o.cafile)
        r.add("tls.cert.chain", PASS if chainOK else FAIL, why)
        nameOK, why = verifyName(leaf, o.checkedName)
        r.add("tls.cert.name", PASS if nameOK else FAIL, why)
        self.certificateTrusted = chainOK and nameOK
        r.add("tls.cert.expiry", *judge_expiry(*validityWindow(leaf), self.now()))
        r.add("tls.cert.key", *judgeKey(*describeKey(leaf)))
        r.add("tls.cert.signature", *judgeSignature(signatureHash(leaf)))

    # -- authentication --------------------------------------------------------------

    def _authentication(self):
        r = self.result
        before = mechanismsOf(self.capabilitiesBefore, self.greeting) \
            if not self.options.target.implicitTLS else []
        under = mechanismsOf(self.capabilitiesUnderTLS or {},
                             self.greeting if self.options.target.implicitTLS else None)
        parts = []
        if not self.options.target.implicitTLS:
            parts.append(f"before TLS: {', '.join(before) or 'none'}")
        if self.capabilitiesUnderTLS is not None:
            parts.append(f"under TLS: {', '.join(under) or 'none'}")
        r.add("auth.mechanisms", INFO, "; ".join(parts) or "none announced")
        r.add("auth.password-exposing", INFO, describe_exposure(before + under))
        r.add("auth.bearer", *judge_bearer(before, under))
        if self.cleartextAccepted:
            r.add("auth.cleartext", FAIL,
                  "password-exposing login usable without TLS: "
                  + ", ".join(self.cleartextAccepted))
        elif self.options.target.implicitTLS:
            r.add("auth.cleartext", PASS, "implicit TLS: no login is possible in clear")
        else:
            r.add("auth.cleartext", PASS,
                  "no password-exposing login (USER/PASS, PLAIN, LOGIN) usable without TLS")
        r.add("auth.kerberos", *judge_kerberos(before, under))

    def _login(self):
        r = self.result
        o = self.options
        if not o.user:
            return
        if not self.tlsWorks:
            r.add("login", INFO, "not attempted: no TLS; credentials are never sent in clear")
            return
        if not self.certificateTrusted:
            r.add("login", INFO,
                  "not attempted: the certificate was not verified (chain and name); "
                  "give --cafile / --servername so credentials go only to the right server")
            return
        capabilities = self.capabilitiesUnderTLS or {}
        probe = None
        try:
            probe = self._openAtTLSStart()
            probe.startTLS(self._context(), o.checkedName)
            if o.target.implicitTLS:
                probe.greeting = probe.readResponse()
                if not probe.greeting.ok:
                    raise ProbeError(f"greeting was {shorten(probe.greeting.text)}")
            method, answer = send_login(probe, o.user, o.password or b"", capabilities)
            if method is None:
                r.add("login", INFO, "not attempted: no USER or PLAIN offered under TLS")
                return
            if answer.ok:
                stat = probe.command("STAT")
                r.add("login", PASS,
                      f"logged in as {o.user} with {method} under TLS"
                      + (f"; STAT {shorten(stat.text, 40)}" if stat.ok else ""))
            else:
                r.add("login", FAIL,
                      f"login as {o.user} with {method} refused: {shorten(answer.status + ' ' + answer.text)}")
        except ProbeError as e:
            r.add("login", FAIL, f"login failed: {e}")
        finally:
            if probe is not None:
                probe.quit()


def send_login(probe, user, password, capabilities):
    """
    Log in on C{probe} (under verified TLS) with AUTH PLAIN when offered,
    else USER/PASS.

    @return: C{(method, final answer)}, or C{(None, None)} when the server
        offers neither.
    """
    if "PLAIN" in capabilities.get("SASL", ()):
        token = base64.b64encode(b"\0" + user.encode("utf-8") + b"\0" + password).decode()
        answer = probe.command("AUTH PLAIN")
        if answer.continuation:
            answer = probe.command(token)
        return "AUTH PLAIN", answer
    if "USER" in capabilities or not capabilities:
        answer = probe.command(f"USER {user}")
        if answer.ok:
            probe.sendRaw(b"PASS " + password + b"\r\n")
            answer = probe.readResponse()
        return "USER/PASS", answer
    return None, None
