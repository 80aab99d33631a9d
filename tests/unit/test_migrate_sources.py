"""
Tests for L{securepop.migrate.sources}: Dovecot's dovecot-uidlist (P and O
fields, pop3_uidl_format for the rest), the files it does not name.
"""

import os

import pytest

from securepop.migrate.pop3 import SourceError
from securepop.migrate.sources import (
    DovecotMaildirSource,
    dovecot_uidl,
    parse_dovecot_uidlist,
)

UIDLIST_V3 = b"""3 V1700000000 N5 G3085f01b7f11094c501100008c4a11c1
1 G3085f01b7f11094c501100008c4a11c1 :1700000001.M1P1.old,S=10,W=12
2 P0001.legacy O2 :1700000002.M2P2.old
3 POLD-3 O1 W30 :1700000003.M3P3.old,S=28
4 :1700000004.M4P4.old
"""


def test_dovecot_uidl_default_format():
    assert dovecot_uidl("%08Xu%08Xv", 1, 1700000000) == "000000016553f100"
    assert dovecot_uidl("%u-%v", 7, 9) == "7-9"
    assert dovecot_uidl("%g", 1, 1, "abc") == "abc"
    assert dovecot_uidl("100%%", 1, 1) == "100%"


@pytest.mark.parametrize("fmt", ["%m", "%{md5}", "%f", "%"])
def test_dovecot_uidl_unknown_variable(fmt):
    with pytest.raises(ValueError):
        dovecot_uidl(fmt, 1, 1)


def test_parse_v3():
    uidvalidity, records = parse_dovecot_uidlist(UIDLIST_V3)
    assert uidvalidity == 1700000000
    assert records[1] == (2, {"P": "0001.legacy", "O": "2"}, "1700000002.M2P2.old")
    assert records[2][1]["W"] == "30"
    assert len(records) == 4


@pytest.mark.parametrize("data", [b"", b"2 V1 N1\n", b"3 N5\n", b"3 V1 N2\nx :name\n"])
def test_parse_refuses(data):
    with pytest.raises(ValueError):
        parse_dovecot_uidlist(data)


def make_dovecot_maildir(root, uidlist=UIDLIST_V3, extra=()):
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub))
    files = {"cur/1700000001.M1P1.old,S=10,W=12:2,S": b"one\n",
             "cur/1700000002.M2P2.old:2,": b"two\n",
             "new/1700000003.M3P3.old,S=28": b"three\n",
             "cur/1700000004.M4P4.old:2,S": b"four\n"}
    files.update(extra)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "dovecot-uidlist"), "wb") as f:
        f.write(uidlist)
    return root


def test_listing_order_and_uidls(tmp_path):
    source = DovecotMaildirSource(make_dovecot_maildir(str(tmp_path / "M"),
                                                       extra={"new/9.M9.unseen": b"x\n"}))
    listing = source.listing()
    # O1, O2 first; then by uid, with pop3_uidl_format for those without P.
    assert [m.uidl for m in listing] == ["OLD-3", "0001.legacy", "000000016553f100",
                                         "000000046553f100"]
    assert source.fetch(listing[0]) == b"three\n"
    assert listing[0].size == 7  # CRLF octets, as Dovecot's LIST counts
    assert source.unlisted == [str(tmp_path / "M" / "new" / "9.M9.unseen")]


def test_expunged_file_is_skipped(tmp_path):
    root = make_dovecot_maildir(str(tmp_path / "M"))
    os.unlink(os.path.join(root, "cur", "1700000002.M2P2.old:2,"))
    assert "0001.legacy" not in [m.uidl for m in DovecotMaildirSource(root).listing()]


def test_not_a_dovecot_maildir(tmp_path):
    root = str(tmp_path / "M")
    os.makedirs(os.path.join(root, "cur"))
    with pytest.raises(SourceError, match="no dovecot-uidlist"):
        DovecotMaildirSource(root).listing()
