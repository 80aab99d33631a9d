"""
docs/clients.rst, run: the settings the client guide gives for curl,
fetchmail, getmail6, mutt, neomutt and mpop, read from the guide's named
code blocks, against the real daemon with securepop's default mechanisms,
and the pitfalls it describes (NTLMv1 from fetchmail, SCRAM-SHA-256-PLUS with
GNU SASL).

Only these are filled in: the server name (C{pop.example.com} -> localhost),
the ports (995 and 110 -> the daemon's), the password (C{your-password};
curl's C{-u alice} gets C{:password}), the certificate file
(C{/etc/ssl/certs/pop.example.com.pem} -> the daemon's), and where a client
delivers (a Maildir or an MDA under the test's directory: fetchmail and
getmail6 refuse or cannot deliver as root otherwise).  Each login is checked
on the wire or in the client's output, and in the daemon's log (the
mechanism), next to a wrong password that must fail.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.integration.daemon import LISTENERS, VENV_BIN, require_tool
from tests.integration.test_sasl_clients import LogCursor, assert_logged_in, assert_refused

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "clients.rst"
PASSWORD = "Guide-Horse-4711"
WRONG = "Wrong-Horse-4712"
MESSAGE = b"Subject: from the guide\r\n\r\nhello, client\r\n"
CA_PLACEHOLDER = "/etc/ssl/certs/pop.example.com.pem"

#: securepop's defaults (mechanisms, TLS required), on loopback ports, with
#: short failure delays so the wrong-password cases stay quick.
GUIDE_CONFIG = """
[server]
data_dir = "{data_dir}"
""" + LISTENERS + """[auth]
failure_delay = 0.05
failure_delay_max = 0.2
"""
#: The defaults plus what an administrator may enable: NTLM and CRAM-MD5.
PITFALL_CONFIG = GUIDE_CONFIG + 'mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256", ' \
                                '"NTLM", "CRAM-MD5"]\n'
#: The defaults plus SCRAM-SHA-256-PLUS.
PLUS_CONFIG = GUIDE_CONFIG + 'mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256", ' \
                             '"SCRAM-SHA-256-PLUS"]\n'


def guide_block(name, text=None):
    """The body of the guide's code block with C{:name: NAME}, dedented."""
    text = GUIDE.read_text() if text is None else text
    match = re.search(r"^\.\. code-block:: \S+\n   :name: " + re.escape(name) +
                      r"\n\n((?:   .*\n|\n)+)", text, re.M)
    assert match, f"docs/clients.rst has no code block named {name}"
    return textwrap.dedent(match.group(1)).strip("\n") + "\n"


def fill(text, d, password=PASSWORD):
    """The guide's placeholders -> the test daemon's values."""
    text = text.replace(CA_PLACEHOLDER, d.ca_file)
    text = text.replace("pop.example.com", "localhost")
    text = re.sub(r"\b995\b", str(d.pop3s_port), text)
    text = re.sub(r"\b110\b", str(d.pop3_port), text)
    text = text.replace("-u alice ", f"-u alice:{password} ")
    return text.replace("your-password", password)


def daemon_with(daemon_factory, config, name):
    d = daemon_factory(config, users=(("alice", PASSWORD),), name=name)
    if not d.messages("alice"):
        d.deliver("alice", MESSAGE)
    return d


@pytest.fixture(scope="module")
def guide_daemon(daemon_factory):
    return daemon_with(daemon_factory, GUIDE_CONFIG, "guide")


@pytest.fixture(scope="module")
def pitfall_daemon(daemon_factory):
    return daemon_with(daemon_factory, PITFALL_CONFIG, "guide-pitfalls")


@pytest.fixture(scope="module")
def plus_daemon(daemon_factory):
    return daemon_with(daemon_factory, PLUS_CONFIG, "guide-plus")


def test_guide_blocks_are_found():
    sample = (".. code-block:: text\n   :name: x\n\n   line one\n\n     indented\n"
              "\nprose\n")
    assert guide_block("x", sample) == "line one\n\n  indented\n"
    with pytest.raises(AssertionError, match="no code block named y"):
        guide_block("y", sample)


# -- curl ----------------------------------------------------------------------------


def run_curl(d, name, password=PASSWORD, extra=()):
    command = shlex.split(fill(guide_block(name), d, password))
    assert command[0] == "curl"
    command[0] = require_tool("curl")
    return subprocess.run(command + ["--max-time", "30", *extra], capture_output=True,
                          timeout=60)


@pytest.mark.parametrize("name", ["curl-pop3s", "curl-stls"])
def test_curl(guide_daemon, name):
    d = guide_daemon
    cursor = LogCursor(d)
    result = run_curl(d, name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == MESSAGE
    assert_logged_in(cursor, "PLAIN")

    cursor = LogCursor(d)
    assert run_curl(d, name, WRONG).returncode == 67        # CURLE_LOGIN_DENIED
    assert_refused(cursor, "PLAIN")

    # Debian's curl has no SCRAM: it gives up before sending AUTH
    cursor = LogCursor(d)
    scram = run_curl(d, name, extra=["--login-options", "AUTH=SCRAM-SHA-256", "-v"])
    assert scram.returncode == 67 and b"> AUTH" not in scram.stderr
    assert not cursor.events("auth.success")


def test_curl_without_ssl_reqd_cannot_log_in(guide_daemon):
    d = guide_daemon
    cursor = LogCursor(d)
    command = shlex.split(fill(guide_block("curl-stls"), d))
    command.remove("--ssl-reqd")
    command[0] = require_tool("curl")
    result = subprocess.run(command + ["--max-time", "30", "-v"], capture_output=True,
                            timeout=60)
    # no STLS; no login method is offered before TLS, so curl sends none
    assert result.returncode == 67 and result.stdout == b""
    assert b"> CAPA" in result.stderr
    for command in (b"> STLS", b"> USER", b"> PASS", b"> AUTH"):
        assert command not in result.stderr
    assert not cursor.events("auth.success")


def test_curl_prefers_cram_md5_when_enabled(pitfall_daemon):
    cursor = LogCursor(pitfall_daemon)
    result = run_curl(pitfall_daemon, "curl-pop3s")
    assert result.stdout == MESSAGE, result.stderr
    assert_logged_in(cursor, "CRAM-MD5")


# -- fetchmail -------------------------------------------------------------------------


def run_fetchmail(d, rc_text, workdir, password=PASSWORD):
    """The guide's .fetchmailrc, with an MDA writing each message under C{workdir}."""
    exe = require_tool("fetchmail")
    workdir = Path(workdir)
    out = workdir / "mail"
    out.mkdir(parents=True, exist_ok=True)
    mda = workdir / "mda.sh"
    mda.write_text('#!/bin/sh\ncat > "%s/$(date +%%s%%N).$$"\n' % out)
    mda.chmod(0o700)
    rc = workdir / "fetchmailrc"
    rc.write_text(fill(rc_text, d, password) + f"    mda '{mda}'\n")
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(workdir), HOME=str(workdir))
    proc = subprocess.run([exe, "-f", str(rc), "--nosyslog", "-v"], capture_output=True,
                          timeout=90, env=env)
    sent = [ln.split("POP3> ", 1)[1] for ln in proc.stdout.decode(errors="replace")
            .splitlines() if "POP3> " in ln]
    return proc, sent, [p.read_bytes() for p in sorted(out.iterdir())]


@pytest.mark.parametrize("name", ["fetchmailrc-995", "fetchmailrc-110"])
def test_fetchmail(guide_daemon, tmp_path, name):
    d = guide_daemon
    cursor = LogCursor(d)
    proc, sent, messages = run_fetchmail(d, guide_block(name), tmp_path / "ok")
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-2000:]
    assert len(messages) == 1 and b"Subject: from the guide" in messages[0]
    assert b"hello, client" in messages[0]
    assert ("STLS" in sent) == (name == "fetchmailrc-110"), sent
    assert "USER alice" in sent and not any(s.startswith("AUTH") for s in sent), sent
    assert_logged_in(cursor, "USER")

    cursor = LogCursor(d)
    proc, _, messages = run_fetchmail(d, guide_block(name), tmp_path / "bad", WRONG)
    assert proc.returncode == 3 and not messages       # authentication failure
    assert_refused(cursor, "USER")


def test_fetchmail_auth_any_meets_ntlmv1_refusal(pitfall_daemon, tmp_path):
    """The pitfall: fetchmail's default tries NTLM (v1) first; auth password does not."""
    d = pitfall_daemon
    written = guide_block("fetchmailrc-995")
    auth_any = written.replace(" auth password", "")
    assert auth_any != written
    cursor = LogCursor(d)
    _, sent, _ = run_fetchmail(d, auth_any, tmp_path / "any")
    assert sent and next(s for s in sent if s.startswith(("AUTH", "USER"))) == \
        "AUTH NTLM", sent
    # A policy refusal (no secret was tried), logged with what to use instead.
    assert cursor.wait("auth.refused", mechanism="NTLM", reason="ntlmv1-refused"), \
        cursor.text()[-2000:]
    assert "NTLMv2" in cursor.text()

    cursor = LogCursor(d)
    proc, sent, messages = run_fetchmail(d, written, tmp_path / "password")
    assert proc.returncode == 0 and len(messages) == 1, proc.stdout[-2000:]
    assert "AUTH NTLM" not in sent
    assert_logged_in(cursor, "USER")


# -- getmail6 ----------------------------------------------------------------------------


def run_getmail(d, workdir, password=PASSWORD):
    exe = str(VENV_BIN / "getmail")
    if not os.path.exists(exe):
        exe = require_tool("getmail")
    workdir = Path(workdir)
    out = workdir / "mail"
    out.mkdir(parents=True, exist_ok=True)
    rc_text = fill(guide_block("getmailrc"), d, password)
    # Maildir delivery refuses to run as root: an MDA under the test's directory.
    destination = ("[destination]\ntype = MDA_external\npath = /bin/sh\n"
                   "allow_root_commands = true\n"
                   f"arguments = (\"-c\", \"cat > {out}/$(date +%s%N).$$$$\")\n\n")
    rc_text, count = re.subn(r"\[destination\]\n.*?\n\n", destination, rc_text, flags=re.S)
    assert count == 1
    rc = workdir / "getmailrc"
    rc.write_text(rc_text)
    proc = subprocess.run([exe, f"--rcfile={rc}", f"--getmaildir={workdir}"],
                          capture_output=True, timeout=90)
    return proc, [p.read_bytes() for p in sorted(out.iterdir())]


def test_getmail(guide_daemon, tmp_path):
    d = guide_daemon
    cursor = LogCursor(d)
    proc, messages = run_getmail(d, tmp_path / "ok")
    assert proc.returncode == 0, proc.stderr
    assert len(messages) == 1 and b"hello, client" in messages[0]
    assert_logged_in(cursor, "USER")

    cursor = LogCursor(d)
    proc, messages = run_getmail(d, tmp_path / "bad", WRONG)
    assert proc.returncode != 0 and not messages
    assert_refused(cursor, "USER")


# -- mutt and neomutt ----------------------------------------------------------------------


def run_mutt(program, d, rc_text, workdir, password=PASSWORD):
    """mutt/neomutt with a terminal (C{script}): opens the spool file, then quits."""
    script = require_tool("script")
    exe = require_tool(program)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rc = workdir / "muttrc"
    rc.write_text(fill(rc_text, d, password) + textwrap.dedent(f"""\
        set folder="{workdir}"
        set record=""
        set postponed=""
        set header_cache=""
        set message_cachedir=""
        set certificate_file="{workdir}/certificates"
        set mail_check=0
        set timeout=1
        """))
    env = dict(os.environ, TERM="xterm", HOME=str(workdir))
    proc = subprocess.run([script, "-qc", f"{exe} -n -F {rc} -e 'push <quit>'", "/dev/null"],
                          capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    return proc.stdout.decode(errors="replace")


@pytest.mark.parametrize("program", ["mutt", "neomutt"])
@pytest.mark.parametrize("name", ["muttrc-995", "muttrc-110"])
def test_mutt(guide_daemon, tmp_path, program, name):
    d = guide_daemon
    cursor = LogCursor(d)
    screen = run_mutt(program, d, guide_block(name), tmp_path / "ok")
    assert "Authenticating (SCRAM-SHA-256)" in screen, screen[-1500:]
    assert "[Msgs:1" in screen, screen[-1500:]
    assert_logged_in(cursor, "SCRAM-SHA-256")

    cursor = LogCursor(d)
    screen = run_mutt(program, d, guide_block(name), tmp_path / "bad", WRONG)
    assert "[Msgs:1" not in screen
    assert cursor.wait("auth.failure", mechanism="SCRAM-SHA-256"), cursor.text()[-2000:]
    assert not cursor.events("auth.success")


@pytest.mark.parametrize("program, workaround, mechanism", [
    ("mutt", 'set pop_authenticators = "scram-sha-256:user"\n', "SCRAM-SHA-256"),
    ("neomutt", 'set pop_authenticators = "user"\n', "USER"),
])
def test_mutt_aborts_on_scram_plus(plus_daemon, tmp_path, program, workaround, mechanism):
    d = plus_daemon
    cursor = LogCursor(d)
    screen = run_mutt(program, d, guide_block("muttrc-995"), tmp_path / "plus")
    assert "Authenticating (SCRAM-SHA-256-PLUS)" in screen, screen[-1500:]
    assert "SASL authentication failed" in screen
    assert "[Msgs:1" not in screen
    assert not cursor.events("auth.success")

    # the guide's workaround
    cursor = LogCursor(d)
    screen = run_mutt(program, d, guide_block("muttrc-995") + workaround, tmp_path / "fix")
    assert "[Msgs:1" in screen, screen[-1500:]
    assert_logged_in(cursor, mechanism)


# -- mpop -----------------------------------------------------------------------------------


def run_mpop(d, rc_text, workdir, password=PASSWORD):
    exe = require_tool("mpop")
    workdir = Path(workdir)
    maildir = workdir / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    rc = workdir / "mpoprc"
    rc.write_text(fill(rc_text, d, password).replace("~/Maildir", str(maildir)))
    rc.chmod(0o600)
    proc = subprocess.run([exe, "-C", str(rc), "-d"], capture_output=True, timeout=60,
                          env=dict(os.environ, HOME=str(workdir)))
    sent = [ln[4:] for ln in proc.stdout.decode(errors="replace").splitlines()
            if ln.startswith("--> ")]
    return proc, sent, [p.read_bytes() for p in sorted((maildir / "new").iterdir())]


MPOP_VARIANTS = {
    "995": lambda text: text,
    "110": lambda text: text.replace("port 995", "port 110").replace(
        "tls_starttls off", "tls_starttls on"),
    "scram": lambda text: text + "auth scram-sha-256\n",
}


@pytest.mark.parametrize("variant, mechanism", [("995", "PLAIN"), ("110", "PLAIN"),
                                                ("scram", "SCRAM-SHA-256")])
def test_mpop(guide_daemon, tmp_path, variant, mechanism):
    d = guide_daemon
    rc_text = MPOP_VARIANTS[variant](guide_block("mpoprc-995"))
    assert variant == "995" or rc_text != guide_block("mpoprc-995")
    cursor = LogCursor(d)
    proc, sent, messages = run_mpop(d, rc_text, tmp_path / "ok")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert len(messages) == 1 and b"hello, client" in messages[0]
    assert ("STLS" in sent) == (variant == "110"), sent
    assert f"AUTH {mechanism}" in " ".join(sent), sent
    assert_logged_in(cursor, mechanism)

    cursor = LogCursor(d)
    proc, _, messages = run_mpop(d, rc_text, tmp_path / "bad", WRONG)
    assert proc.returncode != 0 and not messages
    assert_refused(cursor, mechanism)
