"""Versioned state records: old records load as version 1, newer ones are refused clearly."""

from __future__ import annotations

import pytest

from agents.codegen.assembler import AssemblyState
from agents.learning.feedback import FeedbackState, apply, new_state
from schemas.state import StateVersionError

OLD_ASSEMBLY = {"prd_id": "p", "service_name": "s", "node_count": 2, "expected": ["Alpha", "Beta"],
                "nodes": {"Alpha": {"node_name": "Alpha", "node_type": "effect", "success": True,
                                "failure_reason": None, "files": ["a.py"], "quality_score": 0.9}},
                "started_at": 1.0, "deadline_at": 121.0, "done": False,
                "gen_ms": {"Alpha": 3.5}, "fanned_out_at": 0.5}


def test_a_record_from_before_versions_loads_as_version_1_and_round_trips():
    state = AssemblyState.load(OLD_ASSEMBLY)
    assert state is not None and state.version == 1 and state.nodes["Alpha"].files == ["a.py"]
    assert AssemblyState.load(state.dump()) == state
    assert state.dump()["version"] == 1
    fb = FeedbackState.load({"pattern": "p", "sources": {"x": {"tp": 1.0, "fp": 0.0, "fn": 0.0,
                                                               "w2": 1.0, "n": 1}},
                             "events": 1, "suppressed": False, "changed_at": None,
                             "last_event_at": 3.0, "applied": {"pattern.feedback:0": 7}})
    assert fb is not None and fb.sources["x"].tp == 1.0 and fb.applied == {"pattern.feedback:0": 7}


def test_a_record_from_a_newer_release_is_refused_naming_the_versions():
    with pytest.raises(StateVersionError, match="AssemblyState record of version 2: this release reads up to "
                                               "version 1"):
        AssemblyState.load({**OLD_ASSEMBLY, "version": 2})


def test_an_unknown_field_is_refused_not_dropped():
    with pytest.raises(ValueError, match="extra"):
        AssemblyState.load({**OLD_ASSEMBLY, "surprise": 1})


def test_feedback_states_are_not_mutated_by_apply():
    first = new_state("p")
    second = apply(first, "false_positive", 1.0, None, "a", 1.0)
    assert first.events == 0 and first.sources == {} and second.events == 1
    assert second.sources["a"].fp == 1.0


def test_window_series_records_carry_their_version_and_old_ones_still_load():
    import orjson

    from agents.monitoring.windows import Windows, WindowSpec, series_key

    w = Windows([WindowSpec(10)], 1.0)
    w.add_many("m", "gauge", {}, [1.0, 2.0], [100.0, 101.0])
    series = series_key("m", {})
    raw = orjson.loads(w.dump_series(series))
    assert raw["version"] == 1
    del raw["version"]  # as written before versions existed
    restored = Windows([WindowSpec(10)], 1.0)
    assert restored.load_series(orjson.dumps(raw)) == series
    assert restored.dump_series(series) == w.dump_series(series)
    with pytest.raises(StateVersionError):
        restored.load_series(orjson.dumps({**raw, "version": 3}))
