"""What a worker can say about itself: the partitions it holds, its lag, its agents' states.
Read by /health and by the worker's own metrics."""

from __future__ import annotations

from streams.runtime.app import app
from streams.runtime.faust import channel_topics, known_position
from streams.runtime.metrics import AGENT_LAG, CONSUMER_LAG


def assignment() -> dict[str, list[int]]:
    """Partitions this worker holds now, by topic (several workers split them)."""
    consumer = getattr(app, "consumer", None)
    out: dict[str, list[int]] = {}
    if consumer is None:
        return out
    for tp in consumer.assignment():
        out.setdefault(tp.topic, []).append(tp.partition)
    return {topic: sorted(parts) for topic, parts in sorted(out.items())}


async def lag_by_topic() -> dict[str, int] | None:
    consumer = getattr(app, "consumer", None)
    if consumer is None:
        return None
    out: dict[str, int] = {}
    for tp in consumer.assignment():
        try:
            high = consumer.highwater(tp)
        except Exception:
            continue
        position = known_position(app, tp)  # never waits (see known_position)
        if high is not None and position is not None:
            out[tp.topic] = out.get(tp.topic, 0) + max(0, high - position)
    return out


async def consumer_lag(by_topic: dict[str, int] | None = None) -> int | None:
    """Lag of the topics the agents read (each topic once): what events still wait for this
    worker. Also sets the gauges, total and per agent. Pass `by_topic` when it was just
    measured. Table changelogs are not counted: after their restore a worker only writes
    them, so their "lag" is what it wrote since (see `split_lag`)."""
    by_topic = by_topic if by_topic is not None else await lag_by_topic()
    if by_topic is None:
        return None
    read, _ = split_lag(by_topic)
    lag = sum(read.values())
    CONSUMER_LAG.set(lag)
    for agent, topics in agent_topics().items():
        AGENT_LAG.labels(agent).set(sum(by_topic.get(t, 0) for t in topics))
    return lag


def split_lag(by_topic: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(lag of the topics agents read, lag of the other assigned topics: table changelogs)."""
    read_by_agents = {t for topics in agent_topics().values() for t in topics}
    read = {t: n for t, n in by_topic.items() if t in read_by_agents}
    return read, {t: n for t, n in by_topic.items() if t not in read_by_agents}


def agent_topics() -> dict[str, list[str]]:
    """The topics each agent reads, by agent name."""
    return {name.rsplit(".", 1)[-1]: sorted(channel_topics(agent.channel))
            for name, agent in app.agents.items()}


def agent_states() -> dict[str, str]:
    out = {}
    for name, agent in app.agents.items():
        short = name.rsplit(".", 1)[-1]
        if agent.crashed or getattr(agent, "crash_reason", None):
            out[short] = f"crashed: {agent.crash_reason!r}"
        elif not agent.started:
            out[short] = "not started"
        else:
            out[short] = "running"
    return out
