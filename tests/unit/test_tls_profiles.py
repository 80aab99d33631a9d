"""
TLS profiles: what each one enables, proven by handshakes in memory.
"""

import pytest
from OpenSSL import SSL

from securepop.testing import tls as testing
from securepop.tls.profiles import CIPHER_BITS, GROUPS, TLSPolicy

_CA = testing.TestCA(intermediate=False)
_CERT, _KEY = _CA.issue(["localhost"])
_RSA_KEY = testing.rsa_key()
_RSA_CERT, _ = _CA.issue(["localhost"], publicKey=_RSA_KEY.public_key())


def serverConnection(policy, rsa=False):
    context = policy.new_context()
    if rsa:
        context.use_certificate(_RSA_CERT)
        context.use_privatekey(_RSA_KEY)
    else:
        context.use_certificate(_CERT)
        context.use_privatekey(_KEY)
    return SSL.Connection(context, None)


def connect(policy, rsa=False, **client):
    return testing.handshake(
        serverConnection(policy, rsa), testing.client_context(**client)
    )


def offeredCiphers(policy):
    """
    Every suite name the server would accept, from OpenSSL itself.
    """
    return set(serverConnection(policy).get_cipher_list())


# -- configuration ---------------------------------------------------------


def test_default_is_intermediate_128():
    policy = TLSPolicy()
    assert (policy.profile, policy.min_cipher_bits) == ("intermediate", 128)
    assert policy.versions == ("TLSv1.2", "TLSv1.3")
    assert not policy.insecure


def test_modern_is_tls13_only():
    assert TLSPolicy("modern").versions == ("TLSv1.3",)


def test_legacy_adds_tls10_11_and_says_insecure():
    policy = TLSPolicy("legacy")
    assert policy.versions == ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
    assert policy.insecure
    assert policy.cipher_string().endswith(b"@SECLEVEL=0")


def test_intermediate_suites_are_ecdhe_aead_only():
    names = offeredCiphers(TLSPolicy())
    tls12 = names - {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                     "TLS_CHACHA20_POLY1305_SHA256"}
    assert tls12 == {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    }
    for name in names:
        assert "CBC" not in name and "CCM" not in name and "ARIA" not in name
        assert "CAMELLIA" not in name and not name.endswith("-SHA")


def test_default_openssl_context_offers_more():
    """
    The negative case: an untouched context offers CBC/CCM suites, which is
    why every profile lists its suites explicitly.
    """
    plain = set(SSL.Connection(SSL.Context(SSL.TLS_METHOD), None).get_cipher_list())
    assert plain - offeredCiphers(TLSPolicy())


def test_min_cipher_bits_256_removes_aes128():
    names = offeredCiphers(TLSPolicy(min_cipher_bits=256))
    assert not [n for n in names if "AES128" in n or "AES_128" in n]
    assert "ECDHE-ECDSA-AES256-GCM-SHA384" in names
    assert "TLS_AES_256_GCM_SHA384" in names


def test_min_cipher_bits_removes_3des_from_legacy():
    assert "DES-CBC3-SHA" not in TLSPolicy("legacy").tls12_ciphers
    assert "DES-CBC3-SHA" in TLSPolicy("legacy", min_cipher_bits=112).tls12_ciphers


@pytest.mark.parametrize(
    "kwargs",
    [
        {"profile": "paranoid"},
        {"profile": ""},
        {"min_cipher_bits": 257},
        {"min_cipher_bits": "128"},
        {"min_cipher_bits": True},
        {"min_cipher_bits": 1.5},
    ],
)
def test_bad_settings_refused(kwargs):
    with pytest.raises(ValueError, match="tls\\."):
        TLSPolicy(**kwargs)


def test_cipher_bits_table_agrees_with_openssl():
    """
    The static table must say what OpenSSL says for every suite it knows.
    """
    checked = 0
    for name, bits in CIPHER_BITS.items():
        if name.startswith("TLS_"):
            continue
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        try:
            context.set_cipher_list((name + ":@SECLEVEL=0").encode())
        except SSL.Error:
            continue  # this OpenSSL no longer has it (3DES in OpenSSL 4)
        result = testing.handshake(
            serverConnection(TLSPolicy("legacy", 0), rsa="RSA" in name or "ECDHE" not in name),
            testing.client_context(max_version=SSL.TLS1_2_VERSION, ciphers=name,
                                   seclevel0=True),
        )
        assert result.ok, (name, result.error)
        assert result.server.get_cipher_name() == name
        assert result.server.get_cipher_bits() == bits, name
        checked += 1
    assert checked >= 15


# -- handshakes ------------------------------------------------------------


def test_intermediate_negotiates_tls13_with_x25519():
    result = connect(TLSPolicy())
    assert result.ok, result.error
    assert result.server.get_protocol_version_name() == "TLSv1.3"
    assert result.server.get_group_name().lower() == "x25519"


@pytest.mark.parametrize("group", ["X448", "secp521r1", "ffdhe2048"])
def test_groups_outside_mozilla_list_refused(group):
    from OpenSSL._util import lib

    clientContext = testing.client_context()
    lib.SSL_CTX_set1_curves_list(clientContext._context, group.encode())
    result = testing.handshake(serverConnection(TLSPolicy()), clientContext)
    assert not result.ok


@pytest.mark.parametrize("group", ["P-256", "P-384"])
def test_groups_inside_mozilla_list_accepted(group):
    from OpenSSL._util import lib

    assert group in GROUPS
    clientContext = testing.client_context()
    lib.SSL_CTX_set1_curves_list(clientContext._context, group.encode())
    result = testing.handshake(serverConnection(TLSPolicy()), clientContext)
    assert result.ok, result.error


def test_intermediate_accepts_tls12_aead():
    result = connect(
        TLSPolicy(), max_version=SSL.TLS1_2_VERSION,
        ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
    )
    assert result.ok, result.error
    assert result.server.get_protocol_version_name() == "TLSv1.2"


@pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION])
def test_old_versions_refused_by_intermediate(version):
    result = connect(TLSPolicy(), min_version=version, max_version=version,
                     seclevel0=True, ciphers="ALL")
    assert not result.ok


@pytest.mark.parametrize("version,name", [(SSL.TLS1_VERSION, "TLSv1"),
                                          (SSL.TLS1_1_VERSION, "TLSv1.1")])
def test_old_versions_accepted_by_legacy(version, name):
    result = connect(TLSPolicy("legacy"), min_version=version, max_version=version,
                     seclevel0=True, ciphers="ALL")
    assert result.ok, result.error
    assert result.server.get_protocol_version_name() == name


def test_tls12_refused_by_modern():
    result = connect(TLSPolicy("modern"), max_version=SSL.TLS1_2_VERSION)
    assert not result.ok
    assert connect(TLSPolicy("modern")).ok


@pytest.mark.parametrize(
    "ciphers",
    [
        "ECDHE-ECDSA-AES128-SHA",  # CBC
        "ECDHE-ECDSA-AES128-SHA256",  # CBC
        "ECDHE-ECDSA-AES128-CCM",  # CCM
        "ECDHE-ECDSA-NULL-SHA",  # no encryption
        "AECDH-AES128-SHA",  # anonymous
        "ECDHE-ECDSA-CAMELLIA128-SHA256",
    ],
)
def test_weak_or_non_aead_suites_refused_by_intermediate(ciphers):
    result = connect(TLSPolicy(), max_version=SSL.TLS1_2_VERSION, ciphers=ciphers,
                     seclevel0=True)
    assert not result.ok


@pytest.mark.parametrize("ciphers", ["ECDHE-ECDSA-NULL-SHA", "AECDH-AES128-SHA"])
def test_null_and_anonymous_refused_even_by_legacy(ciphers):
    result = connect(TLSPolicy("legacy"), max_version=SSL.TLS1_2_VERSION,
                     ciphers=ciphers, seclevel0=True)
    assert not result.ok


@pytest.mark.parametrize("ciphers", ["RC4-SHA", "EXP-RC4-MD5", "DES-CBC-SHA"])
def test_rc4_export_des_cannot_even_be_offered(ciphers):
    """
    OpenSSL 3/4 has dropped these: no client built on it can ask for them.
    """
    with pytest.raises(SSL.Error):
        testing.client_context(ciphers=ciphers, seclevel0=True)


def test_legacy_accepts_cbc():
    result = connect(TLSPolicy("legacy"), max_version=SSL.TLS1_2_VERSION,
                     ciphers="ECDHE-ECDSA-AES128-SHA", seclevel0=True)
    assert result.ok, result.error


def test_min_cipher_bits_refuses_aes128_client():
    only128 = dict(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                   tls13_suites="TLS_AES_128_GCM_SHA256")
    assert connect(TLSPolicy(), **only128).ok
    result = connect(TLSPolicy(min_cipher_bits=256), **only128)
    assert not result.ok


def test_min_cipher_bits_refuses_aes128_tls12_client():
    only128 = dict(max_version=SSL.TLS1_2_VERSION,
                   ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert connect(TLSPolicy(), **only128).ok
    assert not connect(TLSPolicy(min_cipher_bits=256), **only128).ok


def test_rsa_certificate_uses_ecdhe_rsa():
    result = connect(TLSPolicy(), rsa=True, max_version=SSL.TLS1_2_VERSION)
    assert result.ok, result.error
    assert result.server.get_cipher_name().startswith("ECDHE-RSA-")


def test_no_ticket_no_compression_no_renegotiation_options():
    connection = serverConnection(TLSPolicy())
    options = connection.set_options(0)
    assert options & SSL.OP_NO_TICKET
    assert options & SSL.OP_NO_COMPRESSION
    assert options & SSL.OP_NO_RENEGOTIATION


def test_idle_connections_release_their_buffers():
    context = TLSPolicy().new_context()
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS
    assert not SSL.Context(SSL.TLS_METHOD).set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # not OpenSSL's default


def _resumed(makeServer, version):
    """
    Handshake twice, the second time offering the first session.
    """
    from OpenSSL._util import lib

    context = testing.client_context(max_version=version)
    first = testing.handshake(makeServer(), context)
    assert first.ok, first.error
    # TLS 1.3 tickets arrive after the handshake: let the client read them
    try:
        first.client.recv(1)
    except SSL.Error:
        pass
    session = first.client.get_session()
    client = SSL.Connection(context, None)
    client.set_session(session)
    second = testing.handshake(makeServer(), context, client=client)
    assert second.ok, second.error
    return bool(lib.SSL_session_reused(second.server._ssl))


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_sessions_are_not_resumed(version):
    """
    No tickets and no server cache: a client presenting its old session
    gets a full handshake.  The negative case, a default context (tickets
    on), resumes: so the check can fail.
    """
    assert _resumed(lambda: serverConnection(TLSPolicy()), version) is False

    plain = SSL.Context(SSL.TLS_METHOD)
    plain.use_certificate(_CERT)
    plain.use_privatekey(_KEY)
    assert _resumed(lambda: SSL.Connection(plain, None), version) is True


def _renegotiate(serverContext):
    """
    A TLS 1.2 client asks to renegotiate.

    @return: C{(error, renegotiation_still_pending)}.
    """
    serverContext.use_certificate(_CERT)
    serverContext.use_privatekey(_KEY)
    result = testing.handshake(
        SSL.Connection(serverContext, None),
        testing.client_context(max_version=SSL.TLS1_2_VERSION),
    )
    assert result.ok, result.error
    client, server = result.client, result.server
    assert client.renegotiate()
    error = None
    for _ in range(6):
        for side, other in ((client, server), (server, client)):
            try:
                if side is client:
                    side.do_handshake()
                else:
                    side.recv(100)
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                error = error or e
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
    return error, client.renegotiate_pending()


def test_client_renegotiation_refused():
    error, pending = _renegotiate(TLSPolicy().new_context())
    assert "no renegotiation" in str(error)
    assert pending


def test_client_renegotiation_check_can_fail():
    allowing = SSL.Context(SSL.TLS_METHOD)
    allowing.set_options(1 << 8)  # SSL_OP_ALLOW_CLIENT_RENEGOTIATION
    error, pending = _renegotiate(allowing)
    assert error is None and not pending
