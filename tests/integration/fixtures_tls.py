"""
TLS test bed for the integration tests: a test CA (made by openssl, as an
administrator's CA would be), server certificates it issues, securepop
daemons with a given TLS profile, and the external auditors (sslyze in its
own virtualenv, testssl.sh, openssl s_client, tcpdump).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.daemon import DEFAULT_CONFIG, require_tool

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Tls-Wire-Secret-4711"

# Where sslyze may live: it pins its own cryptography/pyOpenSSL, so it has a
# virtualenv of its own (.ci/run makes .venv-sslyze).  The first that knows
# --mozilla_config wins (the 1.x releases on PyPI do not).
SSLYZE_CANDIDATES = (
    os.environ.get("SSLYZE", ""),
    str(ROOT / ".venv-sslyze" / "bin" / "sslyze"),
    "/work/venv-sslyze/bin/sslyze",
    shutil.which("sslyze") or "",
)


def missing(tool):
    """A required tool is missing: fail in CI, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required tool {tool!r} is not installed")
    pytest.skip(f"{tool} is not installed")


def sslyze_path():
    for candidate in SSLYZE_CANDIDATES:
        if candidate and os.access(candidate, os.X_OK):
            help_text = subprocess.run(
                [candidate, "--help"], capture_output=True, text=True
            ).stdout
            if "--mozilla_config" in help_text:
                return candidate
    missing("sslyze (>= 5, with --mozilla_config)")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class OpenSSLCA:
    """
    A root and an intermediate CA made with the openssl command line, and
    C{sign(csr)} as the CA's web form would do it.
    """

    def __init__(self, directory: Path):
        require_tool("openssl")
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.ext").write_text(
            "basicConstraints=critical,CA:TRUE\n"
            "keyUsage=critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier=hash\n"
        )
        (directory / "leaf.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", "root.key", "-out", "root.pem", "-days", "3650",
                "-subj", "/CN=securepop openssl test root", "-sha256",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "inter.key", "-out", "inter.csr",
                "-subj", "/CN=securepop openssl test intermediate", cwd=directory)
        openssl("x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey",
                "root.key", "-CAcreateserial", "-out", "inter.pem", "-days", "3000",
                "-sha256", "-extfile", "ca.ext", cwd=directory)
        self.root = str(directory / "root.pem")
        self.intermediate = str(directory / "inter.pem")

    def sign(self, csr_path, out_name, days=90):
        """
        Sign a CSR, copying its subjectAltNames (as most CAs do).
        """
        out = self.dir / out_name
        openssl("x509", "-req", "-in", str(csr_path), "-CA", self.intermediate,
                "-CAkey", "inter.key", "-CAcreateserial", "-out", str(out),
                "-days", str(days), "-sha256", "-extfile", "leaf.ext",
                "-copy_extensions", "copy", cwd=self.dir)
        return str(out)

    def issue(self, name, sans=("DNS:localhost", "IP:127.0.0.1"), days=90):
        """
        A new key + certificate (leaf, then intermediate) for the server.

        @return: C{(certificate_path, key_path)}; the key has mode 0600.
        """
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
                "-addext", "subjectAltName=" + ",".join(sans), cwd=self.dir)
        os.chmod(key, 0o600)
        leaf = self.sign(csr, f"{name}.leaf.pem", days)
        chain = self.dir / f"{name}.pem"
        chain.write_bytes(Path(leaf).read_bytes() + Path(self.intermediate).read_bytes())
        return str(chain), str(key)


def tls_config(certificate, key, profile="intermediate", extra=""):
    """
    The integration daemon's configuration with our certificate and profile.
    """
    return DEFAULT_CONFIG + (
        f'[tls]\ncertificate = "{certificate}"\nkey = "{key}"\n'
        f'profile = "{profile}"\n{extra}'
    )


@pytest.fixture(scope="session")
def openssl_ca(tmp_path_factory):
    return OpenSSLCA(tmp_path_factory.mktemp("openssl-ca"))


@pytest.fixture(scope="session")
def tls_daemon(daemon_factory, openssl_ca):
    """
    C{tls_daemon(profile)}: a daemon serving a CA-issued certificate for
    localhost/127.0.0.1 with that profile (one per profile per session).
    """
    identities = {}

    def make(profile="intermediate"):
        if profile not in identities:
            identities[profile] = openssl_ca.issue(f"localhost-{profile}")
        cert, key = identities[profile]
        return daemon_factory(tls_config(cert, key, profile),
                              users=(("alice", PASSWORD),), name=f"tls-{profile}")

    return make


def run_sslyze(mozilla_config, port, ca_file, starttls=False, timeout=300):
    """
    @return: C{(exit_status, output)}; sslyze exits 0 only when the server
        complies with Mozilla's configuration.
    """
    command = [sslyze_path(), "--mozilla_config", mozilla_config,
               "--certinfo_ca_file", ca_file]
    if starttls:
        command += ["--starttls", "pop3"]
    command.append(f"127.0.0.1:{port}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def testssl_path():
    for name in ("testssl", "testssl.sh"):
        path = shutil.which(name)
        if path:
            return path
    missing("testssl.sh")


def python():
    return sys.executable
