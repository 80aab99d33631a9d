"""
The C{securepop} command: user, deliver, check-config, cert, test-auth, audit,
migrate, client-config.

Every subcommand accepts C{--config FILE} and C{--data-dir DIR}, so it acts
on the same data the daemon uses.  Options may come before the command,
between the command and its action, or after the arguments.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import sys

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task

from securepop import config, schemes
from securepop.auth import userfile
from securepop.auth.usernames import for_settings, index_names
from securepop.checkconfig import report
from securepop.errors import ConfigError, SourceUnavailable
from securepop.mailstore.delivery import deliver
from securepop.mailstore.paths import mailbox_path
from securepop.mailstore.quota import Quota, current_use, parse_quota, record

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = 64, 65, 67, 73, 75, 78

#: What each users-file field is, and the password hash's mechanisms.
_FIELD_TEXT = {"nt": "NT hash", "scram": "SCRAM-SHA-256 keys",
               "secret": "password-equivalent secret"}
_HASH_MECHANISMS = ("USER/PASS", "PLAIN", "LOGIN")


class _Parser(argparse.ArgumentParser):
    """
    A command with no sub-commands parses its options and positionals in any
    order (argparse's intermixed parsing): C{deliver NAME --data-dir D FILE}
    and C{user add --data-dir D NAME} work as C{--data-dir D user add NAME}
    does.  Plain C{parse_known_args} would fill an optional positional with
    nothing at the first option and leave the rest "unrecognized".
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _common(parser):
    parser.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="configuration file (TOML)")
    parser.add_argument("--data-dir", "-d", default=argparse.SUPPRESS,
                        help="data directory (overrides server.data_dir)")


def _common_everywhere(parser):
    """C{--config} and C{--data-dir} on every parser below C{parser}."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            if "--data-dir" not in child._option_string_actions:
                _common(child)
            _common_everywhere(child)


def load_settings(args):
    """C{--config} and C{--data-dir} are absent from C{args} when not given (SUPPRESS)."""
    options = vars(args)
    return config.load(options.get("config"), options.get("data_dir"))


def read_password(prompt="Password: ", confirm=True):
    """From the terminal (twice), or one line from stdin when it is not one."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise ValueError("no password on standard input")
        return line.rstrip("\r\n")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != first:
        raise ValueError("the passwords do not match")
    return first


def login_name(settings, raw):
    """
    The name logins use for C{raw} (L{securepop.auth.usernames}).

    @raise ValueError: naming C{raw}, for a name no login can use.
    """
    try:
        return for_settings(settings)(raw)
    except ValueError as e:
        raise ValueError(f"user name {raw!r}: {e}") from None


# -- user --------------------------------------------------------------------------

def _users_path(settings):
    if settings.auth.source != "file":
        raise ConfigError(settings.path or "(defaults)", "auth.source",
                          "user commands manage the local users file (auth.source = \"file\")")
    return settings.resolve(settings.auth.file.path)


def describe_secrets(entry, settings, name):
    """
    Lines saying what C{user add/passwd} stored for C{name} and which
    mechanisms will not work for that user, because the configuration the
    command ran with did not enable them when the password was set.
    """
    scheme = entry.password_hash.split("$")[1] if entry.password_hash.count("$") > 1 \
        else "password"
    stored = [f"{scheme} hash ({', '.join(_HASH_MECHANISMS)})"]
    missing = []
    for kind, field_name in userfile.FIELD_FOR_KIND.items():
        mechanisms = userfile.MECHANISMS_FOR_KIND[kind]
        if field_name in entry.extras:
            stored.append(f"{_FIELD_TEXT.get(field_name, field_name)} "
                          f"({', '.join(mechanisms)})")
        else:
            missing += mechanisms
    order = list(config.ALL_MECHANISMS) + ["APOP"]
    missing.sort(key=lambda m: order.index(m) if m in order else len(order))
    lines = [f"  stored: {'; '.join(stored)}"]
    if not missing:
        lines.append(f"  every mechanism has its secret for {name}")
        return lines
    enabled = ", ".join(list(settings.auth.mechanisms) + (["APOP"] if settings.auth.apop else []))
    if settings.path:
        lines.append(f"  will not work for {name}: {', '.join(missing)} (no secret stored: "
                     f"{settings.path} enables only {enabled})")
        lines.append(f"  to store them: enable them there (auth.mechanisms, auth.apop), "
                     f"then run securepop --config {settings.path} user passwd {name}")
    else:
        lines.append(f"  will not work for {name}: {', '.join(missing)} (no secret stored: "
                     f"without --config the embedded default enables only {enabled})")
        lines.append(f"  to store them: securepop --config FILE user passwd {name}, with "
                     f"the daemon's configuration FILE naming them")
    return lines


def cmd_user(args):
    settings = load_settings(args)
    path = _users_path(settings)
    settings.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    users = userfile.UsersFile(path).load()
    index, unreachable, _ = index_names(users, for_settings(settings))
    if args.action == "list":
        serves = {stored: normalised for normalised, stored in index.items()}
        why = dict(unreachable)
        show = args.quota
        for stored in sorted(users):
            if stored in why:
                print(f"{stored}  (no login can use this name: {why[stored]})")
            elif stored not in serves:
                print(f"{stored}  (unused: another entry serves the same login name)")
            elif serves[stored] != stored:
                print(f"{stored}  (logs in as {serves[stored]})"
                      f"{_use_text(settings, users, stored, serves[stored]) if show else ''}")
            else:
                print(stored + (_use_text(settings, users, stored, stored) if show else ""))
        return 0
    name = login_name(settings, args.name)
    if name != args.name:
        print(f"user name {args.name!r} is {name!r} for every login "
              f"(auth.username_case = {settings.auth.username_case!r}, "
              f"auth.strip_domain = {str(settings.auth.strip_domain).lower()})")
    existing = index.get(name)
    if args.action == "add":
        if existing is not None:
            raise KeyError(f"user {name} already exists"
                           + (f" (as {existing!r})" if existing != name else ""))
        target = name
    else:
        if existing is None:
            raise KeyError(f"no such user: {name}")
        target = existing       # an entry written before the rule keeps its spelling
    if args.action == "del":
        userfile.delete_user(path, target)
        print(f"deleted user {target}")
        return 0
    if args.action == "quota":
        quota = None if args.limit == "default" else parse_quota(args.limit)
        userfile.set_quota(path, target, quota)
        print(f"quota of {target}: "
              + (quota.describe() if quota is not None else "the [mail] default"))
        return 0
    password = read_password()
    if not password:
        print("securepop user: empty password refused", file=sys.stderr)
        return EX_DATAERR
    kinds = userfile.kinds_for_mechanisms(settings.auth.mechanisms, settings.auth.apop)
    params = schemes.HashParameters.from_settings(settings.auth.file)
    entry = userfile.set_password(path, target, password, kinds,
                                  create=args.action == "add", params=params)
    print(f"{'added' if args.action == 'add' else 'updated'} user {target}"
          + (f" (logs in as {name})" if target != name else ""))
    for line in describe_secrets(entry, settings, name):
        print(line)
    return 0


def quota_of(settings, users, stored):
    """A user's quota: the users file's C{quota=} field, else C{[mail]}'s."""
    entry = users.get(stored) if users else None
    if entry is not None and entry.extras.get("quota"):
        return parse_quota(entry.extras["quota"])
    return Quota(settings.mail.quota_bytes, settings.mail.quota_messages)


def directory_quota(settings, name):
    """
    The quota the directory's C{quota_attribute} gives C{name} (LDAP, AD),
    as the LMTP delivery reads it; None when there is no such attribute,
    value or user.

    @raise SourceUnavailable: the directory did not answer.
    """
    directory = settings.auth.ldap if settings.auth.source == "ldap" else settings.auth.ad
    if not directory.quota_attribute:
        return None
    # The whole server, imported only here: every securepop command imports
    # this module for its parser.
    from securepop.service import build_credential_source

    found, failed = [], []

    async def lookup(reactor):
        source = build_credential_source(settings, reactor)
        try:
            record_ = await source.lookupUser(name)
            found.append(record_.info.get("quota"))
        except UnauthorizedLogin:
            found.append(None)
        except SourceUnavailable as e:
            failed.append(e)
        finally:
            source.shutdown()

    try:
        task.react(lambda reactor: defer.ensureDeferred(lookup(reactor)))
    except SystemExit as done:
        if done.code not in (0, None) and not failed:
            failed.append(SourceUnavailable(f"directory lookup ended with {done.code}"))
    if failed:
        raise failed[0]
    text = found[0] if found else None
    return parse_quota(text) if text else None


def _use_text(settings, users, stored, login):
    """C{"  use 1234 octets, 5 messages; quota ..."} for C{user list --quota}."""
    try:
        maildir = mailbox_path(settings.mail.root, str(settings.data_path), login)
    except ValueError:
        return ""
    quota = quota_of(settings, users, stored)
    octets, messages = current_use(maildir, quota, rewrite=False)
    return f"  use {octets} octets, {messages} messages; quota {quota.describe()}"


# -- deliver -----------------------------------------------------------------------

def cmd_deliver(args):
    settings = load_settings(args)
    name = login_name(settings, args.name)
    path = mailbox_path(settings.mail.root, str(settings.data_path), name)
    users = {}
    if settings.auth.source == "file":
        users = userfile.UsersFile(settings.resolve(settings.auth.file.path)).load()
        name = index_names(users, for_settings(settings))[0].get(name, name)
    quota = quota_of(settings, users, name)
    if settings.auth.source != "file":
        try:
            quota = directory_quota(settings, name) or quota
        except SourceUnavailable as e:
            print(f"securepop deliver: the directory cannot say {name}'s quota ({e}); "
                  f"nothing delivered, try again later", file=sys.stderr)
            return EX_TEMPFAIL
    if args.file:
        with open(args.file, "rb") as f:
            message = f.read()
    else:
        message = sys.stdin.buffer.read()
    if not quota.unlimited and quota.refuses(current_use(path, quota), len(message)):
        print(f"securepop deliver: the mailbox of {name} is full (quota "
              f"{quota.describe()}); nothing delivered", file=sys.stderr)
        return EX_CANTCREAT
    delivered = deliver(path, message)
    record(path, len(message), 1)
    print(f"delivered {delivered}")
    return 0


# -- check-config ------------------------------------------------------------------

def cmd_check_config(args):
    settings = load_settings(args)
    lines, problems = report(settings)
    for line in lines:
        print(line)
    return 1 if problems else 0


def build_parser():
    parser = _Parser(prog="securepop", description=__doc__.strip().split("\n")[0])
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    user = sub.add_parser("user", help="manage the local users file")
    actions = user.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for action, helpText in (("add", "add a user (asks for the password)"),
                             ("passwd", "set a user's password and secrets again"),
                             ("del", "delete a user")):
        p = actions.add_parser(action, help=helpText)
        p.add_argument("name")
        p.set_defaults(func=cmd_user)
    p = actions.add_parser("quota", help="set a user's own quota (OCTETS[,MESSAGES], "
                                         "0 = none) or 'default' for the [mail] one")
    p.add_argument("name")
    p.add_argument("limit")
    p.set_defaults(func=cmd_user)
    p = actions.add_parser("list", help="list the users")
    p.add_argument("--quota", action="store_true",
                   help="with each user's mailbox use and quota")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("deliver", help="deliver a message into a user's Maildir")
    p.add_argument("name")
    p.add_argument("file", nargs="?", help="the message (default: standard input)")
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("check-config", help="print the effective configuration and warnings")
    p.set_defaults(func=cmd_check_config)

    for module in ("securepop.cli.cert", "securepop.cli.test_auth", "securepop.cli.audit",
                   "securepop.cli.migrate", "securepop.cli.client_config"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        mod.add_parser(sub)
    _common_everywhere(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as e:
        print(f"securepop: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyError as e:
        print(f"securepop: {e.args[0]}", file=sys.stderr)
        return EX_NOUSER
    except ValueError as e:
        print(f"securepop: {e}", file=sys.stderr)
        return EX_DATAERR
    except OSError as e:
        print(f"securepop: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 74


if __name__ == "__main__":
    sys.exit(main())
