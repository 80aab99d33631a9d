"""
TLS profiles: which protocol versions, cipher suites and key-exchange groups
a listener offers.

The profiles follow Mozilla's server-side recommendations (version 5.7),
narrowed where the brief asks for it:

  - C{modern}: TLS 1.3 only.
  - C{intermediate} (default): TLS 1.2 + 1.3, ECDHE key exchange with AEAD
    ciphers only (no DHE, so no DH parameters to manage).
  - C{legacy}: adds TLS 1.0/1.1 and CBC suites for very old clients.  It is
    insecure; OpenSSL 3 needs security level 0 for those protocol versions.

A default OpenSSL 3 context still offers CBC-SHA256/384, CCM, ARIA and
Camellia suites and the X448/secp521r1 groups, which C{sslyze
--mozilla_config intermediate} rejects; so every list here is explicit.

C{min_cipher_bits} (Exchange's "Require 128-bit encryption") removes every
suite whose symmetric key is shorter, in every profile.
"""

from dataclasses import dataclass

from OpenSSL import SSL
from cryptography.hazmat.primitives.asymmetric import ec

PROFILE_NAMES = ("modern", "intermediate", "legacy")
DEFAULT_PROFILE = "intermediate"
DEFAULT_MIN_CIPHER_BITS = 128

# Secret (symmetric key) bits of every suite any profile may list.  A static
# table keeps the filtering independent of what a given OpenSSL build can
# report; a unit test checks it against OpenSSL's own numbers.
CIPHER_BITS = {
    # TLS 1.3
    "TLS_AES_128_GCM_SHA256": 128,
    "TLS_AES_256_GCM_SHA384": 256,
    "TLS_CHACHA20_POLY1305_SHA256": 256,
    # TLS 1.2 AEAD with ECDHE
    "ECDHE-ECDSA-AES128-GCM-SHA256": 128,
    "ECDHE-RSA-AES128-GCM-SHA256": 128,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 256,
    "ECDHE-RSA-AES256-GCM-SHA384": 256,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 256,
    "ECDHE-RSA-CHACHA20-POLY1305": 256,
    # legacy only: CBC suites (Mozilla "old"), static RSA, 3DES
    "ECDHE-ECDSA-AES128-SHA256": 128,
    "ECDHE-RSA-AES128-SHA256": 128,
    "ECDHE-ECDSA-AES128-SHA": 128,
    "ECDHE-RSA-AES128-SHA": 128,
    "ECDHE-ECDSA-AES256-SHA384": 256,
    "ECDHE-RSA-AES256-SHA384": 256,
    "ECDHE-ECDSA-AES256-SHA": 256,
    "ECDHE-RSA-AES256-SHA": 256,
    "AES128-GCM-SHA256": 128,
    "AES256-GCM-SHA384": 256,
    "AES128-SHA256": 128,
    "AES256-SHA256": 256,
    "AES128-SHA": 128,
    "AES256-SHA": 256,
    "DES-CBC3-SHA": 112,
}

TLS13_SUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)

_INTERMEDIATE_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

_LEGACY_TLS12 = _INTERMEDIATE_TLS12 + (
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)

# Key-exchange groups: Mozilla's list for every profile.
GROUPS = ("X25519", "P-256", "P-384")

_VERSIONS = {
    "modern": (SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION, ()),
    "intermediate": (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION, _INTERMEDIATE_TLS12),
    "legacy": (SSL.TLS1_VERSION, SSL.TLS1_3_VERSION, _LEGACY_TLS12),
}

VERSION_NAMES = {
    SSL.TLS1_VERSION: "TLSv1",
    SSL.TLS1_1_VERSION: "TLSv1.1",
    SSL.TLS1_2_VERSION: "TLSv1.2",
    SSL.TLS1_3_VERSION: "TLSv1.3",
}


def _setGroups(context, groups):
    """
    Restrict the key-exchange groups.

    pyOpenSSL's public API can set only one group (C{set_tmp_ecdh}); the
    list needs C{SSL_CTX_set1_groups_list}, which the bindings expose as
    C{SSL_CTX_set1_curves_list}.  Without it, fall back to P-256 alone,
    which is still inside Mozilla's list.
    """
    try:
        from OpenSSL._util import lib
        setList = lib.SSL_CTX_set1_curves_list
    except (ImportError, AttributeError):  # pragma: no cover - other bindings
        context.set_tmp_ecdh(ec.SECP256R1())
        return
    if setList(context._context, ":".join(groups).encode("ascii")) != 1:
        raise ValueError(f"OpenSSL refused the groups {groups!r}")


@dataclass(frozen=True)
class TLSPolicy:
    """
    One TLS policy shared by every listener.

    @ivar profile: C{modern}, C{intermediate} or C{legacy} (config key
        C{tls.profile}).
    @ivar min_cipher_bits: suites with fewer secret bits are removed (config
        key C{tls.min_cipher_bits}).
    """

    profile: str = DEFAULT_PROFILE
    min_cipher_bits: int = DEFAULT_MIN_CIPHER_BITS

    def __post_init__(self):
        if self.profile not in PROFILE_NAMES:
            raise ValueError(
                f"tls.profile must be one of {', '.join(PROFILE_NAMES)}, "
                f"not {self.profile!r}"
            )
        if isinstance(self.min_cipher_bits, bool) or not isinstance(
            self.min_cipher_bits, int
        ):
            raise ValueError("tls.min_cipher_bits must be an integer")
        if not self.tls13_suites and not self.tls12_ciphers:
            raise ValueError(
                f"tls.min_cipher_bits = {self.min_cipher_bits} leaves no "
                f"cipher suite in profile {self.profile!r} (the strongest "
                f"have 256 bits)"
            )

    @property
    def insecure(self):
        """
        True for the C{legacy} profile: the start logs a warning.
        """
        return self.profile == "legacy"

    @property
    def minimum_version(self):
        return _VERSIONS[self.profile][0]

    @property
    def maximum_version(self):
        return _VERSIONS[self.profile][1]

    @property
    def versions(self):
        """
        The protocol names this policy accepts, e.g. C{("TLSv1.2", "TLSv1.3")}.
        """
        return tuple(
            name
            for number, name in sorted(VERSION_NAMES.items())
            if self.minimum_version <= number <= self.maximum_version
        )

    @property
    def tls12_ciphers(self):
        """
        OpenSSL names of the TLS 1.2-and-older suites, strongest-first order
        as Mozilla lists them, after the C{min_cipher_bits} filter.
        """
        return tuple(
            name
            for name in _VERSIONS[self.profile][2]
            if CIPHER_BITS[name] >= self.min_cipher_bits
        )

    @property
    def tls13_suites(self):
        """
        TLS 1.3 suite names after the C{min_cipher_bits} filter.
        """
        return tuple(
            name for name in TLS13_SUITES if CIPHER_BITS[name] >= self.min_cipher_bits
        )

    @property
    def groups(self):
        return GROUPS

    def cipher_string(self):
        """
        @return: the OpenSSL cipher string (bytes) for TLS 1.2 and older.
            C{legacy} appends C{@SECLEVEL=0}: OpenSSL 3 refuses TLS 1.0/1.1
            at any higher level.
        """
        names = list(self.tls12_ciphers)
        if not names:
            # modern: TLS 1.2 is never negotiated (maximum and minimum are
            # 1.3), but OpenSSL wants a non-empty list; name one AEAD suite
            # rather than leave OpenSSL's defaults in place.
            names = ["ECDHE-ECDSA-AES256-GCM-SHA384"]
        if self.insecure:
            names.append("@SECLEVEL=0")
        return ":".join(names).encode("ascii")

    def configure(self, context):
        """
        Apply this policy to a fresh L{OpenSSL.SSL.Context}.

        Besides versions, suites and groups: no compression, no
        renegotiation, no session tickets and no session cache (so no
        ticket keys to rotate), server cipher preference, buffers released
        while idle.  (A TLS 1.3 handshake still carries two NewSessionTicket
        messages: OpenSSL sends them unless C{SSL_CTX_set_num_tickets(0)},
        which pyOpenSSL does not expose.  With C{OP_NO_TICKET} they are
        stateful session IDs, and with the cache off none can resume.)
        """
        context.set_min_proto_version(self.minimum_version)
        context.set_max_proto_version(self.maximum_version)
        options = (
            SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_TICKET
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_SINGLE_ECDH_USE
        )
        options |= SSL.OP_NO_RENEGOTIATION
        context.set_options(options)
        context.set_cipher_list(self.cipher_string())
        context.set_tls13_ciphersuites(":".join(self.tls13_suites).encode("ascii"))
        _setGroups(context, self.groups)
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # An idle session (a client between two polls) keeps no 16 KiB read
        # and write buffers: most of its memory (Twisted does the same).
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        return context

    def new_context(self):
        """
        @return: a new L{OpenSSL.SSL.Context} with this policy applied and
            no certificate yet.
        """
        return self.configure(SSL.Context(SSL.TLS_METHOD))
