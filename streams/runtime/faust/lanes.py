"""Fetch lanes: whole fetches handed to the agents that read them, one call per partition.

faust hands every record on by itself: a `Message`, the conductor, an `Event`, a stream
iteration with its sensors and its context, an ack and its bookkeeping — about 200 µs a record
on these machines, which capped every agent at what a faust agent that does nothing can take.
A lane takes the records of a fetch for the topics the agents read before faust sees them,
wraps each in a small `Record` and puts the partition's list into the queue of every `Reader`
(one per agent) of its topic. An agent takes its records in batches and says when a batch is
done; the offset committed for a partition is the lowest that every reader of its topic has
finished (`committable`), and faust's commit loop commits it after flushing the producer.

Order and completeness are the lane's to keep, per partition: `expected` is the next offset to
hand on. A fetched list that starts below it is cut (read again after a seek: already handed
on); one that starts above it has a hole (records fetched before a rebalance and never handed
on, or a seek racing a fetch), and the partition is sought back to the expected offset. A hole
that is still there after `HOLE_SEEKS` seeks holds no record (a transaction marker, a
compacted record) and is passed over with a warning. Within one list Kafka's own gaps are
real ones and pass.

A rebalance first drops what the readers have queued but not taken (`clear`), waits for the
batches in hand (`wait_idle`), and lets faust commit; faust then seeks every partition it
keeps to its committed offset, which becomes the lane's expected offset (`reset`). Until that
seek a partition's records are not handed on (faust fetches again, for its table recovery,
before it seeks): a list fetched at the old position would be applied ahead of the records
the seek reads again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)

HOLE_SEEKS = 3  # a hole still open after this many seeks holds no record
HOLE_RETRY_S = 2.0  # a hole sought back is sought again only after this long
IDLE_WAIT_S = 2.0  # a time-ordered reader waits this long for a partition that has more


class Record:
    """One consumed record as an agent sees it: the fields of a faust `Event` and its
    `Message` that the agents use, without their per-record machinery. `message` is the record
    itself, so code written against faust's events reads it unchanged."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value", "headers", "tp", "decoded")

    def __init__(self, tp: TP, offset: int, timestamp: float | None, key: bytes | None,
                 value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> None:
        self.tp = tp
        self.topic, self.partition = tp
        self.offset = offset
        self.timestamp = timestamp  # seconds, as faust's Message has it
        self.key = key
        self.value = value
        self.headers = headers
        # (model, value) once an agent decoded it: the agents reading one topic get the same
        # Records, and the event models are frozen
        self.decoded: tuple[type, Any] | None = None

    @property
    def message(self) -> Record:
        return self

    def __repr__(self) -> str:
        return f"Record({self.topic}:{self.partition}@{self.offset})"


def to_records(tp: TP, fetched: Iterable[Any]) -> list[Record]:
    """aiokafka's ConsumerRecords (timestamps in ms) as Records."""
    return [Record(tp, r.offset, r.timestamp / 1000.0 if r.timestamp is not None else None,
                   r.key, r.value, r.headers) for r in fetched]


@dataclass(slots=True)
class Hole:
    """A partition's records start past its expected offset: where, and how often it was
    sought back for it."""
    offset: int
    seeks: int = 0
    sought_at: float = 0.0


class Reader:
    """One agent's queue of records from its topics, and how far it has finished each
    partition. The lane puts whole lists in; the agent takes batches and marks them done."""

    def __init__(self, lanes: Lanes, agent: str, topics: Iterable[str], capacity: int) -> None:
        self.lanes = lanes
        self.agent = agent
        self.topics = frozenset(topics)
        self.capacity = capacity  # records queued before the lane waits (backpressure)
        self._queue: deque[list[Record]] = deque()
        self.queued = 0
        self.in_hand = 0  # records taken and not done yet
        self.finished: dict[TP, int] = {}  # tp → next offset to commit (all before it done)
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    # ---------------------------------------------------------------- the lane's side
    def has_room(self, tp: TP | None = None) -> bool:
        """Room for another list (of `tp`): a list is put when there is room, whatever its size."""
        return self.queued < self.capacity

    async def wait_room(self, tp: TP | None = None) -> None:
        while not self.has_room(tp):
            self._room.clear()
            await self._room.wait()

    def put(self, records: list[Record]) -> None:
        self._queue.append(records)
        self.queued += len(records)
        self._arrived.set()

    def clear(self) -> dict[TP, int]:
        """Drop what is queued; returns the first dropped offset per partition."""
        dropped: dict[TP, int] = {}
        for records in self._queue:
            tp = records[0].tp
            dropped[tp] = min(dropped.get(tp, records[0].offset), records[0].offset)
        self._queue.clear()
        self.queued = 0
        self._arrived.clear()
        self._room.set()
        return dropped

    # ---------------------------------------------------------------- the agent's side
    async def take(self, max_records: int, within_s: float) -> list[Record]:
        """Up to `max_records` records, waiting for the first as long as it takes and then up to
        `within_s` for more. The records are in hand until `done`."""
        while not self.queued:
            self._arrived.clear()
            await self._arrived.wait()
        if within_s > 0 and self.queued < max_records:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within_s
            while self.queued < max_records:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
        await self._ready()
        if not self.queued:  # cleared by a rebalance meanwhile
            return await self.take(max_records, within_s)
        batch = self._pop(max_records)
        self.queued -= len(batch)
        self.in_hand += len(batch)
        self._idle.clear()
        self._room.set()  # the lane's waiters look again
        return batch

    async def _ready(self) -> None:
        """Wait, if need be, before a batch is taken from what is queued (a time-ordered
        reader waits for partitions that have more)."""

    def _pop(self, max_records: int) -> list[Record]:
        """The queued records a batch takes: whole lists in the order they came."""
        batch: list[Record] = []
        queue = self._queue
        while queue and len(batch) < max_records:
            head = queue[0]
            room = max_records - len(batch)
            if len(head) <= room:
                batch.extend(queue.popleft())
            else:
                batch.extend(head[:room])
                queue[0] = head[room:]
        return batch

    def done(self, records: Sequence[Record], *, handed_back: bool = False) -> None:
        """The records are applied (or, `handed_back`, given up: not applied and not to be
        committed); either way they are no longer in hand."""
        if not handed_back:
            finished = self.finished
            for record in records:  # in offset order per partition
                finished[record.tp] = record.offset + 1
            self.lanes.touch({r.tp for r in records})
        self.release(len(records))

    def mark(self, record: Record) -> None:
        """One record applied out of a batch (its partition's earlier ones are done too)."""
        self.finished[record.tp] = record.offset + 1
        self.lanes.touch((record.tp,))

    def release(self, n: int) -> None:
        """`n` records taken are out of hand (marked, or given up)."""
        self.in_hand -= n
        if self.in_hand <= 0:
            self.in_hand = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        self.lanes.unregister(self)


class TimeOrderedReader(Reader):
    """A reader that takes its partitions' records in timestamp order: Kafka Streams' timestamp
    synchronisation (`max.task.idle.ms`), for an agent whose output is a single ordered stream
    and whose consumer is order-sensitive (the mixin learner: a model learns a drift the way
    the results came).

    Lists are queued per partition; a batch merges their heads, always taking the record with
    the lowest timestamp next (each partition's own records stay in offset order). A partition
    that has more records on the broker (`Lanes.lagging`) but none queued here could hold the
    earliest ones: the batch stops before it, and the next waits for its records up to
    `IDLE_WAIT_S`, then goes on without it (a leader away must not stop the others). Without
    this, an unkeyed burst (a producer's sticky batches: whole blocks of the stream in one
    partition) reached the learner one partition after another, a block from before a drift
    last, and the served model answered for the old world (issue 25: 0.8255 held-out).

    Room is per partition, and while a batch waits every partition has room: the list it waits
    for comes with the consumer's next fetch, which waits for the lane to put the lists it
    already holds (a full partition here would hold it back, and every batch waited its
    `IDLE_WAIT_S` out: a worker reading a backlog handed on one list per 2 s, and stalled its
    other agents' topics with it)."""

    def __init__(self, lanes: Lanes, agent: str, topics: Iterable[str], capacity: int) -> None:
        super().__init__(lanes, agent, topics, capacity)
        self._parts: dict[TP, deque[list[Record]]] = {}
        self._part_queued: dict[TP, int] = {}
        self._waiting_since: dict[TP, float] = {}  # tp → since when a batch waits for it
        self._waiting = False  # a batch waits for a partition: every partition has room

    def has_room(self, tp: TP | None = None) -> bool:
        return tp is None or self._waiting or self._part_queued.get(tp, 0) < self.capacity

    def put(self, records: list[Record]) -> None:
        tp = records[0].tp
        self._parts.setdefault(tp, deque()).append(records)
        self._part_queued[tp] = self._part_queued.get(tp, 0) + len(records)
        self.queued += len(records)
        self._arrived.set()

    def clear(self) -> dict[TP, int]:
        dropped = {tp: lists[0][0].offset for tp, lists in self._parts.items() if lists}
        self._parts.clear()
        self._part_queued.clear()
        self._waiting_since.clear()
        super().clear()  # the counts and events (its own queue is never used here)
        return dropped

    def _waits_for(self, now: float) -> float:
        """Seconds left to wait for a partition that has more but none queued (0: none)."""
        self._waiting_since = {tp: self._waiting_since.get(tp, now) for tp in self.lanes.lagging(self.topics)
                               if not self._part_queued.get(tp)}
        return max((IDLE_WAIT_S - (now - since) for since in self._waiting_since.values()), default=0.0)

    async def _ready(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.queued and (left := self._waits_for(loop.time())) > 0:
                self._waiting = True
                self._room.set()
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    pass
        finally:
            self._waiting = False

    def _pop(self, max_records: int) -> list[Record]:
        now = asyncio.get_running_loop().time()
        stale = {tp for tp, since in self._waiting_since.items() if now - since >= IDLE_WAIT_S}
        heads = [(_stamp(lists[0][0]), tp) for tp, lists in self._parts.items() if lists]
        heapq.heapify(heads)
        batch: list[Record] = []
        while heads and len(batch) < max_records:
            _, tp = heapq.heappop(heads)
            bound = heads[0][0] if heads else float("inf")
            lists = self._parts[tp]
            taken = 0
            while lists and len(batch) < max_records:
                head = lists[0]
                i, n, room = 0, len(head), max_records - len(batch)
                while i < n and i < room and (i == 0 and taken == 0 or _stamp(head[i]) <= bound):
                    i += 1
                batch.extend(head[:i])
                taken += i
                if i < n:
                    lists[0] = head[i:]
                    break
                lists.popleft()
            self._part_queued[tp] -= taken
            if lists:
                if len(batch) < max_records:
                    heapq.heappush(heads, (_stamp(lists[0][0]), tp))
            elif tp not in stale and self.lanes.is_lagging(tp):
                break  # its next records may be earlier than the others' queued ones
        return batch


def _stamp(record: Record) -> float:
    return record.timestamp if record.timestamp is not None else 0.0


class Lanes:
    """Every reader of every lane topic, and the order each partition is handed on in.

    `seek(tp, offset)` asks the consumer to read a partition again from an offset;
    `touch(tps)` tells faust's commit loop these partitions have something to commit."""

    def __init__(self) -> None:
        self.readers: dict[str, list[Reader]] = {}
        self.expected: dict[TP, int | None] = {}
        self._holes: dict[TP, Hole] = {}
        self.dropped: dict[TP, int] = {}  # tp → first record dropped by a rebalance
        self.arrived: dict[TP, float] = {}  # tp → when a fetched list of it last came (monotonic)
        self._registered = asyncio.Event()
        self.wanted: Mapping[str, int] = {}  # topic → readers it must have before records flow
        self.touch: Callable[[Iterable[TP]], None] = lambda tps: None
        # tp → the broker held records of it past the consumer's position at its last fetch
        self.has_more: Callable[[TP], bool] = lambda tp: False

    # ---------------------------------------------------------------- readers
    def reader(self, agent: str, topics: Iterable[str], capacity: int, *,
               time_ordered: bool = False) -> Reader:
        reader = (TimeOrderedReader if time_ordered else Reader)(self, agent, topics, capacity)
        for topic in reader.topics:
            self.readers.setdefault(topic, []).append(reader)
        self._registered.set()
        return reader

    def unregister(self, reader: Reader) -> None:
        for topic in reader.topics:
            listed = self.readers.get(topic, [])
            if reader in listed:
                listed.remove(reader)

    def is_lagging(self, tp: TP) -> bool:
        """A placed partition with records on the broker the consumer has not handed over yet
        (as of its last fetch). Against the consumer's position, not the next offset to hand
        on: a transaction's commit marker ends the log past the last record, and the position
        moves past it. A list between faust's consumer thread and the lane is not seen: in that
        instant a batch may take other partitions' later records (order is kept on a best
        effort; nothing is lost or repeated either way)."""
        return self.expected.get(tp) is not None and self.has_more(tp)

    def lagging(self, topics: Iterable[str]) -> list[TP]:
        """The placed partitions of `topics` that are lagging (`is_lagging`)."""
        return [tp for tp in self.expected if tp.topic in topics and self.is_lagging(tp)]

    def ready(self, topic: str) -> bool:
        return len(self.readers.get(topic, ())) >= self.wanted.get(topic, 1)

    # ---------------------------------------------------------------- delivery
    async def deliver(self, fetched: Mapping[TP, Sequence[Any]], still_current: Callable[[], bool],
                      seek: Callable[[TP, int], Awaitable[Any]]) -> None:
        """Hand each partition's fetched records (aiokafka ConsumerRecords) to its readers, in
        order, each list whole. `still_current()` is False once a rebalance has begun: what is
        not handed on by then is dropped (faust seeks back to the committed offsets after it)."""
        now = time.monotonic()
        for tp in fetched:
            self.arrived[tp] = now
        # Partitions every reader has room for first: a time-ordered reader may be waiting
        # for one of them while another's list waits for room behind it.
        for tp, fetched_records in sorted(fetched.items(), key=lambda item: not self._has_room(item[0])):
            if not fetched_records:
                continue
            while not self.ready(tp.topic):
                self._registered.clear()
                try:
                    await asyncio.wait_for(self._registered.wait(), 10)
                except TimeoutError:
                    log.error("no reader for a lane topic after 10 s: its records wait",
                              extra={"metadata": {"topic": tp.topic, "agents_expected":
                                                  self.wanted.get(tp.topic, 1)}})
            readers = self.readers[tp.topic]
            for reader in readers:
                await reader.wait_room(tp)
            if not still_current():
                return
            if tp not in self.expected:
                # Not sought since this worker took it: faust resumes fetching (for its table
                # recovery) before it seeks the stream partitions, and a list fetched at the
                # old position, handed on now, was applied ahead of the records the seek then
                # read again (which the state took for replays) and committed past them. The
                # seek reads it again; with no commit to seek to, `reset` rewinds to it.
                self._note_dropped(tp, fetched_records[0].offset)
                continue
            first = fetched_records[0].offset
            want = self.expected[tp]
            if want is None:
                log.info("partition with no committed offset: reading from its first record fetched",
                         extra={"metadata": {"topic": tp.topic, "partition": tp.partition, "offset": first}})
            if want is not None and first != want:
                if first < want:  # read again after a seek: the head was handed on already
                    fetched_records = [r for r in fetched_records if r.offset >= want]
                    if not fetched_records:
                        continue
                elif not await self._pass_hole(tp, want, first, seek):
                    continue
            records = to_records(tp, fetched_records)
            for reader in readers:
                reader.put(records)
            self.expected[tp] = records[-1].offset + 1
            self._holes.pop(tp, None)

    def _has_room(self, tp: TP) -> bool:
        return all(reader.has_room(tp) for reader in self.readers.get(tp.topic, ()))

    async def _pass_hole(self, tp: TP, want: int, got: int,
                         seek: Callable[[TP, int], Awaitable[Any]]) -> bool:
        """A fetched list starts past the expected offset. False: the partition was sought
        back (this list is dropped). True: the hole was sought often enough to be real."""
        hole = self._holes.get(tp)
        now = time.monotonic()
        if hole is None or hole.offset != want:
            hole = self._holes[tp] = Hole(want)
        if hole.seeks >= HOLE_SEEKS:
            log.warning("no record at an offset after %d seeks: going on after it", hole.seeks,
                        extra={"metadata": {"topic": tp.topic, "partition": tp.partition,
                                            "offset": want, "next": got}})
            del self._holes[tp]
            return True
        if now - hole.sought_at >= HOLE_RETRY_S:
            hole.seeks += 1
            hole.sought_at = now
            log.info("records passed over before a rebalance or a seek: partition read again "
                     "from the first one", extra={"metadata": {
                         "topic": tp.topic, "partition": tp.partition, "offset": want, "next": got}})
            await seek(tp, want)
        return False

    # ---------------------------------------------------------------- rebalances and commits
    def clear(self) -> None:
        """Drop every queued record (a rebalance begins). faust seeks the partitions it keeps
        to their committed offsets afterwards; one with no committed offset is not sought, so
        its first dropped record is remembered (`reset` reads it again from there)."""
        for readers in self.readers.values():
            for reader in readers:
                for tp, offset in reader.clear().items():
                    self._note_dropped(tp, offset)

    def _note_dropped(self, tp: TP, offset: int) -> None:
        """Remember the first record of `tp` dropped while a rebalance runs."""
        if offset < self.dropped.get(tp, offset + 1):
            self.dropped[tp] = offset

    async def wait_idle(self) -> None:
        for readers in list(self.readers.values()):
            for reader in readers:
                await reader.wait_idle()

    def reset(self, positions: Mapping[TP, int | None]) -> dict[TP, int]:
        """The consumer was sought to these committed offsets (None or < 0: none committed).
        Returns the partitions to seek (again): ones whose records were dropped while the
        rebalance ran (read again from the commit, or with none from the first dropped one).
        Otherwise a partition with no committed offset takes the first record fetched as its
        start."""
        rewind: dict[TP, int] = {}
        for tp, offset in positions.items():
            if tp.topic not in self.readers and tp.topic not in self.wanted:
                continue
            self._holes.pop(tp, None)
            dropped = self.dropped.pop(tp, None)
            if offset is not None and offset >= 0:
                self.expected[tp] = offset
                if dropped is not None:
                    # Dropped while waiting for this seek, perhaps fetched after faust's own seek
                    # to the commit (it runs before this): the consumer may be past them, and
                    # nothing else would read them again (CI, a node and a worker killed: the
                    # lane stayed at 5371 with the consumer at the end, 20000).
                    rewind[tp] = offset
            elif dropped is not None:
                self.expected[tp] = rewind[tp] = dropped
            else:
                self.expected[tp] = None
        self.dropped.clear()  # partitions not kept: the next owner reads them from the commit
        return rewind

    def start(self, tp: TP, offset: int | None) -> None:
        """`tp` was sought to `offset` (None: the consumer picks its start; the first record
        fetched is taken as it): its records are handed on from there."""
        self.expected[tp] = offset
        self._holes.pop(tp, None)
        self.dropped.pop(tp, None)  # fetched before the start was known: read again from it

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions this worker no longer holds: their positions are the next owner's."""
        for tp in tps:
            self.expected.pop(tp, None)
            self._holes.pop(tp, None)
            self.arrived.pop(tp, None)
            for reader in self.readers.get(tp.topic, ()):
                reader.finished.pop(tp, None)

    def handed_on(self, tp: TP, position: int | None) -> int | None:
        """How far `tp` has been read for its agents, given the consumer's `position`: None
        while the partition waits for the rebalance's seek (what the consumer fetched meanwhile
        was dropped, and is read again), else the lower of the two. Whether a partition is
        caught up is asked of this, not of the consumer: a worker that called a partition
        idle while its dropped records waited closed their windows early and dropped them as
        late (CI, two nodes down)."""
        if tp.topic not in self.readers and tp.topic not in self.wanted:
            return position
        if tp not in self.expected:
            return None
        expected = self.expected[tp]
        if expected is None or position is None:
            return position
        return min(expected, position)

    def stalled(self, tp: TP, position: int | None, quiet_s: float) -> int | None:
        """Where to read `tp` again from when its records were fetched but never handed on:
        the consumer is past the next offset to hand on and no list of it has come for
        `quiet_s` (were one in flight or queued behind a slow agent, lists would keep coming
        while the consumer is behind). None otherwise.

        A net under the rebalance paths above: on a loaded machine a list could still be lost
        between faust's seek and the lanes' placement (CI with three test sessions side by
        side: the survivor of a SIGKILL held metrics.events:0 at 483 with the consumer at
        1484, and its windows waited for ever)."""
        want = self.expected.get(tp)
        if want is None or position is None or position <= want:
            return None
        now = time.monotonic()
        if now - self.arrived.get(tp, 0.0) < quiet_s:
            return None
        self.arrived[tp] = now  # one seek per quiet period
        self._holes.pop(tp, None)
        return want

    def committable(self, tp: TP) -> int | None:
        """The offset to commit for `tp`: the lowest every reader of its topic has finished up
        to; None while one of them has finished nothing of it."""
        readers = self.readers.get(tp.topic)
        if not readers:
            return None
        low: int | None = None
        for reader in readers:
            mine = reader.finished.get(tp)
            if mine is None:
                return None
            low = mine if low is None or mine < low else low
        return low

    def positions(self) -> dict[TP, int]:
        """Every partition some reader has finished something of (for a commit)."""
        out: dict[TP, int] = {}
        for readers in self.readers.values():
            for reader in readers:
                for tp in reader.finished:
                    value = self.committable(tp)
                    if value is not None:
                        out[tp] = value
        return out
