"""
Kerberos on the shared Samba AD DC (L{tests.integration.fixtures_samba}):
the service principal and its keytab, a krb5.conf for the test realm, and
ticket caches of the test users.

Plain helpers, no pytest here.  The KDC listens inside the DC's network
namespace, so C{kinit} and C{kvno} run there (C{ip netns exec}); a client
in this process then finds its service ticket in the ticket cache and needs
no KDC.
"""

from __future__ import annotations

import os
import subprocess

from tests.integration import fixtures_samba as S

KRB5_CONF = """\
[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    {realm} = {{
        kdc = 127.0.0.1
    }}
[domain_realm]
    {host} = {realm}
"""


class KerberosBed:
    """
    The service principal C{service/host} on the DC's service account, its
    keytab (mode 0600), a krb5.conf, and per-user ticket caches.

    @ivar env: the environment a Kerberos program of the tests needs
        (C{KRB5_CONFIG}, a private replay cache directory).
    """

    def __init__(self, dc, path, host="localhost", service="pop", account=S.SERVICE_USER):
        self.dc = dc
        self.path = str(path)
        self.host = host
        self.service = service
        self.principal = f"{service}/{host}@{S.REALM}"
        self.keytab = os.path.join(self.path, "pop.keytab")
        self.krb5_conf = os.path.join(self.path, "krb5.conf")
        self.account = account
        rcache = os.path.join(self.path, "rcache")
        os.makedirs(rcache, exist_ok=True)
        self.env = {"KRB5_CONFIG": self.krb5_conf, "KRB5RCACHEDIR": rcache,
                    "KRB5_TRACE": os.path.join(self.path, "krb5.trace")}

    def setUp(self):
        with open(self.krb5_conf, "w") as out:
            out.write(KRB5_CONF.format(realm=S.REALM, host=self.host))
        conf = f"--configfile={self.dc.smb_conf}"
        spns = self._samba(["spn", "list", self.account, conf]).stdout
        if f"{self.service}/{self.host}" not in spns:
            self._samba(["spn", "add", f"{self.service}/{self.host}", self.account, conf])
        if os.path.exists(self.keytab):
            os.unlink(self.keytab)
        self._samba(["domain", "exportkeytab", self.keytab,
                     f"--principal={self.service}/{self.host}", conf])
        os.chmod(self.keytab, 0o600)
        return self

    def _samba(self, argv):
        return subprocess.run(self.dc.netnsArgv(["samba-tool"] + argv), check=True,
                              capture_output=True, text=True, timeout=120)

    def ccache(self, name):
        return os.path.join(self.path, f"cc-{name}")

    def kinit(self, user, password, service_ticket=True):
        """
        Get C{user}'s TGT (the password on stdin) and, by default, the
        service ticket, into the ticket cache L{ccache}C{(user)}.

        @return: the environment naming that cache.
        """
        env = dict(os.environ, **self.env, KRB5CCNAME="FILE:" + self.ccache(user))
        subprocess.run(self.dc.netnsArgv(["kinit", f"{user}@{S.REALM}"]), check=True,
                       input=password + "\n", capture_output=True, text=True, env=env,
                       timeout=60)
        if service_ticket:
            subprocess.run(self.dc.netnsArgv(["kvno", self.principal]), check=True,
                           capture_output=True, text=True, env=env, timeout=60)
        return {k: env[k] for k in ("KRB5CCNAME", *self.env)}
