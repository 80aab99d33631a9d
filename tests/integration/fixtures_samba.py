"""
A throwaway Samba AD domain controller in its own network namespace.

Plain helpers, no pytest here.  Samba's ports are fixed (389, 636, 88...),
so the DC runs inside a network namespace that has only C{lo}; everything
that talks LDAP to it must run there too: L{SambaDC.netnsArgv} prefixes a
command with C{ip netns exec NS}, and L{SambaDC.runPython} runs a Python
module there (this is how the AD LDAP checks and, later, the daemon under
test reach the DC).  C{ntlm_auth} talks to the DC's winbindd through the
Unix socket C{/run/samba/winbindd} (a file-system path, so any namespace
works; only one DC per machine can own it), with C{--configfile} pointing
at the DC's smb.conf.

Use L{sharedDC} so that one DC serves the whole test session (provisioning
takes 10-20 s); it is stopped at interpreter exit.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tests.integration.fixtures_slapd import makeCertificates

REALM = "EXAMPLE.TEST"
DOMAIN = "EXAMPLE"
HOSTNAME = "dc1.example.test"
BASE_DN = "DC=example,DC=test"
GROUP_NAME = "POP3 Users"
GROUP_DN = f"CN={GROUP_NAME},CN=Users,{BASE_DN}"
OUTER_GROUP_DN = f"CN=POP3 Outer,CN=Users,{BASE_DN}"
ADMIN_PASSWORD = "Admin-pass-1"
SERVICE_USER = "pop3svc"
SERVICE_PASSWORD = "Service-pass-1"
USERS = {
    "alice": "Secret-pass-1",   # enabled, in 'POP3 Users'
    "bob": "Secret-pass-2",     # disabled, in 'POP3 Users'
    "carol": "Secret-pass-3",   # enabled, in no group
    "dave": "Secret-pass-4",    # enabled, in 'POP3 Inner' which is in 'POP3 Users'
    "frank": "Secret-pass-6",   # in 'POP3 Users', account expired
}
TOOLS = ("samba", "samba-tool", "ldbsearch", "wbinfo", "ntlm_auth", "ip")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def missingTools():
    """
    @return: list of the programs this machine lacks for an AD DC.
    """
    return [tool for tool in TOOLS if shutil.which(tool) is None
            and not os.path.exists(f"/usr/sbin/{tool}")]


class SambaDC:
    """
    Provision, start and stop one Samba AD DC.

    @ivar namespace: the network namespace name.
    @ivar path: the DC's state directory (C{etc/smb.conf} inside).
    @ivar ca_file: PEM of the CA that signed the DC's LDAPS certificate.
    """

    def __init__(self, path=None, namespace=None):
        self.path = path or tempfile.mkdtemp(prefix="securepop-dc-")
        self.namespace = namespace or f"securepop-ad-{os.getpid()}"
        self.smb_conf = os.path.join(self.path, "etc", "smb.conf")
        self.process = None
        self.ca_file = None
        self.timings = {}

    def netnsArgv(self, argv):
        return ["ip", "netns", "exec", self.namespace] + list(argv)

    def _run(self, argv, **kwargs):
        return subprocess.run(self.netnsArgv(argv), check=True,
                              capture_output=True, text=True, **kwargs)

    def start(self):
        """
        Make the namespace, provision the domain, add the test users and
        groups, start samba and wait until LDAP and winbindd answer.
        """
        started = time.monotonic()
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "lo", "up"],
                       check=True)
        etc = f"/etc/netns/{self.namespace}"
        os.makedirs(etc, exist_ok=True)
        # 'ip netns exec' bind-mounts these over /etc/hosts and resolv.conf.
        with open(f"{etc}/resolv.conf", "w") as out:
            out.write("nameserver 127.0.0.1\n")
        with open(f"{etc}/hosts", "w") as out:
            out.write(f"127.0.0.1 localhost {HOSTNAME} dc1\n")
        tls = os.path.join(self.path, "tls")
        os.makedirs(tls)
        certificates = makeCertificates(tls, names=(HOSTNAME,),
                                        addresses=("127.0.0.1",))
        self.ca_file = certificates["ca"]
        run = os.path.join(self.path, "run")
        os.makedirs(os.path.join(self.path, "log"))
        self._run([
            "samba-tool", "domain", "provision", f"--targetdir={self.path}",
            f"--realm={REALM}", f"--domain={DOMAIN}", "--server-role=dc",
            "--dns-backend=NONE", "--use-rfc2307", "--host-name=dc1",
            f"--adminpass={ADMIN_PASSWORD}",
            "--option=interfaces = lo", "--option=bind interfaces only = yes",
            "--option=disable netbios = yes",
            "--option=server services = rpc, ldap, cldap, kdc, winbindd, ntp_signd",
            f"--option=pid directory = {run}",
            f"--option=ncalrpc dir = {run}/ncalrpc",
            f"--option=ntp signd socket directory = {run}/ntp_signd",
            f"--option=log file = {self.path}/log/log.%m",
            "--option=ldb:nosync = true",
        ], timeout=120)
        self.timings["provision"] = time.monotonic() - started
        # Provisioning drops these; add them afterwards.  'ntlm auth = yes'
        # lets the DC accept NTLMv1 so that securepop's own refusal of v1 is
        # what the tests see.  Our certificate (with the DC's name in its
        # SAN) replaces Samba's self-made one.
        with open(self.smb_conf) as conf:
            text = conf.read()
        text = text.replace("[global]\n", (
            "[global]\n"
            "\tldap server require strong auth = no\n"
            "\tntlm auth = yes\n"
            "\ttls enabled = yes\n"
            f"\ttls keyfile = {certificates['key']}\n"
            f"\ttls certfile = {certificates['cert']}\n"
            f"\ttls cafile = {certificates['ca']}\n"), 1)
        with open(self.smb_conf, "w") as conf:
            conf.write(text)
        tool = ["samba-tool"]
        conf = [f"--configfile={self.smb_conf}"]
        for user, password in USERS.items():
            self._run(tool + ["user", "create", user, password,
                              f"--given-name={user.title()}",
                              "--surname=Example"] + conf)
        self._run(tool + ["user", "create", SERVICE_USER, SERVICE_PASSWORD] + conf)
        self._run(tool + ["group", "add", GROUP_NAME] + conf)
        self._run(tool + ["group", "add", "POP3 Inner"] + conf)
        self._run(tool + ["group", "addmembers", GROUP_NAME, "alice,bob,frank,POP3 Inner"]
                  + conf)
        self._run(tool + ["group", "addmembers", "POP3 Inner", "dave"] + conf)
        self._run(tool + ["user", "disable", "bob"] + conf)
        self._run(tool + ["user", "setexpiry", "frank", "--days=0"] + conf)
        self.timings["users"] = time.monotonic() - started
        os.makedirs("/run/samba", exist_ok=True)
        self.process = subprocess.Popen(
            self.netnsArgv(["samba", "-i", "-M", "single", "-s", self.smb_conf,
                            "--debug-stdout", "-d", "1"]),
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.path, "log", "samba.out"), "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"samba exited: see {self.path}/log/samba.out")
            ldap = subprocess.run(self.netnsArgv(
                ["ldbsearch", "-H", "ldap://127.0.0.1", "-s", "base", "-b", "",
                 "dnsHostName"]), capture_output=True)
            winbind = subprocess.run(self.netnsArgv(["wbinfo", "-p"]),
                                     capture_output=True)
            if ldap.returncode == 0 and winbind.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("samba did not become ready in 60 s")
        self.timings["ready"] = time.monotonic() - started
        return self

    def stop(self):
        """
        Stop samba and remove the namespace and the state directory.
        """
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(5)
        subprocess.run(["ip", "netns", "del", self.namespace],
                       capture_output=True)
        shutil.rmtree(f"/etc/netns/{self.namespace}", ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)

    def runPython(self, module, *args, timeout=120, env=None):
        """
        Run C{python -m module args} inside the namespace, from the
        repository root, and parse the JSON it prints on its last line.
        """
        environment = dict(os.environ)
        environment.update(env or {})
        environment["PYTHONPATH"] = REPO_ROOT + os.pathsep + environment.get(
            "PYTHONPATH", "")
        completed = subprocess.run(
            self.netnsArgv([sys.executable, "-m", module] + list(args)),
            capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
            env=environment)
        lines = completed.stdout.strip().splitlines()
        if completed.returncode != 0 or not lines:
            raise RuntimeError(f"{module} failed ({completed.returncode}):\n"
                               f"{completed.stdout}\n{completed.stderr}")
        return json.loads(lines[-1])

    def describe(self):
        """
        @return: JSON-able facts a check inside the namespace needs.
        """
        return {"namespace": self.namespace, "smb_conf": self.smb_conf,
                "ca_file": self.ca_file, "url": f"ldaps://{HOSTNAME}",
                "starttls_url": f"ldap://{HOSTNAME}"}


_shared = None


def sharedDC():
    """
    @return: the one L{SambaDC} of this test process, started on first use
        and stopped at exit.
    """
    global _shared
    if _shared is None:
        dc = SambaDC()
        atexit.register(dc.stop)
        try:
            dc.start()
        except BaseException:
            dc.stop()
            raise
        _shared = dc
    return _shared
