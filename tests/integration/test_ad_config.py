"""
An Active Directory configuration at start and in C{securepop check-config},
with the real daemon and the real CLI: a broken C{auth.ad.ntlm_auth} or a
bind password file others may read stops both, naming the key; the correct
settings start.  No DC is needed: LDAP is asked only at the first login.
"""

import subprocess

import pytest

from tests.integration.daemon import SECUREPOP, TWISTD, Daemon, free_port, require_tool

AD_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{{data_dir}}"
[[listen]]
endpoint = "tcp:{{pop3_port}}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{{pop3s_port}}:interface=127.0.0.1"
tls = "implicit"
[auth]
source = "ad"
mechanisms = ["PLAIN", "NTLM"]
[auth.ad]
urls = ["ldaps://127.0.0.1:{ldap_port}"]
base_dn = "DC=example,DC=test"
bind_dn = "pop3svc@example.test"
bind_password_file = "{password_file}"
domain = "EXAMPLE"
helpers = 1
ntlm_auth = "{ntlm_auth}"
"""


def ad_daemon(tmp_path, name, ntlm_auth, password_mode=0o600):
    password = tmp_path / f"{name}-password"
    password.write_text("service-secret\n")
    password.chmod(password_mode)
    config = AD_CONFIG.format(ldap_port=free_port(), password_file=password,
                              ntlm_auth=ntlm_auth)
    return Daemon(tmp_path, config, name=name)


def start_refused(d):
    """Run the daemon in the foreground: it must stop before it listens."""
    return subprocess.run([TWISTD, "-n", "--pidfile=", "securepop", "--config",
                           str(d.config_path)], capture_output=True, text=True,
                          timeout=60, cwd=d.dir)


def check_config(d):
    return subprocess.run([SECUREPOP, "--config", str(d.config_path), "check-config"],
                          capture_output=True, text=True, timeout=60, cwd=d.dir)


@pytest.fixture
def ntlm_auth():
    return require_tool("ntlm_auth")


@pytest.mark.parametrize("value", [
    "{ntlm_auth} --configfile=/etc/samba/smb.conf",   # arguments in the path
    "/nonexistent/ntlm_auth",
    "{not_executable}",
])
def test_broken_ntlm_auth_stops_start_and_check_config(tmp_path, ntlm_auth, value):
    not_executable = tmp_path / "ntlm_auth-copy"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    d = ad_daemon(tmp_path, "ntlm-auth-broken",
                  value.format(ntlm_auth=ntlm_auth, not_executable=not_executable))
    started = start_refused(d)
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert f"{d.config_path}:21: auth.ad.ntlm_auth: " in output
    assert "securepop listen" not in output   # stopped before any listener
    checked = check_config(d)
    assert checked.returncode == 78, checked
    assert f"{d.config_path}:21: auth.ad.ntlm_auth: " in checked.stderr
    if "--configfile" in value:
        assert "the program's path alone" in output
        assert "auth.ad.ntlm_auth_config" in output
    elif "nonexistent" in value:
        assert "does not exist" in output
    else:
        assert "is not an executable file" in output


def test_correct_ntlm_auth_starts(tmp_path, ntlm_auth):
    d = ad_daemon(tmp_path, "ntlm-auth-ok", ntlm_auth)
    checked = check_config(d)
    assert checked.returncode == 0, checked
    assert "configuration OK" in checked.stdout
    d.start()
    try:
        assert d.wait_log("securepop listen ")
        assert d.proc.poll() is None
        assert "auth.ad.ntlm_auth" not in d.log()
    finally:
        d.stop()


def test_readable_bind_password_file_named_at_start(tmp_path, ntlm_auth):
    d = ad_daemon(tmp_path, "bind-password-readable", ntlm_auth, password_mode=0o644)
    started = start_refused(d)
    assert started.returncode == 78, started.stderr
    assert "auth.ad.bind_password_file: the bind password file is accessible by group " \
           "or others (mode 0644); run: chmod 600" in started.stderr
    assert "private key" not in started.stderr
