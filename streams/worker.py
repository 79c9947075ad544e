"""Run the Faust worker with every agent (`omnistream worker`); several may run side by side."""

from __future__ import annotations

import asyncio
import sys

from agents.logging import logging_config


def run() -> None:
    from faust.worker import Worker

    from schemas.topics import ALL, CODEGEN_GENERATED, TopicSpec
    from streams import agents, alerting, dashboard, learning, monitoring, web  # noqa: F401 - agents, pages
    from streams.agents import assembler_inbox
    from streams.alerting import alert_inbox
    from streams.app import app, settings
    from streams.learning import feedback_inbox, results_inbox
    from streams.monitoring import metrics_inbox
    from streams.topics import ensure_topics

    # What importing must not do (create the model key file, read the rules file) happens here.
    learning.start()
    alerting.start()
    inboxes = [TopicSpec(t.get_topic_name(), "internal", CODEGEN_GENERATED.model, partitions=t.partitions)
               for t in (assembler_inbox, results_inbox, feedback_inbox, metrics_inbox, alert_inbox)]
    asyncio.run(ensure_topics(settings.kafka_bootstrap, (*ALL, *inboxes), **settings.kafka_security))
    # faust makes its data folder (it keeps nothing there: tables live in memory and changelogs)
    # but not its parents.
    app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    # mode's Worker wants argv it can own; it reads nothing from it that we need.
    sys.argv = sys.argv[:1]
    Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_file),
        redirect_stdouts=False,
    ).execute_from_commandline()
