"""
The server side of TLS: one object that makes every listener's
L{OpenSSL.SSL.Connection}, with certificates chosen by SNI, reloaded on
demand (SIGHUP) and when their files change.

L{ServerTLS} provides L{IOpenSSLServerConnectionCreator}, so it can be given
to anything in Twisted that takes a TLS "context factory":
C{TLSMemoryBIOFactory(serverTLS, False, factory)}, C{transport.startTLS(
serverTLS)} for STLS, C{SSL4ServerEndpoint} and C{reactor.listenSSL}.

Why not Twisted's C{tls:} SNI endpoint: its automatic reload does not work,
and C{CertificateOptions} cannot restrict the key-exchange groups.
"""

import datetime
import hashlib
import os
import time

from OpenSSL import SSL
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from securepop import events
from securepop.errors import ConfigError
from securepop.tls.checks import (
    CertificateProblem,
    certificate_problems,
    check_key_file_mode,
    check_key_matches,
    load_chain,
    load_trust_roots,
    parse_private_key,
    read_file,
)
from securepop.tls.profiles import TLSPolicy

RELOAD_CHECK_INTERVAL = 1.0  # seconds between two stat() rounds


class _SystemClock:
    """
    Wall-clock seconds, for callers that pass no clock (only C{seconds()}
    is used, so a C{task.Clock} fits in tests).
    """

    def seconds(self):
        return time.time()


class _Identity:
    """
    One certificate set: leaf + chain + key loaded from two files, and the
    context that serves it.
    """

    def __init__(self, policy, certificate, key, hostname=None):
        self.certificate_path = certificate
        self.key_path = key
        self.hostname = hostname
        check_key_file_mode(key)
        self.chain = load_chain(certificate)
        self.private_key = parse_private_key(
            read_file(key, "tls.key"), key
        )
        check_key_matches(self.chain[0], self.private_key, certificate, key)
        context = policy.new_context()
        try:
            context.use_certificate(self.chain[0])
            context.use_privatekey(self.private_key)
            for extra in self.chain[1:]:
                context.add_extra_chain_cert(extra)
            context.check_privatekey()
        except SSL.Error as e:
            raise ConfigError(certificate, "tls.certificate", f"OpenSSL refused it: {e}")
        self.context = context

    @property
    def leaf(self):
        return self.chain[0]


def _fileSignature(paths):
    """
    What changes when a file is replaced or rewritten: inode, size, mtime.
    A missing file is a change too.
    """
    signature = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            signature.append((path, None))
        else:
            signature.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(signature)


def _normaliseName(name):
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTLS:
    """
    Certificates and policy for every TLS listener.

    @param policy: the L{TLSPolicy} shared by all listeners.
    @param certificate: path of the default PEM file: leaf first, then the
        intermediate certificates.  Served to clients without SNI or with a
        name no C{sni} entry has.
    @param key: path of its PEM private key (RSA or ECDSA, unencrypted, mode
        0600 or stricter).
    @param sni: sequence of C{(hostname, certificate, key)}; C{hostname} may
        be C{*.example.com} (one label).
    @param hostname: C{server.hostname}, for L{warnings}.
    @param clock: L{IReactorTime}; paces the file-change check (at most once
        per C{check_interval} seconds) and dates the expiry warnings.
    @param trust_roots: certificates a chain may end in (default: the
        system bundle), for the incomplete-chain warning.

    @raise ConfigError: a file is unreadable, the key is accessible by
        others, or a key does not match its certificate.
    """

    def __init__(
        self,
        policy=None,
        certificate=None,
        key=None,
        sni=(),
        hostname=None,
        clock=None,
        check_interval=RELOAD_CHECK_INTERVAL,
        trust_roots=None,
    ):
        if certificate is None or key is None:
            raise ValueError("ServerTLS needs a certificate and a key path")
        self.policy = policy if policy is not None else TLSPolicy()
        self.hostname = hostname
        self.clock = clock if clock is not None else _SystemClock()
        self.check_interval = check_interval
        self._trust_roots = trust_roots
        self._certificate = certificate
        self._key = key
        self._sni = tuple((h, c, k) for h, c, k in sni)
        self._lastCheck = None
        self._failedSignature = None
        if self.policy.insecure:
            events.emit(
                "tls.insecure_profile", "warn",
                "insecure: TLS 1.0/1.1 and CBC suites are enabled for very old clients",
                profile=self.policy.profile,
            )
        self._install(self._load())

    # -- loading -----------------------------------------------------------

    def _paths(self):
        paths = [self._certificate, self._key]
        for _, cert, key in self._sni:
            paths += [cert, key]
        return paths

    def _load(self):
        signature = _fileSignature(self._paths())
        default = _Identity(self.policy, self._certificate, self._key, self.hostname)
        byName = {}
        for hostname, cert, key in self._sni:
            name = _normaliseName(hostname)
            if not name:
                raise ConfigError(cert, "tls.sni.hostname", "empty host name")
            byName[name] = _Identity(self.policy, cert, key, name)
        return signature, default, byName

    def _install(self, loaded):
        signature, default, byName = loaded
        default.context.set_tlsext_servername_callback(self._selectByName)
        self._signature = signature
        self._default = default
        self._byName = byName
        self._failedSignature = None

    def _identityFor(self, servername):
        if not servername:
            return self._default
        name = _normaliseName(servername)
        identity = self._byName.get(name)
        if identity is None and "." in name:
            identity = self._byName.get("*." + name.split(".", 1)[1])
        return identity or self._default

    def _selectByName(self, connection):
        """
        OpenSSL's SNI callback: switch the connection to the context of the
        name the client asked for.
        """
        identity = self._identityFor(connection.get_servername())
        if identity.context is not connection.get_context():
            connection.set_context(identity.context)

    def reload(self):
        """
        Re-read every certificate and key (SIGHUP).  New connections get the
        new certificates; open ones keep the context they started with.

        @raise ConfigError: the new files are unusable; the old certificates
            stay in service.
        """
        self._install(self._load())
        events.emit("tls.reloaded", certificate=self._certificate)

    def reload_if_changed(self):
        """
        Reload when a file changed since the last load; cheap, and done at
        most once per C{check_interval} of the injected clock.  A failed
        reload (e.g. the new certificate is there but not yet its key) is
        logged once and tried again on the next change.

        @return: True when new certificates were loaded.
        """
        now = self.clock.seconds()
        if self._lastCheck is not None and now - self._lastCheck < self.check_interval:
            return False
        self._lastCheck = now
        signature = _fileSignature(self._paths())
        if signature == self._signature or signature == self._failedSignature:
            return False
        try:
            self.reload()
        except ConfigError as e:
            self._failedSignature = signature
            events.emit(
                "tls.reload_failed", "error",
                f"certificate files changed but cannot be used; keeping the "
                f"old ones: {e}",
                certificate=self._certificate,
            )
            return False
        return True

    # -- Twisted's interfaces ----------------------------------------------

    def serverConnectionForTLS(self, tlsProtocol):
        """
        L{IOpenSSLServerConnectionCreator}: a connection on the current
        default context (SNI may switch it during the handshake).
        """
        self.reload_if_changed()
        return SSL.Connection(self._default.context, None)

    def getContext(self):
        """
        L{IOpenSSLContextFactory}, for APIs that still want a context.
        """
        self.reload_if_changed()
        return self._default.context

    # -- checks --------------------------------------------------------------

    @property
    def certificate_chain(self):
        """
        The default chain in service (leaf first), for checks and tests.
        """
        return list(self._default.chain)

    def warnings(self):
        """
        What an administrator should fix, without stopping the start: the
        default certificate does not cover C{hostname}, an SNI certificate
        does not cover its name, a certificate expired or expires within 30
        days, a chain is incomplete.

        @return: list of L{securepop.tls.CertificateProblem}.
        """
        trustRoots = self._trust_roots
        if trustRoots is None:
            trustRoots = self._trust_roots = load_trust_roots()
        now = datetime.datetime.fromtimestamp(
            self.clock.seconds(), datetime.timezone.utc
        )
        problems = certificate_problems(
            self._default.chain, self.hostname, now, trustRoots
        )
        for name, identity in sorted(self._byName.items()):
            checkName = name[2:] if name.startswith("*.") else name
            if name.startswith("*."):
                checkName = "x." + checkName
            for problem in certificate_problems(
                identity.chain, checkName, now, trustRoots
            ):
                problems.append(
                    CertificateProblem(
                        problem.code, f"SNI {name}: {problem.message}"
                    )
                )
        return problems


# -- per-connection facts -----------------------------------------------------


def _connectionOf(transportOrConnection):
    if isinstance(transportOrConnection, SSL.Connection):
        return transportOrConnection
    getHandle = getattr(transportOrConnection, "getHandle", None)
    if getHandle is None:
        return None
    handle = getHandle()
    return handle if isinstance(handle, SSL.Connection) else None


def tls_facts(transport):
    """
    The TLS facts of one session, for the log and the session state.

    @param transport: a Twisted transport (after C{startTLS}, or a
        C{TLSMemoryBIOProtocol}) or an L{OpenSSL.SSL.Connection}.
    @return: C{dict} with C{protocol} (e.g. C{"TLSv1.3"}), C{cipher},
        C{bits} (secret bits), C{sni} (str or None) and C{group}; or
        L{None} when the transport is not under TLS or the handshake has
        not finished.
    """
    connection = _connectionOf(transport)
    if connection is None:
        return None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None
    servername = connection.get_servername()
    try:
        group = connection.get_group_name()
    except (AttributeError, NotImplementedError):  # pragma: no cover
        group = None
    return {
        "protocol": connection.get_protocol_version_name(),
        "cipher": cipher,
        "bits": connection.get_cipher_bits(),
        "sni": servername.decode("ascii", "replace") if servername else None,
        "group": group,
    }


def _endPointHash(certificate):
    """
    RFC 5929 section 4.1: the certificate's signature hash, with MD5 and
    SHA-1 upgraded to SHA-256.
    """
    try:
        algorithm = certificate.signature_hash_algorithm
    except Exception:  # unsupported or no hash (Ed25519)
        algorithm = None
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        return "sha256"
    return algorithm.name


def channel_binding(transport, kind="tls-server-end-point"):
    """
    TLS channel binding data for SCRAM-*-PLUS (and L{ISASLContext}).

    @param kind: C{"tls-server-end-point"} (RFC 5929: hash of our
        certificate) or C{"tls-exporter"} (RFC 9266, TLS 1.3 only).
    @return: bytes, or L{None} when not available on this transport.
    """
    connection = _connectionOf(transport)
    if connection is None or connection.get_cipher_name() is None:
        return None
    if kind == "tls-server-end-point":
        certificate = connection.get_certificate(as_cryptography=True)
        if certificate is None:
            return None
        der = certificate.public_bytes(Encoding.DER)
        return hashlib.new(_endPointHash(certificate), der).digest()
    if kind == "tls-exporter":
        if connection.get_protocol_version_name() != "TLSv1.3":
            return None  # RFC 9266: needs TLS 1.3 (or EMS, not checkable here)
        return connection.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
    return None
