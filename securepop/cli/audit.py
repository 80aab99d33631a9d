"""
C{securepop audit URL}: run the audit against any POP3 server.

C{securepop.cli.main} calls L{add_parser} on its sub-parsers and then
C{args.func(args)}; the return value is the exit status (1 when any
check FAILs, 3 when the server declined the connection, 64 for bad usage).
"""

import argparse
import ipaddress
import sys

from securepop.audit.engine import Audit, AuditOptions
from securepop.audit.pop3client import parseURL
from securepop.audit.report import exitStatus, formatJSON, formatText

EXIT_USAGE = 64   # as securepop.cli.main (sysexits EX_USAGE)
MAX_PASSWORD_FILE = 4096


def add_parser(subparsers):
    """
    Register the C{audit} sub-command.

    @param subparsers: what C{ArgumentParser.add_subparsers()} returned.
    @return: the new sub-parser.
    """
    parser = subparsers.add_parser(
        "audit",
        help="audit a POP3 server's security (securepop, Dovecot, Exchange, ...)",
        description=(
            "Check connection control, cleartext exposure, STLS, TLS versions, "
            "weak suites, the certificate and the login methods of a POP3 server. "
            "No real credential is sent before TLS."),
    )
    _addArguments(parser)
    parser.set_defaults(func=run)
    return parser


def _addArguments(parser):
    parser.add_argument("url", metavar="URL", help="pop3://HOST[:PORT] or pop3s://HOST[:PORT]")
    parser.add_argument("--source-address", metavar="IP", default=None,
                        help="bind the probes to this local address (test an excluded address)")
    parser.add_argument("--servername", metavar="NAME", default=None,
                        help="name for SNI and the certificate check (default: the URL's host)")
    parser.add_argument("--cafile", metavar="FILE", default=None,
                        help="CA certificates that must anchor the server's chain")
    parser.add_argument("--user", metavar="NAME", default=None,
                        help="log in as NAME, over verified TLS only")
    parser.add_argument("--password-file", metavar="FILE", default=None,
                        help="file whose first line is the password for --user")
    parser.add_argument("--json", action="store_true", help="write the report as JSON")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0,
                        help="time allowed for each network step (default 10)")


def readPassword(path):
    """
    @return: the first line of C{path} as bytes, without its line end.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_PASSWORD_FILE + 1)
    if len(data) > MAX_PASSWORD_FILE:
        raise ValueError("password file is too large")
    password = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not password:
        raise ValueError("password file is empty")
    return password


def buildOptions(args):
    """
    Turn parsed arguments into L{AuditOptions}.

    @raise ValueError: with a message for the user.
    """
    target = parseURL(args.url)
    if args.source_address is not None:
        ipaddress.ip_address(args.source_address)
    if not (0 < args.timeout <= 300):
        raise ValueError("--timeout must be between 0 and 300 seconds")
    if bool(args.user) != bool(args.password_file):
        raise ValueError("--user and --password-file go together")
    if args.user and any(c in args.user for c in "\r\n\0 "):
        raise ValueError("--user must not contain spaces or control characters")
    password = readPassword(args.password_file) if args.password_file else None
    if password is not None and any(c in password for c in b"\r\n\0"):
        raise ValueError("password must not contain control characters")
    return AuditOptions(
        target=target,
        sourceAddress=args.source_address,
        servername=args.servername,
        cafile=args.cafile,
        user=args.user,
        password=password,
        timeout=args.timeout,
    )


def run(args, out=None, err=None):
    """
    Run the audit for parsed arguments and print the report.

    @return: the exit status.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        options = buildOptions(args)
    except (ValueError, OSError) as e:
        err.write(f"securepop audit: {e}\n")
        return EXIT_USAGE
    result = Audit(options).run()
    out.write(formatJSON(result) if args.json else formatText(result))
    out.flush()
    return exitStatus(result)


def main(argv=None):
    """Stand-alone entry point: C{python -m securepop.cli.audit URL ...}."""
    parser = argparse.ArgumentParser(prog="securepop audit")
    _addArguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
