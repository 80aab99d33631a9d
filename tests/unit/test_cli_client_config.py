"""
Tests for L{securepop.cli.client_config}: the Thunderbird and Outlook XML
parse and name the right port, socket type and authentication; the SRV
lines follow RFC 6186.
"""

import os
from xml.etree import ElementTree as ET

import pytest

from securepop.cli import client_config
from securepop.cli import main as cli_main

TB = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"

CONFIG = """
[server]
hostname = "mail.example.com"
[[listen]]
endpoint = "tcp:995:interface=0.0.0.0"
tls = "implicit"
[[listen]]
endpoint = "tcp:port=110"
tls = "starttls"
[[listen]]
endpoint = "tcp:2110"
tls = "none"
[auth]
mechanisms = [{mechanisms}]
user_pass = {user_pass}
"""


def write_config(tmp_path, mechanisms='"PLAIN", "LOGIN"', user_pass="true", **replace):
    text = CONFIG.format(mechanisms=mechanisms, user_pass=user_pass)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "securepop.toml"
    path.write_text(text)
    return str(path)


def generate(tmp_path, config, *extra):
    out = tmp_path / "out"
    assert cli_main.main(["client-config", "--config", config, "--data-dir",
                          str(tmp_path / "d"), "--output", str(out), *extra]) == 0
    return {name: (out / name).read_bytes() for name in os.listdir(out)}


def test_thunderbird(tmp_path):
    docs = generate(tmp_path, write_config(tmp_path))
    root = ET.fromstring(docs["config-v1.1.xml"])
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider.findtext("domain") == "example.com"
    servers = provider.findall("incomingServer")
    assert [(s.get("type"), s.findtext("hostname"), s.findtext("port"),
             s.findtext("socketType")) for s in servers] == [
        ("pop3", "mail.example.com", "995", "SSL"),
        ("pop3", "mail.example.com", "110", "STARTTLS")]
    assert [a.text for a in servers[0].findall("authentication")] == ["password-cleartext"]
    assert "2110" not in docs["config-v1.1.xml"].decode()   # no TLS, never advertised


def test_thunderbird_challenge_mechanisms(tmp_path):
    config = write_config(tmp_path, mechanisms='"CRAM-MD5", "NTLM"', user_pass="false")
    docs = generate(tmp_path, config)
    server = ET.fromstring(docs["config-v1.1.xml"]).find("emailProvider/incomingServer")
    assert [a.text for a in server.findall("authentication")] == ["password-encrypted", "NTLM"]
    account = ET.fromstring(docs["Autodiscover.xml"]).find(f"{TB}Response/{TB}Account")
    assert account.find(f"{TB}Protocol/{TB}SPA").text == "on"


def test_outlook(tmp_path):
    docs = generate(tmp_path, write_config(tmp_path))
    root = ET.fromstring(docs["Autodiscover.xml"])
    assert root.tag.endswith("}Autodiscover")
    protocol = root.find(f"{TB}Response/{TB}Account/{TB}Protocol")
    values = {child.tag[len(TB):]: child.text for child in protocol}
    assert values["Type"] == "POP3" and values["Server"] == "mail.example.com"
    assert (values["Port"], values["SSL"], values["Encryption"], values["SPA"]) == (
        "995", "on", "SSL", "off")


def test_outlook_starttls_only(tmp_path):
    config = write_config(tmp_path, **{'tcp:995:interface=0.0.0.0"\ntls = "implicit"':
                                       'tcp:2995"\ntls = "none"'})
    docs = generate(tmp_path, config)
    protocol = ET.fromstring(docs["Autodiscover.xml"]).find(
        f"{TB}Response/{TB}Account/{TB}Protocol")
    assert (protocol.find(f"{TB}Port").text, protocol.find(f"{TB}Encryption").text) == (
        "110", "TLS")
    srv = docs["pop3-srv.zone"].decode()
    assert "_pop3s._tcp.example.com. 3600 IN SRV 0 0 0 ." in srv


def test_srv_records(tmp_path):
    srv = generate(tmp_path, write_config(tmp_path), "--domain", "example.org")[
        "pop3-srv.zone"].decode().splitlines()
    assert "_pop3s._tcp.example.org. 3600 IN SRV 0 1 995 mail.example.com." in srv
    assert "_pop3._tcp.example.org. 3600 IN SRV 10 1 110 mail.example.com." in srv


def test_public_port_override(tmp_path):
    docs = generate(tmp_path, write_config(tmp_path), "--implicit-port", "10995")
    assert ET.fromstring(docs["config-v1.1.xml"]).findtext(
        "emailProvider/incomingServer/port") == "10995"


@pytest.mark.parametrize("endpoint, port", [
    ("tcp:995", 995), ("tcp:port=995:interface=::", 995), ("tcp6:995", 995),
    ("haproxy:tcp:995", 995), ("systemd:domain=INET:index=0", None), ("unix:/x", None)])
def test_endpoint_port(endpoint, port):
    assert client_config.endpoint_port(endpoint) == port


def test_nothing_to_advertise(tmp_path, capsys):
    config = write_config(tmp_path, **{'tls = "implicit"': 'tls = "none"',
                                       'tls = "starttls"': 'tls = "none"'})
    assert cli_main.main(["client-config", "--config", config]) == client_config.EX_USAGE
    assert "no listener with TLS" in capsys.readouterr().err


def test_stdout_single_format(tmp_path, capsys):
    assert cli_main.main(["client-config", "--config", write_config(tmp_path),
                          "--format", "thunderbird"]) == 0
    ET.fromstring(capsys.readouterr().out.encode())
