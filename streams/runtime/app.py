"""The Faust application: built from env config; topics declared from schemas/topics.py.

Values and keys are raw bytes on the wire: agents decode them with schemas.codec, so a value
that does not decode goes to the dead-letter topic instead of crashing the stream.
"""

from __future__ import annotations

import faust
from faust.types import TP

from schemas import topics as spec
from streams.config import Settings, omnistream_home
from streams.runtime import faust as faust_runtime
from streams.runtime.access import web_options

faust_runtime.install()


def _credentials(settings: Settings):
    sec = settings.kafka_security
    protocol = sec.get("security_protocol", "PLAINTEXT").upper()
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.get("sasl_plain_username"), password=sec.get("sasl_plain_password"),
            mechanism=sec.get("sasl_mechanism", "PLAIN"),
            ssl_context=sec.get("ssl_context") if protocol == "SASL_SSL" else None)
    if protocol == "SSL":
        return faust.SSLCredentials(sec.get("ssl_context"))
    return None


def create_app(settings: Settings | None = None) -> faust.App:
    settings = settings or Settings.from_env()
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        # faust's default is "<app id>-data" in the working directory: one stray folder per app
        # id (every test and bench run) wherever the command was started.
        datadir=str(omnistream_home() / "faust" / settings.app_id),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        web_enabled=True,
        web_port=settings.web_port,
        **web_options(settings.web_host, settings.web_token),
        web_in_thread=False,
        producer_acks=-1,
        # aiokafka keeps one open batch per partition and waits for it to be sent when it is
        # full: at faust's 16 KiB a burst re-keyed onto one partition (the learner's inbox)
        # waited for a broker round trip every ~40 records.
        producer_max_batch_size=512 * 1024,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        # A member learns of a rebalance (another worker joining) at its next heartbeat.
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        # A rebalance waits until the batches in hand are applied and acked (they are short: see
        # streams/runtime/processing.py); a batch finished after its partitions were revoked could ack
        # events whose state the new owner never sees.
        stream_wait_empty=True,
        autodiscover=False,
    )


settings = Settings.from_env()
app = create_app(settings)


@app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types receivers with `signal=`; ours take **kwargs
async def _forget_lane_positions(sender: object, revoked: set[TP], **kwargs: object) -> None:
    faust_runtime.forget(revoked)


@app.timer(interval=5.0)
async def _read_stalled_partitions_again() -> None:
    await faust_runtime.read_stalled_again(app)


def topic(ts: spec.TopicSpec) -> faust.TopicT:
    return app.topic(ts.name, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                     value_serializer="raw", key_serializer="raw")


prd_requests = topic(spec.PRD_REQUESTS)
codegen_tasks = topic(spec.CODEGEN_TASKS)
codegen_generated = topic(spec.CODEGEN_GENERATED)
codegen_completed = topic(spec.CODEGEN_COMPLETED)
codegen_results = topic(spec.CODEGEN_RESULTS)
pattern_feedback = topic(spec.PATTERN_FEEDBACK)
metrics_events = topic(spec.METRICS_EVENTS)
alerts = topic(spec.ALERTS)
alerts_commands = topic(spec.ALERTS_COMMANDS)
dlq = topic(spec.DLQ)
