"""
C{securepop test-auth USER}: try one login against the configured
credential source and say what happened, step by step.

This is the tool an administrator reaches for when "login fails" (as
Dovecot's C{doveadm auth test}): which server answered, which DN was found,
its groups and account state, the result, and how long it took.  The
password comes from the terminal (not echoed) or from the first line of
standard input; it is never printed.
"""

import argparse
import getpass
import hmac
import sys
import time

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task

from securepop import config
from securepop.auth.usernames import for_settings
from securepop.errors import SASLError, SourceUnavailable
from securepop.interfaces import CLEARTEXT_SECRET, NT_HASH
from securepop.sasl.base import Challenge
from securepop.sasl.gssapi import GSSAPI
from securepop.schemes import nt_hash

MECHANISMS = ("plain", "ntlm", "cram-md5", "apop", "lookup", "gssapi")


def add_parser(subparsers):
    """
    Register C{test-auth} on the C{securepop} command's subparsers.

    @return: the new parser; its C{func} default is L{run}.
    """
    parser = subparsers.add_parser(
        "test-auth", help="try one login against the credential source",
        description=__doc__.split("\n\n")[1])
    parser.add_argument("user", help="the user name as a client would send it")
    parser.add_argument(
        "--mechanism", choices=MECHANISMS, default="plain",
        help="plain: verify the password (USER/PASS, PLAIN, LOGIN); "
             "ntlm: NTLM (NT hash from the directory, or the DC via winbind); "
             "cram-md5/apop: compare with the stored secret; "
             "gssapi: Kerberos with the ticket cache (kinit first) against "
             "[auth.gssapi] keytab; "
             "lookup: only whether the user may log in (no password)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin")
    parser.add_argument("--config", default=argparse.SUPPRESS,
                        help="configuration file")
    parser.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="data directory")
    parser.set_defaults(func=run)
    return parser


def readPassword(args, stdin=None, prompt=getpass.getpass):
    """
    @return: the password as bytes (from the terminal, or stdin's first
        line without its line end).
    """
    stdin = stdin or sys.stdin
    if args.password_stdin or not stdin.isatty():
        line = stdin.readline()
        return line.rstrip("\r\n").encode("utf-8")
    return prompt(f"Password for {args.user}: ").encode("utf-8")


async def tryLogin(source, user, mechanism, password, clock, ntlmVerifier=None,
                   normalise=None):
    """
    Run one login and describe it.

    @param user: the name as a client would send it.
    @param normalise: the server's user-name rule for one name
        (L{securepop.auth.usernames.for_settings}), applied as a login
        applies it: to C{user}, or to the name the DC verified for NTLM.
    @return: a dict with at least C{result} (C{ok}, C{refused},
        C{unavailable}) and C{seconds}.
    """
    started = clock()
    report = {"user": user, "mechanism": mechanism, "source": source.name}
    normalise = normalise or (lambda name: name)
    # Directory sources explain a login step by step (server, DN, groups,
    # account state); the others only answer it.
    explain = getattr(source, "explain", None)
    try:
        if not (mechanism == "ntlm" and ntlmVerifier is not None):
            user = normalise(user)      # NTLM sends the name as given; the DC's is normalised
            if user != report["user"]:
                report["login_name"] = user
        if explain is not None and mechanism in ("plain", "lookup"):
            report.update(await explain(
                user, password if mechanism == "plain" else None))
        elif mechanism == "plain":
            record = await source.verifyPassword(user, password)
            report.update(result="ok", username=record.username, **record.info)
        elif mechanism == "lookup":
            record = await source.lookupUser(user)
            report.update(result="ok", username=record.username, **record.info)
        elif mechanism == "ntlm" and ntlmVerifier is not None:
            report.update(await _ntlmThroughVerifier(
                source, ntlmVerifier, user, password, normalise, explain))
        elif mechanism == "ntlm":
            record, stored = await source.lookupSecret(user, NT_HASH)
            ok = hmac.compare_digest(stored, nt_hash(password))
            report.update(result="ok" if ok else "refused",
                          username=record.username, **record.info)
            if not ok:
                report["reason"] = "NT hash does not match the password"
        else:
            record, stored = await source.lookupSecret(user, CLEARTEXT_SECRET)
            ok = hmac.compare_digest(stored, password)
            report.update(result="ok" if ok else "refused",
                          username=record.username, **record.info)
            if not ok:
                report["reason"] = "stored secret does not match"
    except UnauthorizedLogin as error:
        report.update(result="refused", reason=str(error))
    except SourceUnavailable as error:
        report.update(result="unavailable", reason=str(error))
    except ValueError as error:
        report.update(result="refused", reason=str(error))
    report["seconds"] = round(clock() - started, 3)
    return report


async def _ntlmThroughVerifier(source, verifier, user, password, normalise=lambda n: n,
                               explain=None):
    import spnego

    client = spnego.client(user, password.decode("utf-8"), hostname="localhost",
                           service="pop", protocol="ntlm")
    exchange = verifier.newExchange()
    challenge = await exchange.negotiate(client.step())
    verified = await exchange.authenticate(client.step(challenge))
    report = {"verified_by_dc": verified}
    verified = normalise(verified)
    if explain is not None:
        report.update(await explain(verified, None))
    else:
        record = await source.lookupUser(verified)
        report.update(result="ok", username=record.username)
    return report


async def tryKerberos(settings, source, user, clock):
    """
    A GSSAPI login as a client makes it: a ticket for C{service/hostname}
    from the ticket cache (C{KRB5CCNAME}), with C{user} as the authorization
    id, accepted with the configured keytab, then the source's decision.

    @return: a report as L{tryLogin}'s, with the C{principal} the ticket
        cache holds.
    """
    from gssapi.exceptions import GSSError
    from twisted.internet import threads

    from securepop.auth.kerberos import KerberosAcceptor
    from securepop.testing.gssapi import GSSAPIClient

    started = clock()
    report = {"user": user, "mechanism": "gssapi", "source": source.name}
    g = settings.auth.gssapi
    try:
        if not g.keytab:
            raise ValueError("no keytab: set [auth.gssapi] keytab")
        acceptor = KerberosAcceptor(str(settings.resolve(g.keytab)), g.service,
                                    settings.server.hostname, threads.deferToThread, g.realms)
        try:
            client = GSSAPIClient(settings.server.hostname, g.service, authzid=user)
            report["principal"] = str(client.credentials.name)
            response = client.initial()
        except GSSError as e:
            raise ValueError(f"no ticket for {g.service}/{settings.server.hostname} "
                             f"(kinit first): {e.gen_message()}") from None
        exchange = GSSAPI.newExchange(_KerberosContext(settings, acceptor.newExchange()))
        result = await defer.maybeDeferred(exchange.step, response)
        while isinstance(result, Challenge):
            result = await defer.maybeDeferred(exchange.step, client.respond(result.data))
        report["login_name"] = result.username
        record = await source.lookupUser(result.username)
        report.update(result="ok", username=record.username, **record.info)
    except UnauthorizedLogin as error:
        report.update(result="refused", reason=str(error))
    except SourceUnavailable as error:
        report.update(result="unavailable", reason=str(error))
    except (ValueError, SASLError) as error:
        report.update(result="refused", reason=getattr(error, "reason", "") or str(error))
    except GSSError as error:
        report.update(result="refused", reason=error.gen_message())
    report["seconds"] = round(clock() - started, 3)
    return report


class _KerberosContext:
    """What the GSSAPI exchange asks of its connection, for test-auth (no TLS)."""

    secure = False
    clock = None

    def __init__(self, settings, acceptor):
        self.settings = settings.auth
        self.hostname = settings.server.hostname
        self._acceptor = acceptor
        self.normaliseUsername = for_settings(settings)

    def channelBinding(self, kind):
        return None

    def gssapiAcceptor(self):
        return self._acceptor


def formatReport(report):
    """
    @return: the report as aligned "key: value" lines.
    """
    order = ["result", "user", "principal", "login_name", "mechanism", "source", "server", "dn",
             "groups", "account", "bind", "verified_by_dc", "username",
             "mailbox", "attributes", "reason", "seconds"]
    keys = [key for key in order if key in report] + sorted(
        key for key in report if key not in order)
    lines = []
    for key in keys:
        value = report[key]
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(item) for item in value) or "(none)"
        lines.append(f"{key + ':':<16}{value}")
    return "\n".join(lines)


def run(args, out=None):
    """
    Entry point for C{securepop test-auth}.

    @return: exit code: 0 accepted, 1 refused, 2 directory unavailable.
    """
    out = out or sys.stdout
    password = b"" if args.mechanism in ("lookup", "gssapi") else readPassword(args)

    exitCode = []

    async def main(reactor):
        # The whole server, imported only when test-auth runs: the securepop
        # command imports this module for its parser on every call.
        from securepop import service

        options = vars(args)          # --config, --data-dir: absent when not given
        settings = config.load(options.get("config"), options.get("data_dir"))
        source = service.build_credential_source(settings, reactor)
        # Active Directory: NTLM is the domain controller's to verify.
        verifier = service.ntlm_verifier_of(source) if args.mechanism == "ntlm" else None
        if args.mechanism == "gssapi":
            report = await tryKerberos(settings, source, args.user, time.monotonic)
        else:
            report = await tryLogin(source, args.user, args.mechanism, password,
                                    time.monotonic, verifier, for_settings(settings))
        out.write(formatReport(report) + "\n")
        exitCode.append({"ok": 0, "refused": 1}.get(report.get("result"), 2))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as done:
        if done.code not in (0, None):
            return done.code
    return exitCode[0] if exitCode else 2
