"""HTTP views on the worker's web port: /health, /metrics, /api/predict, /api/patterns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from faust.web import Request, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from schemas.events import PredictRequest
from streams.infra import kafka, postgres
from streams.learning.replicas import models, patterns
from streams.runtime import topics
from streams.runtime.app import app, settings
from streams.runtime.introspect import (
    agent_states,
    agent_topics,
    assignment,
    consumer_lag,
    lag_by_topic,
    split_lag,
)
from streams.runtime.processing import LAST_EVENT

MAX_HEALTHY_LAG = 10_000


async def health_report() -> dict[str, Any]:
    started = time.perf_counter()
    kafka_ok, pg_version = await asyncio.gather(
        kafka.probe(settings.kafka_bootstrap, timeout=2.0, **settings.kafka_security),
        postgres.probe(settings.database_url, timeout=2.0),
    )
    agents = agent_states()
    measured = await lag_by_topic()
    lag = await consumer_lag(measured)
    read, changelogs = split_lag(measured or {})
    now = time.time()
    per_agent = {name: {"lag": sum(read.get(t, 0) for t in topics), "topics": topics,
                        "last_event_age_s": round(now - LAST_EVENT[name], 1) if name in LAST_EVENT else None}
                 for name, topics in agent_topics().items()}
    # Not ready while partitions move or tables replay their changelogs: events wait meanwhile.
    recovery = getattr(getattr(app, "tables", None), "recovery", None)
    ready = (not getattr(app, "rebalancing", False) and not getattr(app, "in_recovery", False)
             and recovery is not None and recovery.completed.is_set())
    healthy = (kafka_ok and pg_version is not None and bool(agents) and ready
               and all(s == "running" for s in agents.values())
               and (lag is None or lag < MAX_HEALTHY_LAG))
    return {
        "status": "ok" if healthy else "unhealthy",
        "kafka": {"ok": kafka_ok, "bootstrap": settings.kafka_bootstrap},
        "postgres": {"ok": pg_version is not None, "version": pg_version},
        "agents": agents,
        "ready": ready,
        # consumer_lag = the sum of lag_by_topic (topics the agents read, each once; agents
        # that share a topic show the same records in agent_lag). Changelog partitions are
        # listed apart: a worker writes them and reads them only when it restores a table.
        "consumer_lag": lag,
        "lag_by_topic": read,
        "agent_lag": per_agent,
        "changelog_lag": changelogs,
        "assignment": assignment(),
        # Topics found at start with fewer replicas than asked (created before, or by hand):
        # losing one broker can lose their data.
        "topics": ({"replication": STARTUP_CHECK.replication,
                    "under_replicated": STARTUP_CHECK.under_replicated}
                   if (STARTUP_CHECK := topics.STARTUP_CHECK) else None),
        "check_ms": round((time.perf_counter() - started) * 1000, 1),
    }


@app.page("/health")
async def health(web: View, request: Request) -> Any:
    report = await health_report()
    return web.json(report, status=200 if report["status"] == "ok" else 503)


@app.page("/metrics")
async def metrics(web: View, request: Request) -> Any:
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


def _predict(item: dict[str, Any]) -> dict[str, Any]:
    req = PredictRequest.model_validate(item)
    return models.predict(req.node_type, list(req.mixins)).as_dict()


MAX_PREDICT = 1000  # combinations in one POST
PREDICT_SLICE = 50   # scored between two yields to the event loop


@app.page("/api/predict")
class PredictView(View):
    """GET ?node_type=T&mixins=A,B → one prediction; POST [{node_type, mixins}, …] → a list.

    A POST (at most MAX_PREDICT items, its body bounded by the web server) is scored in slices
    that hand the event loop back in between: the model is the one the learner updates on that
    loop, so scoring it from another thread could read it halfway through an update, while a
    slice holds the loop for about a millisecond."""

    async def get(self, request: Request) -> Any:
        query = request.query
        mixins = [m for m in query.get("mixins", "").split(",") if m]
        return await self._answer(
            self._score([{"node_type": query.get("node_type", ""), "mixins": mixins}], one=True))

    async def post(self, request: Request) -> Any:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self.json({"error": f"body is not JSON: {exc}"}, status=400)
        if not isinstance(body, list) or len(body) > MAX_PREDICT:
            return self.json({"error": f"POST a JSON list of at most {MAX_PREDICT} "
                                       "{node_type, mixins} objects"}, status=400)
        return await self._answer(self._score(body))

    async def _score(self, items: list[Any], one: bool = False) -> Any:
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), PREDICT_SLICE):
            out.extend(_predict(item) for item in items[start:start + PREDICT_SLICE])
            await asyncio.sleep(0)
        return out[0] if one else out

    async def _answer(self, compute: Awaitable[Any]) -> Any:
        try:
            return self.json(await compute)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return self.json({"error": f"{where}: {first['msg']}"}, status=400)
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)


@app.page("/api/patterns")
async def pattern_report(web: View, request: Request) -> Any:
    return web.json({"patterns": patterns.summaries(), "suppressed": sorted(patterns.suppressed),
                     "policy": {"precision_floor": patterns.policy.floor,
                                "suppress_when_p_below_floor_exceeds": patterns.policy.suppress_at,
                                "resume_when_p_below_floor_under": patterns.policy.resume_at,
                                "source_cap": patterns.policy.source_cap}})


@app.page("/api/models")
async def model_report(web: View, request: Request) -> Any:
    return web.json(models.status())
