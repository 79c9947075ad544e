"""The metric aggregator's contract, without Kafka: a dict for the table, a list for the sink."""

from __future__ import annotations

import pytest

from agents.monitoring.windows import WindowSpec, series_key
from streams.monitoring.aggregator import Aggregator

WHERE = "metrics.events:0"


class ListSink:
    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.rows: list[tuple] = []
        self.committed: list[tuple] = []
        self.log, self.fail = log, fail

    def add_nowait(self, row: tuple, source: object = None) -> None:
        self.rows.append(row)

    async def flush(self) -> int:
        if self.fail:
            raise ConnectionError("database away")
        self.log.append(f"flush {len(self.rows)}")
        self.committed += self.rows
        n, self.rows = len(self.rows), []
        return n


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now



async def _checkpoint(agg: Aggregator, touched: set[int], put, held) -> list:
    """The aggregator's end of a batch, as its checkpoint runs it: flush, then save."""
    closed = await agg.flush(touched)
    agg.save({p for p in touched if held(p)}, put)
    return closed

def _aggregator(table: dict, sink: ListSink, clock: Clock) -> Aggregator:
    return Aggregator(table, [WindowSpec(10)], lateness_s=1.0, idle_close_s=30.0, sink=sink, clock=clock,
                      monotonic=clock)


def _samples(start: int, n: int, t0: float) -> list[tuple[float, float, int]]:
    """(value, event time, position) of samples start .. start + n - 1 from WHERE."""
    return [(float(i), t0 + i * 0.5, i) for i in range(start, start + n)]


def _fold(agg: Aggregator, partition: int, name: str, metric_type: str, labels: dict[str, str],
          samples: list[tuple[float, float, int]]) -> int:
    return agg.add_columns(partition, name, metric_type, labels, WHERE, [s[0] for s in samples],
                           [s[1] for s in samples], [s[2] for s in samples])


async def test_windows_are_committed_before_any_series_record_says_they_closed():
    log: list[str] = []
    table: dict[bytes, bytes] = {}
    clock = Clock(2000.0)
    agg = _aggregator(table, ListSink(log), clock)

    def put(partition: int, key: bytes, value: bytes) -> None:
        log.append(f"put {key.decode()}")
        table[key] = value

    assert _fold(agg, 0, "m", "gauge", {}, _samples(0, 30, 1000.0)) == 30  # 1000 .. 1014.5
    closed = await _checkpoint(agg, {0}, put, lambda p: True)
    assert [a.start for _, a in closed] == [1000.0]  # 1010-1020 is still open (watermark 1014.5)
    assert log == ["flush 1", f"put 0|{series_key('m', {})}"]
    assert agg.sink.committed[0][6] == 20  # sample_count of the closed window


async def test_a_failing_sink_writes_no_record_and_the_replay_closes_the_same_window_once():
    log: list[str] = []
    table: dict[bytes, bytes] = {}
    clock = Clock(2000.0)
    failing = _aggregator(table, ListSink(log, fail=True), clock)
    _fold(failing, 0, "m", "gauge", {}, _samples(0, 30, 1000.0))
    with pytest.raises(ConnectionError):
        await _checkpoint(failing, {0}, lambda p, k, v: table.__setitem__(k, v), lambda p: True)
    assert table == {}  # not acked, nothing says "closed"

    sink = ListSink(log)
    restarted = _aggregator(table, sink, clock)  # the batch is replayed from its offsets
    assert _fold(restarted, 0, "m", "gauge", {}, _samples(0, 30, 1000.0)) == 30
    await _checkpoint(restarted, {0}, lambda p, k, v: table.__setitem__(k, v), lambda p: True)
    assert [r[6] for r in sink.committed] == [20]


async def test_after_a_restart_samples_the_record_holds_are_skipped():
    table: dict[bytes, bytes] = {}
    clock = Clock(2000.0)
    first = _aggregator(table, ListSink([]), clock)
    _fold(first, 0, "m", "gauge", {"s": "a"}, _samples(0, 12, 1000.0))
    await _checkpoint(first, {0}, lambda p, k, v: table.__setitem__(k, v), lambda p: True)

    restarted = _aggregator(table, ListSink([]), clock)
    assert _fold(restarted, 0, "m", "gauge", {"s": "a"}, _samples(0, 20, 1000.0)) == 8
    assert restarted.replayed == 12
    window = next(iter(restarted.windows(0).open.values()))
    assert window.count == 20  # 0..19 at 1000 .. 1009.5: each once


async def test_idle_partitions_close_by_the_clock_and_unheld_partitions_write_nothing():
    table: dict[bytes, bytes] = {}
    clock = Clock(2000.0)
    sink = ListSink([])
    agg = _aggregator(table, sink, clock)
    _fold(agg, 3, "m", "counter", {}, _samples(0, 4, 1000.0))
    assert await _checkpoint(agg, {3}, lambda p, k, v: table.__setitem__(k, v), lambda p: False) == []
    assert table == {}  # revoked meanwhile: the new owner writes it
    clock.now += 31  # silent longer than idle_close_s
    closed = await _checkpoint(agg, {3}, lambda p, k, v: table.__setitem__(k, v), lambda p: True)
    assert len(closed) == 1 and sink.committed[0][6] == 4 and f"3|{series_key('m', {})}".encode() in table


@pytest.mark.parametrize("n", [10, 100])  # one by one, and a run folded with numpy
def test_a_stretch_a_crashed_rekeying_worker_sent_again_is_folded_once(n):
    """The inbox can hold positions 0..n-1, then n/2..n-1 again (the re-keying worker died
    before its commit and its source was read again), then n..: each sample counts once."""
    clock = Clock(2000.0)
    agg = _aggregator({}, ListSink([]), clock)
    first, again, rest = _samples(0, n, 1000.0), _samples(n // 2, n - n // 2, 1000.0), _samples(n, 5, 1000.0)
    assert _fold(agg, 0, "m", "gauge", {}, first + again + rest) == n + 5
    assert agg.replayed == n - n // 2
    w = agg.windows(0)
    assert sum(a.count for a in w.open.values()) == n + 5
    assert w.applied[series_key("m", {})] == {WHERE: n + 4}


def test_wall_time_closes_a_silent_series_only_where_its_sources_are_read_to_the_end():
    """A series silent past idle_close_s because its partition's broker cannot be reached is
    not idle: its windows stay open (the samples on their way would be dropped as late)."""
    clock = Clock(2000.0)
    agg = _aggregator({}, ListSink([]), clock)
    _fold(agg, 0, "m", "gauge", {}, _samples(0, 4, 1990.0))  # window [1990, 2000) still open
    _fold(agg, 1, "m2", "gauge", {}, _samples(0, 4, 1990.0))
    clock.now += 31  # silent for longer than idle_close_s
    assert agg.close_due({0, 1}, idle=set()) == []  # neither partition known to be caught up
    closed = agg.close_due({0, 1}, idle={1})
    assert [p for p, _ in closed] == [1]
    assert [p for p, _ in agg.close_due({0, 1})] == [0]  # no idle set given: wall time closes all
