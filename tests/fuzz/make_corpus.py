"""
Regenerate the binary seeds of the fuzz corpus (run by hand):

    python -m tests.fuzz.make_corpus

NTLM NEGOTIATE and AUTHENTICATE messages come from pyspnego (a real client
implementation) answering our own CHALLENGE; PROXY headers are what HAProxy
sends (v1 TCP4/TCP6/UNKNOWN, v2 PROXY/LOCAL with TLVs).
"""

import socket
import struct
from pathlib import Path

HERE = Path(__file__).parent / "corpus"


def ntlm_messages():
    import spnego

    from tests.fuzz.harness import FIXED_NTLM_CHALLENGE, PASSWORD, USER
    from securepop.sasl import ntlm_messages as msgs
    from securepop.sasl.ntlm import challenge_flags

    out = {}
    for label, user in (("plain", USER), ("domain", "EXAMPLE\\" + USER), ("upn", USER + "@example.test")):
        client = spnego.client(user, PASSWORD, hostname="localhost", service="pop",
                               protocol="ntlm")
        negotiate = client.step()
        flags = challenge_flags(msgs.parse_negotiate(negotiate).flags)
        info = msgs.build_av_pairs([(msgs.AV_NB_DOMAIN_NAME, "SECUREPOP".encode("utf-16-le")),
                                    (msgs.AV_NB_COMPUTER_NAME, "LOCALHOST".encode("utf-16-le")),
                                    (msgs.AV_TIMESTAMP, struct.pack("<Q", 0))])
        challenge = msgs.build_challenge(flags, FIXED_NTLM_CHALLENGE, "SECUREPOP", info)
        authenticate = client.step(challenge)
        out[f"negotiate_{label}.bin"] = negotiate
        out[f"challenge_{label}.bin"] = challenge
        out[f"authenticate_{label}.bin"] = authenticate
    out["negotiate_short16.bin"] = msgs.SIGNATURE + struct.pack("<II", 1, 0x00000207)
    return out


def proxy_headers():
    def v2(cmd, fam, payload):
        return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(payload))
                + payload)

    v4 = socket.inet_aton("192.0.2.10") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 40000, 110)
    v6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::10") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
          + struct.pack("!HH", 40000, 995))
    tlv = b"\x01\x00\x04pop3" + b"\x20\x00\x05\x01\x00\x00\x00\x00"
    return {
        "v1_tcp4.bin": b"PROXY TCP4 192.0.2.10 192.0.2.1 40000 110\r\nCAPA\r\n",
        "v1_tcp6.bin": b"PROXY TCP6 2001:db8::10 2001:db8::1 40000 995\r\n",
        "v1_unknown.bin": b"PROXY UNKNOWN\r\n",
        "v1_max.bin": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        "v2_tcp4.bin": v2(1, 0x11, v4) + b"CAPA\r\n",
        "v2_tcp6_tlv.bin": v2(1, 0x21, v6 + tlv),
        "v2_local.bin": v2(0, 0x00, b""),
        "v2_unix.bin": v2(1, 0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")),
    }


def main():
    for kind, files in (("ntlm", ntlm_messages()), ("proxy", proxy_headers())):
        folder = HERE / kind
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
            print(folder / name, len(data))


if __name__ == "__main__":
    main()
