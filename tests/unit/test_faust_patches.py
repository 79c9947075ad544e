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
