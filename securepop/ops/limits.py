"""
Open files for C{access.max_connections}: at start the soft C{RLIMIT_NOFILE}
is raised to the hard limit, and a warning says when even that cannot serve
the configured connections.

A process started from a shell or by an old init inherits a soft limit of
1024 while C{max_connections} defaults to 5000: past about 1000 clients
every accept, mailbox lock and message open would fail with EMFILE.  The
hard limit is the administrator's ceiling (C{LimitNOFILE=} in the systemd
unit sets both); raising the soft one up to it needs no privilege.

What a connection costs, measured on the daemon: its socket; once logged in
the mailbox lock file, held for the session; during RETR/TOP the message
file.  So L{FILES_PER_CONNECTION} is 3, and L{OWN_FILES} covers the rest:
listeners, epoll, the reactor's and thread pools' wake-up pipes, log and
protocol log files, DNS sockets, the metrics endpoint and its scrapers,
users-file and Maildir scans.  Directory connections and NTLM helper pipes
are added from the configuration.
"""

from __future__ import annotations

import resource

from securepop import events

FILES_PER_CONNECTION = 3
OWN_FILES = 64
PIPES_PER_HELPER = 3            # stdin, stdout, stderr of each ntlm_auth child
_NR_OPEN = "/proc/sys/fs/nr_open"


def files_needed(settings) -> int:
    """Descriptors the configured server may hold at once (see the module docstring)."""
    needed = settings.access.max_connections * FILES_PER_CONNECTION + OWN_FILES
    auth = settings.auth
    if auth.source in ("ldap", "ad"):
        directory = auth.ldap if auth.source == "ldap" else auth.ad
        # idle connections kept per server, for binds and for searches
        needed += 2 * directory.pool_size * max(1, len(directory.urls))
    if auth.source == "ad" and auth.ad.ntlm_auth:
        needed += auth.ad.helpers * PIPES_PER_HELPER
    return needed


def _ceiling(hard, nr_open_path=_NR_OPEN):
    """The highest soft limit allowed: the hard one, or the kernel's nr_open."""
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(nr_open_path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1048576          # Linux's default nr_open


def raise_open_files_limit(settings, rlimits=resource, nr_open_path=_NR_OPEN,
                           emit=events.emit):
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit; log the limit in
    force (C{limits.open_files}) and warn (C{limits.open_files_low}) when
    it is below L{files_needed}.  Never stops the start: a server that can
    take fewer clients than configured still serves.

    @param rlimits: the L{resource} module (tests pass a double).
    @return: C{(soft, hard, needed)} after the attempt.
    """
    soft, hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
    needed = files_needed(settings)
    raised_from = None
    target = _ceiling(hard, nr_open_path)
    if soft != rlimits.RLIM_INFINITY and soft < target:
        try:
            rlimits.setrlimit(rlimits.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            emit("limits.open_files_raise_failed", "warn", soft=soft, hard=hard,
                 error=(e.strerror if isinstance(e, OSError) else None) or str(e))
        else:
            raised_from = soft
            soft, hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
    emit("limits.open_files", soft=_text(soft), hard=_text(hard), needed=needed,
         raised_from=_text(raised_from) if raised_from is not None else "-")
    if soft != rlimits.RLIM_INFINITY and soft < needed:
        emit("limits.open_files_low", "warn", soft=soft, hard=_text(hard), needed=needed,
             max_connections=settings.access.max_connections,
             message=(f"open files are limited to {soft}, fewer than the {needed} that "
                      f"max_connections = {settings.access.max_connections} may use "
                      f"({FILES_PER_CONNECTION} per connection + {OWN_FILES} + directory "
                      f"and helper files); raise the hard limit (LimitNOFILE= in the "
                      f"systemd unit, ulimit -Hn) or lower access.max_connections"))
    return soft, hard, needed


def _text(limit):
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
