"""Fetch lanes (streams/runtime/faust/lanes.py): order, holes, backpressure, rebalances and the
offset committed for a partition read by several agents. The crash tests prove the whole
against a real broker with SIGKILL; these pin the rules one by one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from streams.runtime.faust.lanes import HOLE_SEEKS, Lanes, Reader


@dataclass
class Fetched:  # the fields of an aiokafka ConsumerRecord a lane reads
    offset: int
    timestamp: int | None = 1_790_000_000_000
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    headers: list = field(default_factory=list)


def fetched(*offsets: int) -> list[Fetched]:
    return [Fetched(o) for o in offsets]


A0, A1 = TP("a", 0), TP("a", 1)


class Seeks:
    def __init__(self) -> None:
        self.calls: list[tuple[TP, int]] = []

    async def __call__(self, tp: TP, offset: int) -> None:
        self.calls.append((tp, offset))


def current() -> bool:
    return True


def sought(lanes: Lanes, *tps: TP) -> None:
    """The rebalance's seek, for partitions with no commit (what every fresh test starts from)."""
    lanes.reset(dict.fromkeys(tps or (A0, A1)))


async def test_records_reach_every_reader_of_their_topic_in_order():
    lanes = Lanes()
    lanes.wanted = {"a": 2}
    first, second = lanes.reader("x", ["a"], 100), lanes.reader("y", ["a", "b"], 100)
    sought(lanes)
    await lanes.deliver({A0: fetched(0, 1, 2), A1: fetched(5)}, current, Seeks())
    batch = await first.take(10, 0.0)
    assert [(r.partition, r.offset) for r in batch] == [(0, 0), (0, 1), (0, 2), (1, 5)]
    assert batch[0].message is batch[0] and batch[0].tp == A0 and batch[0].timestamp == 1_790_000_000.0
    assert [r.offset for r in await second.take(2, 0.0)] == [0, 1]  # a batch may split a fetch
    assert [r.offset for r in await second.take(10, 0.0)] == [2, 5]


async def test_a_fetch_read_again_is_cut_and_a_hole_is_sought_back_until_it_proves_empty():
    lanes, seeks = Lanes(), Seeks()
    reader = lanes.reader("x", ["a"], 100)
    lanes.reset({A0: 10})
    await lanes.deliver({A0: fetched(10, 11, 12)}, current, seeks)
    await lanes.deliver({A0: fetched(11, 12, 13)}, current, seeks)  # 11, 12 handed on already
    assert [r.offset for r in await reader.take(10, 0.0)] == [10, 11, 12, 13]
    await lanes.deliver({A0: fetched(15, 16)}, current, seeks)  # 14 passed over
    assert seeks.calls == [(A0, 14)] and reader.queued == 0  # dropped; read again from 14
    await lanes.deliver({A0: fetched(14, 15)}, current, seeks)
    assert [r.offset for r in await reader.take(10, 0.0)] == [14, 15]
    # a hole that stays after HOLE_SEEKS seeks holds no record: go on after it
    import streams.runtime.faust.lanes as lanes_module
    lanes_module.HOLE_RETRY_S, saved = 0.0, lanes_module.HOLE_RETRY_S
    try:
        for _ in range(HOLE_SEEKS):
            await lanes.deliver({A0: fetched(20)}, current, seeks)
        assert reader.queued == 0 and seeks.calls[-HOLE_SEEKS:] == [(A0, 16)] * HOLE_SEEKS
        await lanes.deliver({A0: fetched(20)}, current, seeks)
    finally:
        lanes_module.HOLE_RETRY_S = saved
    assert [r.offset for r in await reader.take(10, 0.0)] == [20]


async def test_nothing_is_handed_on_once_a_rebalance_has_begun():
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100)
    await lanes.deliver({A0: fetched(0, 1)}, lambda: False, Seeks())
    assert reader.queued == 0 and lanes.expected.get(A0) is None


async def test_a_partition_not_sought_since_it_was_taken_is_not_handed_on():
    """faust resumes fetching for its table recovery before it seeks the stream partitions: a
    list fetched at the old position, handed on then, was processed and committed past the
    records the seek read again, and a SIGKILL in between lost them (the two-worker test)."""
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100)
    lanes.reset({A0: 819})
    lanes.forget([A0])  # revoked at the rebalance's start (faust revokes everything, then assigns)
    await lanes.deliver({A0: fetched(922, 923)}, current, Seeks())
    assert reader.queued == 0 and A0 not in lanes.expected
    lanes.reset({A0: 819})  # the seek: read again from the commit
    await lanes.deliver({A0: fetched(819, 820)}, current, Seeks())
    assert [r.offset for r in await reader.take(10, 0.0)] == [819, 820]


async def test_commit_is_the_lowest_offset_every_reader_has_finished():
    lanes = Lanes()
    touched: list = []
    lanes.touch = lambda tps: touched.extend(tps)
    fast, slow = lanes.reader("fast", ["a"], 100), lanes.reader("slow", ["a"], 100)
    sought(lanes)
    await lanes.deliver({A0: fetched(0, 1, 2, 3)}, current, Seeks())
    fast.done(await fast.take(10, 0.0))
    assert lanes.committable(A0) is None  # the slow reader has finished nothing yet
    part = await slow.take(2, 0.0)
    slow.done(part)
    assert lanes.committable(A0) == 2 and A0 in touched
    slow.done(await slow.take(10, 0.0), handed_back=True)  # given up: not committed
    assert lanes.committable(A0) == 2 and slow.in_hand == 0


async def test_a_full_reader_holds_the_fetch_back_until_it_takes():
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 3)
    sought(lanes)
    await lanes.deliver({A0: fetched(0, 1, 2)}, current, Seeks())
    blocked = asyncio.ensure_future(lanes.deliver({A0: fetched(3, 4)}, current, Seeks()))
    await asyncio.sleep(0.01)
    assert not blocked.done() and reader.queued == 3
    await reader.take(2, 0.0)
    await asyncio.wait_for(blocked, 1)
    assert [r.offset for r in await reader.take(10, 0.0)] == [2, 3, 4]


async def test_a_rebalance_drops_what_is_queued_and_waits_for_the_batch_in_hand():
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100)
    sought(lanes)
    await lanes.deliver({A0: fetched(0, 1), A1: fetched(7)}, current, Seeks())
    in_hand = await reader.take(1, 0.0)
    lanes.clear()
    assert reader.queued == 0
    idle = asyncio.ensure_future(lanes.wait_idle())
    await asyncio.sleep(0.01)
    assert not idle.done()
    reader.done(in_hand)
    await asyncio.wait_for(idle, 1)
    # kept partitions: A0 has a commit (faust sought it there, and it is sought there again:
    # its dropped list may have been fetched after faust's seek); A1 has none, so it is read
    # again from its first dropped record
    assert lanes.reset({A0: 1, A1: None}) == {A0: 1, A1: 7}
    assert lanes.expected == {A0: 1, A1: 7}


async def test_take_waits_within_the_window_for_a_fuller_batch():
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100)
    sought(lanes)
    await lanes.deliver({A0: fetched(0)}, current, Seeks())
    taking = asyncio.ensure_future(reader.take(3, 0.5))
    await asyncio.sleep(0.01)
    await lanes.deliver({A0: fetched(1, 2)}, current, Seeks())
    batch = await asyncio.wait_for(taking, 1)
    assert [r.offset for r in batch] == [0, 1, 2]



def stamped(*pairs: tuple[int, int]) -> list[Fetched]:
    """(offset, timestamp in ms) records."""
    return [Fetched(o, ts) for o, ts in pairs]


def order(batch) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in batch]


async def test_a_time_ordered_reader_merges_its_partitions_by_timestamp():
    """A producer's sticky batches put whole blocks of a stream in one partition: the reader
    hands them on in publish order, each partition's records still in offset order."""
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100, time_ordered=True)
    sought(lanes)
    # A1 holds the earlier block, fetched after A0's
    await lanes.deliver({A0: stamped((0, 30), (1, 31), (2, 40)), A1: stamped((0, 10), (1, 35))},
                        current, Seeks())
    assert order(await reader.take(3, 0.0)) == [(1, 0), (0, 0), (0, 1)]
    assert order(await reader.take(10, 0.0)) == [(1, 1), (0, 2)]
    # a timestamp going back within a partition does not reorder it
    await lanes.deliver({A0: stamped((3, 50), (4, 5)), A1: stamped((2, 45))}, current, Seeks())
    batch = await reader.take(10, 0.0)
    assert order(batch) == [(1, 2), (0, 3), (0, 4)]
    reader.done(batch)
    assert lanes.committable(A0) == 5 and lanes.committable(A1) == 3


async def test_a_time_ordered_batch_waits_for_a_partition_that_has_more(monkeypatch):
    """Kafka Streams' timestamp synchronisation: a partition with records on the broker and
    none queued may hold the earliest ones, so a batch waits for it — for IDLE_WAIT_S at most."""
    import streams.runtime.faust.lanes as lanes_module

    lanes = Lanes()
    highwater = {A0: 3, A1: 2}
    lanes.has_more = lambda tp: highwater[tp] > lanes.expected[tp]  # the consumer's position: handed on
    reader = lanes.reader("x", ["a"], 100, time_ordered=True)
    sought(lanes)
    lanes.reset({A0: 0, A1: 0})
    await lanes.deliver({A0: stamped((0, 20), (1, 21), (2, 22))}, current, Seeks())
    taking = asyncio.ensure_future(reader.take(10, 0.0))
    await asyncio.sleep(0.05)
    assert not taking.done()  # A1 has two records on the broker, none here
    await lanes.deliver({A1: stamped((0, 10), (1, 30))}, current, Seeks())
    # A1 is caught up now (its highwater is handed on): nothing holds the rest back
    assert order(await asyncio.wait_for(taking, 1)) == [(1, 0), (0, 0), (0, 1), (0, 2), (1, 1)]

    # A1 runs dry inside a batch while it has more: the batch stops there
    highwater[A1] = 5
    await lanes.deliver({A0: stamped((3, 40), (4, 60)), A1: stamped((2, 50))}, current, Seeks())
    monkeypatch.setattr(lanes_module, "IDLE_WAIT_S", 0.2)
    assert order(await reader.take(10, 0.0)) == [(0, 3), (1, 2)]
    # ... and the next waits for it, then goes on without it (a leader away stops no one)
    began = asyncio.get_running_loop().time()
    assert order(await reader.take(10, 0.0)) == [(0, 4)]
    assert asyncio.get_running_loop().time() - began >= 0.19


async def a0_full(highwater: dict[TP, int]) -> tuple[Lanes, Reader]:
    """A time-ordered reader of room 2 holding two records of A0; the consumer's position in
    each partition is what was handed on, the broker's end `highwater`."""
    lanes = Lanes()
    lanes.has_more = lambda tp: highwater[tp] > lanes.expected[tp]
    reader = lanes.reader("x", ["a"], 2, time_ordered=True)
    lanes.reset({A0: 0, A1: 0})
    await lanes.deliver({A0: stamped((0, 50), (1, 51))}, current, Seeks())
    return lanes, reader


async def test_a_partition_the_reader_has_room_for_is_put_before_one_that_waits_for_room():
    lanes, reader = await a0_full({A0: 100, A1: 1})
    # A1 is behind A0's list in the fetch, and the reader waits for A1: it is put first
    delivering = asyncio.ensure_future(lanes.deliver(
        {A0: stamped((2, 52)), A1: stamped((0, 10))}, current, Seeks()))
    await asyncio.sleep(0.05)
    assert reader.queued == 3 and not delivering.done()
    assert order(await asyncio.wait_for(reader.take(2, 0.0), 1)) == [(1, 0), (0, 0)]
    await asyncio.wait_for(delivering, 1)


async def test_while_a_batch_waits_for_a_partition_a_full_one_does_not_hold_the_fetches_back():
    """The list a batch waits for comes with the next fetch, which waits for the lane: a full
    partition must not keep the lane (and every other agent's topic) waiting on the batch."""
    lanes, reader = await a0_full({A0: 100, A1: 5})
    taking = asyncio.ensure_future(reader.take(10, 0.0))  # waits for A1
    await asyncio.sleep(0.01)
    await asyncio.wait_for(lanes.deliver({A0: stamped((2, 52))}, current, Seeks()), 0.5)
    assert not taking.done()
    await lanes.deliver({A1: stamped((0, 10), (4, 60))}, current, Seeks())
    # A0 has more on the broker: the batch stops when its records run out, before A1's later one
    assert order(await asyncio.wait_for(taking, 0.5)) == [(1, 0), (0, 0), (0, 1), (0, 2)]


async def test_records_wait_for_every_agent_of_their_topic_to_register():
    lanes = Lanes()
    lanes.wanted = {"a": 2}
    first = lanes.reader("x", ["a"], 100)
    sought(lanes)
    delivering = asyncio.ensure_future(lanes.deliver({A0: fetched(0)}, current, Seeks()))
    await asyncio.sleep(0.01)
    assert not delivering.done() and first.queued == 0
    second = lanes.reader("y", ["a"], 100)
    await asyncio.wait_for(delivering, 1)
    assert first.queued == second.queued == 1


@pytest.mark.parametrize("offsets", [(0, 1, 2), (5,)])
async def test_forget_drops_a_partition_that_moved(offsets):
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100)
    sought(lanes)
    await lanes.deliver({A0: fetched(*offsets)}, current, Seeks())
    reader.done(await reader.take(10, 0.0))
    assert lanes.committable(A0) == offsets[-1] + 1
    lanes.forget([A0])
    assert lanes.committable(A0) is None and A0 not in lanes.expected


class Coordinator:  # the fields of aiokafka's GroupCoordinator the commit fence reads
    def __init__(self, generation: int, assignment: object) -> None:
        self.generation = generation
        subscription = type("Subscription", (), {"assignment": assignment})()
        self._subscription = type("SubscriptionState", (), {"subscription": subscription})()


async def test_a_commit_is_sent_only_under_the_generation_and_assignment_it_was_asked_in(monkeypatch):
    """aiokafka retries a commit with whatever generation is current by then: one asked before a
    rebalance must not land after it (the partition's new owner has already read "no commit")."""
    from aiokafka.errors import IllegalGenerationError

    import streams.runtime.faust as runtime

    sent: list[tuple[int, dict]] = []

    async def send(self, assignment, offsets):
        sent.append((self.generation, offsets))

    async def commit_with_a_rebalance_before_sending(self, assignment, offsets):
        await runtime._do_commit_offsets(self, assignment, offsets)  # sent at once: fine
        self.generation += 1  # the group rebalanced while aiokafka waited to retry
        await runtime._do_commit_offsets(self, assignment, offsets)

    monkeypatch.setitem(runtime._aiokafka, "_do_commit_offsets", send)
    monkeypatch.setitem(runtime._aiokafka, "commit_offsets", commit_with_a_rebalance_before_sending)
    old = object()
    coordinator = Coordinator(4, old)
    with pytest.raises(IllegalGenerationError):
        await runtime._commit_offsets(coordinator, old, {A0: 10})
    assert sent == [(4, {A0: 10})]

    # Asked between a JoinGroup and its SyncGroup: the generation is already new, the assignment
    # it was asked for is not the one the group settles on.
    async def commit_as_sync_completes(self, assignment, offsets):
        self._subscription.subscription.assignment = object()
        await runtime._do_commit_offsets(self, assignment, offsets)

    monkeypatch.setitem(runtime._aiokafka, "commit_offsets", commit_as_sync_completes)
    with pytest.raises(IllegalGenerationError):
        await runtime._commit_offsets(Coordinator(5, old), old, {A1: 3})
    assert sent == [(4, {A0: 10})]


class AssignedConsumer:  # the fields of faust's aiokafka Consumer that `_perform_seek` reads
    def __init__(self, committed: dict[TP, int | None], reset: str) -> None:
        self.committed = committed
        self._read_offset: dict[TP, int | None] = {}
        self.sought: list[tuple[TP, int]] = []
        self.to_reset_point: list[tuple[str, tuple[TP, ...]]] = []
        conf = type("Conf", (), {"consumer_auto_offset_reset": reset})()
        self.app = type("App", (), {"conf": conf, "consumer_generation_id": 7})()
        outer = self

        class Kafka:  # aiokafka's consumer, in faust's consumer thread
            async def beginning_offsets(self, tps: list[TopicPartition]) -> dict:
                outer.to_reset_point.append(("beginning", self.checked(tuple(tps))))
                return dict.fromkeys(tps, 3)

            async def end_offsets(self, tps: list[TopicPartition]) -> dict:
                outer.to_reset_point.append(("end", self.checked(tuple(tps))))
                return dict.fromkeys(tps, 99)

            @staticmethod
            def checked(tps: tuple) -> tuple:
                if not all(type(tp) is TopicPartition for tp in tps):  # as aiokafka refuses them
                    raise TypeError("partitions must be TopicPartition instances")
                return tps

        class Thread:
            def _ensure_consumer(self) -> Kafka:
                return Kafka()

            async def call_thread(self, fn, *args):
                return await fn(*args)

        self._thread = Thread()

    def assignment(self) -> set[TP]:
        return set(self.committed)

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


@pytest.mark.parametrize("reset", ["earliest", "latest"])
async def test_a_partition_read_as_uncommitted_is_pinned_to_where_that_answer_starts_it(monkeypatch, reset):
    """faust seeks only partitions with a commit above 0; the fetcher asked the coordinator again
    later and took a stale commit that landed in between (the new owner of metric-series:1 read
    "no commit" and started at 447). Every lane partition is pinned by the answer read here."""
    import streams.runtime.faust as runtime

    async def faust_perform_seek(self) -> None:
        self._read_offset.update(self.committed)

    lanes = Lanes()
    lanes.wanted = {"a": 1, "b": 1}
    monkeypatch.setattr(runtime, "LANES", lanes)
    monkeypatch.setitem(runtime._faust, "perform_seek", faust_perform_seek)
    B0, C0 = TP("b", 0), TP("c", 0)  # c is not read by an agent (a changelog): faust's own
    consumer = AssignedConsumer({A0: None, A1: 0, B0: 12, C0: None}, reset)
    await runtime._perform_seek(consumer)
    # sought to an offset (aiokafka's seek_to_* leaves the position unset while it looks it up,
    # and faust's livelock check asserts on it)
    assert consumer.sought == [(A1, 0), (A0, 3 if reset == "earliest" else 99)]
    assert consumer.to_reset_point == [("beginning" if reset == "earliest" else "end", (A0,))]
    # handed on from the pinned offset: a list the fetcher read from elsewhere meanwhile is cut or
    # sought back, not taken as the start
    assert lanes.expected == {A0: 3 if reset == "earliest" else 99, A1: 0, B0: 12}


async def test_records_fetched_while_the_pin_looks_its_start_up_are_not_handed_on(monkeypatch):
    """The pin's look-up waits for the broker; a list the fetcher read meanwhile (from a stale
    commit, say) is not the start, and a look-up that fails leaves the start to the first record
    fetched after it, as before the pin."""
    import streams.runtime.faust as runtime

    async def faust_perform_seek(self) -> None:
        self._read_offset.update(self.committed)

    lanes = Lanes()
    lanes.wanted = {"a": 1}
    reader = lanes.reader("x", ["a"], 100)
    monkeypatch.setattr(runtime, "LANES", lanes)
    monkeypatch.setitem(runtime._faust, "perform_seek", faust_perform_seek)
    consumer = AssignedConsumer({A0: None}, "earliest")
    looking_up = asyncio.Event()
    answer = asyncio.Event()
    kafka = consumer._thread._ensure_consumer()
    failing = {"now": False}

    async def slow_beginning_offsets(tps):
        looking_up.set()
        await answer.wait()
        if failing["now"]:
            raise TimeoutError("leader away")
        return dict.fromkeys(tps, 3)

    kafka.beginning_offsets = slow_beginning_offsets
    consumer._thread._ensure_consumer = lambda: kafka
    seeking = asyncio.ensure_future(runtime._perform_seek(consumer))
    await asyncio.wait([seeking, asyncio.ensure_future(looking_up.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    assert not seeking.done(), "the pin did not look the start up"
    await lanes.deliver({A0: fetched(447, 448)}, current, Seeks())  # the fetcher, from a stale commit
    assert reader.queued == 0
    answer.set()
    await seeking
    await lanes.deliver({A0: fetched(3, 4)}, current, Seeks())
    assert [r.offset for r in await reader.take(10, 0.0)] == [3, 4]

    lanes.forget([A0])
    answer.clear()
    looking_up.clear()
    failing["now"] = True
    seeking = asyncio.ensure_future(runtime._perform_seek(consumer))
    await asyncio.wait([seeking, asyncio.ensure_future(looking_up.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    assert not seeking.done(), "the pin did not look the start up"
    answer.set()
    await seeking
    assert A0 in lanes.expected and lanes.expected[A0] is None
    await lanes.deliver({A0: fetched(5)}, current, Seeks())
    assert [r.offset for r in await reader.take(10, 0.0)] == [5]


async def test_a_partition_waiting_for_its_seek_does_not_read_as_caught_up():
    """What the consumer fetched before the rebalance's seek was dropped and is read again: the
    windows asked "caught up?" of the consumer's position, called the partition idle, closed
    its windows by wall time and then dropped its samples as late (CI, two nodes down)."""
    lanes = Lanes()
    lanes.reader("x", ["a"], 100)
    await lanes.deliver({A0: fetched(40, 41)}, current, Seeks())  # before the seek: dropped
    assert lanes.handed_on(A0, 42) is None
    lanes.reset({A0: 10})
    assert lanes.handed_on(A0, 42) == 10  # the consumer is ahead of what was handed on
    await lanes.deliver({A0: fetched(10, 11)}, current, Seeks())
    assert lanes.handed_on(A0, 12) == 12
    assert lanes.handed_on(TP("c", 0), 7) == 7  # not a lane topic: the consumer's position


@pytest.mark.parametrize("rebalanced", [False, True])
async def test_a_seek_cut_short_leaves_no_partition_unplaced_in_its_generation(monkeypatch, rebalanced):
    """faust gives the seek broker_request_timeout and cancels it when another rebalance begins:
    in its own generation a partition it did not place is read from the first record fetched
    (it would never be handed on otherwise); a new generation places its partitions itself."""
    import streams.runtime.faust as runtime

    consumer = AssignedConsumer({A0: 5, A1: None}, "earliest")

    async def faust_perform_seek(self) -> None:
        if rebalanced:
            consumer.app.consumer_generation_id += 1
        raise asyncio.CancelledError()

    lanes = Lanes()
    lanes.wanted = {"a": 1}
    monkeypatch.setattr(runtime, "LANES", lanes)
    monkeypatch.setitem(runtime._faust, "perform_seek", faust_perform_seek)
    with pytest.raises(asyncio.CancelledError):
        await runtime._perform_seek(consumer)
    assert lanes.expected == ({} if rebalanced else {A0: None, A1: None})


async def test_a_list_dropped_after_fausts_own_seek_is_read_again(monkeypatch):
    """faust's seek to the commit runs before the lanes learn the start: a list fetched after it,
    while the partition still waited, was dropped, the consumer was at the end and nothing read
    it again (CI: the lane stayed at 5371, the consumer at 20000). It is sought again."""
    import streams.runtime.faust as runtime

    lanes = Lanes()
    lanes.wanted = {"a": 1}
    reader = lanes.reader("x", ["a"], 100)
    consumer = AssignedConsumer({A0: 5371}, "earliest")

    async def faust_perform_seek(self) -> None:
        self._read_offset.update(self.committed)
        await lanes.deliver({A0: fetched(5371, 5372)}, current, Seeks())  # fetched after its seek

    monkeypatch.setattr(runtime, "LANES", lanes)
    monkeypatch.setitem(runtime._faust, "perform_seek", faust_perform_seek)
    await runtime._perform_seek(consumer)
    assert reader.queued == 0 and consumer.sought == [(A0, 5371)] and lanes.expected[A0] == 5371
    await lanes.deliver({A0: fetched(5371, 5372)}, current, Seeks())
    assert [r.offset for r in await reader.take(10, 0.0)] == [5371, 5372]


def test_the_position_is_read_without_waiting_for_one():
    """aiokafka's position() waits in faust's consumer thread until a position is known, and
    the fetch loop queues behind it; the windows and the lag gauge read what is known now."""
    import types

    from streams.runtime.faust import known_position

    states = {TopicPartition("a", 0): types.SimpleNamespace(has_valid_position=True, position=41),
              TopicPartition("a", 1): types.SimpleNamespace(has_valid_position=False, position=None)}
    assignment = types.SimpleNamespace(state_value=states.get)
    kafka = types.SimpleNamespace(_subscription=types.SimpleNamespace(
        subscription=types.SimpleNamespace(assignment=assignment)))
    app = types.SimpleNamespace(consumer=types.SimpleNamespace(
        _thread=types.SimpleNamespace(_ensure_consumer=lambda: kafka)))
    assert known_position(app, A0) == 41
    assert known_position(app, A1) is None  # awaiting its reset: not waited for
    assert known_position(app, TP("b", 0)) is None
    kafka._subscription.subscription = None  # between assignments
    assert known_position(app, A0) is None


def test_a_partition_has_more_while_its_highwater_is_past_the_position():
    """What a time-ordered reader waits for; a transaction's commit marker after the last
    record is passed by the position, so it is not waited for."""
    import types

    from streams.runtime.faust import has_more

    state = types.SimpleNamespace(has_valid_position=True, position=41, highwater=50)
    assignment = types.SimpleNamespace(state_value={TopicPartition("a", 0): state}.get)
    kafka = types.SimpleNamespace(_subscription=types.SimpleNamespace(
        subscription=types.SimpleNamespace(assignment=assignment)))
    app = types.SimpleNamespace(consumer=types.SimpleNamespace(
        _thread=types.SimpleNamespace(_ensure_consumer=lambda: kafka)))
    assert has_more(app, A0)
    state.position = 50  # the last record at 48, the commit marker at 49
    assert not has_more(app, A0)
    state.highwater = None  # not fetched yet
    assert not has_more(app, A0) and not has_more(app, A1)
    kafka._subscription.subscription = None  # between assignments
    assert not has_more(app, A0)


async def test_records_fetched_but_never_handed_on_are_read_again_once_nothing_more_comes(monkeypatch):
    """A list lost between faust's seek and the lanes' placement (a loaded machine): the
    consumer is past the lane and nothing of it comes any more; after a quiet spell the
    partition is sought back to what its agents need next, once per quiet spell."""
    clock = [100.0]
    monkeypatch.setattr("streams.runtime.faust.lanes.time.monotonic", lambda: clock[0])
    lanes = Lanes()
    reader = lanes.reader("x", ["a"], 100)
    lanes.reset({A0: 483})
    await lanes.deliver({A0: fetched(483, 484)}, current, Seeks())
    assert lanes.stalled(A0, 485, 15) is None  # caught up
    lanes.reset({A0: 485})  # placed again, the list from 485 on lost: the consumer is at 1484
    assert lanes.stalled(A0, 1484, 15) is None  # a list may be in flight: wait
    clock[0] += 10
    await lanes.deliver({A1: fetched(7)}, current, Seeks())  # another partition's lists come
    clock[0] += 6
    assert lanes.stalled(A0, 1484, 15) == 485
    assert lanes.stalled(A0, 1484, 15) is None  # sought: not again within the quiet spell
    await lanes.deliver({A0: fetched(485, 486)}, current, Seeks())
    assert [r.offset for r in await reader.take(10, 0.0)] == [483, 484, 485, 486]
    clock[0] += 60
    assert lanes.stalled(A0, 487, 15) is None  # handed on up to the position
    assert lanes.stalled(A1, 8, 15) is None  # no start known (never placed): not ours to seek
