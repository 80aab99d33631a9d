"""
C{securepop cert request} and C{securepop cert install}: a key and a
certificate signing request for a CA, then the CA's answer checked against
that pending key and installed.

C{securepop cert} reads this one module: it also offers the names of
L{securepop.tls.certificates} and L{securepop.tls.selfsigned} the command
uses.
"""

import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from securepop.errors import ConfigError
from securepop.tls.certificates import default_paths, inspect  # noqa: F401 (cert show)
from securepop.tls.checks import (
    certificate_problems,
    covers_hostname,
    is_self_issued,
    key_matches,
    load_chain,
    load_private_key,
    load_trust_roots,
    signed_by,
    subject_alt_names,
)
from securepop.tls.selfsigned import (  # noqa: F401 (cert selfsigned)
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    SELFSIGNED_DAYS,
    build_name,
    general_names,
    generate_private_key,
    make_selfsigned,
    unique,
    write_certificates,
    write_private_key,
)


def pending_paths(data_dir):
    """
    @return: C{(key, csr)} written by C{cert request} and read by
        C{cert install}.
    """
    base = os.path.join(data_dir, "tls")
    return os.path.join(base, "pending-key.pem"), os.path.join(base, "request.csr")


def build_csr(privateKey, common_name, sans=(), **attributes):
    """
    A certificate signing request for an external or enterprise CA.

    The common name is always among the subjectAltNames: clients check only
    those.
    """
    names = general_names(unique([common_name, *sans]))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(build_name(common_name, **attributes))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    return builder.sign(privateKey, hashes.SHA256())


def assemble_chain(cert_file, chain_file=None):
    """
    Read the CA's answer (leaf, maybe with intermediates) and an optional
    chain file; put the certificate matching nobody's issuer first, drop
    duplicates, and order the rest issuer after subject.

    @return: list of certificates, leaf first.
    """
    certs = load_chain(cert_file, "CERTFILE")
    if chain_file:
        certs += load_chain(chain_file, "--chain")
    unique = []
    for c in certs:
        if c not in unique:
            unique.append(c)
    leaf, rest = unique[0], unique[1:]
    ordered = [leaf]
    while rest:
        parent = next((c for c in rest if signed_by(ordered[-1], c)), None)
        if parent is None or is_self_issued(ordered[-1]):
            break
        ordered.append(parent)
        rest.remove(parent)
    # certificates that are not part of the path are dropped: a server sends
    # only what a client needs.
    return ordered


def install(
    cert_file,
    chain_file,
    pending_key_path,
    hostname,
    cert_dest,
    key_dest,
    trust_roots=None,
    now=None,
):
    """
    Install a CA-signed certificate for the pending key.

    Checks that the certificate is for the pending key and covers
    C{hostname}; writes the assembled chain to C{cert_dest} and the key to
    C{key_dest} (0600, key first, so a server that reloads on file changes
    never pairs a new certificate with an old key for long).

    @return: list of remaining (non-fatal) L{CertificateProblem}s, e.g. an
        incomplete chain or near expiry.
    @raise ConfigError: wrong key, wrong name, expired, unreadable.
    """
    chain = assemble_chain(cert_file, chain_file)
    privateKey = load_private_key(pending_key_path, "pending key")
    leaf = chain[0]
    if not key_matches(leaf, privateKey):
        raise ConfigError(
            cert_file,
            "CERTFILE",
            f"the certificate ({leaf.subject.rfc4514_string()}) is not for the "
            f"pending key {pending_key_path}; was it issued for another request?",
        )
    if hostname and not covers_hostname(leaf, hostname):
        names = ", ".join(subject_alt_names(leaf)) or "no subjectAltName"
        raise ConfigError(
            cert_file,
            "CERTFILE",
            f"the certificate does not cover the host name {hostname!r} "
            f"(it has {names})",
        )
    if trust_roots is None:
        trust_roots = load_trust_roots()
    problems = certificate_problems(chain, None, now, trust_roots)
    fatal = [p for p in problems if p.code in ("expired", "not-yet-valid")]
    if fatal:
        raise ConfigError(cert_file, "CERTFILE", fatal[0].message)
    write_private_key(key_dest, privateKey)
    write_certificates(cert_dest, chain)
    if os.path.abspath(pending_key_path) != os.path.abspath(key_dest):
        os.unlink(pending_key_path)
    return problems
