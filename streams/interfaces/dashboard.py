"""/dashboard: one HTML page (no external assets) drawing charts from /api/dashboard.

/api/dashboard?range=15m|1h|6h|24h&worker=...&node_type=... gathers, from PostgreSQL, the
tumbling metric windows of that range for each chart (its unit and one series per label set
the chart splits by), the open alerts and the seed's five analytics views; the filters narrow
the series to one worker or node type. The page's script fetches it every 10 s and redraws
inline SVG charts: time axis in the viewer's local time, y axis with units, legend beside the
plot, a readout of the latest (or hovered) values, gaps where windows are missing.
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from faust.web import Request, View

from streams.runtime.app import app, settings

PAGE = (Path(__file__).parent / "static" / "dashboard.html").read_text()
VIEWS = ("mixin_compatibility_summary", "pattern_feedback_analysis", "performance_metrics_summary",
         "template_cache_efficiency", "event_processing_health")
RANGES = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}


@dataclass(frozen=True)
class Chart:
    """One chart: which metric, which window statistic, its unit and the labels that split it
    into series (the others are folded: counts add up, the rest is averaged)."""
    title: str
    metric: str
    stat: str          # p95 | avg | max | rate (samples/s) | increase, increase_rate (of a counter)
    unit: str
    split_by: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()  # label values a window must have


CHARTS = {
    "latency": Chart("PRD latency p95", "prd_completion_ms", "p95", "ms"),
    "throughput": Chart("Nodes generated", "codegen_node_duration_ms", "rate", "/s", ("node_type",)),
    "cache_hit_rate": Chart("Template cache hit rate", "template_cache_hit_rate", "avg", "%", ("worker",)),
    "model_accuracy": Chart("Mixin model accuracy", "omnistream_model_progressive_accuracy", "avg", "%",
                            ("node_type",)),
    "events_per_s": Chart("Events/s per agent", "omnistream_events_processed_total", "increase_rate",
                          "/s", ("agent",), (("outcome", "ok"),)),
    "dead_letters": Chart("Dead letters per topic and reason", "omnistream_dlq_events_total", "increase",
                          "letters", ("topic", "reason")),
    "consumer_lag": Chart("Consumer lag per agent", "omnistream_agent_consumer_lag", "max", "messages",
                          ("agent",)),
    "sink_latency": Chart("Sink batch latency p95", "sink_flush_ms", "p95", "ms", ("table",)),
}
_pool: asyncpg.Pool | None = None


def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def _fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
    global _pool
    if _pool is None:
        _pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=5)
    async with _pool.acquire() as conn:
        return [{k: _plain(v) for k, v in r.items()} for r in await conn.fetch(sql, *args)]


def _value(chart: Chart, r: dict[str, Any], size: float) -> float | None:
    count = r["sample_count"]
    if chart.stat == "p95":
        return r["p95"]
    if chart.stat == "avg":
        return r["value_sum"] / count if count else None
    if chart.stat == "max":
        return r["value_max"]
    if chart.stat == "rate":
        return count / size
    if chart.stat in ("increase", "increase_rate"):  # a cumulative counter sampled in the window
        rise = max(0.0, (r["value_max"] or 0.0) - (r["value_min"] or 0.0))
        return rise / size if chart.stat == "increase_rate" else rise
    raise ValueError(chart.stat)


async def dashboard_data(window_s: float | None = None, range_s: float = 3600, worker: str | None = None,
                         node_type: str | None = None) -> dict[str, Any]:
    size = window_s or settings.metric_window_s  # the tumbling windows the aggregator writes
    metrics = sorted({c.metric for c in CHARTS.values()})
    rows = await _fetch(
        "SELECT metric_name, labels, window_start, sample_count, value_sum, value_min, value_max, p95 "
        "FROM metric_window_aggregates WHERE metric_name = ANY($1::text[]) "
        "AND window_end > now() - make_interval(secs => $3) "
        "AND extract(epoch FROM window_end - window_start) = $2 ORDER BY window_start", metrics, size,
        float(range_s))
    workers: set[str] = set()
    node_types: set[str] = set()
    charts: dict[str, dict[str, Any]] = {}
    for key, chart in CHARTS.items():
        points: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            if r["metric_name"] != chart.metric:
                continue
            labels = orjson.loads(r["labels"]) if isinstance(r["labels"], str) else (r["labels"] or {})
            workers.update([labels["worker"]] if "worker" in labels else [])
            node_types.update([labels["node_type"]] if "node_type" in labels else [])
            if worker and labels.get("worker", worker) != worker:
                continue
            if node_type and labels.get("node_type", node_type) != node_type:
                continue
            if any(labels.get(k) != v for k, v in chart.where):
                continue
            value = _value(chart, r, size)
            if value is not None:
                name = ",".join(f"{k}={labels.get(k, '?')}" for k in chart.split_by) or "all"
                points.setdefault((name, r["window_start"]), []).append(value)
        series: dict[str, list] = {}
        for (name, start), values in sorted(points.items(), key=lambda kv: kv[0][1]):
            folded = sum(values) if chart.stat in ("rate", "increase", "increase_rate") \
                else sum(values) / len(values)
            series.setdefault(name, []).append([start, folded])
        charts[key] = {"title": chart.title, "unit": chart.unit, "series": series}
    alerts = await _fetch("SELECT rule_name, severity, state, value, threshold, labels, started_at, "
                          "escalation_level, acknowledged_by FROM alerts WHERE state <> 'resolved' "
                          "ORDER BY started_at DESC LIMIT 50")
    views = {v: await _fetch(f"SELECT * FROM {v} LIMIT 50") for v in VIEWS}
    return {"generated_at": dt.datetime.now(dt.UTC).isoformat(), "window_s": size, "range_s": range_s,
            "filters": {"worker": sorted(workers), "node_type": sorted(node_types)},
            "charts": charts, "open_alerts": alerts, "views": views}


@app.page("/dashboard")
async def dashboard(web: View, request: Request) -> Any:
    return web.html(PAGE)


@app.page("/api/dashboard")
async def dashboard_api(web: View, request: Request) -> Any:
    query = request.query
    range_s = RANGES.get(query.get("range", "1h"))
    if range_s is None:
        return web.json({"error": f"range must be one of {', '.join(RANGES)}"}, status=400)
    try:
        return web.json(await dashboard_data(range_s=range_s, worker=query.get("worker") or None,
                                             node_type=query.get("node_type") or None))
    except (OSError, asyncpg.PostgresError) as exc:
        return web.json({"error": f"PostgreSQL unavailable: {exc}"}, status=503)
