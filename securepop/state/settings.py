"""
C{[state]}: where the state shared across workers and nodes lives
(L{securepop.interfaces.IStateStore}), read and checked with the rest of
the configuration by L{securepop.config}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

BACKENDS = ("memory", "redis")
ON_OUTAGE = ("local", "refuse")
_PREFIX = re.compile(r"[\x21-\x7e]{1,64}")
_SENTINEL = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


@dataclass(frozen=True)
class StateSettings:
    """
    @ivar backend: C{memory} (this process; the workers of one host share
        their supervisor's) or C{redis} (workers and nodes share one Redis).
    @ivar url: C{redis://host:port/db} or C{rediss://} (TLS, checked
        against C{ca_file}, or the system's CAs when it is empty).
    @ivar sentinels: C{"host:port"} of Redis Sentinels; when set, the
        master of C{sentinel_master} is asked of them and C{url} gives
        only the database number.
    @ivar password_file: holds the Redis password (C{requirepass}, or
        C{user password} for an ACL user); read at start, refused when
        group or others can read it.
    @ivar timeout: seconds one store call may take (one round trip).
    @ivar on_outage: C{local}: per-process state while Redis does not
        answer; C{refuse}: new logins get C{-ERR [SYS/TEMP]}.
    @ivar lease_ttl: seconds the slots of a node that died stay counted.
    """

    backend: str = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    sentinels: tuple[str, ...] = ()
    sentinel_master: str = "mymaster"
    password_file: str = ""
    ca_file: str = ""
    key_prefix: str = "securepop:"
    timeout: float = 0.5
    on_outage: str = "local"
    lease_ttl: float = 30.0


def parse_redis_url(url):
    """
    @return: C{(tls, host, port, db)} of a C{redis://} or C{rediss://} URL.
    @raise ValueError: with the reason.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a URL: {e}")
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r} must start with redis:// or rediss://")
    if parts.username or parts.password:
        raise ValueError("must not carry a password: use password_file")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: options after ? or # are not supported")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    path = parts.path.strip("/")
    if path and not (path.isdigit() and int(path) <= 15):
        raise ValueError(f"{url!r}: the database must be a number from 0 to 15")
    return parts.scheme == "rediss", parts.hostname, port or 6379, int(path or 0)


def parse_sentinel(address):
    """@return: C{(host, port)} of one C{"host:port"}; @raise ValueError."""
    if not _SENTINEL.fullmatch(address):
        raise ValueError(f"{address!r} must be host:port")
    host, _, port = address.rpartition(":")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: port out of range")
    return host.strip("[]"), int(port)


def problems(state, mail=None):
    """
    @param mail: the C{[mail]} settings, whose C{lock = "redis"} needs the
        C{redis} backend.
    @return: C{(dotted key, reason)} of the first bad value of C{[state]}
        (or of C{mail.lock}), or None.
    """
    if mail is not None and (problem := lock_problem(mail.lock, state)):
        return problem
    if state.backend not in BACKENDS:
        return "state.backend", f"must be one of {', '.join(BACKENDS)}, not {state.backend!r}"
    if state.on_outage not in ON_OUTAGE:
        return "state.on_outage", \
            f"must be one of {', '.join(ON_OUTAGE)}, not {state.on_outage!r}"
    if not 0.01 <= state.timeout <= 10:
        return "state.timeout", "must be between 0.01 and 10 seconds"
    if not 1 <= state.lease_ttl <= 300:
        return "state.lease_ttl", "must be between 1 and 300 seconds"
    if not _PREFIX.fullmatch(state.key_prefix):
        return "state.key_prefix", "must be 1 to 64 printable characters without spaces"
    try:
        tls = parse_redis_url(state.url)[0]
    except ValueError as e:
        return "state.url", str(e)
    for address in state.sentinels:
        try:
            parse_sentinel(address)
        except ValueError as e:
            return "state.sentinels", str(e)
    if state.sentinels and tls:
        return "state.sentinels", \
            "Sentinel connections are not encrypted: use redis:// with sentinels"
    if state.sentinels and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", state.sentinel_master):
        return "state.sentinel_master", "must be a Sentinel service name (letters, digits, . _ -)"
    if state.ca_file and not tls:
        return "state.ca_file", "needs a rediss:// url (TLS)"
    return None


def lock_problem(lock, state):
    """
    C{[mail] lock = "redis"} is a maildrop lease in the shared store: with
    any other backend it would exclude only within one process.

    @return: C{(dotted key, reason)} or None.
    """
    if lock == "redis" and state.backend != "redis":
        return "mail.lock", ('"redis" needs [state] backend = "redis" (the maildrop lease '
                             f'lives there), not {state.backend!r}')
    return None
