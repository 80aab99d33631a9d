"""
Fuzz the configuration loader: L{securepop.config.parse} returns settings
or raises L{ConfigError} (naming file and key) for any text -- never
another exception -- and a value it accepts is of the declared type.
"""

import math
from dataclasses import fields

import pytest
from hypothesis import example, given, strategies as st

from securepop import config
from securepop.errors import ConfigError
from tests.fuzz.harness import corpus, fuzz_settings

SAMPLE = corpus("config")[0].decode()
SECTIONS = {
    "server": config.ServerSettings, "tls": config.TLSSettings, "auth": config.AuthSettings,
    "access": config.AccessSettings, "mail": config.MailSettings, "log": config.LogSettings,
    "metrics": config.MetricsSettings, "auth.file": config.FileSourceSettings,
    "auth.ldap": config.LDAPSettings, "auth.ad": config.LDAPSettings,
}
toml_values = st.one_of(
    st.sampled_from(['""', '"x"', "0", "-1", "1", "1.5", "-0.0", "true", "false", "[]",
                     '["a"]', "[1]", "{}", "{a = 1}", '"auto"', '"0"', '"257"', '"²"',
                     '"allow-listed"', '"legacy"', "1979-05-27", '"\\u0000"', "9223372036854775807",
                     '"{user}"', '"mail/{user}"', '"ldap://x"', "inf", "nan", "-inf"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'),
)


@st.composite
def structured(draw):
    lines = []
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        names = [f.name for f in fields(SECTIONS[section])
                 if f.name not in ("file", "ldap", "ad", "sni")]
        for name in draw(st.lists(st.sampled_from(names), max_size=5, unique=True)):
            lines.append(f"{name} = {draw(toml_values)}")
    if draw(st.booleans()):
        lines += ["[[listen]]", f"endpoint = {draw(toml_values)}", f"tls = {draw(toml_values)}"]
    return "\n".join(lines) + "\n"


def mutated_sample(lines_to_drop, replacements):
    lines = SAMPLE.splitlines()
    for i in lines_to_drop:
        if lines:
            lines.pop(i % len(lines))
    for i, text in replacements:
        if lines:
            lines[i % len(lines)] = text
    return "\n".join(lines)


def parse_clean(text):
    try:
        settings = config.parse(text, "fuzz.toml")
    except ConfigError as e:
        assert e.path == "fuzz.toml"
        return None
    return settings


@fuzz_settings(400)
@given(st.one_of(structured(), st.text(max_size=300),
                 st.builds(mutated_sample, st.lists(st.integers(0, 500), max_size=5),
                           st.lists(st.tuples(st.integers(0, 500), st.text(max_size=40)),
                                    max_size=4))))
@example("[server]\nworkers = \"3\"\n")
def test_parse_raises_only_config_error(text):
    settings = parse_clean(text)
    if settings is not None:
        assert settings.listen
        for section in ("server", "tls", "auth", "access", "mail", "log", "metrics"):
            obj = getattr(settings, section)
            default = type(obj)()
            for f in fields(obj):
                value, expected = getattr(obj, f.name), getattr(default, f.name)
                assert type(value) is type(expected) or isinstance(value, type(expected))


def test_sample_parses():
    assert parse_clean(SAMPLE) is not None
    assert parse_clean(SAMPLE + "\nnonsense_key = 1\n") is None


def test_workers_unicode_digit_is_a_config_error():
    assert parse_clean('[server]\nworkers = "²"\n') is None


def test_deep_nesting_is_a_config_error():
    assert parse_clean("a = " + "[" * 2000 + "]" * 2000 + "\n") is None


def test_nan_is_refused():
    assert parse_clean("[server]\nidle_timeout = nan\n") is None


def test_sni_values_must_be_strings():
    assert parse_clean('[[tls.sni]]\nhostname = 1\ncertificate = "c"\nkey = ["k"]\n') is None


def test_inf_float_is_refused():
    """Numbers must be finite: inf would silently mean "no limit"."""
    assert parse_clean("[server]\nidle_timeout = inf\n") is None
    assert parse_clean("[server]\nidle_timeout = 1e3\n") is not None
