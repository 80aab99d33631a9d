"""
The benchmark's OpenLDAP: the session users in a real slapd, for the
"users in slapd" line (securepop's [auth.ldap] against Dovecot's ldap
passdb with auth_bind, the same directory, the same service account).

Built on the integration tests' slapd helpers (certificates, slapd.conf,
start/stop); only the entries differ: the benchmark's users, each with the
benchmark password as {SSHA} (slapd checks it on bind).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.servers import PASSWORD
from tests.integration import fixtures_slapd as F

BASE_DN = F.PEOPLE


def ldif(users):
    entries = [
        f"dn: {F.SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: Example\ndc: example",
        f"dn: {F.PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: ou=services,{F.SUFFIX}\nobjectClass: organizationalUnit\nou: services",
        f"dn: {F.SERVICE_DN}\nobjectClass: applicationProcess\n"
        f"objectClass: simpleSecurityObject\ncn: pop3\n"
        f"userPassword: {F._ssha(F.SERVICE_PASSWORD)}",
    ]
    for uid in users:
        entries.append(f"dn: uid={uid},{F.PEOPLE}\nobjectClass: inetOrgPerson\n"
                       f"uid: {uid}\ncn: {uid}\nsn: Bench\n"
                       f"userPassword: {F._ssha(PASSWORD)}")
    return "\n\n".join(entries) + "\n"


class BenchDirectory:
    """One slapd on loopback (ldaps) holding C{users}; a context manager."""

    def __init__(self, root, users):
        self.root = Path(root)
        self.users = list(users)
        self.server = None

    def __enter__(self):
        missing = F.missingTools()
        if missing:
            raise RuntimeError(f"slapd test bed missing: {', '.join(missing)}")
        if self.root.exists():
            shutil.rmtree(self.root)
        directory = F.makeDirectory(str(self.root))
        (self.root / "data.ldif").write_text(ldif(self.users))
        self.tls = directory.tls
        self.password_file = self.root / "service-password"
        self.password_file.write_text(F.SERVICE_PASSWORD + "\n")
        os.chmod(self.password_file, 0o600)
        os.chmod(self.root, 0o755)
        os.chmod(self.tls["ca"], 0o644)
        self.server = F.SlapdServer(directory, "bench")
        self.server.start()
        return self

    def __exit__(self, *exc):
        if self.server is not None:
            self.server.stop()
        return False

    @property
    def url(self):
        return self.server.ldaps_url

    @property
    def port(self):
        return self.server.ldaps_port

    @property
    def ca(self):
        return self.tls["ca"]

    def securepop_auth(self):
        """The [auth.ldap] section for securepop's configuration."""
        return (f'[auth.ldap]\nurls = ["{self.url}"]\nca_file = "{self.ca}"\n'
                f'bind_dn = "{F.SERVICE_DN}"\n'
                f'bind_password_file = "{self.password_file}"\n'
                f'base_dn = "{BASE_DN}"\n')

    def dovecot_ldap_conf(self, path):
        """Dovecot's dovecot-ldap.conf.ext: bind as the user (auth_bind)."""
        Path(path).write_text(
            f"uris = {self.url}\n"
            f"tls_ca_cert_file = {self.ca}\n"
            f"dn = {F.SERVICE_DN}\n"
            f"dnpass = {F.SERVICE_PASSWORD}\n"
            "auth_bind = yes\n"
            f"base = {BASE_DN}\n"
            "scope = onelevel\n"
            "pass_filter = (&(objectClass=inetOrgPerson)(uid=%u))\n"
            "pass_attrs = uid=user\n")
        os.chmod(path, 0o600)
