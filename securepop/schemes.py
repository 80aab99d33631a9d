"""
Password schemes and the secrets derived from a password, as Dovecot's
C{lib-auth/password-scheme*}: shared by the SASL mechanisms (what they
verify against), the users file (what it stores) and the command line.

Two kinds live here:

 - the argon2id hash (L{HashParameters}, L{hasher_for}) that verifies
   USER/PASS, PLAIN and LOGIN, and what one verification costs
   (L{measure_verification});
 - one secret per challenge-response mechanism: the NT hash (NTLM), the
   SCRAM-SHA-256 stored keys and their one text form, and the cleartext
   secret of APOP/CRAM-MD5.  The NT hash and the cleartext secret are
   password-equivalent: protect what stores them as the passwords.

This module knows neither the mechanisms nor the credential sources.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import time
import unicodedata
from collections import namedtuple
from dataclasses import dataclass

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from nacl.exceptions import CryptoError
from nacl.pwhash import argon2id as sodium_argon2id

from securepop._md4 import md4
from securepop.auth.records import ScramSecret

# -- argon2id ------------------------------------------------------------------------


@dataclass(frozen=True)
class HashParameters:
    """
    The argon2id cost of new hashes: memory in KiB, passes, lanes.

    The defaults are OWASP's recommended minimum for argon2id (19 MiB, two
    passes, one lane): about 20 ms of one core per verification, where
    argon2-cffi's own defaults (64 MiB, t=3, p=4) cost 5-9 times as much for
    every cold POP3 login.
    """

    memory_kib: int = 19456
    time_cost: int = 2
    parallelism: int = 1

    @classmethod
    def from_settings(cls, file_settings):
        """From C{[auth.file]} (L{securepop.config.FileSourceSettings})."""
        return cls(file_settings.argon2_memory_kib, file_settings.argon2_time_cost,
                   file_settings.argon2_parallelism)

    def hasher(self) -> PasswordHasher:
        return PasswordHasher(time_cost=self.time_cost, memory_cost=self.memory_kib,
                              parallelism=self.parallelism)

    def describe(self) -> str:
        return f"argon2id m={self.memory_kib} KiB, t={self.time_cost}, p={self.parallelism}"

    def below_owasp_minimum(self) -> bool:
        """Weaker than every argon2id configuration OWASP recommends."""
        return not any(self.memory_kib >= m and self.time_cost >= t
                       for m, t in OWASP_ARGON2ID)


#: OWASP Password Storage Cheat Sheet: argon2id (memory KiB, passes), p = 1;
#: all equally strong.
OWASP_ARGON2ID = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))

DEFAULT_PARAMETERS = HashParameters()

#: What is hashed where no real password is at hand (timing, measuring).
DUMMY_PASSWORD = "securepop-no-such-user"

#: The hasher for new hashes when no parameters are given (the defaults).
_hasher = DEFAULT_PARAMETERS.hasher()
_hashers = {}


def hasher_for(params=None) -> PasswordHasher:
    """The (shared, thread-safe) hasher for C{params}; the default one for None."""
    if params is None:
        return _hasher
    hasher = _hashers.get(params)
    if hasher is None:
        hasher = _hashers.setdefault(params, params.hasher())
    return hasher


#: The hashes libsodium verifies: argon2id version 1.3, one lane (libsodium
#: computes lanes one after the other; argon2-cffi runs p > 1 in threads).
_SODIUM_PREFIX = "$argon2id$v=19$"
#: libsodium's crypto_pwhash_STRBYTES, its terminating NUL excluded.
_SODIUM_MAX_LENGTH = 127


def verify_hash(hashed, password, hasher=None) -> bool:
    """
    Whether C{password} matches the argon2 hash C{hashed}; never raises for
    a wrong password or an unreadable hash.

    A one-lane argon2id hash is verified by libsodium (PyNaCl), the rest by
    argon2-cffi (C{hasher}).  Why two libraries: on x86-64 libsodium picks
    its AVX2/AVX-512 core at run time and computes a verification in half
    the time of argon2-cffi's SSE2 build; the page faults of the fresh
    mapping it takes each time give part back (bench/RESULTS.md); it is
    also what Dovecot's C{ARGON2ID} scheme calls.  Both compare in
    constant time.  Blocking: a hashing thread, never the reactor.
    """
    if _sodium_can_verify(hashed):
        try:
            return sodium_argon2id.verify(hashed.encode("ascii"), _as_bytes(password))
        except (CryptoError, ValueError):     # a mismatch, or a string it cannot use
            return False
    try:
        return (hasher or _hasher).verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _sodium_can_verify(hashed):
    if not (hashed.startswith(_SODIUM_PREFIX) and len(hashed) <= _SODIUM_MAX_LENGTH
            and hashed.isascii()):
        return False
    params = hashed[len(_SODIUM_PREFIX):].split("$", 1)[0]
    return params.endswith(",p=1")


def _as_bytes(password):
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


class VerificationCost(namedtuple("VerificationCost", "wall cpu")):
    """Seconds one verification took: elapsed, and CPU of every thread."""


def measure_verification(params, rounds=3, clock=time.perf_counter,
                         cpu_clock=time.process_time):
    """
    What each cold login costs this machine with C{params}: the fastest of
    C{rounds} verifications (after one hash), as a L{VerificationCost}.
    Blocking: for the command line, never the reactor thread.
    """
    hasher = hasher_for(params)
    hashed = hasher.hash(DUMMY_PASSWORD)
    best = None
    for _ in range(max(1, rounds)):
        start, start_cpu = clock(), cpu_clock()
        verify_hash(hashed, DUMMY_PASSWORD, hasher)
        cost = VerificationCost(clock() - start, cpu_clock() - start_cpu)
        best = cost if best is None or cost.wall < best.wall else best
    return best


def describe_hash(hashed):
    """C{m=...,t=...,p=...} of a stored argon2 hash, for the log; C{?} if unreadable."""
    try:
        p = extract_parameters(hashed)
    except InvalidHashError:
        return "?"
    return f"m={p.memory_cost},t={p.time_cost},p={p.parallelism}"


# -- secrets for challenge-response mechanisms ---------------------------------------

#: RFC 7677 asks for at least 4096; the cost is paid by the client.
DEFAULT_SCRAM_ITERATIONS = 4096
#: Above this a stored secret is refused: a hostile users file or directory
#: must not make every client spin.
MAX_SCRAM_ITERATIONS = 10_000_000
SCRAM_SALT_BYTES = 16


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
    @return: C{iterations,salt,StoredKey,ServerKey} (base64), the text form
        of a L{ScramSecret}: no C{:} in it, so it fits one users-file field.
    """
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return ",".join([str(secret.iterations), b64(secret.salt),
                     b64(secret.stored_key), b64(secret.server_key)])


def decode_scram_secret(value):
    """
    Parse what L{encode_scram_secret} wrote.

    @raise ValueError: naming what is wrong (never the value).
    """
    parts = value.split(",")
    if len(parts) != 4:
        raise ValueError("malformed SCRAM secret: expected 4 fields")
    iterations, salt, stored, server = parts
    if not iterations.isdigit() or not 1 <= int(iterations) <= MAX_SCRAM_ITERATIONS:
        raise ValueError("bad SCRAM iteration count")
    salt, stored, server = (base64.b64decode(x, validate=True) for x in (salt, stored, server))
    if not salt or len(stored) != 32 or len(server) != 32:
        raise ValueError("bad SCRAM key length")
    return ScramSecret(salt, int(iterations), stored, server)
