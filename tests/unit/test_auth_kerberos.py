"""The Kerberos acceptor: keytab credentials, the pool, refusals as GSSAPIRefused."""

import dataclasses
import os

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from securepop import config
from securepop.auth.kerberos import AcceptorExchange, KerberosAcceptor
from securepop.auth.keytab import KeytabError
from securepop.auth.verifyqueue import CLIENT
from securepop.errors import ConfigError
from securepop.sasl.gssapi import GSSAPIRefused, IGSSAcceptorExchange
from tests.unit.test_auth_keytab import GOOD, write


class Pool:
    """C{run_blocking} that runs at once and remembers whom each call was for."""

    def __init__(self):
        self.clients = []

    def __call__(self, f, *args):
        self.clients.append(CLIENT.get())
        return defer.maybeDeferred(f, *args)


def failure_of(d):
    box = []
    d.addErrback(box.append)
    assert box, "the Deferred did not fail"
    return box[0]


@pytest.fixture
def acceptor(tmp_path):
    return KerberosAcceptor(write(tmp_path, GOOD), "pop", "mail.example.com.", Pool())


def test_realms_and_target(acceptor, tmp_path):
    assert acceptor.principal_realms == ("EXAMPLE.COM", "EMEA.EXAMPLE.COM")
    assert acceptor.realms == acceptor.principal_realms
    assert acceptor.acceptable_target("pop/mail.example.com@EMEA.EXAMPLE.COM")
    for other in ("HTTP/mail.example.com@EXAMPLE.COM", "pop/mail.example.com@OTHER.ORG",
                  "pop/other.example.com@EXAMPLE.COM", "alice@EXAMPLE.COM"):
        assert not acceptor.acceptable_target(other)
    trusted = KerberosAcceptor(write(tmp_path, GOOD), "pop", "mail.example.com", Pool(),
                               realms=("CORP.EXAMPLE.COM",))
    assert trusted.realms == ("CORP.EXAMPLE.COM",)       # the users' realms
    assert trusted.principal_realms == acceptor.principal_realms


def test_unsafe_keytab_refused(tmp_path):
    with pytest.raises(KeytabError):
        KerberosAcceptor(write(tmp_path, GOOD, 0o644), "pop", "mail.example.com", Pool())


def test_garbage_token_is_refused_on_the_pool(acceptor):
    exchange = acceptor.newExchange("192.0.2.7")
    assert verifyObject(IGSSAcceptorExchange, exchange)
    assert isinstance(exchange, AcceptorExchange)
    failure = failure_of(exchange.step(os.urandom(300), b"tls-server-end-point:" + b"h" * 32))
    assert failure.check(GSSAPIRefused) and failure.value.reason == "gss-failed"
    assert acceptor.run_blocking.clients == ["192.0.2.7"]   # charged to that client
    exchange.abort()
    exchange.abort()


def settings_for(tmp_path, mechanisms, keytab):
    settings = config.Settings()
    auth = dataclasses.replace(settings.auth, mechanisms=mechanisms,
                               gssapi=config.GSSAPISettings(keytab=keytab))
    server = dataclasses.replace(settings.server, hostname="mail.example.com",
                                 data_dir=str(tmp_path))
    return dataclasses.replace(settings, auth=auth, server=server, path="securepop.toml")


def test_from_settings(tmp_path):
    assert KerberosAcceptor.fromSettings(
        settings_for(tmp_path, ("PLAIN",), "missing"), Pool()) is None
    write(tmp_path, GOOD)
    built = KerberosAcceptor.fromSettings(
        settings_for(tmp_path, ("GSSAPI",), "pop.keytab"), Pool())
    assert built.keytab == str(tmp_path / "pop.keytab")
    (tmp_path / "pop.keytab").chmod(0o604)
    with pytest.raises(ConfigError) as info:
        KerberosAcceptor.fromSettings(settings_for(tmp_path, ("GSSAPI",), "pop.keytab"),
                                      Pool())
    assert info.value.key == "auth.gssapi.keytab" and "0604" in info.value.reason


def test_without_python_gssapi_only_a_gssapi_config_stops(tmp_path, monkeypatch):
    """python-gssapi is the optional "kerberos" extra: missing, GSSAPI's start names it."""
    from securepop.auth import kerberos

    monkeypatch.setattr(kerberos, "gssapi", None)
    write(tmp_path, GOOD)
    assert KerberosAcceptor.fromSettings(settings_for(tmp_path, ("PLAIN",), "x"), Pool()) is None
    with pytest.raises(ConfigError) as info:
        KerberosAcceptor.fromSettings(settings_for(tmp_path, ("GSSAPI",), "pop.keytab"), Pool())
    assert info.value.key == "auth.mechanisms"
    assert "securepop[kerberos]" in info.value.reason and "libkrb5-dev" in info.value.reason
