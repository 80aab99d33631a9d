"""
The one table of POP3 commands: for each, its handler, the states it is
valid in, its arity and whether the rest of the line is one raw argument.

Handlers declare themselves with L{command}, as aiosmtpd's C{@syntax}; the
session's dispatcher checks a line against the table before any handler
runs, in this order: unknown command, arity, a feature switched off, then
the state.  A command in the wrong state gets its one refusal (C{NOT_NOW}
unless it names another); before login that refusal counts as a bad
command, so no pre-login command keeps a slot for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from securepop.protocol import responses as R
from securepop.protocol.states import READING


@dataclass(frozen=True)
class Command:
    """
    @ivar name: the command word, upper case (bytes).
    @ivar handler: the session method that runs it, called with the
        session and the arguments.
    @ivar states: the states it is valid in.
    @ivar arity: (least, most) arguments, each non-empty.
    @ivar raw: the rest of the line after one space is one argument
        (RFC 1939: a PASS may contain spaces).
    @ivar wrong_state: the reply when used in another state.
    @ivar enabled: a function of the session, false when the command is
        switched off in the configuration, or None (always on).
    @ivar disabled: the reply then (it counts as a bad command).
    """

    name: bytes
    handler: Callable
    states: frozenset
    arity: tuple = (0, 0)
    raw: bool = False
    wrong_state: bytes = R.NOT_NOW
    enabled: Callable | None = None
    disabled: bytes | None = None

    def arity_ok(self, args):
        lo, hi = self.arity
        return lo <= len(args) <= hi and all(args)


#: name (bytes, upper case) -> L{Command}, filled by L{command}.
COMMANDS: dict[bytes, Command] = {}


def command(name, states=READING, arity=(0, 0), raw=False, wrong_state=R.NOT_NOW,
            enabled=None, disabled=None):
    """
    Declare the decorated method the handler of POP3 command C{name}.

    @param states: the states it is valid in (one state or a tuple).
    """
    if isinstance(states, str):
        states = (states,)

    def register(handler):
        key = name.encode("ascii")
        if key in COMMANDS:
            raise ValueError(f"POP3 command {name} declared twice")
        COMMANDS[key] = Command(key, handler, frozenset(states), tuple(arity), raw,
                                wrong_state, enabled, disabled)
        return handler

    return register


def lookup(word):
    """The L{Command} for an upper-cased command word, or None."""
    return COMMANDS.get(word)


def redact(word, args):
    """A command line as the protocol log may show it: no credentials."""
    if word == b"PASS":
        return word + b" <redacted>"
    if word == b"APOP" and args:
        return b"APOP " + args[0][:64] + b" <redacted>"
    if word == b"AUTH" and len(args) > 1:
        return b"AUTH " + args[0][:32] + b" <redacted>"
    return b" ".join([word] + [a[:64] for a in args])
