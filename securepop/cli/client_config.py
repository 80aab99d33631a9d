"""
C{securepop client-config}: what mail clients need to find this server by
themselves: Thunderbird's autoconfig file (C{config-v1.1.xml}), an Outlook
autodiscover (POX) response (C{Autodiscover.xml}) and the RFC 6186 SRV
records (C{_pop3s._tcp}, C{_pop3._tcp}), made from the configured listeners
and mechanisms.

Only listeners with TLS are advertised (implicit first, RFC 8314); a
listener without TLS never is.  On a TLS listener the password sent over
TLS (C{password-cleartext}) comes first, since it works with every
credential source; challenge-response mechanisms follow.
"""

import os
import sys
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from securepop import config
from securepop.errors import ConfigError
from securepop.fileio import atomic_write

THUNDERBIRD_FILE = "config-v1.1.xml"
OUTLOOK_FILE = "Autodiscover.xml"
SRV_FILE = "pop3-srv.zone"
OUTLOOK_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_ACCOUNT_NS = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                      "responseschema/2006a")
EX_USAGE, EX_CONFIG = 64, 78
_SOCKET_TYPES = {"implicit": "SSL", "starttls": "STARTTLS"}


@dataclass(frozen=True)
class Offer:
    """One advertised listener: C{port}, C{tls} (implicit/starttls), C{auth} (Thunderbird names)."""

    port: int
    tls: str
    auth: tuple


def endpoint_port(endpoint):
    """
    @return: the TCP port of a Twisted endpoint string (C{tcp:995:...},
        C{tcp6:port=995}, under C{haproxy:}), or None (C{systemd:}, unix).
    """
    parts = endpoint.replace("\\:", "\0").split(":")
    if parts and parts[0] == "haproxy":
        parts = parts[1:]
    if not parts or parts[0] not in ("tcp", "tcp6"):
        return None
    for arg in parts[1:]:
        key, eq, value = arg.partition("=")
        if eq and key == "port" and value.isdigit():
            return int(value)
        if not eq and arg.isdigit():
            return int(arg)
    return None


def authentications(settings):
    """The Thunderbird C{<authentication>} values the configuration allows, best first."""
    mechanisms = set(settings.auth.mechanisms)
    values = []
    if settings.auth.user_pass or mechanisms & {"PLAIN", "LOGIN"}:
        values.append("password-cleartext")
    if "CRAM-MD5" in mechanisms or settings.auth.apop:
        values.append("password-encrypted")
    if "NTLM" in mechanisms:
        values.append("NTLM")
    if "GSSAPI" in mechanisms:
        values.append("GSSAPI")
    return tuple(values)


def offers(settings, ports=None):
    """
    The listeners to advertise, implicit TLS first.

    @param ports: C{{"implicit"|"starttls": port}} overriding the
        configured ones (the public ports behind a proxy or systemd).
    """
    auth = authentications(settings)
    found = {}
    for listener in settings.listen:
        if listener.tls not in _SOCKET_TYPES or listener.tls in found:
            continue
        port = endpoint_port(listener.endpoint)
        if port is not None:
            found[listener.tls] = port
    found.update(ports or {})
    return [Offer(found[tls], tls, auth) for tls in ("implicit", "starttls") if tls in found]


def thunderbird_xml(offers_, hostname, domain, username="%EMAILLOCALPART%"):
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for offer in offers_:
        server = ET.SubElement(provider, "incomingServer", type="pop3")
        ET.SubElement(server, "hostname").text = hostname
        ET.SubElement(server, "port").text = str(offer.port)
        ET.SubElement(server, "socketType").text = _SOCKET_TYPES[offer.tls]
        ET.SubElement(server, "username").text = username
        for value in offer.auth:
            ET.SubElement(server, "authentication").text = value
        pop3 = ET.SubElement(server, "pop3")
        ET.SubElement(pop3, "leaveMessagesOnServer").text = "true"
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root) + b"\n"


def outlook_xml(offers_, hostname):
    """One POP3 protocol: the first offer (implicit TLS when configured)."""
    offer = offers_[0]
    root = ET.Element("Autodiscover", xmlns=OUTLOOK_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_ACCOUNT_NS)
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    protocol = ET.SubElement(account, "Protocol")
    spa = "NTLM" in offer.auth and "password-cleartext" not in offer.auth
    for tag, text in (("Type", "POP3"), ("Server", hostname), ("Port", str(offer.port)),
                      ("DomainRequired", "off"), ("SPA", "on" if spa else "off"),
                      ("SSL", "on"), ("AuthRequired", "on"),
                      ("Encryption", "SSL" if offer.tls == "implicit" else "TLS")):
        ET.SubElement(protocol, tag).text = text
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root) + b"\n"


def srv_records(offers_, hostname, domain, ttl=3600):
    """RFC 6186 zone lines; a service not offered gets the "." target (RFC 6186 3.4)."""
    by_tls = {offer.tls: offer for offer in offers_}
    lines = [f"; RFC 6186 POP3 service records for {domain}"]
    for service, tls, priority in (("_pop3s", "implicit", 0), ("_pop3", "starttls", 10)):
        offer = by_tls.get(tls)
        if offer is None:
            lines.append(f"{service}._tcp.{domain}. {ttl} IN SRV 0 0 0 .")
        else:
            lines.append(f"{service}._tcp.{domain}. {ttl} IN SRV {priority} 1 "
                         f"{offer.port} {hostname}.")
    return ("\n".join(lines) + "\n").encode("ascii")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "client-config",
        help="write Thunderbird autoconfig, Outlook autodiscover and SRV records",
        description="Client autoconfiguration for the configured TLS listeners and mechanisms.")
    parser.add_argument("--domain", help="the mail domain (default: the host name's parent)")
    parser.add_argument("--hostname", help="the public host name (default: server.hostname)")
    parser.add_argument("--implicit-port", type=int, metavar="PORT",
                        help="public implicit-TLS port (behind a proxy or systemd)")
    parser.add_argument("--starttls-port", type=int, metavar="PORT",
                        help="public STLS port")
    parser.add_argument("--username", default="%EMAILLOCALPART%",
                        help="Thunderbird's username template (default %%EMAILLOCALPART%%)")
    parser.add_argument("--format", choices=("all", "thunderbird", "outlook", "srv"),
                        default="all", help="what to print (stdout only)")
    parser.add_argument("--output", metavar="DIR",
                        help=f"write {THUNDERBIRD_FILE}, {OUTLOOK_FILE} and {SRV_FILE} here")
    parser.set_defaults(func=run)
    return parser


def _documents(args, settings):
    hostname = (args.hostname or settings.server.hostname).rstrip(".")
    domain = (args.domain or hostname.partition(".")[2] or hostname).rstrip(".")
    ports = {tls: port for tls, port in (("implicit", args.implicit_port),
                                         ("starttls", args.starttls_port)) if port}
    found = offers(settings, ports)
    if not found:
        raise ValueError("no listener with TLS and a TCP port to advertise "
                         "(give --implicit-port or --starttls-port)")
    if not found[0].auth:
        raise ValueError("no password mechanism a mail client can be told about is enabled")
    return {THUNDERBIRD_FILE: thunderbird_xml(found, hostname, domain, args.username),
            OUTLOOK_FILE: outlook_xml(found, hostname),
            SRV_FILE: srv_records(found, hostname, domain)}


def run(args):
    options = vars(args)
    try:
        settings = config.load(options.get("config"), options.get("data_dir"))
        documents = _documents(args, settings)
    except ConfigError as e:
        print(f"securepop: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    except ValueError as e:
        print(f"securepop client-config: {e}", file=sys.stderr)
        return EX_USAGE
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        for name, data in documents.items():
            atomic_write(os.path.join(args.output, name), data, 0o644)
            print(f"wrote {os.path.join(args.output, name)}")
        return 0
    chosen = {"thunderbird": [THUNDERBIRD_FILE], "outlook": [OUTLOOK_FILE],
              "srv": [SRV_FILE]}.get(args.format, list(documents))
    for name in chosen:
        if len(chosen) > 1:
            sys.stdout.write(f"==> {name} <==\n")
        sys.stdout.write(documents[name].decode("utf-8"))
    return 0
