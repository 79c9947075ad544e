"""The faust correction's pure parts (the kill tests in test_crash_e2e prove it end to end)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from streams.runtime import faust_patches as fp


@pytest.fixture(autouse=True)
def _clean():
    fp.forget(list(fp.REWIND) + list(fp.PINNED))
    yield
    fp.forget(list(fp.REWIND) + list(fp.PINNED))


def test_the_installed_faust_still_has_what_the_patch_replaces():
    fp.check_faust_internals()  # raises when a faust release moved the patched internals


def test_pinned_read_offset_does_not_pass_a_rewind_until_it_is_handed_on():
    offsets = fp.PinnedReadOffsets(lambda: None)
    offsets["tp"] = 10
    fp.PINNED["tp"] = 5  # rewound to offset 5
    offsets["tp"] = 12  # a message fetched before the rewind: must not raise it past 5
    assert offsets["tp"] == 10
    offsets["tp"] = 5  # the rewound message itself
    assert offsets["tp"] == 5 and "tp" not in fp.PINNED
    offsets["tp"] = 6
    assert offsets["tp"] == 6


class _Message(SimpleNamespace):
    __hash__ = object.__hash__  # faust keeps unacked messages in a set


def _message(offset: int) -> _Message:
    return _Message(tp="tp", offset=offset, acked=False)


def test_later_deliveries_wait_for_the_rewound_offset_and_then_flow():
    consumer = SimpleNamespace(_unacked_messages=set())
    passed: dict = {}
    fp.REWIND["tp"] = [7, time.monotonic()]
    early = _message(6)
    assert not fp.holds_back(early, consumer, passed)  # before the rewind: goes through
    later = _message(9)
    consumer._unacked_messages.add(later)
    assert fp.holds_back(later, consumer, passed)  # comes again after offset 7
    assert later.acked and later not in consumer._unacked_messages  # untracked, not committed
    assert not fp.holds_back(_message(7), consumer, passed)  # the rewound one arrives
    assert not fp.holds_back(_message(9), consumer, passed)  # and the rest flows again
    other_reader: dict = {}  # a second agent on the topic waits for it on its own
    assert fp.holds_back(_message(8), SimpleNamespace(_unacked_messages=set()), other_reader)


def test_forget_drops_rewinds_of_partitions_given_away():
    fp.REWIND["tp"] = [3, time.monotonic()]
    fp.PINNED["tp"] = 3
    fp.forget(["tp"])
    assert "tp" not in fp.REWIND and "tp" not in fp.PINNED
    assert not fp.holds_back(_message(4), SimpleNamespace(_unacked_messages=set()), {})


def _at(offset: int, generation: int = 1, tp=None) -> _Message:
    from faust.types import TP

    return _Message(tp=tp or TP("metrics.events", 3), offset=offset, acked=False, generation_id=generation)


@pytest.fixture
def seeks(monkeypatch) -> list:
    asked: list = []
    monkeypatch.setattr(fp, "_seek", lambda consumer, tp, offset: asked.append((tp.partition, offset)))
    return asked


def test_a_hole_in_one_generation_is_read_again_before_the_rest(seeks):
    """faust's fetch loop passed over offset 5077 (flow suspended while handing it on): the
    stream holds back 5078 and what follows, the partition is rewound to 5077, and once it
    arrives the records flow in order."""
    consumer = SimpleNamespace(_unacked_messages=set())
    order = fp.InOrder()
    assert not order.holds_back(_at(5075), consumer)
    assert not order.holds_back(_at(5076), consumer)
    after = _at(5078)
    consumer._unacked_messages.add(after)
    assert order.holds_back(after, consumer)
    assert seeks == [(3, 5077)] and after not in consumer._unacked_messages  # not committed
    assert order.holds_back(_at(5079), consumer)  # fetched before the seek: waits too
    assert [order.holds_back(_at(o), consumer) for o in (5077, 5078, 5079)] == [False] * 3
    assert seeks == [(3, 5077)]


def test_a_jump_into_a_new_generation_is_not_a_hole(seeks):
    consumer = SimpleNamespace(_unacked_messages=set())
    order = fp.InOrder()
    assert not order.holds_back(_at(10, generation=1), consumer)
    assert not order.holds_back(_at(500, generation=2), consumer)  # held elsewhere meanwhile
    assert not order.holds_back(_at(7, generation=2), consumer)  # a rewind goes back: fine
    assert seeks == []


def test_a_hole_that_never_fills_is_passed_over_after_a_few_seeks(seeks):
    """Nothing at the offset (a transaction marker, a compacted record): after HOLE_SEEKS
    seeks the stream goes on, and does not rewind for that offset again."""
    consumer = SimpleNamespace(_unacked_messages=set())
    order = fp.InOrder()
    order.holds_back(_at(20), consumer)
    assert order.holds_back(_at(22), consumer)  # 21 missing
    tp = _at(0).tp
    for _ in range(fp.HOLE_SEEKS - 1):
        fp.REWIND[tp][1] -= fp.REWIND_RETRY_S + 1  # as if the retry time had passed
        assert order.holds_back(_at(22), consumer)
    assert seeks == [(3, 21)] * fp.HOLE_SEEKS
    fp.REWIND[tp][1] -= fp.REWIND_RETRY_S + 1
    assert not order.holds_back(_at(22), consumer)
    assert tp not in fp.REWIND and fp.REAL_HOLES[tp] == 21
    assert not order.holds_back(_at(23), consumer)
