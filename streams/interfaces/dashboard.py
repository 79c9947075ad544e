"""/dashboard: one HTML page (no external assets) drawing charts from /api/dashboard.

/api/dashboard gathers, from PostgreSQL: the last hour of tumbling metric windows for latency
(PRD completion p95), throughput (nodes generated per window), template-cache hit rate and the
mixin models' accuracy; the open alerts; and the seed's five analytics views. The page's script
fetches it every 10 s and redraws inline SVG charts and tables.
"""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from faust.web import Request, View

from streams.runtime.app import app, settings

PAGE = (Path(__file__).parent / "static" / "dashboard.html").read_text()
VIEWS = ("mixin_compatibility_summary", "pattern_feedback_analysis", "performance_metrics_summary",
         "template_cache_efficiency", "event_processing_health")
CHARTS = {  # chart → (metric, value to plot)
    "latency": ("prd_completion_ms", "p95"),
    "throughput": ("codegen_node_duration_ms", "sample_count"),
    "cache_hit_rate": ("template_cache_hit_rate", "avg"),
    "model_accuracy": ("omnistream_model_progressive_accuracy", "avg"),
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


async def dashboard_data(window_s: float | None = None) -> dict[str, Any]:
    from streams.monitoring.topology import TUMBLING_S

    size = window_s or TUMBLING_S
    metrics = sorted({m for m, _ in CHARTS.values()})
    rows = await _fetch(
        "SELECT metric_name, labels, window_start, sample_count, value_sum, p95 "
        "FROM metric_window_aggregates WHERE metric_name = ANY($1::text[]) "
        "AND window_end > now() - interval '1 hour' "
        "AND extract(epoch FROM window_end - window_start) = $2 ORDER BY window_start", metrics, size)
    charts: dict[str, dict[str, list]] = {}
    for chart, (metric, stat) in CHARTS.items():
        points: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            if r["metric_name"] != metric:
                continue
            labels = r["labels"] if isinstance(r["labels"], str) else ""
            value = {"p95": r["p95"], "sample_count": r["sample_count"],
                     "avg": r["value_sum"] / r["sample_count"] if r["sample_count"] else None}[stat]
            if value is not None:
                points.setdefault((_series_name(chart, labels), r["window_start"]), []).append(value)
        series: dict[str, list] = {}
        for (name, start), values in sorted(points.items(), key=lambda kv: kv[0][1]):
            # Label sets folded into one line: counts add up, the rest is averaged.
            value = sum(values) if stat == "sample_count" else sum(values) / len(values)
            series.setdefault(name, []).append([start, value])
        charts[chart] = series
    alerts = await _fetch("SELECT rule_name, severity, state, value, threshold, labels, started_at, "
                          "escalation_level, acknowledged_by FROM alerts WHERE state <> 'resolved' "
                          "ORDER BY started_at DESC LIMIT 50")
    views = {v: await _fetch(f"SELECT * FROM {v} LIMIT 50") for v in VIEWS}
    return {"generated_at": dt.datetime.now(dt.UTC).isoformat(), "window_s": size, "charts": charts,
            "open_alerts": alerts, "views": views}


def _series_name(chart: str, labels_json: str) -> str:
    labels = orjson.loads(labels_json) if labels_json else {}
    keep = {k: v for k, v in labels.items() if k in ("node_type", "status", "worker")}
    if chart == "model_accuracy":
        keep = {"node_type": labels.get("node_type", "?")}
    elif chart in ("latency", "throughput"):
        keep = {}
    return ",".join(f"{k}={v}" for k, v in sorted(keep.items())) or "all"


@app.page("/dashboard")
async def dashboard(web: View, request: Request) -> Any:
    return web.html(PAGE)


@app.page("/api/dashboard")
async def dashboard_api(web: View, request: Request) -> Any:
    try:
        return web.json(await dashboard_data())
    except (OSError, asyncpg.PostgresError) as exc:
        return web.json({"error": f"PostgreSQL unavailable: {exc}"}, status=503)
