"""A bare faust agent that only acks: the per-record floor of any faust worker, for the
metrics benchmark. Counts what it reads into a file (the harness polls it).

    python bench/faust_ack.py BOOTSTRAP TOPIC COUNT_FILE WEB_PORT
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faust


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def main(bootstrap: str, topic_name: str, count_file: str, web_port: str) -> None:
    out = Path(count_file)
    app = faust.App(f"bench-faust-ack-{int(time.time())}", broker=f"kafka://{bootstrap}",
                    value_serializer="raw", key_serializer="raw", store="memory://",
                    consumer_auto_offset_reset="earliest", web_port=int(web_port),
                    topic_disable_leader=True, autodiscover=False, datadir=str(out.parent / "data"))
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    seen = 0

    @app.on_partitions_assigned.connect
    async def _ready(sender: object, assigned: object, **kwargs: object) -> None:
        if assigned:
            _write(out, "0")

    @app.agent(topic)
    async def only_ack(stream: faust.StreamT) -> None:
        nonlocal seen
        async for event in stream.noack().events():
            event.ack()
            seen += 1

    @app.timer(interval=0.1)
    async def _report() -> None:
        if seen:
            _write(out, str(seen))

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main(*sys.argv[1:5])
