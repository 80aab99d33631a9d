"""
securepop check-config: the effective configuration and every warning.
"""

from __future__ import annotations

import os

from securepop import schemes
from securepop.access.rules import parseRules
from securepop.auth.userfile import UsersFile
from securepop.auth.usernames import for_settings, index_names
from securepop.mailstore.paths import mailbox_path
from securepop.mailstore import lease as mail_lease
from securepop.ops.workers import worker_count
from securepop.state import build as state_build
from securepop.tls import certificates


def report(settings):
    """
    @return: (lines to print, number of problems that should fail the check).
    """
    lines, warnings, problems = [], [], 0
    s = settings
    lines.append(f"configuration: {s.path or '(embedded default)'}")
    lines.append(f"server.hostname = {s.server.hostname}")
    lines.append(f"server.data_dir = {s.server.data_dir}")
    for listener in s.listen:
        extra = " (INSECURE: credentials in cleartext allowed)" \
            if listener.insecure_allow_cleartext else ""
        lines.append(f"listen {listener.endpoint} tls={listener.tls}{extra}")
        if listener.tls == "none" and listener.insecure_allow_cleartext:
            warnings.append(f"listener {listener.endpoint} accepts credentials without TLS")
    for lmtp in s.lmtp:
        lines.append(f"lmtp {lmtp.endpoint} mode={lmtp.mode:04o} domains="
                     f"{', '.join(lmtp.domains) or '-'} max_message_size={lmtp.max_message_size}")
    if s.mail.quota_bytes or s.mail.quota_messages:
        lines.append(f"mail quota: {s.mail.quota_bytes or 'no'} octets, "
                     f"{s.mail.quota_messages or 'no'} messages (per-user overrides apply)")
    lines.append(f"tls.profile = {s.tls.profile}; min_cipher_bits = {s.tls.min_cipher_bits};"
                 f" require_secure_channel = {s.tls.require_secure_channel}")
    if s.tls.profile == "legacy":
        warnings.append("tls.profile = legacy enables TLS 1.0/1.1 (insecure)")
    if not s.tls.require_secure_channel:
        warnings.append("tls.require_secure_channel = false: passwords may cross the "
                        "network in cleartext")
    mechs = list(s.auth.mechanisms) + (["APOP"] if s.auth.apop else [])
    lines.append(f"auth.source = {s.auth.source}; mechanisms = {', '.join(mechs)};"
                 f" user_pass = {s.auth.user_pass}")
    if s.auth.apop:
        warnings.append("APOP is enabled: the server must keep a password-equivalent secret")
    if s.auth.insecure_allow_ntlmv1:
        warnings.append("auth.insecure_allow_ntlmv1: NTLMv1 responses can be cracked")
    if "GSSAPI" in s.auth.mechanisms:
        g = s.auth.gssapi
        lines.append(f"auth.gssapi: keytab {s.resolve(g.keytab)}, principal "
                     f"{g.service}/{s.server.hostname}, realms "
                     f"{', '.join(g.realms) or '(those of the keytab)'}")
    if {"GSSAPI", "NTLM"} & set(s.auth.mechanisms):
        lines.append(f"auth.channel_binding = {s.auth.channel_binding}")
        if s.auth.channel_binding == "off":
            warnings.append("auth.channel_binding = off: a relayed NTLM or Kerberos login "
                            "through another TLS connection is not detected")
    lines.append(f"access.mode = {s.access.mode}")
    try:
        for number, rule in enumerate(parseRules(s.access.rules), 1):
            lines.append(f"  rule {number}: {rule.text!r} -> {rule.describe()}")
        if not s.access.rules:
            lines.append("  no rules: " + ("every client is declined (WARNING)"
                                           if s.access.mode == "allow-listed"
                                           else "every client is allowed"))
        if not s.access.reverse_dns:
            lines.append("  reverse DNS off: domain rules never match")
    except ValueError as e:
        problems += 1
        lines.append(f"ERROR access.rules: {e}")
    lines.append(f"limits: total={s.access.max_connections} "
                 f"per-ip={s.access.max_connections_per_ip} "
                 f"per-user={s.access.max_connections_per_user}")
    lines.append(state_build.describe(s, worker_count(s.server.workers)))
    lines.append(mail_lease.describe(s))
    # Certificate.
    try:
        if s.tls.certificate:
            cert, key = str(s.resolve(s.tls.certificate)), str(s.resolve(s.tls.key))
        else:
            cert, key = certificates.default_paths(str(s.data_path))
        if os.path.exists(cert):
            rep = certificates.inspect(cert, hostname=s.server.hostname, key_path=key)
            for line in rep.lines():
                lines.append(f"  {line}")
            for problem in rep.problems:
                warnings.append(f"certificate: {problem}")
        else:
            lines.append(f"certificate {cert}: not present yet (self-signed made at first start)")
    except Exception as e:    # report, never crash: this is a diagnostic tool
        problems += 1
        lines.append(f"ERROR certificate: {e}")
    if s.auth.source == "file":
        path = s.resolve(s.auth.file.path)
        try:
            users = UsersFile(path).load()
            UsersFile(path).check_permissions()
        except Exception as e:
            problems += 1
            lines.append(f"ERROR users file: {e}")
            users = {}
        lines.append(f"users file {path}: {len(users)} users")
        if not users:
            warnings.append("no users yet: add one with `securepop user add NAME`")
        lines.extend(_hashing(s, users, warnings))
        warnings += _user_name_warnings(s, users)
    ttl = s.auth.cache_ttl
    if ttl > 0:
        lines.append(f"auth cache: ttl = {ttl:g} s; at most {s.auth.cache_max_entries} entries")
        if s.auth.source != "file":
            lines.append(f"  a password changed in the directory is honoured after at most "
                         f"{ttl:g} s (auth.cache_ttl = 0: at once)")
    else:
        lines.append("auth cache: off (auth.cache_ttl = 0): every login is verified")
    for w in warnings:
        lines.append(f"WARNING {w}")
    lines.append("configuration OK" if not problems else f"{problems} problem(s)")
    return lines, problems


SLOW_VERIFICATION = 0.25   # seconds per cold login worth a warning


def _hashing(s, users, warnings):
    """The argon2id parameters, what one verification costs here, and old hashes."""
    params = schemes.HashParameters.from_settings(s.auth.file)
    lines = []
    try:
        cost = schemes.measure_verification(params)
        lines.append(f"auth.file: {params.describe()}; one verification on this machine: "
                     f"{cost.wall * 1000:.1f} ms ({cost.cpu * 1000:.1f} ms of CPU)")
        if max(cost.wall, cost.cpu) > SLOW_VERIFICATION:
            warnings.append(f"one password verification takes {cost.wall * 1000:.0f} ms "
                            f"({cost.cpu * 1000:.0f} ms of CPU) here: every cold login "
                            f"pays it")
    except Exception as e:    # report, never crash: this is a diagnostic tool
        lines.append(f"auth.file: {params.describe()}; cannot measure a verification: {e}")
    if params.below_owasp_minimum():
        warnings.append(f"{params.describe()} is weaker than OWASP's recommended minimum "
                        f"(e.g. m=19456 KiB, t=2)")
    hasher = schemes.hasher_for(params)
    old = 0
    for entry in users.values():
        try:
            old += hasher.check_needs_rehash(entry.password_hash)
        except Exception:
            old += 1
    if old:
        lines.append(f"  {old} user(s) hashed with other parameters: rewritten at their "
                     f"next successful login")
    return lines


def _user_name_warnings(settings, users):
    """
    Users file entries the user-name rule (L{securepop.auth.usernames})
    sees differently: written otherwise than logins send them (found anyway,
    but their old Maildir may be elsewhere), unusable by any login, or
    sharing a login name with another entry.
    """
    index, unreachable, ambiguous = index_names(users, for_settings(settings))
    warnings = []
    renamed = sorted((stored, name) for name, stored in index.items() if stored != name)
    if renamed:
        warnings.append(
            "users file entries not written as logins use them (each is found under its "
            "login name; `securepop user del OLD` and `user add NEW` rewrite one): "
            + ", ".join(f"{stored!r} logs in as {name!r}" for stored, name in renamed))
    for stored, name in renamed:
        try:
            old = mailbox_path(settings.mail.root, str(settings.data_path), stored)
            new = mailbox_path(settings.mail.root, str(settings.data_path), name)
        except ValueError:
            continue
        if old != new and old.exists():
            warnings.append(f"mail delivered to {stored!r} is in {old}, but {name!r} "
                            f"reads {new}: move its messages there")
    if unreachable:
        warnings.append("users file entries no login can use: " + ", ".join(
            f"{stored!r} ({reason})" for stored, reason in unreachable))
    for name, stored in sorted(ambiguous.items()):
        warnings.append(f"users file entries sharing the login name {name!r}: "
                        f"{', '.join(repr(n) for n in stored)}; only {index[name]!r} "
                        f"can log in")
    return warnings
