"""ServerContext.replace_from: a reload hands the new collaborators over, state stays."""

from types import SimpleNamespace

from twisted.internet.task import Clock

from securepop.access.limits import ConnectionLimits
from securepop.auth.gate import PenaltyGate
from securepop.auth.penalty import FailurePenalty, UserLockout
from securepop.protocol.context import ServerContext


def context(clock, name, lockout=True, base=2.0, gate=16, **limits):
    penalty = FailurePenalty(clock, base=base, maximum=15.0)
    return ServerContext(
        SimpleNamespace(name=name), clock, portal=f"portal-{name}", source=f"source-{name}",
        mechanisms={"PLAIN": name}, tls=f"tls-{name}", policy=f"policy-{name}",
        limits=ConnectionLimits(**limits), penalty=penalty,
        gate=PenaltyGate(clock, penalty, max_per_address=gate),
        lockout=UserLockout(clock, 3, 60.0) if lockout else None,
        metrics=f"metrics-{name}", protocol_log=f"log-{name}",
        ntlm_delegate=lambda: f"delegate-{name}", verifications=f"queue-{name}")


def test_replace_from_takes_the_new_collaborators():
    clock = Clock()
    old, fresh = context(clock, "old"), context(clock, "new")
    old.replace_from(fresh)
    assert (old.settings, old.portal, old.source, old.mechanisms, old.tls, old.policy) == (
        fresh.settings, "portal-new", "source-new", {"PLAIN": "new"}, "tls-new", "policy-new")
    assert old.ntlm_delegate() == "delegate-new"
    # What belongs to the process, not to the configuration, is not replaced.
    assert (old.metrics, old._protocol_log, old.verifications) == (
        "metrics-old", "log-old", "queue-old")


def test_replace_from_keeps_counts_and_history_with_the_new_limits():
    clock = Clock()
    old = context(clock, "old", max_connections=10, max_per_ip=2, max_per_user=1)
    limits, penalty, gate, lockout = old.limits, old.penalty, old.gate, old.lockout
    lease = limits.acquireConnection("192.0.2.1")
    penalty.record_failure("192.0.2.9")
    lockout.record_failure("alice")
    old.sessions.add("session")
    fresh = context(clock, "new", base=4.0, gate=8, max_connections=20, max_per_ip=3,
                    max_per_user=2)
    fresh.lockout.threshold, fresh.lockout.window = 5, 120.0
    old.replace_from(fresh)
    assert old.limits is limits and old.penalty is penalty and old.gate is gate
    assert old.lockout is lockout and old.sessions == {"session"}
    assert (limits.maxConnections, limits.maxPerIP, limits.maxPerUser) == (20, 3, 2)
    assert limits.connectionsFrom("192.0.2.1") == 1         # the open connection counts
    assert penalty.base == 4.0 and penalty.delay_for("192.0.2.9") > 0
    assert gate.max_per_address == 8
    assert (lockout.threshold, lockout.window) == (5, 120.0)
    lease.release()


def test_replace_from_switches_the_lockout_on_and_off():
    clock = Clock()
    old = context(clock, "old", lockout=False)
    on = context(clock, "on")
    old.replace_from(on)
    assert old.lockout is on.lockout
    old.replace_from(context(clock, "off", lockout=False))
    assert old.lockout is None


def test_use_protocol_log_replaces_the_writer():
    written = []
    log = SimpleNamespace(write=lambda *a: written.append(a))
    ctx = context(Clock(), "x")
    ctx.use_protocol_log(log)
    ctx.protocol_log("session", "C", b"NOOP")
    assert written == [("session", "C", b"NOOP")]
    ctx.use_protocol_log(None)
    ctx.protocol_log("session", "C", b"NOOP")
    assert len(written) == 1


class Kerberos:
    """A Kerberos acceptor double: hands out one exchange per peer."""

    def newExchange(self, peer):
        return ("exchange", peer)


class Source:
    def capabilities(self):
        return frozenset({"plaintext"})


def test_gssapi_acceptor_and_kinds_follow_the_keytab():
    from securepop.interfaces import KERBEROS

    clock = Clock()
    with_keytab = ServerContext(SimpleNamespace(), clock, None, Source(), {}, gssapi=Kerberos())
    without = ServerContext(SimpleNamespace(), clock, None, Source(), {})
    assert with_keytab.kinds() == {"plaintext", KERBEROS}
    assert without.kinds() == {"plaintext"}
    assert with_keytab.gssapi_acceptor("192.0.2.7") == ("exchange", "192.0.2.7")
    assert without.gssapi_acceptor("192.0.2.7") is None
    without.replace_from(with_keytab)           # a reload that adds a keytab
    assert without.gssapi_acceptor("192.0.2.8") == ("exchange", "192.0.2.8")
