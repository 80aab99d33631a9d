"""twistd plugin: names the ServiceMaker only, so `twistd --help` stays fast."""

from twisted.application.service import ServiceMaker

securepop = ServiceMaker(
    "securepop",
    "securepop.tap",
    "A hardened POP3 server (TLS, SASL, NTLM, LDAP/AD, access control).",
    "securepop",
)
