"""Every place omnistream replaces a faust-streaming behaviour, fenced in one package.

The agents stay faust agents with faust tables: faust subscribes their topics, balances the
partitions, restores and writes the tables, flushes the producer and commits offsets. What it
no longer does is hand the agents' records on one by one: `lanes.py` takes them from each
fetch and gives them to the agents in lists. `install()` puts the pieces below in place before
the app is created; `check()` refuses to start on a faust that no longer has what they wrap.

| faust behaviour replaced | why | upstream | proved by | can go when |
|---|---|---|---|---|
| `Consumer._wait_next_records` also hands the records of agent topics to their lanes (`lanes.Lanes.deliver`), the rest go on to faust | faust's per-record path (Message, conductor, Event, stream iteration, sensors, ack) cost ~200 µs a record: 4.9k records/s for an agent that only acks, against 500k/s for aiokafka | design, no issue | tests/unit/test_lanes.py; bench `metrics` (single records vs Quix) | faust delivers batches to agents itself |
| records of one partition handed on in offset order without a hole, once per consumer generation (a hole is sought back), and only once the rebalance has sought it | faust's fetch loop moves its read offset past a record it gave up on when flow is suspended (`wait_first(callback, suspend_flow)`), and its stream skips and *acks* a record fetched before a rebalance: both lost a record in 20,000 under SIGKILL; and faust fetches again (for its table recovery) before it seeks the stream partitions, so a list from the old position was processed and committed past records the seek read again | faust-streaming #606, #316 (acks and commits) | tests/unit/test_lanes.py; tests/integration/test_crash_e2e.py | — |
| `Consumer._new_offset` of a lane partition: the lowest offset every reader of its topic has finished (`Lanes.committable`) | faust's ack bookkeeping is per record (a list of offsets sorted at every commit) | — | tests/unit/test_lanes.py; the SIGKILL tests | with the first row |
| `Consumer.wait_empty` (a rebalance, a stop) first drops what the lanes queued and waits for the batches in hand | faust waits for its own unacked messages only; a batch finished after its partitions were revoked could commit for the new owner | — | tests/integration/test_crash_e2e.py (rebalance under load) | with the first row |
| records the agents send go to the aiokafka producer behind faust's (`kafka_producer`), not through `Topic.send` / `Producer.send` | `Topic.send` builds a future message with callbacks per record, and `Producer.send` checks the headers against `typing.Mapping` (~3 µs a record); delivery is still awaited by faust's flush before each commit | — | the SIGKILL tests (every output counted) | faust's send path costs as little |
| `Consumer.perform_seek` (after every rebalance) resets each lane partition's expected offset to the committed one, reads again a partition with no commit from the first record a rebalance dropped, and seeks every other lane partition with no commit (or commit 0) to the reset point itself | faust does not seek a partition with no committed offset: records fetched and dropped before its first commit were never read again; and the fetcher then asks the coordinator for the commit a second time, so a stale commit landing in between moved the start past records the restored table lacked (CI: 447 of metric-series:1 lost) | — | tests/unit/test_lanes.py | — |
| aiokafka's `GroupCoordinator.commit_offsets` sends a commit only under the group generation and the assignment it was called in (`_do_commit_offsets` refuses it otherwise, as a failed commit) | a commit delayed past a rebalance (the coordinator moved, the producer flush before it was slow) went out under the new generation, after the partition's new owner had read "no commit": its consumer then started at the stale offset while its restored table missed the old owner's last writes, and 300-360 samples of 20,000 were lost (the cluster tests, 2 cores) | — | tests/integration/test_cluster_e2e.py (three workers, one leaving, one joining); tests/unit/test_lanes.py | aiokafka fences commits by generation |
| `Producer._settings_extra` (faust's aiokafka producer) is `acks=all` with idempotence always, not only inside transactions | a broker that dies after taking a batch makes the producer send it again: without idempotence the partition gets it twice (changelogs, inboxes, output topics) | — | tests/integration/test_cluster_e2e.py (leaders SIGKILLed under load) | faust exposes `enable_idempotence` |

Checked at start-up by attribute (`REQUIRED`) and by version (`TESTED`): a faust release that
renamed what is wrapped fails loudly instead of losing records quietly.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import IllegalGenerationError
from faust.transport.consumer import Consumer
from faust.types import TP

from streams.runtime.faust.lanes import Lanes, Reader, Record

__all__ = ["LANES", "Reader", "Record", "channel_topics", "check", "fetch_is_stale", "install", "known_position",
           "kafka_producer", "lane_topics"]

log = logging.getLogger(__name__)

TESTED = ("0.15.",)  # faust-streaming releases these replacements were written against
REQUIRED = ("_wait_next_records", "_new_offset", "wait_empty", "perform_seek", "seek", "assignment",
            "_acked", "flow_active")
LANES = Lanes()
PIN_LOOKUP_S = 10.0  # the pin's look-up of start offsets; past it the fetcher picks the start

_faust = {name: getattr(Consumer, name) for name in
          ("_wait_next_records", "_new_offset", "wait_empty", "perform_seek")}
_aiokafka = {name: getattr(GroupCoordinator, name) for name in ("commit_offsets", "_do_commit_offsets")}
_COMMIT_GENERATION: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "omnistream_commit_generation", default=None)


def check() -> None:
    """Raise RuntimeError when faust no longer has what this package wraps or reads."""
    version = faust.__version__
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer

    missing = [name for name in REQUIRED if not hasattr(Consumer, name)
               and name not in getattr(Consumer, "__annotations__", {})]
    missing += [f"Producer.{name}" for name in ("_ensure_producer", "_settings_extra")
                if not hasattr(Producer, name)]
    missing += [f"ConsumerThread.{name}" for name in ("_ensure_consumer", "call_thread")
                if not hasattr(AIOKafkaConsumerThread, name)]
    missing += [f"GroupCoordinator.{name}" for name in ("commit_offsets", "_do_commit_offsets")
                if not hasattr(GroupCoordinator, name)]
    if "generation" not in GroupCoordinator.__init__.__code__.co_names:
        missing.append("GroupCoordinator.generation")
    if missing or not version.startswith(TESTED):
        raise RuntimeError(
            f"faust-streaming {version} is not one streams.runtime.faust was written for "
            f"({', '.join(t + 'x' for t in TESTED)})"
            + (f"; missing: {', '.join(missing)}" if missing else ""))


def channel_topics(channel: Any) -> tuple[str, ...]:
    """The topic names a faust channel reads (a Topic names them in `topics`;
    `get_topic_names()` belongs to the conductor, not to a channel)."""
    return tuple(getattr(channel, "topics", None) or ())


def lane_topics(app: Any) -> dict[str, int]:
    """Every topic an agent reads, with how many agents read it (each gets every record)."""
    wanted: dict[str, int] = {}
    for agent in app.agents.values():
        for topic in channel_topics(agent.channel):
            wanted[topic] = wanted.get(topic, 0) + 1
    return wanted


async def _wait_next_records(self: Consumer, timeout: float) -> tuple[Any, Any]:
    generation = self.app.consumer_generation_id
    records, active = await _faust["_wait_next_records"](self, timeout)
    if not records:
        return records, active
    wanted = _lanes_for(self).wanted
    if not any(tp.topic in wanted for tp in records):
        return records, active
    assigned = self.assignment()
    mine: dict[TP, Any] = {}
    rest: dict[Any, Any] = {}
    for tp, fetched in records.items():
        if tp.topic not in wanted:
            rest[tp] = fetched
        elif tp in assigned and (active is None or tp in active):
            mine[TP(tp.topic, tp.partition)] = fetched

    def still_current() -> bool:
        return (self.flow_active and not self.should_stop
                and self.app.consumer_generation_id == generation)

    await LANES.deliver(mine, still_current, self.seek)
    return rest, active


def _lanes_for(consumer: Consumer) -> Lanes:
    """The lanes, bound to this consumer on first use (every agent is declared by then)."""
    if not LANES.wanted:
        LANES.wanted = lane_topics(consumer.app)
        LANES.touch = lambda tps: _touch(consumer, tps)
        LANES.has_more = lambda tp: has_more(consumer.app, tp)
    return LANES


def _touch(consumer: Consumer, tps: Iterable[TP]) -> None:
    """Tell faust's commit loop that these partitions may have something to commit (it looks
    for them in `_acked`, a defaultdict)."""
    acked = consumer._acked
    for tp in tps:
        if tp not in acked:
            acked[tp] = []


def _new_offset(self: Consumer, tp: TP) -> int | None:
    if tp.topic in LANES.wanted:
        return LANES.committable(tp)
    return _faust["_new_offset"](self, tp)


async def _wait_empty(self: Consumer) -> None:
    LANES.clear()
    await LANES.wait_idle()
    _touch(self, LANES.positions())  # faust forgot the revoked partitions' acks: commit them
    await _faust["wait_empty"](self)


async def _perform_seek(self: Consumer) -> None:
    generation = self.app.consumer_generation_id
    lanes = _lanes_for(self)
    mine = [TP(tp.topic, tp.partition) for tp in self.assignment() if tp.topic in lanes.wanted]
    try:
        await _place_lane_partitions(self)
    finally:
        # Cut short (faust gives the seek broker_request_timeout, and cancels it when another
        # rebalance begins): a partition left unplaced would never be handed on. In this same
        # generation it is read from the first record fetched, as before the lanes waited for
        # the seek; a new generation places its partitions itself.
        unplaced = [tp for tp in mine if tp not in lanes.expected]
        if unplaced and self.app.consumer_generation_id == generation:
            log.warning("the rebalance's seek did not finish: partitions read from the first record "
                        "fetched", extra={"metadata": {"partitions": [f"{tp.topic}:{tp.partition}"
                                                                      for tp in unplaced][:20]}})
            for tp in unplaced:
                lanes.start(tp, None)


async def _place_lane_partitions(self: Consumer) -> None:
    await _faust["perform_seek"](self)
    committed: Mapping[TP, int | None] = {TP(tp.topic, tp.partition): offset
                                           for tp, offset in self._read_offset.items()}
    assigned = {TP(tp.topic, tp.partition) for tp in self.assignment()}
    starts = {tp: committed.get(tp) for tp in assigned}
    log.info("partitions assigned: reading from their committed offsets", extra={"metadata": {
        "generation": self.app.consumer_generation_id,
        "from": {f"{tp.topic}:{tp.partition}": offset for tp, offset in sorted(starts.items())
                 if tp.topic in LANES.wanted}}})
    rewind = LANES.reset(starts)
    await _pin_uncommitted(self, [tp for tp, offset in starts.items() if tp.topic in LANES.wanted
                                  and (offset is None or offset <= 0) and tp not in rewind])
    for tp, offset in rewind.items():
        if (starts.get(tp) or 0) > 0 and known_position(self.app, tp) == offset:
            # faust's own seek to the commit holds (nothing was fetched past it): no seek, for
            # a seek while faust's consumer thread hands out a fetch can make aiokafka's
            # fetched_records raise KeyError and crash the fetcher (CI on 5deb443)
            continue
        log.info("records dropped while the rebalance ran: read again", extra={"metadata": {
            "topic": tp.topic, "partition": tp.partition, "offset": offset}})
        await self.seek(tp, offset)


async def _pin_uncommitted(self: Consumer, tps: list[TP]) -> None:
    """Seek the partitions read as having no commit (or commit 0) to where that answer says
    they start. faust seeks only partitions with a commit above 0 and leaves the rest to the
    fetcher, which asks the coordinator for the commit again, later: a stale commit from the
    partition's last owner that lands in between moved the start past records whose writes the
    restored table lacks (CI: the new owner of metric-series:1 read "no commit" and started at
    447)."""
    if not tps:
        return
    LANES.forget(tps)  # nothing fetched before the pin is handed on: it may start elsewhere
    thread = self._thread  # type: ignore[attr-defined]
    consumer = thread._ensure_consumer()
    at_zero = [tp for tp in tps if self._read_offset.get(tp) == 0]
    for tp in at_zero:
        LANES.start(tp, 0)  # before the seek: a list fetched meanwhile is cut or sought back, not lost
        await self.seek(tp, 0)
    rest = [TopicPartition(tp.topic, tp.partition) for tp in tps if tp not in at_zero]
    if not rest:
        return
    # Looked up, then sought to as an offset: aiokafka's seek_to_beginning/end leave the
    # position unset until its own lookup answers, and faust's livelock check reads the
    # position meanwhile and crashes the consumer on aiokafka's assert (CI: three workers).
    look_up = (consumer.beginning_offsets if self.app.conf.consumer_auto_offset_reset == "earliest"
               else consumer.end_offsets)
    try:
        starts = await asyncio.wait_for(thread.call_thread(look_up, rest), PIN_LOOKUP_S)
    except Exception:  # a leader away: the fetcher resets these by itself, as before the pin
        log.warning("partitions with no commit not pinned: their start offsets did not answer",
                    exc_info=True, extra={"metadata": {"partitions": [f"{tp.topic}:{tp.partition}"
                                                                      for tp in rest][:20]}})
        for tp in rest:
            LANES.start(TP(tp.topic, tp.partition), None)
        return
    for tp, offset in starts.items():
        LANES.start(TP(tp.topic, tp.partition), offset)
        await self.seek(TP(tp.topic, tp.partition), offset)


async def _commit_offsets(self: GroupCoordinator, assignment: Any, offsets: Any) -> None:
    token = _COMMIT_GENERATION.set(self.generation)
    try:
        await _aiokafka["commit_offsets"](self, assignment, offsets)
    finally:
        _COMMIT_GENERATION.reset(token)


async def _do_commit_offsets(self: GroupCoordinator, assignment: Any, offsets: Any) -> None:
    """Send the commit only under the generation it was asked in: aiokafka retries a commit
    (coordinator moved, request timed out) with whatever generation is current by then."""
    asked_in = _COMMIT_GENERATION.get()
    subscription = self._subscription.subscription
    current = subscription.assignment if subscription is not None else None
    # Asked in one generation and sent in another, or asked while the group was between a
    # JoinGroup and a SyncGroup (the generation is new, the assignment still the old one).
    if asked_in is not None and (asked_in != self.generation or assignment is not current):
        log.info("commit from before a rebalance not sent", extra={"metadata": {
            "asked_in_generation": asked_in, "generation": self.generation,
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in offsets)[:20]}})
        raise IllegalGenerationError()  # aiokafka turns it into CommitFailedError ("already rebalanced")
    await _aiokafka["_do_commit_offsets"](self, assignment, offsets)


def _aiokafka_consumer(app: Any) -> Any:
    """The AIOKafkaConsumer behind faust's consumer thread (AssertionError or AttributeError
    while it is not started)."""
    return app.consumer._thread._ensure_consumer()


def fetch_is_stale(app: Any, tp: TP, fresh_s: float) -> bool:
    """True when the consumer should be fetching `tp` (assigned, not paused) but no fetch for
    it was answered in the last `fresh_s` seconds: its leader cannot be reached, and the
    highwater the consumer keeps is the last one it was told. A partition paused (by faust's
    recovery or flow control) or never fetched yet is not called stale."""
    try:
        consumer = _aiokafka_consumer(app)
        if tp in consumer.paused():
            return False
        stamp = consumer.last_poll_timestamp(tp)
    except (AssertionError, AttributeError):  # not assigned (any more), or not started
        return False
    return stamp is not None and time.time() - stamp / 1000 > fresh_s


def _partition_state(app: Any, tp: TP) -> Any:
    """aiokafka's state of `tp` (position, highwater) as it is now, without waiting; None when
    the consumer is not started, has no assignment (a rebalance) or does not hold `tp`."""
    try:
        consumer = _aiokafka_consumer(app)
        assignment = consumer._subscription.subscription.assignment
        return assignment.state_value(TopicPartition(tp.topic, tp.partition))
    except (AssertionError, AttributeError):
        return None


def known_position(app: Any, tp: TP) -> int | None:
    """The consumer's position in `tp` if it has one now, without waiting. aiokafka's
    `position()` waits, inside faust's consumer thread, until a position is known, and every
    other call to that thread (the fetch loop's included) queues behind it; a partition paused
    during table recovery may get none until recovery ends, which needs the fetch loop. A timer
    asking for it could starve the recovery it waits for (CI: a worker's recovery received no
    changelog record for two minutes)."""
    state = _partition_state(app, tp)
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def has_more(app: Any, tp: TP) -> bool:
    """The broker held records of `tp` past the consumer's position when its last fetch was
    answered (fetched and not handed over yet, or not fetched yet), read without waiting."""
    state = _partition_state(app, tp)
    if state is None or not state.has_valid_position or state.highwater is None:
        return False
    return int(state.highwater) > int(state.position)


STALL_S = 15.0  # a partition's records fetched, none handed on, nothing fetched since: read again


async def read_stalled_again(app: Any) -> None:
    """Seek each lane partition whose fetched records were lost (Lanes.stalled) back to the
    next offset its agents need."""
    if app.rebalancing:  # the rebalance places its partitions itself
        return
    for tp in list(LANES.expected):
        position = known_position(app, tp)
        offset = LANES.stalled(tp, position, STALL_S)
        if offset is None:
            continue
        log.warning("records fetched but never handed on: partition read again", extra={"metadata": {
            "topic": tp.topic, "partition": tp.partition, "offset": offset, "position": position}})
        try:
            await app.consumer.seek(tp, offset)
        except Exception:  # revoked meanwhile (aiokafka: no assignment for it): not a crash
            log.warning("partition not read again: the seek was refused", exc_info=True,
                        extra={"metadata": {"topic": tp.topic, "partition": tp.partition}})


def kafka_producer(app: Any) -> Any:
    """The aiokafka producer behind the app's faust producer (started with the app): what
    the agents send through (see the table above)."""
    return app.producer._ensure_producer()


def forget(tps: Iterable[TP]) -> None:
    """Partitions this worker no longer holds (after a rebalance's commit)."""
    LANES.forget(tps)


def _idempotent(self: Any) -> Mapping[str, Any]:
    return {"acks": "all", "enable_idempotence": True}


def install() -> None:
    """Put the replacements in place (idempotent); call before the faust app is created."""
    check()
    from faust.transport.drivers.aiokafka import Producer

    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
    Producer._settings_extra = _idempotent  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer.wait_empty = _wait_empty  # type: ignore[method-assign]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    GroupCoordinator.commit_offsets = _commit_offsets
    GroupCoordinator._do_commit_offsets = _do_commit_offsets
