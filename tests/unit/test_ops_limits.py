"""Open files: the soft limit is raised to the hard one, and a low one is warned about."""

import resource
from dataclasses import replace

import pytest

from securepop import config
from securepop.ops import limits


class FakeRlimits:
    """The parts of L{resource} the module uses, over one (soft, hard) pair."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft, hard, refuse=None):
        self.value = (soft, hard)
        self.refuse = refuse
        self.calls = []

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.value

    def setrlimit(self, which, value):
        self.calls.append(value)
        if self.refuse is not None:
            raise self.refuse
        soft, hard = value
        if soft > self.value[1] or hard > self.value[1]:
            raise ValueError("not allowed to raise maximum limit")
        self.value = value


class Events(list):
    def __call__(self, name, level="info", message="", **fields):
        self.append((name, level, message, fields))

    def named(self, name):
        return [e for e in self if e[0] == name]


def settings(max_connections=5000):
    s = config.load(None)
    s = replace(s, access=replace(s.access, max_connections=max_connections))
    return s


def test_files_needed_counts_three_per_connection_and_a_margin():
    assert limits.files_needed(settings(5000)) == 5000 * 3 + 64
    assert limits.files_needed(settings(10)) == 94


def test_directory_connections_and_ntlm_helpers_are_counted():
    s = settings(100)
    ldap = replace(s, auth=replace(s.auth, source="ldap",
                                   ldap=replace(s.auth.ldap, urls=("ldap://a", "ldap://b"),
                                                pool_size=4)))
    assert limits.files_needed(ldap) == 364 + 2 * 4 * 2
    ad = replace(s, auth=replace(s.auth, source="ad",
                                 ad=replace(s.auth.ad, urls=("ldap://dc",), pool_size=4,
                                            helpers=5)))
    assert limits.files_needed(ad) == 364 + 2 * 4 + 5 * 3


def test_soft_limit_is_raised_to_the_hard_one():
    fake, events = FakeRlimits(1024, 65536), Events()
    assert limits.raise_open_files_limit(settings(5000), fake, emit=events) == \
        (65536, 65536, 15064)
    assert fake.calls == [(65536, 65536)]
    [(_, level, _, fields)] = events.named("limits.open_files")
    assert fields["soft"] == "65536" and fields["raised_from"] == "1024"
    assert not events.named("limits.open_files_low")


def test_a_hard_limit_too_low_is_warned_about_and_nothing_stops():
    fake, events = FakeRlimits(128, 256), Events()
    assert limits.raise_open_files_limit(settings(5000), fake, emit=events) == \
        (256, 256, 15064)
    [(_, level, message, fields)] = events.named("limits.open_files_low")
    assert level == "warn"
    assert fields == {"soft": 256, "hard": "256", "needed": 15064, "max_connections": 5000}
    assert "LimitNOFILE" in message and "max_connections" in message


def test_enough_already_no_call_no_warning():
    fake, events = FakeRlimits(20000, 20000), Events()
    limits.raise_open_files_limit(settings(5000), fake, emit=events)
    assert fake.calls == []
    assert events.named("limits.open_files")[0][3]["raised_from"] == "-"
    assert not events.named("limits.open_files_low")


def test_unlimited_hard_limit_stops_at_nr_open(tmp_path):
    nr_open = tmp_path / "nr_open"
    nr_open.write_text("1048576\n")
    fake = FakeRlimits(1024, resource.RLIM_INFINITY)
    fake.setrlimit = lambda which, value: (fake.calls.append(value),
                                           setattr(fake, "value", value))
    limits.raise_open_files_limit(settings(10), fake, nr_open_path=str(nr_open),
                                  emit=Events())
    assert fake.calls == [(1048576, resource.RLIM_INFINITY)]


@pytest.mark.parametrize("error", [PermissionError(1, "Operation not permitted"),
                                   ValueError("bad")])
def test_a_refused_raise_is_logged_and_the_start_goes_on(error):
    fake, events = FakeRlimits(1024, 65536, refuse=error), Events()
    assert limits.raise_open_files_limit(settings(5000), fake, emit=events) == \
        (1024, 65536, 15064)
    assert events.named("limits.open_files_raise_failed")[0][1] == "warn"
    assert events.named("limits.open_files_low")


def test_the_real_process_limit_is_raised():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limits.raise_open_files_limit(settings(10), emit=Events())
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limits._ceiling(hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
