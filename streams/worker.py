"""Run the Faust worker with every agent (`omnistream worker`); several may run side by side."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import sys
from collections.abc import Iterable
from typing import Any

from agents.logging import logging_config
from schemas.topics import ALL, TopicSpec
from streams.config import ConfigError, Settings

log = logging.getLogger("streams.worker")


def deployment_topics(app: Any, partitions: int, inboxes: Iterable[Any]) -> tuple[TopicSpec, ...]:
    """Every topic a worker of `app` uses, with the partition count it must have: the public
    topics, the inboxes and the tables' changelogs at the deployment's count (the alert
    engine's one-partition inbox and table stay at one)."""
    public = tuple(dataclasses.replace(t, partitions=partitions) for t in ALL)
    internal = tuple(TopicSpec(t.get_topic_name(), "internal", partitions=t.partitions or partitions)
                     for t in inboxes)
    changelogs = tuple(TopicSpec(table.changelog_topic.get_topic_name(), "table key",
                                 partitions=table.partitions or partitions, compacted=True)
                       for table in app.tables.values())
    return public + internal + changelogs


async def prepare_topics(settings: Settings, specs: tuple[TopicSpec, ...]) -> None:
    """Refuse a partition count that differs from the deployment's topics (keyed table state
    would move to other partitions), report topics replicated less than asked, create the
    missing ones."""
    from streams.runtime import topics

    security = settings.kafka_security
    rf = await topics.replication_for(settings.kafka_bootstrap, settings.replication_factor, **security)
    found = await topics.check(settings.kafka_bootstrap, specs, rf, **security)
    if found.partitions_differ:
        by_count: dict[int, list[str]] = {}
        for name, n in sorted(found.partitions_differ.items()):
            by_count.setdefault(n, []).append(name)
        named = "; ".join(f"{len(names)} with {n} ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
                          for n, names in sorted(by_count.items()))
        raise ConfigError(
            f"OMNISTREAM_PARTITIONS={settings.partitions}, but this deployment's topics have other "
            f"partition counts: {named}; keyed table state would move to other partitions. "
            "Keep the count, or grow with a new OMNISTREAM_APP_ID and a replay "
            "(README: Running on a cluster)")
    if found.under_replicated:
        log.warning("topics replicated less than asked", extra={"metadata": {
            "replication": rf, "topics": found.under_replicated}})
    topics.STARTUP_CHECK = found
    await topics.ensure_topics(settings.kafka_bootstrap, specs, replication=rf, **security)


def run() -> None:
    from faust.worker import Worker

    # Importing a topology registers its agents, tables and timers with the app.
    from streams.alerting import topology as alerting
    from streams.codegen import topology as codegen
    from streams.interfaces import dashboard, web  # noqa: F401 - pages
    from streams.learning import topology as learning
    from streams.monitoring import topology as monitoring
    from streams.runtime import tracing
    from streams.runtime.app import app, settings

    # What importing must not do (create the model key file, read the rules file) happens here.
    tracing.configure("omnistream-worker", consumer_group=settings.app_id)  # on by OTEL_* settings
    learning.start()
    alerting.start()
    inboxes = (codegen.assembler_inbox, learning.results_inbox, learning.feedback_inbox,
               monitoring.metrics_inbox, alerting.alert_inbox)
    asyncio.run(prepare_topics(settings, deployment_topics(app, settings.partitions, inboxes)))
    # faust makes its data folder (it keeps nothing there: tables live in memory and changelogs)
    # but not its parents.
    app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    # mode's Worker wants argv it can own; it reads nothing from it that we need.
    sys.argv = sys.argv[:1]
    # Everything imported so far lives as long as the worker: keep the cycle collector's full
    # passes off it (they walked it every few thousand records under load), and collect less
    # often: a batch allocates tens of thousands of short-lived objects without cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_file),
        redirect_stdouts=False,
    ).execute_from_commandline()
