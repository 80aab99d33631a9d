"""APOP (RFC 1939 section 7)."""

import re

import pytest
from zope.interface.verify import verifyObject

from securepop.interfaces import CLEARTEXT_SECRET, ISecretCredentials
from securepop.sasl.apop import APOPCredentials, new_timestamp

RFC_TIMESTAMP = b"<1896.697170952@dbc.mtview.ca.us>"
RFC_DIGEST = b"c4c9334bac560ecc979e58001b3e22fb"


def test_rfc1939_example():
    creds = APOPCredentials("mrose", RFC_TIMESTAMP, RFC_DIGEST)
    assert verifyObject(ISecretCredentials, creds)
    assert creds.kind == CLEARTEXT_SECRET
    assert creds.checkSecret(b"tanstaaf") is True


def test_digest_as_str_and_upper_case():
    creds = APOPCredentials("mrose", RFC_TIMESTAMP, RFC_DIGEST.decode().upper())
    assert creds.checkSecret(b"tanstaaf") is True


@pytest.mark.parametrize("secret", [b"tanstaaF", b"", "tanstaaf", None])
def test_wrong_secret(secret):
    assert APOPCredentials("mrose", RFC_TIMESTAMP,
                           RFC_DIGEST).checkSecret(secret) is False


def test_other_timestamp_fails():
    creds = APOPCredentials("mrose", b"<1896.697170953@dbc.mtview.ca.us>",
                            RFC_DIGEST)
    assert creds.checkSecret(b"tanstaaf") is False


@pytest.mark.parametrize("digest", [b"", b"c4c9", RFC_DIGEST + b"00",
                                    b"z" * 32, "\u00e9" * 32])
def test_malformed_digest_fails(digest):
    assert APOPCredentials("mrose", RFC_TIMESTAMP,
                           digest).checkSecret(b"tanstaaf") is False


def test_timestamps_are_fresh_and_well_formed():
    seen = {new_timestamp("mail.example.test") for _ in range(100)}
    assert len(seen) == 100
    for stamp in seen:
        assert re.match(rb"^<[0-9a-f]{16}\.[0-9a-f]{16}@mail\.example\.test>$",
                        stamp)


@pytest.mark.parametrize("hostname", ["", "a b", "x>y", "host\r\n+OK"])
def test_timestamp_refuses_bad_host_names(hostname):
    with pytest.raises(ValueError):
        new_timestamp(hostname)


def test_repr_hides_the_digest():
    assert "c4c9" not in repr(APOPCredentials("mrose", RFC_TIMESTAMP,
                                              RFC_DIGEST))
