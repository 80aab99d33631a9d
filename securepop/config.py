"""
The configuration contract: one TOML file -> frozen settings objects.

Every key is optional; no file at all is the embedded default.  Every error
names the file, the key (dotted), the line when it can be found, and the
reason, so a bad file stops the start with something an administrator can
act on.  Unknown keys are errors too: a typo must not silently fall back to
a default.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from securepop.auth.oauth2_settings import OAuth2Settings, oauth2_problem
from securepop.auth.keytab import GSSAPISettings, gssapi_problem
from securepop.errors import ConfigError
from securepop.state.settings import StateSettings, problems as state_problems

DEFAULT_DATA_DIR = "./securepop-data"
DEFAULT_LISTENERS = (
    ("tcp:1110:interface=127.0.0.1", "starttls"),
    ("tcp:1995:interface=127.0.0.1", "implicit"),
)
ALL_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "NTLM", "CRAM-MD5",
                  "OAUTHBEARER", "XOAUTH2", "GSSAPI")
DEFAULT_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


@dataclass(frozen=True)
class ServerSettings:
    hostname: str = field(default_factory=socket.getfqdn)
    data_dir: str = DEFAULT_DATA_DIR
    implementation: str = ""           # CAPA IMPLEMENTATION, off when empty
    greeting: str = "securepop ready"
    idle_timeout_login: float = 60.0   # before login (short: slots are precious)
    idle_timeout: float = 600.0        # after login: RFC 1939 says at least 10 minutes
    max_bad_commands: int = 10         # malformed / overlong lines before closing
    login_deadline: float = 120.0      # absolute limit before login (0 = none)
    shutdown_grace: float = 10.0        # SIGTERM: sessions in flight get this long
    user: str = ""                     # drop privileges to this user after binding
    group: str = ""
    workers: str = "1"                 # a number, or "auto" (one per CPU)


@dataclass(frozen=True)
class ListenSettings:
    endpoint: str
    tls: str = "starttls"              # starttls | implicit | none
    insecure_allow_cleartext: bool = False  # credentials on a non-TLS connection


@dataclass(frozen=True)
class SNISettings:
    hostname: str
    certificate: str
    key: str


@dataclass(frozen=True)
class TLSSettings:
    certificate: str = ""
    key: str = ""
    profile: str = "intermediate"      # modern | intermediate | legacy
    require_secure_channel: bool = True
    min_cipher_bits: int = 128
    sni: tuple[SNISettings, ...] = ()


@dataclass(frozen=True)
class FileSourceSettings:
    path: str = "users"
    # argon2id cost of new hashes (OWASP's recommended minimum); older hashes
    # are rewritten with these after their next successful login.
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1


#: Accepted ranges of the argon2id parameters: below, the hash is too cheap
#: to be worth it (OWASP's smallest memory is 7 MiB); above, one login could
#: take seconds or exhaust memory with a few verifications in parallel.
ARGON2_BOUNDS = {
    "argon2_memory_kib": (7168, 1048576),
    "argon2_time_cost": (1, 32),
    "argon2_parallelism": (1, 16),
}


@dataclass(frozen=True)
class LDAPSettings:
    """
    C{[auth.ldap]} and C{[auth.ad]}: a directory reached over LDAP.  The
    credential sources (L{securepop.auth.ldap}, L{securepop.auth.ad}) take
    this object as it is; L{AD_DEFAULTS} holds Active Directory's defaults.

    @ivar urls: C{ldaps://host[:port]}, or C{ldap://host[:port]} with
        C{start_tls} (or, insecurely, C{insecure_cleartext}); tried in order.
    @ivar user_filter: C{{user}} is replaced by the escaped user name.
    @ivar timeout: seconds for one network operation (each search, bind).
    @ivar request_timeout: seconds for a whole login, failover included.
    @ivar retry_down_after: seconds a failed server is skipped.
    @ivar pool_size: threads (and so parallel directory operations).
    @ivar max_pending: queued logins beyond which the source answers
        C{SourceUnavailable} at once instead of queueing more.
    """

    urls: tuple[str, ...] = ()
    ca_file: str = ""
    bind_dn: str = ""
    bind_password_file: str = ""
    base_dn: str = ""
    user_filter: str = "(uid={user})"
    required_group: str = ""
    pop3_enabled_attribute: str = ""   # per-user POP3 switch (TRUE/FALSE)
    nt_hash_attribute: str = ""        # enables NTLM (never with AD)
    apop_secret_attribute: str = ""    # enables APOP and CRAM-MD5 (never with AD)
    mailbox_attribute: str = ""
    quota_attribute: str = ""          # per-user quota "OCTETS[,MESSAGES]" (LMTP, deliver)
    start_tls: bool = False            # for ldap:// URLs
    insecure_cleartext: bool = False   # ldap:// without TLS: passwords in clear
    timeout: float = 5.0
    pool_size: int = 4
    group_base_dn: str = ""            # where test-auth lists groups
    nested_groups: bool = False        # AD: in-chain matching rule
    username_attribute: str = "uid"    # the canonical user name
    pop3_attribute_default: bool = False
    pop3_denied_group: str = ""
    connect_timeout: float = 3.0
    request_timeout: float = 15.0      # a whole login, failover included
    retry_down_after: float = 30.0     # a failed server is skipped this long
    max_pending: int = 64              # queued logins before [SYS/TEMP]
    # AD only
    domain: str = ""
    ntlm_auth: str = "/usr/bin/ntlm_auth"
    ntlm_auth_config: str = ""
    helpers: int = 4
    ntlm_timeout: float = 10.0
    ntlm_exchange_timeout: float = 30.0
    ntlm_max_queue: int = 32


#: C{[auth.ad]}: every C{[auth.ldap]} key, with Active Directory's defaults.
AD_DEFAULTS = LDAPSettings(
    user_filter="(sAMAccountName={user})",
    username_attribute="sAMAccountName",
    nested_groups=True,
)


def parse_ldap_url(url, section):
    """
    Split a directory URL and hold it to the TLS policy: C{ldaps://}, or
    C{ldap://} with C{start_tls}; C{ldap://} in clear only when
    C{insecure_cleartext} asks for it.

    @param section: the L{LDAPSettings} the URL belongs to.
    @return: C{(host, port, use_ssl, use_start_tls)}.
    @raise ValueError: for another scheme, a user, path or query in the
        URL, or cleartext not asked for.
    """
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # never echoed: it may hold a password
        raise ValueError("an LDAP URL must not carry a user or password (the service "
                         "account goes in bind_dn and bind_password_file)")
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if scheme not in ("ldap", "ldaps") or not host:
        raise ValueError(f"not an ldap:// or ldaps:// URL: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an LDAP URL must be scheme://host[:port]: {url!r}")
    use_ssl = scheme == "ldaps"
    use_start_tls = not use_ssl and section.start_tls
    if not use_ssl and not use_start_tls and not section.insecure_cleartext:
        raise ValueError(f"{url} is cleartext LDAP: use ldaps://, start_tls = true, "
                         "or insecure_cleartext = true")
    return host, port or (636 if use_ssl else 389), use_ssl, use_start_tls


@dataclass(frozen=True)
class AuthSettings:
    source: str = "file"               # file | ldap | ad
    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS
    user_pass: bool = True
    apop: bool = False
    failure_delay: float = 2.0
    failure_delay_max: float = 15.0
    max_attempts: int = 3
    lockout_threshold: int = 0         # 0 = no per-user lockout
    lockout_window: float = 900.0
    max_verifications_per_ip: int = 16  # password checks queued/running per address
    max_queued_verifications: int = 256   # password checks waiting, server-wide
    hash_threads: int = 0              # password hashing threads (0 = one per core)
    insecure_allow_ntlmv1: bool = False
    ntlm_timestamp_window: float = 300.0
    netbios_domain: str = "SECUREPOP"
    dns_domain: str = ""
    username_case: str = "lower"       # lower | preserve
    strip_domain: bool = False         # "DOMAIN\\user" and "user@domain" -> "user"
    cache_ttl: float = 3600.0          # a polling client stays warm; 0 = off
    cache_max_entries: int = 50000     # least recently used goes first
    channel_binding: str = "allow"     # off | allow | require (NTLM, GSSAPI)
    file: FileSourceSettings = FileSourceSettings()
    ldap: LDAPSettings = LDAPSettings()
    ad: LDAPSettings = AD_DEFAULTS
    oauth2: OAuth2Settings = OAuth2Settings()
    gssapi: GSSAPISettings = GSSAPISettings()


@dataclass(frozen=True)
class AccessSettings:
    mode: str = "deny-listed"          # allow-listed | deny-listed
    rules: tuple[str, ...] = ()
    reverse_dns: bool = True
    dns_servers: tuple[str, ...] = ()
    dns_timeout: float = 2.0
    dns_failure: str = "no-match"
    decline_message: str = "Connection declined by access policy"
    trusted_proxies: tuple[str, ...] = ()
    max_connections: int = 5000
    max_connections_per_ip: int = 20
    max_connections_per_user: int = 4
    max_concurrent_lookups: int = 64


@dataclass(frozen=True)
class MailSettings:
    root: str = "mail/{user}/Maildir"
    on_delete: str = "delete"          # delete | trash
    trash_folder: str = ".Trash"
    lock_stale_after: float = 1800.0   # a lock not refreshed this long is stale
    lock: str = "flock"                # flock | dotlock | redis (a lease: state.backend redis)
    inline_open_max_messages: int = 1000   # 0: always open Maildirs in the thread pool
    quota_bytes: int = 0               # per mailbox, octets as stored; 0 = none
    quota_messages: int = 0            # per mailbox; 0 = none


@dataclass(frozen=True)
class LMTPSettings:
    """One C{[[lmtp]]} listener: mail from the MTA (RFC 2033)."""

    endpoint: str                      # Twisted endpoint: "unix:/run/securepop/lmtp", "tcp:24:..."
    mode: int = 0o660                  # of a Unix socket
    domains: tuple[str, ...] = ()      # besides server.hostname and localhost
    max_message_size: int = 50 * 1024 * 1024   # octets, announced with SIZE
    max_recipients: int = 100          # per transaction
    timeout: float = 300.0             # idle seconds


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"               # text | json
    protocol_log: str = ""             # path; credentials always redacted


@dataclass(frozen=True)
class MetricsSettings:
    endpoint: str = ""                 # e.g. "tcp:9110:interface=127.0.0.1"; off when empty


@dataclass(frozen=True)
class Settings:
    """Everything securepop needs; C{path} is where it came from (or None)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    listen: tuple[ListenSettings, ...] = tuple(
        ListenSettings(endpoint=e, tls=t) for e, t in DEFAULT_LISTENERS
    )
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    access: AccessSettings = AccessSettings()
    mail: MailSettings = MailSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    lmtp: tuple[LMTPSettings, ...] = ()
    state: StateSettings = StateSettings()
    path: str | None = None

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    def resolve(self, relative: str) -> Path:
        """A path from the file, relative to the data directory."""
        p = Path(relative)
        return p if p.is_absolute() else self.data_path / p


_CHOICES = {
    "listen.tls": ("starttls", "implicit", "none"),
    "tls.profile": ("modern", "intermediate", "legacy"),
    "auth.source": ("file", "ldap", "ad"),
    "auth.username_case": ("lower", "preserve"),
    "auth.channel_binding": ("off", "allow", "require"),
    "access.mode": ("allow-listed", "deny-listed"),
    "access.dns_failure": ("no-match", "match", "decline"),
    "mail.on_delete": ("delete", "trash"),
    "mail.lock": ("flock", "dotlock", "redis"),
    "log.format": ("text", "json"),
}


class _Reader:
    """Builds frozen dataclasses from TOML tables, checking every key."""

    def __init__(self, path, text):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key):
        """Best-effort line of a dotted key (tomllib does not report it)."""
        leaf = key.rsplit(".", 1)[-1].split("[")[0]
        pattern = re.compile(r"^\s*" + re.escape(leaf) + r"\s*=")
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                return number
        return None

    def error(self, key, reason):
        return ConfigError(self.path, key, reason, self.line_of(key))

    def build(self, cls, table, prefix, base=None):
        if not isinstance(table, dict):
            raise self.error(prefix, "must be a table")
        base = base if base is not None else cls()
        known = {f.name: f for f in fields(cls)}
        values = {}
        for name, value in table.items():
            key = f"{prefix}.{name}"
            if name not in known:
                raise self.error(key, "unknown key")
            default = getattr(base, name)
            values[name] = self.convert(key, value, default)
        result = replace(base, **values)
        for name in values:
            choices = _CHOICES.get(f"{prefix.split('[')[0]}.{name}")
            if choices and getattr(result, name) not in choices:
                raise self.error(
                    f"{prefix}.{name}",
                    f"must be one of {', '.join(choices)}, not {values[name]!r}",
                )
        return result

    def convert(self, key, value, default):
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise self.error(key, "must be true or false")
            return value
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(key, "must be a whole number")
            if value < 0:
                raise self.error(key, "must not be negative")
            return value
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(key, "must be a number")
            if not math.isfinite(value):
                raise self.error(key, "must be a finite number")
            if value < 0:
                raise self.error(key, "must not be negative")
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise self.error(key, "must be a string")
            if "\x00" in value:
                raise self.error(key, "must not contain NUL")
            return value
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(
                isinstance(v, str) for v in value
            ):
                raise self.error(key, "must be a list of strings")
            return tuple(value)
        raise self.error(key, "unexpected value")


def _check(reader, settings):
    """Cross-key rules that a single key cannot express."""
    if not settings.listen:
        raise reader.error("listen", "at least one [[listen]] is needed")
    for i, listener in enumerate(settings.listen):
        if listener.tls not in _CHOICES["listen.tls"]:
            raise reader.error(
                f"listen[{i}].tls",
                f"must be one of starttls, implicit, none, not {listener.tls!r}",
            )
    for m in settings.auth.mechanisms:
        if m not in ALL_MECHANISMS:
            raise reader.error(
                "auth.mechanisms",
                f"unknown mechanism {m!r} (known: {', '.join(ALL_MECHANISMS)})",
            )
    if not 0 < settings.tls.min_cipher_bits <= 256:
        raise reader.error("tls.min_cipher_bits", "must be between 1 and 256")
    if settings.auth.max_verifications_per_ip < 1:
        raise reader.error("auth.max_verifications_per_ip", "must be at least 1")
    if settings.auth.max_queued_verifications < 1:
        raise reader.error("auth.max_queued_verifications", "must be at least 1")
    if not 0 <= settings.auth.hash_threads <= 256:
        raise reader.error("auth.hash_threads", "must be between 0 (one per core) and 256")
    if settings.server.login_deadline < 0:
        raise reader.error("server.login_deadline", "must be 0 (none) or more seconds")
    if settings.auth.max_attempts < 1:
        raise reader.error("auth.max_attempts", "must be at least 1")
    for name, (low, high) in ARGON2_BOUNDS.items():
        value = getattr(settings.auth.file, name)
        if not low <= value <= high:
            raise reader.error(f"auth.file.{name}", f"must be between {low} and {high}")
    if not 1 <= settings.auth.cache_max_entries <= 10_000_000:
        raise reader.error("auth.cache_max_entries", "must be between 1 and 10000000")
    w = settings.server.workers
    if w != "auto" and not (re.fullmatch(r"[0-9]{1,3}", w) and 1 <= int(w) <= 256):
        raise reader.error("server.workers", 'must be "auto" or a number from 1 to 256')
    if "{user}" not in settings.mail.root:
        raise reader.error("mail.root", "must contain {user}")
    if bool(settings.tls.certificate) != bool(settings.tls.key):
        raise reader.error("tls.key", "tls.certificate and tls.key go together")
    for i, lmtp in enumerate(settings.lmtp):
        _check_lmtp(reader, settings, i, lmtp)
    if settings.auth.source in ("ldap", "ad"):
        _check_directory(reader, settings.auth)
    if problem := oauth2_problem(settings.auth) or state_problems(settings.state, settings.mail):
        raise reader.error(*problem)
    if "GSSAPI" in settings.auth.mechanisms and (problem := gssapi_problem(settings)):
        raise reader.error(*problem)
    if settings.auth.source == "ad":
        reason = ntlm_auth_problem(settings.auth)
        if reason:
            raise reader.error("auth.ad.ntlm_auth", reason)


def _check_lmtp(reader, settings, i, lmtp):
    """One C{[[lmtp]]} table."""
    key = f"lmtp[{i}]"
    for name, ok, reason in (
            ("mode", lmtp.mode <= 0o777, "must be a file mode such as 0o660"),
            ("max_message_size", lmtp.max_message_size >= 1024, "must be 1024 octets or more"),
            ("max_recipients", 1 <= lmtp.max_recipients <= 100_000, "must be 1 to 100000"),
            ("timeout", lmtp.timeout > 0, "must be more than 0 seconds"),
            ("domains", all(d and not re.search(r"[@\s\x00-\x1f]", d) for d in lmtp.domains),
             "must be domain names"),
            ("endpoint", settings.server.workers == "1",
             'needs server.workers = "1" (worker processes do not serve LMTP)')):
        if not ok:
            raise reader.error(f"{key}.{name}", reason)


def _check_directory(reader, auth):
    """The C{[auth.ldap]} or C{[auth.ad]} section the source uses."""
    prefix = f"auth.{auth.source}"
    section = auth.ldap if auth.source == "ldap" else auth.ad
    if not section.urls:
        raise reader.error(f"{prefix}.urls", "at least one URL is needed")
    if not section.base_dn:
        raise reader.error(f"{prefix}.base_dn", "is required")
    for url in section.urls:
        try:
            parse_ldap_url(url, section)
        except ValueError as e:
            raise reader.error(f"{prefix}.urls", str(e))
    if auth.source == "ad":
        for key, value in (("nt_hash_attribute", section.nt_hash_attribute),
                           ("apop_secret_attribute", section.apop_secret_attribute)):
            if value:
                raise reader.error(
                    f"auth.ad.{key}",
                    "must stay empty: Active Directory never reveals NT hashes or "
                    "passwords (the domain controller verifies NTLM through winbind)")


def ntlm_auth_problem(auth):
    """
    Why C{auth.ad.ntlm_auth} cannot verify NTLM, or C{""}.

    Checked only when NTLM is enabled with helpers: every NTLM login would
    otherwise fail at run time while the start and C{check-config} said
    nothing.  The value is a path alone; arguments belong elsewhere (the
    smb.conf in C{auth.ad.ntlm_auth_config}).
    """
    ad = auth.ad
    if "NTLM" not in auth.mechanisms or ad.helpers <= 0 or not ad.ntlm_auth:
        return ""
    path = ad.ntlm_auth
    hint = ""
    if path != path.strip() or any(c.isspace() for c in path):
        program = path.split()[0] if path.split() else path
        hint = (f"; it must be the program's path alone (here {program!r}), with "
                f"the smb.conf in auth.ad.ntlm_auth_config")
    if not os.path.isabs(path):
        return f"{path!r} is not an absolute path to an executable file{hint}"
    if not os.path.exists(path):
        return (f"{path!r} does not exist{hint or ' (Samba winbind provides it: apt-get install winbind)'}")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return f"{path!r} is not an executable file{hint}"
    return ""


def parse(text, path="<string>", data_dir=None):
    """
    Parse configuration text into L{Settings}.

    @param data_dir: overrides C{server.data_dir} (the C{--data-dir} option).
    @raise ConfigError: naming file, key, line and reason.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(path, "(syntax)", str(e), int(m.group(1)) if m else None)
    except RecursionError:
        raise ConfigError(path, "(syntax)", "nested too deeply")
    reader = _Reader(path, text)
    settings = Settings(path=str(path))
    known = {f.name for f in fields(Settings)} - {"path"}
    for name in raw:
        if name not in known:
            raise reader.error(name, "unknown section")
    if "server" in raw:
        settings = replace(settings, server=reader.build(ServerSettings, raw["server"], "server"))
    for name, cls in (("listen", ListenSettings), ("lmtp", LMTPSettings)):
        if name not in raw:
            continue
        if not isinstance(raw[name], list):
            raise reader.error(name, f"must be an array of tables: [[{name}]]")
        tables = []
        for i, table in enumerate(raw[name]):
            if not isinstance(table, dict) or "endpoint" not in table:
                raise reader.error(f"{name}[{i}].endpoint", "is required")
            tables.append(reader.build(cls, table, f"{name}[{i}]", cls(endpoint="")))
        settings = replace(settings, **{name: tuple(tables)})
    if "tls" in raw:
        table = dict(raw["tls"]) if isinstance(raw["tls"], dict) else raw["tls"]
        sni = table.pop("sni", []) if isinstance(table, dict) else []
        tls = reader.build(TLSSettings, table, "tls")
        entries = []
        for i, entry in enumerate(sni if isinstance(sni, list) else [None]):
            if not isinstance(entry, dict) or set(entry) != {"hostname", "certificate", "key"}:
                raise reader.error(
                    f"tls.sni[{i}]", "needs exactly hostname, certificate and key"
                )
            for k, v in entry.items():
                if not isinstance(v, str) or not v or "\x00" in v:
                    raise reader.error(f"tls.sni[{i}].{k}", "must be a non-empty string")
            entries.append(SNISettings(**entry))
        settings = replace(settings, tls=replace(tls, sni=tuple(entries)))
    if "auth" in raw:
        table = raw["auth"]
        if not isinstance(table, dict):
            raise reader.error("auth", "must be a table")
        table = dict(table)
        subs = {}
        for sub, base in (("file", FileSourceSettings()), ("ldap", LDAPSettings()),
                          ("ad", AD_DEFAULTS), ("oauth2", OAuth2Settings()),
                          ("gssapi", GSSAPISettings())):
            if sub in table:
                subs[sub] = reader.build(type(base), table.pop(sub), f"auth.{sub}", base)
        auth = reader.build(AuthSettings, table, "auth")
        settings = replace(settings, auth=replace(auth, **subs))
    for name, cls in (("access", AccessSettings), ("mail", MailSettings), ("log", LogSettings),
                      ("metrics", MetricsSettings), ("state", StateSettings)):
        if name in raw:
            settings = replace(settings, **{name: reader.build(cls, raw[name], name)})
    if data_dir is not None:
        settings = replace(settings, server=replace(settings.server, data_dir=str(data_dir)))
    _check(reader, settings)
    return settings


def load(path=None, data_dir=None):
    """
    Load the file at C{path}, or the embedded default when C{path} is None.

    @raise ConfigError: when the file is unreadable or invalid.
    """
    if path is None:
        settings = Settings()
        if data_dir is not None:
            settings = replace(settings, server=replace(settings.server, data_dir=str(data_dir)))
        return settings
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(path, "(file)", e.strerror or str(e))
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "is not UTF-8 text")
    settings = parse(text, os.fspath(path), data_dir)
    return settings
