"""A correction to faust-streaming that the exactly-once path cannot do without.

faust's stream skips a message that was fetched before a rebalance (an older consumer
generation) or that reaches the stream while flow control is still suspended (the fetcher
resumes before the streams do, at the end of table recovery), and *acks* it "so that the lag
does not grow" (faust/streams.py, `_py_aiter`). Nothing reads it again when the partition stays
with the same worker: measured here as 2 of 20 000 metric samples lost on a rebalance right
after a restart. The patched `Consumer.ack` records an ack only for a message of the current
generation while flow is active. A refused one is untracked (a rebalance waiting for in-flight
messages does not hang), stays uncommitted, and its partition is rewound to it once flow is
active; until the rewound offset arrives again, the processing path drops the partition's later
deliveries (`holds_back`), so records are applied in offset order.

faust's fetch loop has a second way to lose a record: it hands each one on through
`wait_first(callback(message), suspend_flow.wait())`, and when flow is suspended (a rebalance
starting) before the hand-on completes it gives up on the message and still moves its read
offset past it; the record is never delivered, never acked, and the partition goes on with
the next one. Each reading stream therefore checks that its partitions' offsets follow each
other (`InOrder`): a hole within one consumer generation is rewound like a skipped message. A
hole that does not fill after a few seeks is a real one (a transaction marker or a compacted
record) and is passed over with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP, Message
from faust.types.tuples import ack_lock

log = logging.getLogger(__name__)
_faust_ack = Consumer.ack

REWIND_RETRY_S = 5.0  # a rewound offset not back by then is sought again
HOLE_SEEKS = 3  # a hole still open after this many seeks is real (nothing at that offset)
REWIND: dict[TP, list] = {}  # tp → [offset it is read again from, when that was asked, seeks]
REAL_HOLES: dict[TP, int] = {}  # tp → an offset known to hold no record
_pending_seek: dict[TP, int] = {}
_seeker: asyncio.Future | None = None
PINNED: dict[TP, int] = {}  # tp → rewound offset the fetcher's read offset must not pass yet


class PinnedReadOffsets(defaultdict):
    """faust's per-partition read offset, which its fetch loop raises after every message it
    hands on and below which it drops fetched messages. Right after a rewind, messages fetched
    before it are still being handed on; they must not raise the read offset past the rewound
    one, or it is dropped when it is fetched again."""

    @staticmethod
    def set_unpinned(offsets: Any, tp: TP, offset: int) -> None:
        """Set the read offset, past the pin (the rewind itself moves it)."""
        dict.__setitem__(offsets, tp, offset)

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        pin = PINNED.get(tp)
        if pin is not None and offset is not None:
            if offset == pin:
                del PINNED[tp]  # the rewound message has been handed on
            elif offset > pin:
                return
        super().__setitem__(tp, offset)


def _ack_current_generation_only(self: Consumer, message: Message) -> bool:
    app = self.app
    if message.generation_id == app.consumer_generation_id and app.flow_control.is_active():
        return _faust_ack(self, message)
    with ack_lock:
        already = message.acked
        message.acked = True
        self._unacked_messages.discard(message)
    if not already and app.topics.acks_enabled_for(message.topic):
        tp, offset = message.tp, message.offset
        current = REWIND.get(tp)
        # `<=`: the rewound message itself may be skipped again (another rebalance)
        if current is None or offset <= current[0]:
            rewind(self, tp, offset, "message skipped by faust during a rebalance")
    return False


def rewind(consumer: Consumer, tp: TP, offset: int, why: str) -> None:
    """Read `tp` again from `offset`; every reader holds back its later deliveries until then."""
    REWIND[tp] = [offset, time.monotonic(), 1]  # a new entry: every reader waits for it
    _seek(consumer, tp, offset)
    log.info(f"{why}: partition rewound to it", extra={"metadata": {
        "topic": tp.topic, "partition": tp.partition, "offset": offset}})


def _seek(consumer: Consumer, tp: TP, offset: int) -> None:
    global _seeker
    _pending_seek[tp] = offset
    if _seeker is None or _seeker.done():
        _seeker = asyncio.ensure_future(_seek_when_flowing(consumer))


async def _seek_when_flowing(consumer: Consumer) -> None:
    app = consumer.app
    while _pending_seek:
        if app.flow_control.is_active() and consumer.flow_active and not app.rebalancing:
            assigned = consumer.assignment()
            for tp, offset in list(_pending_seek.items()):
                del _pending_seek[tp]
                if tp in assigned:
                    await consumer.seek(tp, offset)
                    PINNED[tp] = offset
                    PinnedReadOffsets.set_unpinned(consumer._read_offset, tp, offset)
                else:
                    forget([tp])  # another worker reads it from the committed offset
        else:
            await asyncio.sleep(0.05)


def holds_back(message: Message, consumer: Consumer, passed: dict[TP, list]) -> bool:
    """True for a delivery that must wait for its partition's rewind (it comes again later).
    `passed`: the reading stream's own record of rewinds it has already seen arrive (a topic
    read by two agents reaches each of them in its own order)."""
    tp = message.tp
    entry = REWIND.get(tp)
    if entry is None or passed.get(tp) is entry:
        return False
    if message.offset == entry[0]:
        passed[tp] = entry
        return False
    if message.offset < entry[0]:
        return False
    if time.monotonic() - entry[1] > REWIND_RETRY_S:
        if len(entry) > 2 and entry[2] >= HOLE_SEEKS:
            # Sought again and again, and the offset never came: nothing is there.
            log.warning("no record at a rewound offset after %d seeks: going on after it", entry[2],
                        extra={"metadata": {"topic": tp.topic, "partition": tp.partition,
                                            "offset": entry[0], "next": message.offset}})
            REAL_HOLES[tp] = entry[0]
            REWIND.pop(tp, None)
            PINNED.pop(tp, None)
            return False
        entry[1] = time.monotonic()
        if len(entry) > 2:
            entry[2] += 1
        _seek(consumer, tp, entry[0])
    _untrack(message, consumer)
    return True


def _untrack(message: Message, consumer: Consumer) -> None:
    with ack_lock:
        message.acked = True  # untracked: it is delivered again after the rewound ones
        consumer._unacked_messages.discard(message)


class InOrder:
    """One reading stream's guard that each partition's records reach it in offset order,
    without a hole: `holds_back(message, consumer)` is True for a delivery that must wait
    (it comes again). Within one consumer generation the offsets of a partition follow each
    other; a gap means faust passed over a record without handing it on, and the partition is
    rewound to it. (Across generations a jump is normal: the partition was elsewhere.)"""

    def __init__(self) -> None:
        self.passed: dict[TP, list] = {}  # tp → the rewind entry this stream saw arrive
        self.expected: dict[TP, tuple[int | None, int]] = {}  # tp → (generation, next offset)

    def holds_back(self, message: Message, consumer: Consumer) -> bool:
        if holds_back(message, consumer, self.passed):
            return True
        tp, offset, generation = message.tp, message.offset, message.generation_id
        want = self.expected.get(tp)
        if want is not None and want[0] == generation and offset > want[1] \
                and REAL_HOLES.get(tp) != want[1]:
            rewind(consumer, tp, want[1], "a record passed over by faust's fetch loop")
            _untrack(message, consumer)
            return True
        self.expected[tp] = (generation, offset + 1)
        return False


def forget(tps: Iterable[TP]) -> None:
    """Partitions this worker no longer holds: their rewinds are the new owner's business."""
    for tp in tps:
        REWIND.pop(tp, None)
        PINNED.pop(tp, None)
        REAL_HOLES.pop(tp, None)
        _pending_seek.pop(tp, None)


_faust_init = Consumer.__init__


def _init_with_pinned_offsets(self: Consumer, *args: Any, **kwargs: Any) -> None:
    _faust_init(self, *args, **kwargs)
    self._read_offset = PinnedReadOffsets(lambda: None)


# The faust internals the patch relies on, checked when it is applied: a faust release that
# renamed them must fail at start-up, not lose records quietly.
TESTED_WITH = "0.15"


def check_faust_internals() -> None:
    """Raise RuntimeError when faust no longer has what the patch replaces or reads."""
    import inspect

    import faust
    from faust import streams

    missing = [name for name in ("ack", "seek", "assignment", "_read_offset", "_unacked_messages")
               if name not in inspect.getsource(Consumer)]
    if "generation_id" not in inspect.getsource(streams) or "consumer_generation_id" not in \
            inspect.getsource(streams):
        missing.append("streams: skip of an older generation's message")
    if missing:
        raise RuntimeError(f"faust-streaming {faust.__version__} changed what streams.runtime.faust_patches "
                           f"corrects (tested with {TESTED_WITH}.x): {', '.join(missing)}")


def apply() -> None:
    """Install the patch (idempotent); call before the faust app is created."""
    check_faust_internals()
    Consumer.ack = _ack_current_generation_only  # type: ignore[method-assign]
    Consumer.__init__ = _init_with_pinned_offsets  # type: ignore[method-assign]
