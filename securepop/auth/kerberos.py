"""
The Kerberos acceptor behind SASL GSSAPI: MIT krb5 through python-gssapi,
with the service key from the keytab of C{[auth.gssapi]}.

Accepting a token decrypts the ticket with the keytab (read from disk at
each step) and checks MIT's replay cache (a file): blocking work, so every
step runs on the verification pool (the one password hashing uses: bounded,
taking turns across clients), never on the reactor thread.  Wrapping and
unwrapping the four-byte security-layer messages is in-memory cryptography
and runs where it is called.

A ticket is accepted only for C{<service>/<server.hostname>@REALM} with a
realm the keytab holds that principal for; anonymous tickets are refused.
"""

from __future__ import annotations

from zope.interface import implementer

try:
    import gssapi
    from gssapi.exceptions import GSSError
    from gssapi.raw import ChannelBindings
except ImportError:     # the optional "kerberos" extra: it builds against libkrb5-dev
    gssapi = None

    class GSSError(Exception):
        """Stands in for python-gssapi's error when the package is absent."""

from securepop import events
from securepop.auth.keytab import KeytabError, keytab_realms
from securepop.auth.verifyqueue import CLIENT
from securepop.errors import ConfigError
from securepop.sasl.gssapi import GSSAPIRefused, IGSSAcceptorExchange


MISSING_GSSAPI = (
    "GSSAPI needs the python-gssapi package: pip install 'securepop[kerberos]' "
    "(it builds against MIT krb5: apt-get install libkrb5-dev gcc python3-dev first)")


def _refused(error):
    """A GSS-API failure as the refusal the protocol logs (never the client's text)."""
    try:
        detail = error.gen_message()
    except Exception:  # a message that cannot be rendered is still a refusal
        detail = type(error).__name__
    events.emit("auth.gssapi_error", "info", message=detail[:200])
    return GSSAPIRefused("GSSAPI context refused", "gss-failed")


class KerberosAcceptor:
    """
    The service's acceptor credentials and policy, shared by all logins.

    @param keytab: path of the keytab (checked: L{securepop.auth.keytab}).
    @param run_blocking: C{f, *args -> Deferred}, the verification pool.
    @param realms: the realms whose users may log in; empty: the realms the
        keytab holds the service principal for.
    @raise KeytabError: a keytab unsafe or without the principal.
    @raise GSSError: the library cannot use it.
    """

    def __init__(self, keytab, service, hostname, run_blocking, realms=()):
        self.keytab = keytab
        self.service = service
        self.hostname = hostname.rstrip(".")
        self.principal_realms = keytab_realms(keytab, service, self.hostname)
        self.realms = tuple(realms) or self.principal_realms
        self.run_blocking = run_blocking
        self.credentials = gssapi.Credentials(usage="accept", store={"keytab": keytab})

    @classmethod
    def fromSettings(cls, settings, run_blocking):
        """
        @return: the acceptor of C{[auth.gssapi]}, or None when GSSAPI is
            not enabled.
        @raise ConfigError: naming C{auth.gssapi.keytab}.
        """
        g = settings.auth.gssapi
        if "GSSAPI" not in settings.auth.mechanisms:
            return None
        if gssapi is None:
            raise ConfigError(settings.path or "(defaults)", "auth.mechanisms", MISSING_GSSAPI)
        try:
            return cls(str(settings.resolve(g.keytab)), g.service, settings.server.hostname,
                       run_blocking, g.realms)
        except (KeytabError, GSSError) as e:
            reason = str(e) if isinstance(e, KeytabError) else e.gen_message()
            raise ConfigError(settings.path or "(defaults)", "auth.gssapi.keytab", reason)

    def acceptable_target(self, target):
        """True for our service principal in a realm the keytab has it for."""
        return target in {f"{self.service}/{self.hostname}@{realm}"
                          for realm in self.principal_realms}

    def newExchange(self, client="-"):
        """@param client: the address the verification pool charges the work to."""
        return AcceptorExchange(self, client)


@implementer(IGSSAcceptorExchange)
class AcceptorExchange:
    """One security context; see L{IGSSAcceptorExchange}."""

    def __init__(self, acceptor, client="-"):
        self._acceptor = acceptor
        self._client = client
        self._context = None
        self.realms = acceptor.realms

    def step(self, token, binding):
        if self._context is None:
            bindings = ChannelBindings(application_data=binding) if binding else None
            self._context = gssapi.SecurityContext(
                creds=self._acceptor.credentials, usage="accept", channel_bindings=bindings)
        context = self._context

        def work():
            # python-gssapi hands back an acceptor's error token and raises
            # the error at the next use of the context: both are inside.
            try:
                out = context.step(token)
                return out, context.complete
            except GSSError as e:
                raise _refused(e) from None

        client = CLIENT.set(self._client)
        try:
            return self._acceptor.run_blocking(work)
        finally:
            CLIENT.reset(client)

    def initiator(self):
        context = self._context
        try:
            target = str(context.target_name)
            principal = str(context.initiator_name)
            flags = context.actual_flags
        except GSSError as e:
            raise _refused(e) from None
        if not self._acceptor.acceptable_target(target):
            raise GSSAPIRefused("GSSAPI ticket for another service", "wrong-service-principal")
        if gssapi.RequirementFlag.anonymity in flags:
            raise GSSAPIRefused("GSSAPI anonymous login", "anonymous")
        return principal

    def channelBound(self):
        return gssapi.RequirementFlag.channel_bound in self._context.actual_flags

    def wrap(self, data):
        try:
            return self._context.wrap(data, False).message
        except GSSError as e:
            raise _refused(e) from None

    def unwrap(self, message):
        try:
            return self._context.unwrap(message).message
        except GSSError as e:
            raise _refused(e) from None

    def abort(self):
        self._context = None
