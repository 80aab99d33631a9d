"""
C{securepop migrate}: move users' mail from another POP3 server (or a
Dovecot or Courier Maildir) into securepop with the old UIDLs and order
(L{securepop.migrate}).

Exit status: 0 done (or C{--verify}: the same lists); 1 a difference
(C{--verify}) or messages refused; 64 bad usage; 69 the source failed or
went away (run again to resume); 75 the mailbox is in use; 77 the source
refused the login; 130 interrupted.  With several users, the highest.
"""

import csv
import json
import os
import sys

from securepop import config
from securepop.audit.pop3client import parseURL
from securepop.auth.usernames import for_settings
from securepop.errors import ConfigError, MailboxInUse
from securepop.mailstore.lease import local_method
from securepop.mailstore.maildir import MaildirMailbox
from securepop.mailstore.paths import mailbox_path
from securepop.migrate import engine
from securepop.migrate.pop3 import LoginRefused, POP3Client, SourceError, tls_context
from securepop.migrate.sources import (
    DOVECOT_DEFAULT_UIDL_FORMAT,
    POP3Source,
    maildir_source,
)
from securepop.migrate.target import TargetMaildir

try:
    from tqdm import tqdm
except ImportError:  # progress is a nicety
    tqdm = None

EX_DIFFERENT, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM = 1, 64, 69, 75, 77
EX_INTERRUPTED = 130
MAX_PASSWORD_FILE = 4096


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "migrate",
        help="move mail from another POP3 server, keeping UIDLs and order",
        description=("Pull each user's messages from a POP3 server (STLS or implicit TLS, "
                     "certificate checked) or a Dovecot or Courier Maildir, and serve "
                     "them with the same UIDLs in the same order.  Incremental; never "
                     "deletes on the source without --delete-source."))
    parser.add_argument("url", nargs="?", metavar="URL",
                        help="pop3://HOST[:PORT] (STLS) or pop3s://HOST[:PORT]")
    parser.add_argument("--user", metavar="NAME", help="the user (same name on both servers)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="file whose first line is the user's password on the source")
    parser.add_argument("--users", metavar="CSV",
                        help="several users: lines 'name,password_file'")
    parser.add_argument("--from-maildir", metavar="PATH",
                        help="read a Maildir copied from a Dovecot (dovecot-uidlist) or Courier "
                             "(courierpop3dsizelist) server instead of a server")
    parser.add_argument("--uidl-format", default=DOVECOT_DEFAULT_UIDL_FORMAT,
                        help="the old Dovecot's pop3_uidl_format, for messages without a "
                             "P field (default %(default)s)")
    parser.add_argument("--cafile", metavar="FILE",
                        help="CA certificates for the source's certificate")
    parser.add_argument("--insecure-cleartext", action="store_true",
                        help="allow pop3:// without STLS (the password crosses in cleartext)")
    parser.add_argument("--verify", action="store_true",
                        help="migrate nothing: compare the UIDL lists, exit 1 on a difference")
    parser.add_argument("--delete-source", action="store_true",
                        help="delete on the source what is safely here (never by default)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="progress bar on standard error (auto: on a terminal)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="network timeout per step (default 60)")
    parser.set_defaults(func=run)
    return parser


def read_password_file(path):
    """@return: the first line of C{path}, without its line end."""
    with open(path, "rb") as f:
        data = f.read(MAX_PASSWORD_FILE + 1)
    if len(data) > MAX_PASSWORD_FILE:
        raise ValueError(f"{path}: longer than a password file")
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise ValueError(f"{path}: no password on its first line")
    return line.decode("utf-8")


def read_users_csv(path):
    """
    @return: C{[(name, password_file)]}; a relative password file is
        relative to the CSV's directory; blank and C{#} lines skipped.
    """
    base = os.path.dirname(os.path.abspath(path))
    users = []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path} line {number}: expected 'name,password_file'")
            users.append((row[0].strip(), os.path.join(base, row[1].strip())))
    return users


class TqdmProgress(engine.NullProgress):
    """Messages and bytes, rate and ETA on standard error."""

    def __init__(self, user):
        self.user = user
        self.bar = None

    def start(self, messages, octets):
        self.messages = messages
        self.done = 0
        self.bar = tqdm(total=octets or None, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=self.user, file=sys.stderr, leave=True)

    def advance(self, octets):
        self.done += 1
        self.bar.set_postfix_str(f"{self.done}/{self.messages} messages", refresh=False)
        self.bar.update(octets)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _progress_for(args, user):
    wanted = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty()
                                       and not args.json)
    return TqdmProgress(user) if wanted and tqdm is not None else None


def _usage(args):
    if args.from_maildir:
        if args.url or args.users or not args.user:
            return "--from-maildir takes --user NAME and no URL or --users"
        if args.verify or args.delete_source:
            return "--verify and --delete-source need a URL"
        return None
    if not args.url:
        return "a URL (pop3:// or pop3s://) or --from-maildir is needed"
    if bool(args.users) == bool(args.user):
        return "give either --user NAME --password-file FILE, or --users CSV"
    if args.user and not args.password_file:
        return "--user needs --password-file"
    return None


def _open_source(args, target_url, name, password_file):
    if args.from_maildir:
        return maildir_source(args.from_maildir, args.uidl_format)
    password = read_password_file(password_file)
    client = POP3Client.connect(target_url.scheme, target_url.host, target_url.port,
                                tls_context(args.cafile), args.insecure_cleartext,
                                timeout=args.timeout)
    try:
        client.login(name, password)
    except BaseException:
        client.close()
        raise
    return POP3Source(client)


def _one_user(args, settings, url, name, password_file):
    report = engine.Report(user=name, source=args.url or args.from_maildir)
    status = 0
    try:
        login = for_settings(settings)(name)
        path = mailbox_path(settings.mail.root, str(settings.data_path), login)
        source = _open_source(args, url, name, password_file)
        try:
            listing = source.listing()
            if args.verify:
                mailbox = MaildirMailbox.open(path, create=False,
                                              staleAfter=settings.mail.lock_stale_after,
                                              lockMethod=local_method(settings.mail.lock))
                try:
                    served = engine.served_listing(mailbox)
                finally:
                    mailbox.release()
                report.listed = len(listing)
                report.differences = engine.compare(listing, served)
                return report, EX_DIFFERENT if report.differences else 0
            target = TargetMaildir.open(path, local_method(settings.mail.lock),
                                       settings.mail.lock_stale_after)
            try:
                engine.migrate(source, target, report, args.delete_source,
                               _progress_for(args, name), listing=listing)
            finally:
                target.close()
        finally:
            source.close()
        if report.refused or report.unlisted:
            status = EX_DIFFERENT
    except LoginRefused as e:
        report.error, status = str(e), EX_NOPERM
    except SourceError as e:
        report.error, status = f"{e} (run again to resume)", EX_UNAVAILABLE
    except MailboxInUse:
        report.error, status = "the mailbox is in use by a session; try again later", EX_TEMPFAIL
    except FileNotFoundError as e:
        report.error, status = f"{e.strerror}: {e.filename}", EX_UNAVAILABLE
    except ValueError as e:
        report.error, status = str(e), EX_USAGE
    return report, status


def _print_text(report, verify):
    if report.error:
        print(f"securepop migrate: {report.user}: {report.error}", file=sys.stderr)
        return
    if verify:
        if report.differences:
            print(f"{report.user}: {len(report.differences)} difference(s)")
            for line in report.differences:
                print(f"  {line}")
        else:
            print(f"{report.user}: the same {report.listed} UIDLs in the same order")
        return
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    print(f"{report.user}: {report.fetched} fetched ({report.bytes} octets, {rate:.1f} MB/s), "
          f"{report.already} already here, {report.listed} on the source"
          + (f", {report.deleted_on_source} deleted on the source"
             if report.deleted_on_source else ""))
    for uidl, reason in report.refused:
        print(f"  refused {uidl}: {reason}")
    for uidl, theirs, ours in report.size_mismatches:
        print(f"  size of {uidl}: {theirs} on the source, {ours} here")
    for path in report.unlisted:
        print(f"  not in the UIDL list (dovecot-uidlist, courierpop3dsizelist), "
              f"not migrated: {path}")


def run(args):
    problem = _usage(args)
    if problem:
        print(f"securepop migrate: {problem}", file=sys.stderr)
        return EX_USAGE
    try:
        url = parseURL(args.url) if args.url else None
        users = read_users_csv(args.users) if args.users else [(args.user, args.password_file)]
    except (ValueError, OSError) as e:
        print(f"securepop migrate: {e}", file=sys.stderr)
        return EX_USAGE
    options = vars(args)
    try:
        settings = config.load(options.get("config"), options.get("data_dir"))
    except ConfigError as e:
        print(f"securepop: configuration error: {e}", file=sys.stderr)
        return 78
    reports, worst = [], 0
    try:
        for name, password_file in users:
            report, status = _one_user(args, settings, url, name, password_file)
            reports.append(report)
            worst = max(worst, status)
            if not args.json:
                _print_text(report, args.verify)
    except KeyboardInterrupt:
        print("securepop migrate: interrupted; what was stored is kept, run again to resume",
              file=sys.stderr)
        return EX_INTERRUPTED
    if args.json:
        print(json.dumps({"users": [r.as_dict() for r in reports], "status": worst}, indent=2))
    return worst
