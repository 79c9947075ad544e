"""Metric windows (pure)."""

from __future__ import annotations

import random

import pytest

from agents.monitoring.windows import Aggregate, Windows, WindowSpec, labels_hash, series_key


def test_tumbling_and_hopping_window_starts():
    assert WindowSpec(60).starts(125.0) == [120.0]
    assert WindowSpec(60).kind == "tumbling"
    hop = WindowSpec(300, 60)
    assert hop.kind == "hopping" and hop.starts(125.0) == [-120.0, -60.0, 0.0, 60.0, 120.0]
    assert all(s <= 125.0 < s + 300 for s in hop.starts(125.0))


def test_aggregate_counts_sums_and_quantiles_and_survives_serialisation():
    agg = Aggregate("m", "histogram", {"a": "1"}, 0, 60)
    rng = random.Random(1)
    values = [rng.uniform(0, 1000) for _ in range(5000)]
    assert len(set(values)) == 5000  # spread: a sketch that answers one value for all fails below
    for v in values:
        agg.add(v)
    back = Aggregate.from_json(agg.to_json())
    assert (back.count, back.total, back.low, back.high) == (5000, sum(values), min(values), max(values))
    exact = sorted(values)
    for q in (0.5, 0.95, 0.99):
        assert abs(back.quantile(q) - exact[int(q * 5000)]) < 0.02 * 1000  # KLL rank error ~1.3 %
    other = Aggregate("m", "histogram", {"a": "1"}, 0, 60)
    other.add(-5.0)
    back.merge(other)
    assert back.count == 5001 and back.low == -5.0


def test_windows_close_after_lateness_and_late_samples_are_counted_not_merged():
    w = Windows([WindowSpec(10)], lateness_s=2)
    for t in range(0, 10):
        w.add("m", "gauge", {}, float(t), float(t))
    assert w.due() == []
    w.add("m", "gauge", {}, 1.0, 11.0)   # watermark 11 < 10 + 2: [0,10) still open
    assert w.due() == []
    w.add("m", "gauge", {}, 1.0, 12.5)
    (key,) = w.due()
    closed = w.pop(key)
    assert (closed.start, closed.end, closed.count, closed.total) == (0.0, 10.0, 10, 45.0)
    w.add("m", "gauge", {}, 99.0, 3.0)   # belongs to the closed window
    assert w.late == 1 and all(a.start == 10.0 for a in w.open.values())
    # Closed by wall time (idle) while its series' watermark is still inside: never re-opened.
    w2 = Windows([WindowSpec(10)], lateness_s=100)
    w2.add("m", "gauge", {}, 1.0, 1.0)
    (k2,) = w2.due(now=1e9, idle_s=0.0)
    w2.pop(k2)
    w2.add("m", "gauge", {}, 1.0, 2.0)
    assert w2.late == 1 and w2.open == {}


def test_each_series_keeps_its_own_watermark():
    w = Windows([WindowSpec(10)], lateness_s=1)
    w.add("m", "gauge", {"s": "fast"}, 1.0, 100.0)   # one series far ahead on the partition...
    w.add("m", "gauge", {"s": "slow"}, 1.0, 5.0)     # ...does not make another one's samples late
    assert w.late == 0 and len(w.open) == 2
    assert [w.open[k].labels["s"] for k in w.due()] == []
    w.add("m", "gauge", {"s": "slow"}, 1.0, 11.5)
    assert [w.open[k].labels["s"] for k in w.due()] == ["slow"]


def test_series_identity_ignores_label_order():
    assert labels_hash({"a": "1", "b": "2"}) == labels_hash({"b": "2", "a": "1"})
    assert series_key("m", {"a": "1"}) != series_key("m", {"a": "2"})


@pytest.mark.slow
@pytest.mark.parametrize("specs", [[WindowSpec(10)], [WindowSpec(10), WindowSpec(30, 10)]])
def test_folding_a_batch_equals_folding_its_samples_one_by_one(specs):
    """add_many keeps add's semantics: each sample is checked against the watermark that
    includes it, late ones are dropped, every window gets the same count/sum/min/max/sketch."""
    rng = random.Random(7)
    stamps = [1000 + i * 0.5 + rng.uniform(-12, 3) for i in range(3000)]  # out of order, some late
    values = [rng.uniform(-5, 50) for _ in stamps]
    one, many = Windows(specs, 2.0), Windows(specs, 2.0)
    for v, ts in zip(values, stamps, strict=True):
        one.add("m", "gauge", {"a": "1"}, v, ts)
    for lo in range(0, len(values), 700):  # batches of 700
        many.add_many("m", "gauge", {"a": "1"}, values[lo:lo + 700], stamps[lo:lo + 700])
    assert one.late == many.late > 0
    assert one.watermarks == many.watermarks
    assert set(one.open) == set(many.open)
    for key, agg in one.open.items():
        other = many.open[key]
        assert (agg.count, agg.low, agg.high) == (other.count, other.low, other.high)
        assert agg.total == pytest.approx(other.total)
        assert agg.quantile(0.5) == pytest.approx(other.quantile(0.5), rel=0.2)
