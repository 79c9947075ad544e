"""Replay's training: decoding fetches (bad records left out), and the training process that
learns what training in this process learns, and fails loudly, never silently (no Kafka)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from agents.learning.hierarchy import HierarchicalModel
from bench.mixin_stream import MixinStream
from schemas.codec import MAX_VALUE_BYTES, encode
from schemas.events import GenerationResult
from streams.learning.training import ChildTraining, InProcessTraining, Trained, TrainingError, decode_results


def _fetches(n: int = 6000, size: int = 700) -> list[list[bytes | None]]:
    values: list[bytes | None] = [encode(GenerationResult(node_type=t, mixins=m, success=label))
                                  for t, m, label, _ in MixinStream(n=n)]
    values[100] = b'{"node_type": "compute", "mixins": ["notAMixin"], "success": true}'  # invalid
    values[200] = None                                                                  # tombstone
    values[300] = values[299]                                 # the same result sent twice (same id)
    return [values[i:i + size] for i in range(0, len(values), size)]


def test_decode_leaves_out_what_is_not_a_result_and_keeps_the_rest_in_order():
    good = [encode(GenerationResult(node_type="effect", mixins=["MixinRetry"], success=i % 2 == 0))
            for i in range(3)]
    values = [good[0], b"not json", None, good[1], b"x" * (MAX_VALUE_BYTES + 1), good[2],
              b'{"node_type": "effect", "mixins": ["MixinRetry"], "success": "yes"}']
    results = decode_results(values)
    assert list(results.successes) == [True, False, True] and len(results) == 3
    assert list(results.node_types) == ["effect"] * 3
    assert [i is not None and i > 0 for i in results.ids] == [True] * 3
    without_id = decode_results([b'{"node_type": "reducer", "mixins": [], "success": false}'])
    assert list(without_id.ids) == [None] and list(without_id.mixins) == [[]]


async def _train(training: InProcessTraining | ChildTraining, old: dict) -> Trained:
    try:
        await training.start(old)
        for fetch in _fetches():
            await training.learn(fetch)
        return await training.finish()
    finally:
        training.close()


def test_the_training_process_learns_what_training_here_learns():
    old = HierarchicalModel()
    for t, m, label, _ in MixinStream(n=2000, seed=11):
        old.learn_one(t, m, label)
    here = asyncio.run(_train(InProcessTraining(), {"*": old}))
    there = asyncio.run(_train(ChildTraining(), {"*": old}))
    assert (here.invalid, here.duplicates) == (there.invalid, there.duplicates) == (2, 1)
    assert there.model.updates == here.model.updates == 6000 - 3
    assert there.model.weights == here.model.weights and there.old_version == old.version
    for nt, node in here.nodes.items():
        theirs = there.nodes[nt]
        assert (node.events, node.new.correct, node.old.correct) == \
            (theirs.events, theirs.new.correct, theirs.old.correct) and node.old.n == node.events


def test_a_failing_training_process_raises_its_error():
    async def run() -> None:
        training = ChildTraining()
        try:
            await training.start({})
            await training.learn([42])  # type: ignore[list-item]  # not bytes: a bug, not bad input
            await training.finish()
        finally:
            training.close()

    with pytest.raises(TrainingError, match="TypeError"):
        asyncio.run(run())


def test_a_killed_training_process_is_a_clear_error_not_a_hang():
    async def run() -> None:
        training = ChildTraining()
        try:
            await training.start({})
            await training.learn(_fetches(1000)[0])
            os.kill(training._process.pid, signal.SIGKILL)
            for _ in range(100):  # until a send finds the socket closed, then the result is asked
                await training.learn([encode(GenerationResult(id=uuid.uuid4(), node_type="effect",
                                                              mixins=["MixinRetry"], success=True))])
            await training.finish()
        finally:
            training.close()

    with pytest.raises(TrainingError, match=r"ended without its result \(exit code -9\)"):
        asyncio.run(run())


def test_trainer_learns_in_order_scores_the_model_in_use_and_learns_a_resent_result_once():
    from agents.learning.model import Progressive
    from agents.learning.registry import SHARED
    from agents.learning.results import Results
    from agents.learning.trainer import Trainer

    stream = [(nt, list(m), label) for nt, m, label, _ in MixinStream(n=3000)]
    old = HierarchicalModel()
    for nt, mixins, label in stream[:1000]:
        if nt != "compute":  # a node type the model in use has not seen: scored all the same
            old.learn_one(nt, mixins, label)
    trainer = Trainer({SHARED: old})
    results = [(nt, m, label, i) for i, (nt, m, label) in enumerate(stream)]
    trainer.learn(Results.of(results[:1500]))
    trainer.learn(Results.of(results[1400:]))  # 100 results sent again (same ids): learnt once
    assert trainer.duplicates == 100

    expected = HierarchicalModel()
    for nt, mixins, label in stream:
        expected.learn_one(nt, mixins, label)
    model = trainer.finish()
    assert model.updates == expected.updates == 3000
    assert model.weights == pytest.approx(expected.weights, abs=1e-12)  # same order, same model
    assert set(trainer.nodes) == {"effect", "compute", "reducer", "orchestrator"}
    for nt, node in trainer.nodes.items():
        assert node.events == expected.by_type[nt].n == node.new.n
        assert node.new.correct == expected.by_type[nt].correct
        # the model in use, scored on every result as it serves them (prediction only)
        served = Progressive()
        for t, mixins, label in stream:
            if t == nt:
                served.update(old.predict_proba(nt, mixins), label)
        assert (nt, node.old.n, node.old.correct) == (nt, served.n, served.correct)
        assert node.old.n == node.events
        assert node.old.log_loss == pytest.approx(served.log_loss, rel=1e-9)
        assert node.old_version == old.version
    assert trainer.old_version == old.version
