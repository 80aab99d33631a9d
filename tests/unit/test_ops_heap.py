"""The start-up heap goes to the permanent generation once the server is built."""

import gc

from twisted.logger import formatEvent, globalLogPublisher

from securepop.ops import heap


class RecordingGC:
    def __init__(self):
        self.calls = []

    def collect(self):
        self.calls.append("collect")

    def freeze(self):
        self.calls.append("freeze")

    def get_freeze_count(self):
        return 1234


def test_collects_then_freezes_and_logs_the_count():
    fake, seen = RecordingGC(), []
    globalLogPublisher.addObserver(seen.append)
    try:
        assert heap.freeze_startup_heap(fake) == 1234
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert fake.calls == ["collect", "freeze"]      # garbage is not frozen in
    assert "securepop heap.frozen objects=1234" in [formatEvent(e) for e in seen]


def test_a_real_freeze_leaves_full_collections_only_the_new_objects():
    try:
        before = gc.get_freeze_count()
        heap.freeze_startup_heap()
        assert gc.get_freeze_count() >= before
        frozen = gc.get_freeze_count()
        assert frozen > 1000                          # this test process's modules
        made = [[i] for i in range(1000)]             # tracked objects made afterwards
        assert gc.get_freeze_count() == frozen        # not frozen: collectable as ever
        assert any(o is made for o in gc.get_objects())
    finally:
        gc.unfreeze()
