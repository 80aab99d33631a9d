"""The configuration contract: defaults, every sample key, and clear errors."""

import re
from pathlib import Path

import pytest

from securepop import config
from securepop.errors import ConfigError

SAMPLE = Path(__file__).parents[2] / "etc" / "securepop.toml"


def test_embedded_default_is_secure():
    s = config.load(None)
    assert s.tls.require_secure_channel is True
    assert s.tls.min_cipher_bits == 128
    assert s.tls.profile == "intermediate"
    assert [(l.endpoint, l.tls) for l in s.listen] == [
        ("tcp:1110:interface=127.0.0.1", "starttls"),
        ("tcp:1995:interface=127.0.0.1", "implicit"),
    ]
    assert not any(l.insecure_allow_cleartext for l in s.listen)
    assert s.auth.apop is False
    assert s.server.data_dir == "./securepop-data"


def test_data_dir_override():
    assert config.load(None, "/srv/x").server.data_dir == "/srv/x"
    assert config.parse('[server]\ndata_dir = "/a"\n', "f", "/b").server.data_dir == "/b"


def uncommented_sample():
    """The sample with every commented `key = value` line switched on."""
    out = []
    for line in SAMPLE.read_text().splitlines():
        m = re.match(r"^# ?(\[\[?[a-z.]+\]\]?|[a-z_0-9]+ = .*)$", line)
        out.append(m.group(1) if m else line)
    return "\n".join(out)


def test_sample_parses_as_is():
    s = config.parse(SAMPLE.read_text(), str(SAMPLE))
    assert s.path == str(SAMPLE)


def test_every_sample_key_is_known():
    text = uncommented_sample()
    # The sample's LDAP urls are ldaps://, so the cross checks pass too.
    s = config.parse(text, "sample")
    assert s.access.mode == "deny-listed"
    assert s.tls.sni[0].hostname == "pop.example.org"
    assert s.auth.ldap.user_filter == "(uid={user})"
    assert s.metrics.endpoint == ""


@pytest.mark.parametrize("text, key, reason", [
    ('[server]\nhostnme = "x"\n', "server.hostnme", "unknown key"),
    ('[auth]\nmax_attempts = "three"\n', "auth.max_attempts", "whole number"),
    ('[auth]\nmax_attempts = 0\n', "auth.max_attempts", "at least 1"),
    ('[tls]\nprofile = "fast"\n', "tls.profile", "must be one of"),
    ('[tls]\nrequire_secure_channel = "yes"\n', "tls.require_secure_channel", "true or false"),
    ('[[listen]]\ntls = "implicit"\n', "listen[0].endpoint", "required"),
    ('[[listen]]\nendpoint = "tcp:1"\ntls = "ssl"\n', "listen[0].tls", "must be one of"),
    ('[auth]\nmechanisms = ["PLAIN", "KERBEROS"]\n', "auth.mechanisms", "KERBEROS"),
    ('[mail]\nroot = "mail/Maildir"\n', "mail.root", "{user}"),
    ('[bogus]\nx = 1\n', "bogus", "unknown section"),
    ('[auth]\nsource = "ldap"\n[auth.ldap]\nurls = ["ldap://h"]\nbase_dn = "dc=x"\n',
     "auth.ldap.urls", "cleartext"),
    ('[tls]\ncertificate = "c.pem"\n', "tls.key", "go together"),
    ('[server]\nworkers = "many"\n', "server.workers", "auto"),
    ('[access]\nmax_connections = -1\n', "access.max_connections", "negative"),
    ('[mail]\nlock = "fcntl"\n', "mail.lock", "must be one of"),
    ('[mail]\ninline_open_max_messages = -5\n', "mail.inline_open_max_messages", "negative"),
    ('[mail]\ninline_open_max_messages = "all"\n', "mail.inline_open_max_messages",
     "whole number"),
])
def test_errors_name_file_key_and_reason(text, key, reason):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "/etc/securepop.toml")
    assert e.value.key == key
    assert reason in e.value.reason
    assert str(e.value).startswith("/etc/securepop.toml")


def test_error_names_the_line():
    with pytest.raises(ConfigError) as e:
        config.parse('[server]\n\n\nidle_timeout = "long"\n', "f.toml")
    assert e.value.line == 4
    assert str(e.value) == "f.toml:4: server.idle_timeout: must be a number"


def test_syntax_error_has_line():
    with pytest.raises(ConfigError) as e:
        config.parse("[server]\nhostname = \n", "f.toml")
    assert e.value.line == 2


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "missing.toml")
    assert "missing.toml" in str(e.value)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[server]\nhostname = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        config.load(bad)


def test_hostile_values():
    with pytest.raises(ConfigError, match="NUL"):
        config.parse('[server]\nhostname = "a\\u0000b"\n', "f")
    with pytest.raises(ConfigError):
        config.parse("[server]\nhostname = 1e999999\n", "f")


def test_every_setting_is_documented_in_the_sample():
    """The reverse of the test above: no key exists that the sample omits."""
    import dataclasses

    text = SAMPLE.read_text()
    nested = {"file", "ldap", "ad", "sni", "oauth2", "gssapi"}
    for cls in (config.ServerSettings, config.ListenSettings, config.TLSSettings,
                config.AuthSettings, config.FileSourceSettings, config.LDAPSettings,
                config.OAuth2Settings, config.GSSAPISettings,
                config.AccessSettings, config.MailSettings, config.LogSettings,
                config.MetricsSettings, config.LMTPSettings):
        for f in dataclasses.fields(cls):
            if f.name not in nested:
                assert re.search(rf"^# ?{f.name} = ", text, re.M), (cls.__name__, f.name)


def test_password_hash_and_cache_defaults():
    """OWASP's argon2id minimum, and an auth cache that outlives a polling interval."""
    s = config.load(None)
    assert (s.auth.file.argon2_memory_kib, s.auth.file.argon2_time_cost,
            s.auth.file.argon2_parallelism) == (19456, 2, 1)
    assert s.auth.cache_ttl == 3600.0
    assert s.auth.cache_max_entries == 50000


def test_password_hash_and_cache_keys_are_read():
    s = config.parse("[auth]\ncache_ttl = 0\ncache_max_entries = 10\n"
                     "[auth.file]\nargon2_memory_kib = 47104\nargon2_time_cost = 1\n"
                     "argon2_parallelism = 2\n", "f.toml")
    assert (s.auth.file.argon2_memory_kib, s.auth.file.argon2_time_cost,
            s.auth.file.argon2_parallelism) == (47104, 1, 2)
    assert (s.auth.cache_ttl, s.auth.cache_max_entries) == (0.0, 10)


@pytest.mark.parametrize("text, key, reason", [
    ("argon2_memory_kib = 1024", "auth.file.argon2_memory_kib", "between 7168 and"),
    ("argon2_memory_kib = 4194304", "auth.file.argon2_memory_kib", "between 7168 and"),
    ('argon2_memory_kib = "19 MiB"', "auth.file.argon2_memory_kib", "whole number"),
    ("argon2_time_cost = 0", "auth.file.argon2_time_cost", "between 1 and"),
    ("argon2_time_cost = 1000", "auth.file.argon2_time_cost", "between 1 and"),
    ("argon2_time_cost = 2.5", "auth.file.argon2_time_cost", "whole number"),
    ("argon2_parallelism = 0", "auth.file.argon2_parallelism", "between 1 and"),
    ("argon2_parallelism = 64", "auth.file.argon2_parallelism", "between 1 and"),
    ("argon2_parallelism = -1", "auth.file.argon2_parallelism", "negative"),
])
def test_bad_argon2_parameters_name_the_key(text, key, reason):
    with pytest.raises(ConfigError) as e:
        config.parse(f"[auth.file]\n{text}\n", "/etc/securepop.toml")
    assert (e.value.key, e.value.line) == (key, 2)
    assert reason in e.value.reason


@pytest.mark.parametrize("text, key, reason", [
    ("cache_max_entries = 0", "auth.cache_max_entries", "between 1 and"),
    ("cache_max_entries = 100000000", "auth.cache_max_entries", "between 1 and"),
    ('cache_max_entries = "lots"', "auth.cache_max_entries", "whole number"),
    ("cache_ttl = -1", "auth.cache_ttl", "negative"),
    ('cache_ttl = "1h"', "auth.cache_ttl", "number"),
])
def test_bad_cache_settings_name_the_key(text, key, reason):
    with pytest.raises(ConfigError) as e:
        config.parse(f"[auth]\n{text}\n", "/etc/securepop.toml")
    assert (e.value.key, e.value.line) == (key, 2)
    assert reason in e.value.reason
# -- [auth.ldap] / [auth.ad]: the LDAP URL policy, checked here once -------------


def _ldap(urls, extra="", source="ldap"):
    return (f'[auth]\nsource = "{source}"\nmechanisms = ["PLAIN"]\n[auth.{source}]\n'
            f'urls = {urls}\nbase_dn = "dc=x"\n{extra}')


def test_ldap_url_policy():
    section = config.LDAPSettings()
    starttls = config.LDAPSettings(start_tls=True)
    clear = config.LDAPSettings(insecure_cleartext=True)
    assert config.parse_ldap_url("ldaps://h", section) == ("h", 636, True, False)
    assert config.parse_ldap_url("LDAPS://h:1636/", section) == ("h", 1636, True, False)
    assert config.parse_ldap_url("ldap://h:3890", starttls) == ("h", 3890, False, True)
    assert config.parse_ldap_url("ldap://h", clear) == ("h", 389, False, False)
    for url in ("ldap://h", "LDAP://h"):
        with pytest.raises(ValueError, match="insecure_cleartext"):
            config.parse_ldap_url(url, section)
    for bad in ("http://h", "ldaps://", "ldaps://h/dc=x", "ldaps://u@h", "ldaps://h?x",
                "ldaps://h:port", "h", "http://u:pw@h"):
        with pytest.raises(ValueError):
            config.parse_ldap_url(bad, starttls)


def test_start_tls_defaults_to_false_as_documented():
    assert config.LDAPSettings().start_tls is False
    assert config.AD_DEFAULTS.start_tls is False
    assert re.search(r"^# start_tls = false ", SAMPLE.read_text(), re.M)


@pytest.mark.parametrize("source", ["ldap", "ad"])
@pytest.mark.parametrize("urls, extra, reason", [
    ('["ldap://h"]', "", "cleartext"),
    ('["ldaps://h", "LDAP://h2"]', "", "cleartext"),
    ('["http://h"]', "start_tls = true\n", "not an ldap:// or ldaps:// URL"),
    ('["ldaps://h/dc=x"]', "", "scheme://host[:port]"),
    ('["ldaps://svc:s3cret@h"]', "", "must not carry a user or password"),
    ("[]", "", "at least one URL"),
])
def test_bad_ldap_urls_refused_naming_the_key(source, urls, extra, reason):
    with pytest.raises(ConfigError) as e:
        config.parse(_ldap(urls, extra, source), "/etc/securepop.toml")
    assert e.value.key == f"auth.{source}.urls"
    assert reason in e.value.reason
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("source", ["ldap", "ad"])
def test_good_ldap_urls_accepted(source):
    config.parse(_ldap('["ldaps://h", "ldap://h2"]', "start_tls = true\n", source), "f")
    config.parse(_ldap('["ldap://h"]', "insecure_cleartext = true\n", source), "f")


def test_ldap_urls_not_checked_for_another_source():
    config.parse('[auth.ldap]\nurls = ["ldap://h"]\n', "f")


def test_ad_section_starts_from_the_ad_defaults():
    s = config.parse(_ldap('["ldaps://dc"]', 'required_group = "g"\n', "ad"), "f")
    assert s.auth.ad.user_filter == "(sAMAccountName={user})"
    assert s.auth.ad.username_attribute == "sAMAccountName"
    assert s.auth.ad.nested_groups is True
    assert s.auth.ad.required_group == "g"
    assert s.auth.ldap == config.LDAPSettings()


# -- auth.ad.ntlm_auth ------------------------------------------------------------


def _ad(ntlm_auth, mechanisms='["PLAIN", "NTLM"]', helpers=4):
    return ('[auth]\nsource = "ad"\nmechanisms = ' + mechanisms + '\n'
            '[auth.ad]\nurls = ["ldaps://dc1.example.test"]\nbase_dn = "DC=example,DC=test"\n'
            f'helpers = {helpers}\nntlm_auth = "{ntlm_auth}"\n')


@pytest.fixture
def helper(tmp_path):
    """An executable file standing in for Samba's ntlm_auth."""
    path = tmp_path / "ntlm_auth"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_ntlm_auth_executable_file_accepted(helper):
    s = config.parse(_ad(helper), "/etc/securepop.toml")
    assert s.auth.ad.ntlm_auth == str(helper)


@pytest.mark.parametrize("value, reason", [
    ("{helper} --configfile=/etc/samba/smb.conf",
     "does not exist; it must be the program's path alone (here '{helper}'), with the "
     "smb.conf in auth.ad.ntlm_auth_config"),
    ("{tmp}/no-such-ntlm_auth", "does not exist (Samba winbind provides it"),
    ("{plain}", "is not an executable file"),
    ("{tmp}", "is not an executable file"),
    ("ntlm_auth", "is not an absolute path to an executable file"),
])
def test_broken_ntlm_auth_refused_naming_the_key(helper, tmp_path, value, reason):
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    fill = dict(helper=helper, tmp=tmp_path, plain=plain)
    with pytest.raises(ConfigError) as e:
        config.parse(_ad(value.format(**fill)), "/etc/securepop.toml")
    assert e.value.key == "auth.ad.ntlm_auth"
    assert reason.format(**fill) in e.value.reason
    assert e.value.line == 8
    assert str(e.value).startswith("/etc/securepop.toml:8: auth.ad.ntlm_auth: ")


def test_ntlm_auth_not_checked_when_ntlm_is_not_used(tmp_path):
    # PLAIN-only AD (or no helpers) never runs ntlm_auth: a machine without
    # winbind may serve it.
    missing = tmp_path / "no-such-ntlm_auth"
    config.parse(_ad(missing, mechanisms='["PLAIN"]'), "f")
    config.parse(_ad(missing, helpers=0), "f")
    with pytest.raises(ConfigError):
        config.parse(_ad(missing), "f")


# -- auth.netbios_domain / dns_domain: the sample says what the code does ---------------


def _target_names(auth, hostname="mail.example.test"):
    """NetBIOS and DNS domain of the NTLM CHALLENGE the server sends with C{auth}."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from securepop.testing import ntlm as m
    from securepop.sasl.ntlm import NTLMMechanism

    context = SimpleNamespace(hostname=hostname, settings=auth, clock=Clock(), secure=True)
    exchange = NTLMMechanism(challenge_factory=lambda: b"C" * 8).newExchange(context)
    exchange.step(None)
    raw = exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE | m.NEGOTIATE_NTLM)).data
    pairs = dict(m.parse_av_pairs(m.parse_challenge(raw).target_info))
    return (pairs[m.AV_NB_DOMAIN_NAME].decode("utf-16-le"),
            pairs[m.AV_DNS_DOMAIN_NAME].decode("utf-16-le"))


def test_netbios_domain_default_is_what_the_sample_says():
    from dataclasses import replace

    auth = config.AuthSettings()
    # the server hands the mechanism its [auth] settings
    assert _target_names(auth) == ("SECUREPOP", "example.test")
    assert _target_names(replace(auth, netbios_domain="")) == ("MAIL", "example.test")
    assert _target_names(replace(auth, netbios_domain=""), "averyveryverylonghostname") == (
        "AVERYVERYVERYLO", "averyveryverylonghostname")
    text = SAMPLE.read_text()
    assert '# netbios_domain = "SECUREPOP"' in text
    assert ('netbios_domain is "SECUREPOP" unless set; set to\n# "", it is the first label '
            'of server.hostname (upper case, 15 characters at\n# most).') in text
    assert ('dns_domain "" is server.hostname without its first label (the host\n'
            '# name itself when it has no dot).') in text


def test_sample_warns_about_scram_plus_with_gnu_sasl():
    text = SAMPLE.read_text()
    assert "SCRAM-SHA-256-PLUS" in text
    assert ("offering it makes\n# mutt and neomutt (GNU SASL without tls-exporter) choose it "
            "and abort the\n# login instead of falling back to SCRAM-SHA-256") in text


def test_lmtp_listeners_and_quotas():
    s = config.parse('[mail]\nquota_bytes = 1000\nquota_messages = 3\n'
                     '[[lmtp]]\nendpoint = "unix:/run/securepop/lmtp"\nmode = 0o600\n'
                     'domains = ["example.com"]\n[[lmtp]]\nendpoint = "tcp:24"\n')
    assert [l.endpoint for l in s.lmtp] == ["unix:/run/securepop/lmtp", "tcp:24"]
    assert s.lmtp[0].mode == 0o600 and s.lmtp[1].mode == 0o660
    assert s.lmtp[0].domains == ("example.com",) and s.lmtp[1].max_recipients == 100
    assert (s.mail.quota_bytes, s.mail.quota_messages) == (1000, 3)
    assert config.load(None).lmtp == ()            # no [[lmtp]]: no LMTP listener


@pytest.mark.parametrize("text, key, reason", [
    ('[lmtp]\nendpoint = "tcp:24"\n', "lmtp", "array of tables"),
    ('[[lmtp]]\nmode = 0o600\n', "lmtp[0].endpoint", "required"),
    ('[[lmtp]]\nendpoint = "tcp:24"\nmode = 0o1777\n', "lmtp[0].mode", "file mode"),
    ('[[lmtp]]\nendpoint = "tcp:24"\nmax_message_size = 10\n', "lmtp[0].max_message_size",
     "1024"),
    ('[[lmtp]]\nendpoint = "tcp:24"\nmax_recipients = 0\n', "lmtp[0].max_recipients", "1 to"),
    ('[[lmtp]]\nendpoint = "tcp:24"\ndomains = ["a b"]\n', "lmtp[0].domains", "domain"),
    ('[[lmtp]]\nendpoint = "tcp:24"\nport = 24\n', "lmtp[0].port", "unknown key"),
    ('[server]\nworkers = "2"\n[[lmtp]]\nendpoint = "tcp:24"\n', "lmtp[0].endpoint",
     "workers"),
    ('[mail]\nquota_bytes = -1\n', "mail.quota_bytes", "negative"),
])
def test_lmtp_errors(text, key, reason):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "/etc/securepop.toml")
    assert e.value.key == key and reason in e.value.reason
