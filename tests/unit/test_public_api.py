"""Keeps securepop.__all__ honest: every name importable, each interface verified."""

import importlib
import inspect

import pytest
from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

import securepop


def test_every_exported_name_exists():
    assert len(set(securepop.__all__)) == len(securepop.__all__)
    for name in securepop.__all__:
        assert hasattr(securepop, name), name


def test_no_unlisted_public_interface():
    public = {n for n, v in vars(securepop).items()
              if isinstance(v, InterfaceClass) and not n.startswith("_")}
    assert public <= set(securepop.__all__)


def test_interfaces_are_interfaces():
    names = [n for n in securepop.__all__ if n.startswith("I") and n[1:2].isupper()]
    assert names
    for name in names:
        assert isinstance(getattr(securepop, name), InterfaceClass), name


def test_exported_names_come_from_where_they_are_defined():
    for name in securepop.__all__:
        value = getattr(securepop, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            home = importlib.import_module(value.__module__)
            assert getattr(home, value.__name__) is value, name


def test_make_service_provides_iservice(tmp_path):
    settings = securepop.load_config(None, str(tmp_path))
    svc = securepop.makeService(settings, MemoryReactorClock())
    assert isinstance(svc, securepop.SecurePOPService)
    assert verifyObject(IService, svc)


def test_version_string():
    assert isinstance(securepop.__version__, str) and securepop.__version__.count(".") >= 1


def test_errors_are_exceptions():
    for name in ("ConfigError", "MailboxInUse", "SourceUnavailable"):
        assert issubclass(getattr(securepop, name), Exception)


def _example():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "examples"))
    try:
        return importlib.import_module("embedded_app")
    finally:
        sys.path.pop(0)


def test_embedding_example_implements_the_public_interfaces():
    ex = _example()
    assert verifyClass(securepop.ICredentialSource, ex.HostUserStore)
    assert verifyObject(securepop.ICredentialSource, ex.HostUserStore({}, MemoryReactorClock()))
    assert verifyObject(securepop.ISecureMailbox, ex.MemoryMailbox({"u": [b"x"]}, "u"))


def test_embedding_example_mailbox_semantics():
    ex = _example()
    store = {"u": [b"one\r\n", b"two\r\n"]}
    box = ex.MemoryMailbox(store, "u")
    box.deleteMessage(0)
    assert box.isDeleted(0) and box.listMessages() == [0, 5]
    assert store["u"] == [b"one\r\n", b"two\r\n"]    # only marked
    box.undeleteMessages()
    box.deleteMessage(1)
    box.commit()
    assert store["u"] == [b"one\r\n"]


@pytest.mark.parametrize("module", [
    "securepop.ops.notify", "securepop.ops.privileges", "securepop.ops.protolog",
    "securepop.ops.metrics", "securepop.ops.jsonlog", "securepop.ops.shutdown",
    "securepop.ops.workers", "securepop.tap", "securepop.service", "securepop.assembly",
    "securepop.schemes",
])
def test_operations_modules_import(module):
    assert importlib.import_module(module)
