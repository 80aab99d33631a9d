"""
C{securepop cert}: the Exchange "Certificate Wizard" as commands.

  - C{cert request}: new key (0600) + PEM CSR for an external or enterprise CA;
  - C{cert install CERTFILE [--chain FILE]}: check the CA's answer against the
    pending key and the host name, assemble the chain, put both files where
    the configuration points (a running server picks them up by itself);
  - C{cert selfsigned}: for tests and first starts;
  - C{cert show|check [FILE] [--host NAME]}: subject, names, issuer, validity,
    key, and every problem; exit status 1 when there is one.

Wiring (C{securepop.cli.main})::

    cert.add_parser(subparsers)   # registers "cert" and its subcommands
    sys.exit(args.func(args))     # each func returns the exit status

C{args.config} and C{args.data_dir} come from the main parser.  Tests call
L{run}C{(args, settings)} with a L{CertSettings}.
"""

import argparse
import os
import sys
from dataclasses import dataclass

from securepop.fileio import atomic_write
from securepop import config
from securepop.errors import ConfigError
from securepop.tls import issue as _certs

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2

CA_FILE_HELP = ("PEM file of a private (e.g. enterprise) root CA that the chain "
                "may end in, besides the system's trusted roots")

DESCRIPTION = """\
The certificate wizard:
  request     new private key (mode 0600) and a CSR for your CA
  install     check the CA's answer against the pending key and the host
              name, assemble the chain, put the files where the configuration
              points (a running server picks them up within a second)
  selfsigned  a self-signed certificate, for tests and first starts
  show/check  subject, names, issuer, validity, key and every problem;
              exit status 1 when there is a problem, 2 on an error"""


@dataclass(frozen=True)
class CertSettings:
    """
    The configuration the certificate commands need.

    @ivar certificate: C{tls.certificate}; empty: C{data_dir/tls/cert.pem}.
    @ivar key: C{tls.key}; empty: C{data_dir/tls/key.pem}.
    """

    hostname: str
    data_dir: str
    certificate: str = ""
    key: str = ""

    @classmethod
    def from_settings(cls, settings):
        """
        From the C{securepop.config} settings object.
        """
        return cls(
            hostname=settings.server.hostname,
            data_dir=str(settings.server.data_dir),
            certificate=str(settings.tls.certificate or ""),
            key=str(settings.tls.key or ""),
        )

    @property
    def certificate_path(self):
        return self.certificate or _certs.default_paths(self.data_dir)[0]

    @property
    def key_path(self):
        return self.key or _certs.default_paths(self.data_dir)[1]

    @property
    def pending_key_path(self):
        return _certs.pending_paths(self.data_dir)[0]

    @property
    def csr_path(self):
        return _certs.pending_paths(self.data_dir)[1]


def load_settings(args):
    """Read the configuration file (C{--config}, C{--data-dir}: absent when not given)."""
    options = vars(args)
    return CertSettings.from_settings(config.load(options.get("config"),
                                                  options.get("data_dir")))


# -- argument parsing --------------------------------------------------------------


def add_parser(subparsers):
    """
    Register C{cert} and its subcommands on the main parser's subparsers.
    """
    cert = subparsers.add_parser(
        "cert",
        help="request, install, create and check TLS certificates",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = cert.add_subparsers(dest="cert_command", metavar="COMMAND")
    sub.required = True

    def keyType(p):
        p.add_argument(
            "--key-type",
            choices=_certs.KEY_TYPES,
            default=_certs.DEFAULT_KEY_TYPE,
            help="new key's algorithm and size (default %(default)s)",
        )

    request = sub.add_parser(
        "request", help="new private key and certificate signing request (CSR)"
    )
    request.add_argument("--cn", help="common name (default: server.hostname)")
    request.add_argument(
        "--san", action="append", default=[], metavar="NAME",
        help="additional DNS name or IP address (repeatable)",
    )
    keyType(request)
    request.add_argument("-O", "--organization", dest="O")
    request.add_argument("--ou", "--organizational-unit", dest="OU")
    request.add_argument("-C", "--country", dest="C", help="two-letter code")
    request.add_argument("--state", dest="ST")
    request.add_argument("--locality", dest="L")
    request.add_argument("--key-out", help="default: DATA_DIR/tls/pending-key.pem")
    request.add_argument("--csr-out", help="default: DATA_DIR/tls/request.csr")
    request.add_argument("--no-prompt", action="store_true",
                         help="never ask, even on a terminal")
    request.add_argument("--force", action="store_true",
                         help="replace a pending key from an earlier request")
    request.set_defaults(func=_entry(cmd_request))

    install = sub.add_parser(
        "install", help="install the CA's answer for the pending request"
    )
    install.add_argument("certfile", metavar="CERTFILE")
    install.add_argument("--chain", metavar="FILE", help="intermediate certificates")
    install.add_argument("--key", dest="pending_key",
                         help="the request's key (default: DATA_DIR/tls/pending-key.pem)")
    install.add_argument("--host", help="host name to check (default: server.hostname)")
    install.add_argument("--ca-file", help=CA_FILE_HELP)
    install.set_defaults(func=_entry(cmd_install))

    selfsigned = sub.add_parser("selfsigned", help="create a self-signed certificate")
    selfsigned.add_argument("--host", help="default: server.hostname")
    selfsigned.add_argument("--san", action="append", default=[], metavar="NAME")
    keyType(selfsigned)
    selfsigned.add_argument("--days", type=int, default=_certs.SELFSIGNED_DAYS)
    selfsigned.add_argument("--force", action="store_true",
                            help="replace existing certificate and key files")
    selfsigned.set_defaults(func=_entry(cmd_selfsigned))

    for name, helpText in (
        ("show", "describe the certificate in use and its problems"),
        ("check", "the same; for scripts (exit status 1 on a problem)"),
    ):
        p = sub.add_parser(name, help=helpText)
        p.add_argument("file", nargs="?", metavar="FILE",
                       help="default: the configured certificate")
        p.add_argument("--host", help="host name to check (default: server.hostname)")
        p.add_argument("--key", dest="key_file",
                       help="key to match (default: the configured key, when FILE "
                            "is not given)")
        p.add_argument("--ca-file", help=CA_FILE_HELP)
        p.set_defaults(func=_entry(cmd_show if name == "show" else cmd_check))
    return cert


def _entry(command):
    """
    C{args.func}: load the configuration, then run C{command}.
    """

    def func(args):
        try:
            settings = load_settings(args)
        except ConfigError as e:
            print(f"securepop cert: {e}", file=sys.stderr)
            return EXIT_ERROR
        return run(args, settings, command=command)

    func.command = command
    return func


def run(args, settings, command=None, stdin=None, stdout=None, stderr=None):
    """
    Run one C{cert} subcommand.

    @param settings: L{CertSettings}.
    @return: the exit status (0 fine, 1 problems found, 2 error).
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    command = command or args.func.command
    try:
        return command(args, settings, _IO(stdin, stdout, stderr))
    except (ConfigError, ValueError, OSError) as e:
        print(f"securepop cert {args.cert_command}: error: {e}", file=stderr)
        return EXIT_ERROR


class _IO:
    def __init__(self, stdin, stdout, stderr):
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def say(self, text=""):
        print(text, file=self.stdout)

    def warn(self, text):
        print(text, file=self.stderr)

    def interactive(self):
        return self.stdin is not None and self.stdin.isatty()

    def ask(self, question, default=""):
        shown = f" [{default}]" if default else ""
        self.stdout.write(f"{question}{shown}: ")
        self.stdout.flush()
        answer = self.stdin.readline()
        if not answer:
            raise ValueError("no answer (end of input)")
        return answer.strip() or default


# -- commands ----------------------------------------------------------------------


_PROMPTS = (
    ("O", "Organization (O)"),
    ("OU", "Organizational unit (OU)"),
    ("C", "Country, two letters (C)"),
    ("ST", "State or province (ST)"),
    ("L", "City or locality (L)"),
)


def cmd_request(args, settings, io):
    commonName = args.cn or settings.hostname
    attributes = {short: vars(args)[short] for short, _ in _PROMPTS}
    if io.interactive() and not args.no_prompt:
        commonName = io.ask("Common name (the host name clients use)", commonName)
        for short, question in _PROMPTS:
            if not attributes[short]:
                attributes[short] = io.ask(question)
    if not commonName:
        raise ValueError("no common name: give --cn or set server.hostname")
    keyOut = args.key_out or settings.pending_key_path
    csrOut = args.csr_out or settings.csr_path
    if os.path.exists(keyOut) and not args.force:
        raise ValueError(
            f"{keyOut} exists (a pending request); install its certificate "
            f"first, or use --force to replace it"
        )
    privateKey = _certs.generate_private_key(args.key_type)
    csr = _certs.build_csr(privateKey, commonName, args.san, **attributes)
    _certs.write_private_key(keyOut, privateKey)
    from cryptography.hazmat.primitives.serialization import Encoding

    atomic_write(csrOut, csr.public_bytes(Encoding.PEM), 0o644)
    io.say(f"private key (keep it secret, mode 0600): {keyOut}")
    io.say(f"certificate signing request:              {csrOut}")
    io.say(f"subject: {csr.subject.rfc4514_string()}")
    io.say("Send the request to your certificate authority, then run:")
    io.say("  securepop cert install CERTFILE [--chain INTERMEDIATES]")
    return EXIT_OK


def _trust_roots(args):
    """
    The system's roots plus C{--ca-file}.
    """
    roots = _certs.load_trust_roots()
    if args.ca_file:
        roots = roots + _certs.load_chain(args.ca_file, "--ca-file")
    return roots


def cmd_install(args, settings, io):
    hostname = args.host or settings.hostname
    pendingKey = args.pending_key or settings.pending_key_path
    problems = _certs.install(
        args.certfile,
        args.chain,
        pendingKey,
        hostname,
        settings.certificate_path,
        settings.key_path,
        trust_roots=_trust_roots(args),
    )
    io.say(f"installed certificate: {settings.certificate_path}")
    io.say(f"installed key:         {settings.key_path}")
    for problem in problems:
        io.warn(f"warning: {problem.message}")
    io.say("A running server uses it for new connections within a second.")
    return EXIT_OK


def cmd_selfsigned(args, settings, io):
    hostname = args.host or settings.hostname
    if not hostname:
        raise ValueError("no host name: give --host or set server.hostname")
    certPath, keyPath = settings.certificate_path, settings.key_path
    existing = [p for p in (certPath, keyPath) if os.path.exists(p)]
    if existing and not args.force:
        raise ValueError(
            f"{' and '.join(existing)} exist; use --force to replace them"
        )
    if not 1 <= args.days <= 3650:
        raise ValueError("--days must be between 1 and 3650")
    privateKey = _certs.generate_private_key(args.key_type)
    cert = _certs.make_selfsigned(privateKey, hostname, args.san, days=args.days)
    _certs.write_private_key(keyPath, privateKey)
    _certs.write_certificates(certPath, [cert])
    io.say(f"self-signed certificate for {hostname}: {certPath}")
    io.say(f"private key (mode 0600):                {keyPath}")
    return EXIT_OK


def _report(args, settings, io):
    path = args.file or settings.certificate_path
    keyPath = args.key_file or (None if args.file else settings.key_path)
    report = _certs.inspect(path, args.host or settings.hostname, keyPath,
                            trust_roots=_trust_roots(args))
    for line in report.lines():
        io.say(line)
    return report


def cmd_check(args, settings, io):
    return EXIT_PROBLEMS if _report(args, settings, io).problems else EXIT_OK


cmd_show = cmd_check  # the same report; both exit 1 when there is a problem
