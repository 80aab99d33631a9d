"""securepop check-config: the argon2id parameters, their cost here, the auth cache."""

import re

from securepop import checkconfig, config
from securepop import schemes
from securepop.auth import userfile


def report_for(tmp_path, text=""):
    settings = config.parse(text, "f.toml", tmp_path / "data")
    return checkconfig.report(settings)


def test_shows_parameters_and_measured_cost(tmp_path):
    lines, problems = report_for(tmp_path)
    assert problems == 0
    [line] = [l for l in lines if l.startswith("auth.file: ")]
    m = re.fullmatch(r"auth\.file: argon2id m=19456 KiB, t=2, p=1; one verification on "
                     r"this machine: (\d+\.\d) ms \((\d+\.\d) ms of CPU\)", line)
    assert m, line
    assert 0.1 < float(m.group(1)) < 5000 and float(m.group(2)) < 5000
    assert "auth cache: ttl = 3600 s; at most 50000 entries" in lines
    assert not any("weaker than OWASP" in l for l in lines)


def test_configured_parameters_and_a_weak_choice(tmp_path):
    lines, _ = report_for(tmp_path, "[auth.file]\nargon2_memory_kib = 7168\n"
                                    "argon2_time_cost = 1\n")
    assert any(l.startswith("auth.file: argon2id m=7168 KiB, t=1, p=1;") for l in lines)
    assert any(l.startswith("WARNING") and "weaker than OWASP" in l for l in lines)


def test_counts_users_waiting_for_a_rehash(tmp_path):
    path = tmp_path / "data" / "users"
    old = schemes.HashParameters(memory_kib=64, time_cost=1, parallelism=1)
    userfile.set_password(path, "alice", "pw", set(), create=True, params=old)
    userfile.set_password(path, "bob", "pw", set(), create=True,
                          params=schemes.DEFAULT_PARAMETERS)
    lines, _ = report_for(tmp_path)
    assert "  1 user(s) hashed with other parameters: rewritten at their next " \
           "successful login" in lines


def test_no_rehash_line_when_all_hashes_are_current(tmp_path):
    userfile.set_password(tmp_path / "data" / "users", "bob", "pw", set(), create=True,
                          params=schemes.DEFAULT_PARAMETERS)
    lines, _ = report_for(tmp_path)
    assert not any("other parameters" in l for l in lines)


def test_slow_verification_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(schemes, "measure_verification",
                        lambda params: schemes.VerificationCost(0.4, 0.7))
    lines, problems = report_for(tmp_path)
    assert "auth.file: argon2id m=19456 KiB, t=2, p=1; one verification on this machine: " \
           "400.0 ms (700.0 ms of CPU)" in lines
    assert any(l.startswith("WARNING one password verification takes 400 ms (700 ms of CPU)")
               for l in lines)
    assert problems == 0
    monkeypatch.setattr(schemes, "measure_verification",
                        lambda params: schemes.VerificationCost(0.02, 0.02))
    lines, _ = report_for(tmp_path)
    assert not any("password verification takes" in l for l in lines)


def test_cache_off_and_directory_staleness(tmp_path):
    lines, _ = report_for(tmp_path, "[auth]\ncache_ttl = 0\n")
    assert "auth cache: off (auth.cache_ttl = 0): every login is verified" in lines
    lines, _ = report_for(tmp_path, '[auth]\nsource = "ldap"\ncache_ttl = 600\n'
                                    '[auth.ldap]\nurls = ["ldaps://h"]\nbase_dn = "dc=x"\n')
    assert "  a password changed in the directory is honoured after at most 600 s " \
           "(auth.cache_ttl = 0: at once)" in lines
    assert not any(l.startswith("auth.file: ") for l in lines)


def test_lmtp_listeners_and_the_quota_are_shown(tmp_path):
    lines, problems = report_for(tmp_path, '[mail]\nquota_messages = 9\n'
                                           '[[lmtp]]\nendpoint = "unix:/run/x/lmtp"\n')
    assert problems == 0
    assert "lmtp unix:/run/x/lmtp mode=0660 domains=- max_message_size=52428800" in lines
    assert "mail quota: no octets, 9 messages (per-user overrides apply)" in lines
    lines, _ = report_for(tmp_path)
    assert not any(l.startswith(("lmtp ", "mail quota")) for l in lines)


def test_names_the_state_store_in_force(tmp_path):
    lines, _ = report_for(tmp_path)
    assert "state: memory (this process only)" in lines
    assert sum(1 for l in lines if l.startswith("state: ")) == 1


def test_gssapi_and_channel_binding_are_shown(tmp_path):
    from tests.unit.test_auth_keytab import GOOD

    (tmp_path / "data").mkdir()
    keytab = tmp_path / "data" / "pop.keytab"
    keytab.write_bytes(GOOD)
    keytab.chmod(0o600)
    lines, _ = report_for(tmp_path, '[server]\nhostname = "mail.example.com"\n'
                                    '[auth]\nmechanisms = ["GSSAPI", "PLAIN"]\n'
                                    'channel_binding = "off"\n'
                                    '[auth.gssapi]\nkeytab = "pop.keytab"\n')
    assert f"auth.gssapi: keytab {keytab}, principal pop/mail.example.com, realms " \
           "(those of the keytab)" in lines
    assert "auth.channel_binding = off" in lines
    assert any("channel_binding = off" in l and "relayed" in l for l in lines)
    plain, _ = report_for(tmp_path)
    assert not any(l.startswith(("auth.gssapi", "auth.channel_binding")) for l in plain)


def test_names_the_mailbox_lock(tmp_path):
    lines, _ = report_for(tmp_path)
    assert "mail.lock = flock: a kernel flock (one host, NFSv4, NFSv3 with lockd)" in lines
    lines, _ = report_for(tmp_path, '[mail]\nlock = "redis"\n[state]\nbackend = "redis"\n')
    assert ("mail.lock = redis: a maildrop lease in the state store (lease_ttl 30 s) "
            "and a flock on each host") in lines
