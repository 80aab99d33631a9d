"""
Tests for L{securepop.migrate.sources}: Dovecot's dovecot-uidlist (P and O
fields, pop3_uidl_format for the rest), Courier's courierpop3dsizelist
(versions 3, 2 and the header-less one), the files they do not name, and
which of the two a Maildir has.
"""

import os

import pytest

from securepop.migrate.pop3 import SourceError
from securepop.migrate.sources import (
    CourierMaildirSource,
    DovecotMaildirSource,
    courier_filename_uidl,
    dovecot_uidl,
    maildir_source,
    parse_courier_sizelist,
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


# Courier: courierpop3dsizelist as courier-imap's pop3dserver.c writes it.
SIZELIST_V3 = (b"/3 6 1700000500\n"
               b"1700000001.M1P1.host:2,S 12 1:1700000500:0\n"
               b"1700000002.M2P2.host 9 2:1700000500:1\n"
               b"1700000003.M3P3.with space:2, 7 5:1700000500:0\n")
SIZELIST_V2 = (b"/2 4 1600000000\n"
               b"1700000001.M1P1.host:2,S 12 1:1600000000\n"
               b"1700000002.M2P2.host 9 0:1600000000\n"
               b"1700000003.M3P3.with space:2, 7 3:0\n")
SIZELIST_OLD = (b"1700000001.M1P1.host:2,S 12\n"
                b"1700000002.M2P2.host 9\n"
                b"1700000003.M3P3.with space:2, 7\n")


def test_courier_v3_uidls_and_sizes():
    records = parse_courier_sizelist(SIZELIST_V3)
    assert [(r[1], r[2], r[3]) for r in records] == [
        ("1700000001.M1P1.host:2,S", 12, "UID1-1700000500"),
        ("1700000002.M2P2.host", 9, "UID2-1700000500"),
        ("1700000003.M3P3.with space:2,", 7, "UID5-1700000500")]


def test_courier_v2_uid_zero_and_uidvalidity_zero():
    # uid 0: the file name's UIDL; uidvalidity 0: "UID<n>" (print_uidl).
    assert [r[3] for r in parse_courier_sizelist(SIZELIST_V2)] == [
        "UID1-1600000000", "1700000002.M2P2.host", "UID3"]


def test_courier_old_format_uses_escaped_file_names():
    assert [r[3] for r in parse_courier_sizelist(SIZELIST_OLD)] == [
        "1700000001.M1P1.host", "1700000002.M2P2.host", "1700000003.M3P3.with+20space"]
    assert courier_filename_uidl("a'b\"c+d\xe9:2,S") == "a+27b+22c+2Bd+C3+A9"


def test_courier_order_is_cmpmsgs_not_line_order():
    # Courier numbers by leading time, then name up to ":"; it writes the
    # file in that order, but a hand-edited one is put back in it.
    data = (b"/3 4 7\n"
            b"1700000010.b 5 3:7:0\n"
            b"900000000.z 5 1:7:0\n"
            b"1700000010.a:2,S 5 2:7:0\n")
    assert [r[3] for r in parse_courier_sizelist(data)] == ["UID1-7", "UID2-7", "UID3-7"]
    assert [r[0] for r in parse_courier_sizelist(data)] == [3, 4, 2]


@pytest.mark.parametrize("data, line", [
    (b"/3 6 1\nname 12 1:1:0\nname-without-size\n", "line 3"),
    (b"/3 6 1\nname twelve 1:1:0\n", "line 2"),
    (b"/3 6 1\nname 12 1-1\n", "line 2"),
    (b"/3 6 1\n 12 1:1:0\n", "line 2"),
    (b"old-format-name\n", "line 1"),
    (b"/1 6 1\nname 12 1:1\n", "line 1"),
    (b"/3 six 1\n", "line 1"),
])
def test_courier_malformed_line_refused(data, line):
    with pytest.raises(ValueError, match=line):
        parse_courier_sizelist(data)


def test_courier_empty_refused():
    with pytest.raises(ValueError, match="empty"):
        parse_courier_sizelist(b"")


@pytest.mark.parametrize("name", ["x" * 71, "x" * 24 + "\x01" * 16])
def test_courier_uidl_outside_rfc1939_refused(name):
    # A file-name UIDL of 71 characters; 24 + 16 * 3 = 72 once escaped.
    data = b"/3 2 1\n" + name.encode() + b" 5 0:1:0\n"
    with pytest.raises(ValueError, match=r"line 2: UIDL .*\(RFC 1939\)"):
        parse_courier_sizelist(data)
    # 70 characters is still a UIDL.
    assert parse_courier_sizelist(b"/3 2 1\n" + b"x" * 70 + b" 5 0:1:0\n")[0][3] == "x" * 70


def make_courier_maildir(root, sizelist=SIZELIST_V3, extra=()):
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub))
    files = {"cur/1700000001.M1P1.host:2,RS": b"one\nx\n",          # flags changed since
             "cur/1700000002.M2P2.host:2,": b"two\nxx",
             "cur/1700000003.M3P3.with space:2,": b"three\n"}
    files.update(extra)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "courierpop3dsizelist"), "wb") as f:
        f.write(sizelist)
    return root


def test_courier_listing(tmp_path):
    root = make_courier_maildir(str(tmp_path / "M"), extra={"new/1800000000.M9.unseen": b"x\n"})
    source = maildir_source(root)
    assert isinstance(source, CourierMaildirSource)
    listing = source.listing()
    assert [(m.uidl, m.size) for m in listing] == [
        ("UID1-1700000500", 12), ("UID2-1700000500", 9), ("UID5-1700000500", 7)]
    assert source.fetch(listing[1]) == b"two\nxx"
    assert listing[1].size == 9      # Courier's LIST size kept, to compare with ours
    assert source.unlisted == [os.path.join(root, "new", "1800000000.M9.unseen")]


def test_courier_expunged_file_is_skipped(tmp_path):
    root = make_courier_maildir(str(tmp_path / "M"))
    os.unlink(os.path.join(root, "cur", "1700000002.M2P2.host:2,"))
    assert [m.uidl for m in CourierMaildirSource(root).listing()] == [
        "UID1-1700000500", "UID5-1700000500"]


def test_courier_malformed_file_names_file_and_line(tmp_path):
    root = make_courier_maildir(str(tmp_path / "M"), sizelist=SIZELIST_V3 + b"broken\n")
    with pytest.raises(SourceError) as e:
        CourierMaildirSource(root).listing()
    assert str(e.value).startswith(os.path.join(root, "courierpop3dsizelist") + ": line 5:")


def test_courier_missing_sizelist(tmp_path):
    root = str(tmp_path / "M")
    os.makedirs(os.path.join(root, "cur"))
    with pytest.raises(SourceError, match="no courierpop3dsizelist"):
        CourierMaildirSource(root).listing()


def test_maildir_source_detects(tmp_path):
    dovecot = make_dovecot_maildir(str(tmp_path / "D"))
    assert isinstance(maildir_source(dovecot, "%u"), DovecotMaildirSource)
    assert maildir_source(dovecot, "%u").uidl_format == "%u"
    both = make_courier_maildir(str(tmp_path / "B"))
    with open(os.path.join(both, "dovecot-uidlist"), "wb") as f:
        f.write(UIDLIST_V3)
    assert isinstance(maildir_source(both), DovecotMaildirSource)   # Dovecot's first
    empty = str(tmp_path / "E")
    os.makedirs(os.path.join(empty, "cur"))
    with pytest.raises(SourceError) as e:
        maildir_source(empty)
    assert "dovecot-uidlist" in str(e.value) and "courierpop3dsizelist" in str(e.value)
