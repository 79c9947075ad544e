"""The peer in the metrics benchmark: the same windowed job in Quix Streams.

Run by bench/metrics.py with the interpreter of the optional bench environment
(`.venv-bench`, made by `make bench`; Quix Streams pins its own pydantic, so it does not share
the worker's environment). It reads the same records from a topic of its own (one sample or
`{"samples": [...]}` per record, keyed by metric name), takes each sample's event time, folds
count/sum/min/max per metric name into 10 s tumbling windows and writes each closed window to
a PostgreSQL table with Quix's own PostgreSQL sink, checkpointing every 0.5 s.

    python bench/quix_peer.py BOOTSTRAP TOPIC DATABASE_URL TABLE STATE_DIR
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from urllib.parse import urlparse

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Min, Sum
from quixstreams.sinks.community.postgresql import PostgreSQLSink


def event_time_ms(value: dict, key: object, timestamp: int, headers: object) -> int:
    at = value.get("occurred_at")
    return int(datetime.fromisoformat(at).timestamp() * 1000) if at else timestamp


def main(bootstrap: str, topic: str, dsn: str, table: str, state_dir: str) -> None:
    # Its checkpoint (which flushes its sink) every 0.5 s, as often as our batches end: with its
    # default of 5 s a run would be timed mostly waiting for the last checkpoint.
    app = Application(broker_address=bootstrap, consumer_group=f"quix-peer-{table}",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
                      commit_interval=0.5)
    source = app.topic(topic, key_deserializer="str", value_deserializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda value: value["samples"] if "samples" in value else [value], expand=True)
    sdf = sdf.set_timestamp(event_time_ms)
    sdf = sdf.tumbling_window(timedelta(seconds=10)).agg(
        count=Count(), total=Sum(column="value"), low=Min(column="value"),
        high=Max(column="value")).final()
    url = urlparse(dsn)
    sdf.sink(PostgreSQLSink(host=url.hostname, port=url.port, dbname=url.path.lstrip("/"),
                            user=url.username or "postgres", password=url.password or "",
                            table_name=table, schema_auto_update=True, include_metadata=False))
    app.run()


if __name__ == "__main__":
    main(*sys.argv[1:6])
