"""Run the Faust worker with every agent (`omnistream worker`); several may run side by side."""

from __future__ import annotations

import asyncio
import gc
import sys

from agents.logging import logging_config


def run() -> None:
    from faust.worker import Worker

    from schemas.topics import ALL, CODEGEN_GENERATED, TopicSpec

    # Importing a topology registers its agents, tables and timers with the app.
    from streams.alerting import topology as alerting
    from streams.codegen import topology as codegen
    from streams.interfaces import dashboard, web  # noqa: F401 - pages
    from streams.learning import topology as learning
    from streams.monitoring import topology as monitoring
    from streams.runtime.app import app, settings
    from streams.runtime.topics import ensure_topics

    # What importing must not do (create the model key file, read the rules file) happens here.
    learning.start()
    alerting.start()
    inboxes = [TopicSpec(t.get_topic_name(), "internal", CODEGEN_GENERATED.model,
                         partitions=t.partitions or 1)
               for t in (codegen.assembler_inbox, learning.results_inbox, learning.feedback_inbox,
                         monitoring.metrics_inbox, alerting.alert_inbox)]
    asyncio.run(ensure_topics(settings.kafka_bootstrap, (*ALL, *inboxes), **settings.kafka_security))
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
