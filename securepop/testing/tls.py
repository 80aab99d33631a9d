"""
Test helpers for TLS (as C{twisted.internet.testing}): a throwaway CA,
certificates it issues, files written with the right modes, a TLS
handshake between two pyOpenSSL connections entirely in memory, and the
chain a L{securepop.tls.ServerTLS} serves for a name.

For tests only; production code never imports this module.
"""

import datetime
import os

from OpenSSL import SSL, crypto
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securepop.tls.issue import general_names, write_certificates, write_private_key


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


class TestCA:
    """
    A root CA and, optionally, an intermediate below it.

    @ivar root: the root certificate.
    @ivar intermediate: the intermediate certificate (issues leaves) or
        L{None} when the root issues them directly.
    """

    def __init__(self, name="securepop test CA", intermediate=True):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca_cert(
            name, self.root_key.public_key(), name, self.root_key, path_length=1
        )
        self.intermediate = None
        self.issuer_key, self.issuer = self.root_key, self.root
        if intermediate:
            self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
            self.intermediate = self._ca_cert(
                name + " intermediate",
                self.intermediate_key.public_key(),
                name,
                self.root_key,
                path_length=0,
            )
            self.issuer_key, self.issuer = self.intermediate_key, self.intermediate

    @staticmethod
    def _ca_cert(subject, publicKey, issuer, signingKey, path_length):
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=path_length), critical=True
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False
            )
            .sign(signingKey, hashes.SHA256())
        )

    @property
    def chain(self):
        """
        What a server sends after its leaf: the intermediate (if any).
        """
        return [self.intermediate] if self.intermediate is not None else []

    def issue(
        self,
        names=("localhost",),
        publicKey=None,
        not_before=None,
        not_after=None,
        days=90,
    ):
        """
        Issue a leaf for C{names} (DNS names or IP addresses).

        @param publicKey: the key to certify; a new P-256 key when L{None},
            then returned too.
        @return: C{(certificate, private_key_or_None)}.
        """
        privateKey = None
        if publicKey is None:
            privateKey = ec.generate_private_key(ec.SECP256R1())
            publicKey = privateKey.public_key()
        now = _now()
        not_before = not_before or now - datetime.timedelta(hours=1)
        not_after = not_after or now + datetime.timedelta(days=days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
            )
            .issuer_name(self.issuer.subject)
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(general_names(list(names))),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
            )
            .sign(self.issuer_key, hashes.SHA256())
        )
        return cert, privateKey

    def sign_csr(self, csr, days=90):
        """
        Act as the external CA: certify the CSR's key for its SANs.
        """
        try:
            sans = csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            names = [f"DNS:{n}" for n in sans.get_values_for_type(x509.DNSName)]
            names += [f"IP:{a}" for a in sans.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = [
                csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            ]
        cert, _ = self.issue(names, publicKey=csr.public_key(), days=days)
        return cert

    def write_root(self, path):
        write_certificates(path, [self.root])
        return path


def write_identity(directory, name, chain, privateKey, key_mode=0o600):
    """
    Write C{name}.pem (chain) and C{name}.key (key, C{key_mode}).

    @return: C{(certificate_path, key_path)}.
    """
    certPath = os.path.join(directory, f"{name}.pem")
    keyPath = os.path.join(directory, f"{name}.key")
    write_certificates(certPath, chain)
    write_private_key(keyPath, privateKey)
    os.chmod(keyPath, key_mode)
    return certPath, keyPath


def rsa_key(bits=2048):
    return rsa.generate_private_key(65537, bits)


def client_context(
    min_version=None,
    max_version=None,
    ciphers=None,
    tls13_suites=None,
    ca=None,
    seclevel0=False,
):
    """
    A client context for handshake tests (no verification unless C{ca}).
    """
    context = SSL.Context(SSL.TLS_METHOD)
    if min_version is not None:
        context.set_min_proto_version(min_version)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    cipherString = ciphers or "DEFAULT"
    if seclevel0:
        cipherString += ":@SECLEVEL=0"
    context.set_cipher_list(cipherString.encode("ascii"))
    if tls13_suites is not None:
        context.set_tls13_ciphersuites(tls13_suites.encode("ascii"))
    if ca is not None:
        store = context.get_cert_store()
        store.add_cert(crypto.X509.from_cryptography(ca))
        context.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    return context


class HandshakeResult:
    def __init__(self, client, server, error):
        self.client, self.server, self.error = client, server, error

    @property
    def ok(self):
        return self.error is None

    def peer_chain(self):
        """
        The chain the server sent, as cryptography certificates.
        """
        return self.client.get_peer_cert_chain(as_cryptography=True)


def handshake(
    server_connection, client_context_, servername=None, rounds=20, client=None
):
    """
    Run a TLS handshake between C{server_connection} (e.g. from
    C{ServerTLS.serverConnectionForTLS(None)}) and a new client connection,
    moving bytes through memory BIOs.

    @param client: a client connection made by the caller (e.g. with a
        session set), instead of a new one on C{client_context_}.
    @return: L{HandshakeResult}; C{error} is the first L{SSL.Error} raised
        on either side, or L{None} on success.
    """
    if client is None:
        client = SSL.Connection(client_context_, None)
    client.set_connect_state()
    if servername is not None:
        client.set_tlsext_host_name(servername.encode("ascii"))
    server = server_connection
    server.set_accept_state()
    done = {id(client): False, id(server): False}
    error = None
    for _ in range(rounds):
        for side, other in ((client, server), (server, client)):
            if not done[id(side)]:
                try:
                    side.do_handshake()
                    done[id(side)] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    error = error or e
            try:
                data = side.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                other.bio_write(data)
        if error is not None or all(done.values()):
            break
    if error is None and not all(done.values()):
        error = SSL.Error("handshake did not finish")
    return HandshakeResult(client, server, error)


def chain_for(server_tls, servername):
    """
    @return: the chain a client asking C{server_tls} for C{servername}
        (an SNI name, or L{None}) gets, leaf first.
    """
    return list(server_tls._identityFor(servername).chain)
