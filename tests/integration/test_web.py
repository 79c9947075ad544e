"""Worker HTTP: /metrics through promtool, /health details, /dashboard rendered by Chromium."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from agents.monitoring.windows import labels_hash
from streams.interfaces.client import OmnistreamClient
from tests.conftest import ROOT, http_json


def test_metrics_pass_promtool(worker):
    with urllib.request.urlopen(f"{worker.base}/metrics", timeout=10) as resp:
        text = resp.read()
    assert b"omnistream_events_processed_total" in text and b"omnistream_sink_pending_rows" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_health_reports_lag_and_last_event_age_per_agent(worker, services):
    async def publish():
        data = orjson.loads((ROOT / "examples" / "minimal.json").read_bytes())
        data["prd_id"] = f"web-{uuid.uuid4().hex[:6]}"
        from schemas.events import PrdSubmitted

        async with OmnistreamClient(services.bootstrap) as client:
            await client.publish_prd(PrdSubmitted.model_validate(data))

    asyncio.run(publish())
    deadline = time.monotonic() + 30
    report = {}
    while time.monotonic() < deadline:
        report = http_json(f"{worker.base}/health", any_status=True)
        age = report["agent_lag"]["prd-fanout"]["last_event_age_s"]
        if age is not None and age < 30:
            break
        time.sleep(0.5)
    assert report["status"] == "ok" and report["ready"] is True
    assert set(report["agent_lag"]) == set(report["agents"])
    fanout = report["agent_lag"]["prd-fanout"]
    assert fanout["lag"] >= 0 and 0 <= fanout["last_event_age_s"] < 30


async def _seed_windows(db: str) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    conn = await asyncpg.connect(db)
    try:
        for i in range(10):
            start = now - timedelta(minutes=10 - i)
            for name, value, labels in (
                    ("prd_completion_ms", 80.0 + i, {}),
                    ("codegen_node_duration_ms", 12.0, {"node_type": "effect"}),
                    ("template_cache_hit_rate", 0.9, {"worker": "w1"}),
                    ("omnistream_model_progressive_accuracy", 0.93, {"node_type": "compute"})):
                await conn.execute(
                    "INSERT INTO metric_window_aggregates (metric_name, metric_type, labels, labels_hash, "
                    "window_start, window_end, sample_count, value_sum, value_min, value_max, p50, p95, p99) "
                    "VALUES ($1, 'gauge', $2::jsonb, $3, $4, $5, 4, $6, $7, $7, $7, $7, $7) "
                    "ON CONFLICT DO NOTHING",
                    name, orjson.dumps(labels).decode(), labels_hash(labels), start,
                    start + timedelta(seconds=60), value * 4, value)
    finally:
        await conn.close()


def test_dashboard_renders_its_charts_in_chromium(worker, pipeline_db, tmp_path):
    asyncio.run(_seed_windows(pipeline_db))
    url = f"{worker.base}/dashboard"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and b"<svg data-chart=\"latency\"" in resp.read()
    data = http_json(f"{worker.base}/api/dashboard")
    assert set(data["views"]) == {"mixin_compatibility_summary", "pattern_feedback_analysis",
                                  "performance_metrics_summary", "template_cache_efficiency",
                                  "event_processing_health"}
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="true"' in dom
    for chart in ("latency", "throughput", "cache_hit_rate", "model_accuracy"):
        match = re.search(rf'<svg data-chart="{chart}"[^>]*data-series="(\d+)"[^>]*>(.*?)</svg>', dom, re.S)
        assert match, chart
        assert int(match.group(1)) >= 1 and "<polyline" in match.group(2), chart
    shot = tmp_path / "dashboard.png"
    subprocess.run([*common, "--window-size=1280,1400", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


GRAFANA = ROOT / "deploy" / "grafana" / "omnistream-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def _queries() -> list[str]:
    dashboard = orjson.loads(GRAFANA.read_bytes())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_every_metric_the_grafana_dashboard_queries_is_exported_by_a_running_worker(worker):
    import re

    with urllib.request.urlopen(f"{worker.base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    # A histogram's series are <name>_bucket/_sum/_count under `# TYPE <name> histogram`.
    queried = {re.sub(r"_bucket$", "", name)
               for expr in _queries() for name in re.findall(r"\bomnistream_[a-z_]+", expr)}
    assert len(queried) >= 8
    assert queried - exported == set(), f"queried but not exported: {queried - exported}"
    panels = {p["title"] for p in orjson.loads(GRAFANA.read_bytes())["panels"]}
    assert {"Events/s per agent", "Dead letters per topic and reason", "Consumer lag per agent",
            "Sink batch latency p95 per table"} <= panels


def test_the_dashboard_queries_and_the_scrape_config_pass_promtool(tmp_path):
    config = subprocess.run(["promtool", "check", "config", str(PROMETHEUS)], capture_output=True,
                            text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr
    # Grafana's variables replaced by what they stand for, every query checked as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"omnistream:dashboard_query_{i}",
         "expr": q.replace("$__rate_interval", "1m").replace("$instance", ".*")}
        for i, q in enumerate(_queries())]}]}
    path = tmp_path / "queries.rules.json"  # JSON is YAML
    path.write_bytes(orjson.dumps(rules))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
