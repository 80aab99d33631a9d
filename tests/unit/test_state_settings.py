"""[state]: the contract's keys, their defaults, and errors naming file, key and reason."""

import pytest

from securepop import config
from securepop.errors import ConfigError
from securepop.state.settings import StateSettings, parse_redis_url, parse_sentinel


def test_default_is_memory():
    state = config.load(None).state
    assert state == StateSettings()
    assert (state.backend, state.key_prefix, state.timeout, state.on_outage, state.lease_ttl) \
        == ("memory", "securepop:", 0.5, "local", 30.0)


def test_the_issue_contract_parses():
    s = config.parse('''
[state]
backend = "redis"
url = "rediss://redis.example.com:6380/3"
ca_file = "/etc/ssl/redis-ca.pem"
password_file = "/etc/securepop/redis-password"
key_prefix = "pop:"
timeout = 0.25
on_outage = "refuse"
lease_ttl = 10
''', "f.toml")
    assert s.state.backend == "redis" and s.state.on_outage == "refuse"
    assert s.state.timeout == 0.25 and s.state.lease_ttl == 10.0
    assert parse_redis_url(s.state.url) == (True, "redis.example.com", 6380, 3)


def test_sentinels():
    s = config.parse('[state]\nbackend = "redis"\nsentinels = ["10.0.0.1:26379", "[::1]:26380",'
                     ' "s3.example.com:26379"]\nsentinel_master = "pop-state"\n')
    assert [parse_sentinel(a) for a in s.state.sentinels] == [
        ("10.0.0.1", 26379), ("::1", 26380), ("s3.example.com", 26379)]


@pytest.mark.parametrize("text, key, reason", [
    ('backend = "etcd"', "state.backend", "must be one of memory, redis"),
    ('on_outage = "ignore"', "state.on_outage", "must be one of local, refuse"),
    ('timeout = 0', "state.timeout", "between 0.01 and 10"),
    ('timeout = 60', "state.timeout", "between 0.01 and 10"),
    ('timeout = "fast"', "state.timeout", "must be a number"),
    ('lease_ttl = 0.5', "state.lease_ttl", "between 1 and 300"),
    ('key_prefix = ""', "state.key_prefix", "printable"),
    ('key_prefix = "a b"', "state.key_prefix", "printable"),
    ('url = "http://127.0.0.1:6379"', "state.url", "redis:// or rediss://"),
    ('url = "redis://:pw@127.0.0.1:6379"', "state.url", "password_file"),
    ('url = "redis://127.0.0.1:6379/99"', "state.url", "0 to 15"),
    ('url = "redis://127.0.0.1:99999"', "state.url", "not a URL"),
    ('url = "redis:///0"', "state.url", "names no host"),
    ('sentinels = ["10.0.0.1"]', "state.sentinels", "host:port"),
    ('sentinels = ["10.0.0.1:0"]', "state.sentinels", "out of range"),
    ('sentinels = ["a:1"]\nurl = "rediss://h/0"', "state.sentinels", "not encrypted"),
    ('sentinels = ["a:1"]\nsentinel_master = "my master"', "state.sentinel_master",
     "service name"),
    ('ca_file = "/ca.pem"', "state.ca_file", "rediss://"),
    ('passwrd_file = "x"', "state.passwrd_file", "unknown key"),
])
def test_bad_values_name_file_key_and_reason(text, key, reason):
    head = "" if text.startswith("backend") else 'backend = "redis"\n'
    with pytest.raises(ConfigError) as e:
        config.parse("[state]\n" + head + text + "\n", "bad.toml")
    message = str(e.value)
    assert "bad.toml" in message and key in message and reason in message


def test_good_neighbours_of_the_bad_values():
    for text in ('timeout = 0.01', 'timeout = 10', 'lease_ttl = 1', 'lease_ttl = 300',
                 'url = "redis://localhost"', 'url = "redis://[::1]:6379/15"',
                 'ca_file = "/ca.pem"\nurl = "rediss://h:6380/0"',
                 'sentinels = ["a:1"]\nsentinel_master = "my-master.1"'):
        config.parse('[state]\nbackend = "redis"\n' + text + "\n", "good.toml")


@pytest.mark.parametrize("state", ["", '[state]\nbackend = "memory"\n'])
def test_a_redis_mail_lock_needs_the_redis_backend(state):
    with pytest.raises(ConfigError) as e:
        config.parse('[mail]\nlock = "redis"\n' + state, "f.toml")
    assert str(e.value).startswith("f.toml:2: mail.lock: ")
    assert 'needs [state] backend = "redis"' in str(e.value)


def test_a_redis_mail_lock_with_the_redis_backend_parses():
    s = config.parse('[mail]\nlock = "redis"\n[state]\nbackend = "redis"\n', "f.toml")
    assert s.mail.lock == "redis"
    with pytest.raises(ConfigError, match="mail.lock: must be one of flock, dotlock, redis"):
        config.parse('[mail]\nlock = "lease"\n[state]\nbackend = "redis"\n', "f.toml")
