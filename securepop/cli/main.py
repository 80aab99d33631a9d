"""
The C{securepop} command: user, deliver, check-config, cert, test-auth, audit.

Every subcommand accepts C{--config FILE} and C{--data-dir DIR}, so it acts
on the same data the daemon uses.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys

from securepop import config
from securepop.errors import ConfigError

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_CONFIG = 64, 65, 67, 78


def _common(parser):
    parser.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="configuration file (TOML)")
    parser.add_argument("--data-dir", "-d", default=argparse.SUPPRESS,
                        help="data directory (overrides server.data_dir)")


def load_settings(args):
    return config.load(getattr(args, "config", None), getattr(args, "data_dir", None))


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


# -- user --------------------------------------------------------------------------

def _users_path(settings):
    if settings.auth.source != "file":
        raise ConfigError(settings.path or "(defaults)", "auth.source",
                          "user commands manage the local users file (auth.source = \"file\")")
    return settings.resolve(settings.auth.file.path)


def cmd_user(args):
    from securepop.auth import userfile

    settings = load_settings(args)
    path = _users_path(settings)
    settings.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.action == "list":
        for name in sorted(userfile.UsersFile(path).load()):
            print(name)
        return 0
    if not args.name:
        print("securepop user: a user name is needed", file=sys.stderr)
        return EX_USAGE
    if args.action == "del":
        userfile.delete_user(path, args.name)
        print(f"deleted user {args.name}")
        return 0
    password = read_password()
    if not password:
        print("securepop user: empty password refused", file=sys.stderr)
        return EX_DATAERR
    kinds = userfile.kinds_for_mechanisms(settings.auth.mechanisms, settings.auth.apop)
    userfile.set_password(path, args.name, password, kinds, create=args.action == "add")
    print(f"{'added' if args.action == 'add' else 'updated'} user {args.name}")
    return 0


# -- deliver -----------------------------------------------------------------------

def cmd_deliver(args):
    from securepop.mailstore.delivery import deliver
    from securepop.mailstore.paths import mailbox_path

    settings = load_settings(args)
    path = mailbox_path(settings.mail.root, str(settings.data_path), args.name)
    if args.file:
        with open(args.file, "rb") as f:
            name = deliver(path, f)
    else:
        name = deliver(path, sys.stdin.buffer)
    print(f"delivered {name}")
    return 0


# -- check-config ------------------------------------------------------------------

def cmd_check_config(args):
    from securepop.checkconfig import report

    settings = load_settings(args)
    lines, problems = report(settings)
    for line in lines:
        print(line)
    return 1 if problems else 0


def build_parser():
    parser = argparse.ArgumentParser(prog="securepop", description=__doc__.strip().split("\n")[0])
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("user", help="manage the local users file")
    _common(p)
    p.add_argument("action", choices=["add", "passwd", "del", "list"])
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("deliver", help="deliver a message into a user's Maildir")
    _common(p)
    p.add_argument("name")
    p.add_argument("file", nargs="?", help="the message (default: standard input)")
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("check-config", help="print the effective configuration and warnings")
    _common(p)
    p.set_defaults(func=cmd_check_config)

    for module in ("securepop.cli.cert", "securepop.cli.test_auth", "securepop.cli.audit"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        mod.add_parser(sub)
        for action in sub.choices.values():
            if "--data-dir" not in action._option_string_actions:
                _common(action)
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
