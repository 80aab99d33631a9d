"""
Secrets derived from a password for the users file, one per mechanism.

Each derivation is what a challenge-response mechanism verifies against, so
the users file stores only what the enabled mechanisms need.  The NT hash and
the cleartext secret are password-equivalent for NTLM and APOP/CRAM-MD5
respectively: protect the users file as you would the passwords.
"""

import base64
import binascii
import hashlib
import hmac
import os
import stringprep
import unicodedata

from securepop.auth.records import ScramSecret
from securepop.sasl._md4 import md4

#: RFC 7677 asks for at least 4096; the cost is paid by the client.
DEFAULT_SCRAM_ITERATIONS = 4096
#: Above this a stored secret is refused: a hostile users file or directory
#: must not make every client spin.
MAX_SCRAM_ITERATIONS = 10_000_000
SCRAM_SALT_BYTES = 16
_SCRAM_PREFIX = "SCRAM-SHA-256$"


def saslprep(text):
    """
    Prepare a password or user name with SASLprep (RFC 4013), as SCRAM
    requires (RFC 5802 section 2.2), so the same password typed on another
    system derives the same keys.

    @type text: L{str}
    @raise ValueError: for prohibited characters or bad bidirectional text.
    """
    mapped = []
    for char in text:
        if stringprep.in_table_c12(char):  # non-ASCII space -> SPACE
            mapped.append(" ")
        elif not stringprep.in_table_b1(char):  # commonly mapped to nothing
            mapped.append(char)
    prepared = unicodedata.normalize("NFKC", "".join(mapped))
    if not prepared:
        return prepared
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22,
        stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
        stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9, stringprep.in_table_a1,
    )
    for char in prepared:
        if any(table(char) for table in prohibited):
            raise ValueError("prohibited character in SASLprep input")
    has_randal = any(stringprep.in_table_d1(c) for c in prepared)
    if has_randal:
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise ValueError("mixed bidirectional text in SASLprep input")
        if not (stringprep.in_table_d1(prepared[0])
                and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("bad bidirectional text in SASLprep input")
    return prepared


def _as_text(password):
    if isinstance(password, bytes):
        return password.decode("utf-8")
    return password


def nt_hash(password):
    """
    @param password: L{str} or UTF-8 L{bytes}.
    @return: MD4(UTF-16LE(password)), the 16 bytes NTLM verifies against.
    """
    return md4(_as_text(password).encode("utf-16le"))


def cleartext_secret(password):
    """
    The shared secret of APOP and CRAM-MD5: the password itself (UTF-8).
    Both protocols need the server to hold it; that is why they are off by
    default.
    """
    return _as_text(password).encode("utf-8")


def scram_secret(password, salt=None, iterations=DEFAULT_SCRAM_ITERATIONS):
    """
    Derive SCRAM-SHA-256 stored keys (RFC 5802 section 3); the password is
    not kept.

    @param salt: L{bytes}; a fresh random one by default.
    @rtype: L{ScramSecret}
    """
    if not 1 <= iterations <= MAX_SCRAM_ITERATIONS:
        raise ValueError(f"SCRAM iteration count out of range: {iterations}")
    if salt is None:
        salt = os.urandom(SCRAM_SALT_BYTES)
    if not salt:
        raise ValueError("SCRAM salt must not be empty")
    prepared = saslprep(_as_text(password)).encode("utf-8")
    salted = hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return ScramSecret(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=hmac.new(salted, b"Server Key", hashlib.sha256).digest(),
    )


def encode_scram_secret(secret):
    """
    @return: C{SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>}
        (base64), the form PostgreSQL uses, for one field of the users file.
    """
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return (f"{_SCRAM_PREFIX}{secret.iterations}:{b64(secret.salt)}"
            f"${b64(secret.stored_key)}:{b64(secret.server_key)}")


def decode_scram_secret(text):
    """
    Parse what L{encode_scram_secret} wrote.

    @raise ValueError: naming what is wrong (never the value).
    """
    if not text.startswith(_SCRAM_PREFIX):
        raise ValueError("SCRAM secret does not start with SCRAM-SHA-256$")
    try:
        params, keys = text[len(_SCRAM_PREFIX):].split("$")
        iterations_text, salt_b64 = params.split(":")
        stored_b64, server_b64 = keys.split(":")
        if not iterations_text.isdigit():
            raise ValueError("bad iteration count")
        iterations = int(iterations_text)
        salt, stored_key, server_key = (
            base64.b64decode(part, validate=True)
            for part in (salt_b64, stored_b64, server_b64))
    except (ValueError, binascii.Error) as e:
        raise ValueError(f"malformed SCRAM secret: {e}") from None
    if not 1 <= iterations <= MAX_SCRAM_ITERATIONS:
        raise ValueError("SCRAM iteration count out of range")
    if not salt or len(stored_key) != 32 or len(server_key) != 32:
        raise ValueError("SCRAM secret has a wrong salt or key length")
    return ScramSecret(salt, iterations, stored_key, server_key)
