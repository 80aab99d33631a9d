"""
Throwaway OpenLDAP servers (slapd) for integration tests.

Plain helpers, no pytest here: L{makeDirectory} writes a TLS CA and server
certificate, a slapd.conf and the test entries; L{SlapdServer} runs one
slapd on two free loopback ports (ldap:// with StartTLS, and ldaps://) and
can stop, start, pause (SIGSTOP) and resume it.  Several servers may share
one directory's data (each gets its own database copy) to test failover.
"""

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

SAMBA_SCHEMA = "/usr/share/doc/samba/examples/LDAP/samba.schema"
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SUFFIX = "dc=example,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUP_DN = f"cn=pop3users,ou=groups,{SUFFIX}"
DENIED_GROUP_DN = f"cn=nopop3,ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=pop3,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "Service-pass-1"

# user -> (password, in pop3users, extra LDIF lines)
USERS = {
    "alice": "Secret-pass-1",     # in group; APOP secret; mailbox; POP3 on
    "bob": "Secret-pass-2",       # not in the group
    "carol": "Secret-pass-3",     # in group; sambaNTPassword
    "dave": "Secret-pass-4",      # in group; POP3 switched off (attribute)
    "erin": "Secret-pass-5",      # in group and in the POP3-denied group
    "odd*(name)\\x": "Secret-pass-6",  # legal uid full of filter characters
}
ALICE_SECRET = b"apop-secret-alice"
ALICE_MAILBOX = "/srv/mail/alice/Maildir"

# A tiny test schema: a POP3 switch, a mailbox path and an APOP secret.
# OIDs under the documentation arc 1.3.6.1.4.1.32473 (RFC 5612).
TEST_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.32473.1.1 NAME 'securepopPOP3Enabled'
    EQUALITY booleanMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.7 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.2 NAME 'securepopMailbox'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.3 NAME 'securepopSecret'
    EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.32473.2.1 NAME 'securepopUser' SUP top AUXILIARY
    MAY ( securepopPOP3Enabled $ securepopMailbox $ securepopSecret ) )
"""


def missingTools():
    """
    @return: list of what these fixtures need and this machine lacks.
    """
    missing = [tool for tool in (SLAPD, SLAPADD) if not os.access(tool, os.X_OK)]
    if not os.path.exists(SAMBA_SCHEMA):
        missing.append(SAMBA_SCHEMA + " (apt package samba)")
    return missing


def freePort():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ntHash(password):
    """MD4 of the UTF-16LE password, as Samba stores it (hex, upper case)."""
    try:
        import hashlib

        digest = hashlib.new("md4", password.encode("utf-16-le")).digest()
    except ValueError:  # OpenSSL 3 without the legacy provider
        from spnego._ntlm_raw.md4 import md4

        digest = md4(password.encode("utf-16-le"))
    return digest.hex().upper()


def _ssha(password):
    import base64
    import hashlib

    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def makeCertificates(directory, names=("localhost",), addresses=("127.0.0.1",)):
    """
    Write C{ca.pem}, C{cert.pem} and C{key.pem} (a CA and a server
    certificate it signed) into C{directory}; also C{other-ca.pem}, a CA
    that signed nothing (for the "wrong CA" test).

    @return: dict of the three paths and C{"other_ca"}.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def caCertificate(commonName):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True,
                                         True, False, False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                key.public_key()), False)
            .sign(key, hashes.SHA256()))
        return key, certificate

    caKey, ca = caCertificate("securepop test CA")
    _, otherCA = caCertificate("securepop other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    alternative = [x509.DNSName(name) for name in names] + [
        x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alternative), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage(
            [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            caKey.public_key()), False)
        .sign(caKey, hashes.SHA256()))
    paths = {
        "ca": os.path.join(directory, "ca.pem"),
        "cert": os.path.join(directory, "cert.pem"),
        "key": os.path.join(directory, "key.pem"),
        "other_ca": os.path.join(directory, "other-ca.pem"),
    }
    pem = serialization.Encoding.PEM
    with open(paths["ca"], "wb") as out:
        out.write(ca.public_bytes(pem))
    with open(paths["other_ca"], "wb") as out:
        out.write(otherCA.public_bytes(pem))
    with open(paths["cert"], "wb") as out:
        out.write(certificate.public_bytes(pem))
    with open(os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
              "wb") as out:
        out.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return paths


def _ldif():
    def person(uid, password, extra=(), classes=()):
        cn = uid.replace("*", "").replace("(", "").replace(")", "").replace("\\", "")
        lines = [f"dn: uid={_dnValue(uid)},{PEOPLE}",
                 "objectClass: inetOrgPerson"]
        lines += [f"objectClass: {name}" for name in classes]
        lines += [f"uid: {uid}", f"cn: {cn} Example", "sn: Example",
                  f"userPassword: {_ssha(password)}"]
        lines += list(extra)
        return "\n".join(lines)

    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: Example\ndc: example",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups",
        f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services",
        f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\n"
        f"objectClass: simpleSecurityObject\ncn: pop3\n"
        f"userPassword: {_ssha(SERVICE_PASSWORD)}",
        person("alice", USERS["alice"], [
            "securepopPOP3Enabled: TRUE",
            f"securepopMailbox: {ALICE_MAILBOX}",
            f"securepopSecret: {ALICE_SECRET.decode()}"], ["securepopUser"]),
        person("bob", USERS["bob"]),
        person("carol", USERS["carol"], [
            "sambaSID: S-1-5-21-1111111111-2222222222-3333333333-1003",
            f"sambaNTPassword: {ntHash(USERS['carol'])}",
            "sambaAcctFlags: [U          ]",
            "description: 100,1"], ["sambaSamAccount"]),      # a quota_attribute value
        person("dave", USERS["dave"], ["securepopPOP3Enabled: FALSE"],
               ["securepopUser"]),
        person("erin", USERS["erin"]),
        person("odd*(name)\\x", USERS["odd*(name)\\x"]),
        f"dn: {GROUP_DN}\nobjectClass: groupOfNames\ncn: pop3users\n"
        + "\n".join(f"member: uid={_dnValue(uid)},{PEOPLE}"
                    for uid in ("alice", "carol", "dave", "erin", "odd*(name)\\x")),
        f"dn: {DENIED_GROUP_DN}\nobjectClass: groupOfNames\ncn: nopop3\n"
        f"member: uid=erin,{PEOPLE}",
    ]
    return "\n\n".join(entries) + "\n"


def _dnValue(value):
    # RFC 4514: escape the characters special in a DN attribute value.
    out = []
    for char in value:
        if char in ',+"\\<>;=':
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


@dataclass
class Directory:
    """A prepared slapd configuration and its data (not yet running)."""

    path: str
    tls: dict


def makeDirectory(path):
    """
    Write certificates, schema, slapd.conf template and LDIF under C{path}.
    """
    os.makedirs(path, exist_ok=True)
    tls = makeCertificates(path)
    with open(os.path.join(path, "securepop-test.schema"), "w") as out:
        out.write(TEST_SCHEMA)
    with open(os.path.join(path, "data.ldif"), "w") as out:
        out.write(_ldif())
    return Directory(path, tls)


class SlapdServer:
    """
    One slapd process on 127.0.0.1 serving a copy of a L{Directory}.

    @ivar ldap_url: C{ldap://127.0.0.1:PORT} (StartTLS available).
    @ivar ldaps_url: C{ldaps://127.0.0.1:PORT}.
    """

    def __init__(self, directory, name):
        self.directory = directory
        self.path = os.path.join(directory.path, name)
        self.ldap_port = freePort()
        self.ldaps_port = freePort()
        self.ldap_url = f"ldap://127.0.0.1:{self.ldap_port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}"
        self.process = None
        os.makedirs(os.path.join(self.path, "db"), exist_ok=True)
        self.conf = os.path.join(self.path, "slapd.conf")
        with open(self.conf, "w") as out:
            out.write(self._config())
        subprocess.run([SLAPADD, "-q", "-f", self.conf, "-l",
                        os.path.join(directory.path, "data.ldif")],
                       check=True, capture_output=True)

    def _config(self):
        tls = self.directory.tls
        return f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {SAMBA_SCHEMA}
include {self.directory.path}/securepop-test.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {self.path}/slapd.pid
argsfile {self.path}/slapd.args
TLSCACertificateFile {tls['ca']}
TLSCertificateFile {tls['cert']}
TLSCertificateKeyFile {tls['key']}
# simple binds only under TLS (ssf 128): cleartext must fail
security simple_bind=128

database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
directory {self.path}/db
index objectClass,uid,member eq
access to attrs=userPassword,sambaNTPassword,sambaLMPassword,securepopSecret
    by dn.exact="{SERVICE_DN}" read
    by anonymous auth
    by * none
access to * by * read
"""

    def start(self, timeout=10.0):
        """Start slapd and wait until the ldaps port accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [SLAPD, "-d", "0", "-f", self.conf, "-h",
             f"{self.ldap_url}/ {self.ldaps_url}/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.path, "slapd.log"), "ab"),
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: see {self.path}/slapd.log")
            try:
                with socket.create_connection(("127.0.0.1", self.ldaps_port), 0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("slapd did not start in time")

    def stop(self):
        """Stop slapd (and resume it first if it was paused)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def pause(self):
        """SIGSTOP: the kernel still accepts connections, nobody answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)
