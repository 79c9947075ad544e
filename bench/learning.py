"""Mixin model benchmark (4): progressive accuracy and log loss on a drifting synthetic stream
beside its Bayes ceiling and beside the best configuration LEARNING.md measured (the baseline,
run here on the same stream); drift recovery; predict/learn latency; conflict-pair precision and
recall; replay events/s through Kafka beside a bare aiokafka consumer of the same events."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from itertools import combinations

from agents.learning.model import DriftConfig, MixinModel
from agents.stats import percentile
from bench.mixin_stream import NODE_TYPES, MixinStream

VARIANTS: dict[str, Callable[[str], MixinModel]] = {
    # LEARNING.md's best: pairs, SGD lr .1, a plain online learner (no drift handling).
    "baseline: LR pairs, lr .1, plain": lambda t: MixinModel(t, lr=0.1, drift_cfg=DriftConfig(enabled=False)),
    "LR pairs, lr .2, plain": lambda t: MixinModel(t, lr=0.2, drift_cfg=DriftConfig(enabled=False)),
    "omnistream: lr .2 + ADWIN challenger": lambda t: MixinModel(t),
}


def _windows(hits: list[bool], size: int = 1000) -> list[float]:
    return [sum(hits[i:i + size]) / len(hits[i:i + size]) for i in range(0, len(hits), size)]


def accuracy_run(stream: MixinStream) -> tuple[dict, dict[str, dict[str, MixinModel]]]:
    data = list(stream)
    ceiling = sum(1 for *_, label, truth in data if label == truth) / len(data)
    out, trained = {"bayes_ceiling": round(ceiling, 4), "events": len(data),
                    "drift_at": stream.drift_at, "variants": {}}, {}
    for name, make in VARIANTS.items():
        models = {t: make(t) for t in NODE_TYPES}
        hits, log_loss = [], 0.0
        for node_type, mixins, label, _ in data:
            p = models[node_type].learn_one(mixins, label)
            hits.append((p >= 0.5) == label)
            q = min(max(p if label else 1 - p, 1e-6), 1.0)
            log_loss -= math.log(q)
        per_k = _windows(hits)
        d = (stream.drift_at or 0) // 1000
        recover = next((k + 1 for k, a in enumerate(per_k[d:]) if a >= 0.95), None)
        out["variants"][name] = {
            "progressive_accuracy": round(sum(hits) / len(hits), 4),
            "log_loss": round(log_loss / len(hits), 4),
            "last_5k": round(sum(hits[-5000:]) / 5000, 4),
            "first_5k_after_drift": round(sum(hits[stream.drift_at:stream.drift_at + 5000]) / 5000, 4)
            if stream.drift_at else None,
            "worst_1k_after_drift": round(min(per_k[d:d + 10]), 4) if stream.drift_at else None,
            "k_events_to_0.95_after_drift": recover,
            "accuracy_per_1k": [round(a, 3) for a in per_k],
        }
        trained[name] = models
    return out, trained


def latency(models: dict[str, MixinModel], stream: MixinStream, n: int) -> dict:
    data = list(stream)[:n]
    learn, predict = [], []
    fresh = {t: MixinModel(t) for t in NODE_TYPES}
    for node_type, mixins, label, _ in data:
        t0 = time.perf_counter_ns()
        fresh[node_type].learn_one(mixins, label)
        learn.append((time.perf_counter_ns() - t0) / 1000)
    for node_type, mixins, _, _ in data:
        t0 = time.perf_counter_ns()
        models[node_type].predict(mixins)
        predict.append((time.perf_counter_ns() - t0) / 1000)
    return {"learn_us_p50": round(percentile(learn, 50), 1), "learn_us_p99": round(percentile(learn, 99), 1),
            "predict_us_p50": round(percentile(predict, 50), 1),
            "predict_us_p99": round(percentile(predict, 99), 1)}


def conflicts(models: dict[str, MixinModel], stream: MixinStream) -> dict:
    """Precision/recall of conflict pairs against the stream's rules at its end."""
    def score(found_by: Callable[[MixinModel], set[frozenset[str]]]) -> dict:
        tp = fp = fn = 0
        for t, m in models.items():
            rules = stream.rules_at(stream.n - 1)[t]
            truth = {p for p in rules.conflict_pairs() if not p & rules.banned}  # a banned mixin
            found = found_by(m)                                                 # fails alone
            tp, fp, fn = tp + len(found & truth), fp + len(found - truth), fn + len(truth - found)
        return {"precision": round(tp / (tp + fp), 3) if tp + fp else None,
                "recall": round(tp / (tp + fn), 3) if tp + fn else None, "found": tp + fp}

    def plain_probe(m: MixinModel) -> set[frozenset[str]]:
        out = set()
        for a, b in combinations(m.mixins, 2):
            if (m.observations(a, b) >= 3 and m.predict_proba([a, b]) < 0.5
                    and m.predict_proba([a]) > 0.5 and m.predict_proba([b]) > 0.5):
                out.add(frozenset((a, b)))
        return out

    def pair_weights(m: MixinModel) -> set[frozenset[str]]:
        return {frozenset((a, b)) for a, b in combinations(m.mixins, 2) if m.pair_weight(a, b) < -1.0}

    started = time.perf_counter()
    ours = score(lambda m: {frozenset(c.pair) for c in m.find_conflicts()})
    ours["ms_per_model"] = round((time.perf_counter() - started) * 1000 / len(models), 2)
    return {"contextual probe (omnistream)": ours, "plain probe (LEARNING.md)": score(plain_probe),
            "pair weight < -1": score(pair_weights)}


async def replay_rate(n: int) -> dict:
    """Publish n results to codegen.results, then time `replay` (no swap) and a bare consumer."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from schemas.codec import encode
    from schemas.events import GenerationResult
    from schemas.topics import CODEGEN_RESULTS
    from streams.config import Settings
    from streams.learning.replay import replay
    from streams.runtime.topics import ensure_topics

    settings = Settings.from_env()
    await ensure_topics(settings.kafka_bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        for node_type, mixins, label, _ in MixinStream(n=n):
            await producer.send(CODEGEN_RESULTS.name, encode(GenerationResult(
                node_type=node_type, mixins=mixins, success=label)), key=node_type.encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(CODEGEN_RESULTS.name, p) for p in range(CODEGEN_RESULTS.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        started, seen = time.perf_counter(), 0
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            seen += sum(len(r) for r in batches.values())
        bare = seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()
    report = await replay(settings, CODEGEN_RESULTS.name, swap=False, progress=False)
    rate = report.events / report.seconds
    return {"events": report.events, "replay_events_per_s": round(rate),
            "bare_consumer_events_per_s": round(bare), "replay_vs_bare": round(rate / bare, 3)}


def run(quick: bool = False, with_replay: bool = True) -> dict:
    stream = MixinStream(n=20_000 if quick else 50_000, drift_at=10_000 if quick else 25_000)
    acc, trained = accuracy_run(stream)
    ours = trained["omnistream: lr .2 + ADWIN challenger"]
    out = {"accuracy": acc, "latency_us": {
        "omnistream": latency(ours, stream, 5000),
    }, "conflicts": conflicts(ours, stream)}
    if with_replay:
        out["replay"] = asyncio.run(replay_rate(10_000 if quick else 50_000))
    return out


def print_report(r: dict) -> None:
    acc = r["accuracy"]
    print(f"  stream: {acc['events']} events, drift at {acc['drift_at']}, "
          f"Bayes ceiling {acc['bayes_ceiling']}")
    print(f"  {'model':40} {'prog acc':>8} {'logloss':>8} {'last 5k':>8} {'5k after drift':>15} "
          f"{'worst 1k':>9} {'k to .95':>8}")
    for name, v in acc["variants"].items():
        print(f"  {name:40} {v['progressive_accuracy']:8.4f} {v['log_loss']:8.4f} {v['last_5k']:8.4f} "
              f"{v['first_5k_after_drift'] or 0:15.4f} {v['worst_1k_after_drift'] or 0:9.4f} "
              f"{v['k_events_to_0.95_after_drift']!s:>8}")
    lat = r["latency_us"]["omnistream"]
    print(f"  learn p50/p99 {lat['learn_us_p50']}/{lat['learn_us_p99']} µs, "
          f"predict p50/p99 {lat['predict_us_p50']}/{lat['predict_us_p99']} µs")
    for name, c in r["conflicts"].items():
        print(f"  conflicts, {name:30} precision {c['precision']} recall {c['recall']} ({c['found']} found)")
    if "replay" in r:
        rp = r["replay"]
        print(f"  replay {rp['events']} events: {rp['replay_events_per_s']:,} ev/s vs bare consumer "
              f"{rp['bare_consumer_events_per_s']:,} ev/s ({rp['replay_vs_bare']:.2f}x)")
