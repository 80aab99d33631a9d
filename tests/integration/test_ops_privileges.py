"""
Privilege drop: started as root with C{user} set, the daemon binds its
ports (a port below 1024 included) and then runs as that user.
"""

import os
import pwd
import shutil
import subprocess

import pytest

from tests.integration.daemon import DEFAULT_CONFIG, Daemon
from tests.integration.ops_client import POP3

USER = "securepop-test"
PASSWORD = "Drop-pw-42"


@pytest.fixture(scope="module")
def service_user():
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the privilege tests need root")
        pytest.skip("needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", USER], check=True)
    return pwd.getpwnam(USER)


def low_port():
    import socket

    for port in range(900, 1000):
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    pytest.fail("no free port below 1024")


def status_ids(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


@pytest.fixture
def reachable_tmp():
    """pytest's tmp_path lives under a root-only directory: the user could not enter it."""
    import tempfile

    path = tempfile.mkdtemp(prefix="securepop-drop-")
    os.chmod(path, 0o755)
    yield path
    if os.environ.get("SECUREPOP_KEEP_TMP") is None:
        shutil.rmtree(path, ignore_errors=True)


def test_binds_as_root_then_runs_as_user(reachable_tmp, service_user):
    tmp_path = reachable_tmp
    port = low_port()
    config = DEFAULT_CONFIG.replace("[server]\n", f'[server]\nuser = "{USER}"\n') \
        .replace("tcp:{pop3_port}:", f"tcp:{port}:")
    d = Daemon(tmp_path, config, name="drop")
    d.add_user("alice", PASSWORD)
    d.cli("check-config", check=False)
    os.chmod(d.dir, 0o755)
    subprocess.run(["chown", "-R", f"{USER}:", str(d.data_dir)], check=True)
    try:
        d.start(wait_ports=(port, d.pop3s_port))
        ids = status_ids(d.proc.pid)
        assert ids["Uid"] == [str(service_user.pw_uid)] * 4
        assert ids["Gid"][0] == str(service_user.pw_gid)
        assert ids["Groups"] == [] or "0" not in ids["Groups"]
        assert "privileges.dropped" in d.log()
        c = POP3(d.pop3s_port)                       # it still serves mail
        c.login("alice", PASSWORD)
        assert c.quit().startswith(b"+OK")
        mark = len(d.log())
        d.sighup()                                   # reload works as the user
        assert d.wait_log("config.reloaded", start=mark), d.log()[mark:]
    finally:
        d.stop()


def test_refuses_data_dir_the_user_cannot_use(tmp_path, service_user):
    config = DEFAULT_CONFIG.replace("[server]\n", f'[server]\nuser = "{USER}"\n')
    d = Daemon(tmp_path, config, name="drop-refused")
    d.add_user("alice", PASSWORD)                    # data dir owned by root
    d.log_file = open(d.log_path, "ab")
    from tests.integration.daemon import TWISTD

    r = subprocess.run([TWISTD, "-n", "--pidfile=", "securepop",
                        "--config", str(d.config_path)], capture_output=True, text=True,
                       timeout=60, cwd=d.dir)
    d.log_file.close()
    assert r.returncode == 78
    assert "chown" in r.stderr


def test_refuses_world_readable_users_file(tmp_path):
    d = Daemon(tmp_path, name="readable")
    d.add_user("alice", PASSWORD)
    os.chmod(d.data_dir / "users", 0o644)
    from tests.integration.daemon import TWISTD

    r = subprocess.run([TWISTD, "-n", "--pidfile=", "securepop", "--config",
                        str(d.config_path)], capture_output=True, text=True, timeout=60,
                       cwd=d.dir)
    assert r.returncode == 78
    assert "chmod 600" in r.stderr


def test_a_port_in_use_stops_the_start_with_one_clear_line(tmp_path):
    """Another program holds the STLS port: exit 69 (EX_UNAVAILABLE), no traceback."""
    import socket

    from tests.integration.daemon import TWISTD

    d = Daemon(tmp_path, name="port-taken")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", d.pop3_port))
        r = subprocess.run([TWISTD, "-n", "--pidfile=", "securepop", "--config",
                            str(d.config_path)], capture_output=True, text=True, timeout=60,
                           cwd=d.dir)
    printed = r.stdout + r.stderr
    assert r.returncode == 69, printed
    assert f"securepop: cannot listen on 127.0.0.1:{d.pop3_port}: Address already in use" \
        in printed
    assert "Traceback" not in printed
    # The negative case: the port free again, the same configuration starts.
    d.start()
    try:
        with socket.create_connection(("127.0.0.1", d.pop3_port), timeout=10) as s:
            assert s.makefile("rb").readline().startswith(b"+OK")
    finally:
        d.stop()
