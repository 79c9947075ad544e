"""Worker HTTP: /metrics through promtool, /health details, /dashboard rendered by Chromium."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from schemas.events import MetricEvent
from streams.interfaces.client import OmnistreamClient
from tests.conftest import ROOT, http_json


def test_metrics_pass_promtool(worker):
    with urllib.request.urlopen(f"{worker.base}/metrics", timeout=10) as resp:
        text = resp.read()
    assert b"omnistream_events_processed_total" in text and b"omnistream_sink_pending_rows" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def _publish_example_prd(services, prefix: str) -> None:
    async def publish():
        data = orjson.loads((ROOT / "examples" / "minimal.json").read_bytes())
        data["prd_id"] = f"{prefix}-{uuid.uuid4().hex[:6]}"
        from schemas.events import PrdSubmitted

        async with OmnistreamClient(services.bootstrap) as client:
            await client.publish_prd(PrdSubmitted.model_validate(data))

    asyncio.run(publish())


def test_health_reports_lag_and_last_event_age_per_agent(worker, services):
    _publish_example_prd(services, "web")
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


def test_health_lag_total_is_the_sum_of_what_it_lists(worker, services):
    """consumer_lag adds up lag_by_topic; each agent's lag adds up its topics' lag; table
    changelogs (written by the worker, read only when it restores) are listed apart."""
    _publish_example_prd(services, "lag")
    deadline = time.monotonic() + 60
    report: dict = {}
    while time.monotonic() < deadline:  # the run wrote table records: changelogs moved
        report = http_json(f"{worker.base}/health", any_status=True)
        if sum(report["changelog_lag"].values()) > 0 and report["consumer_lag"] == 0:
            break
        time.sleep(0.5)
    assert report["consumer_lag"] == sum(report["lag_by_topic"].values())
    for name, entry in report["agent_lag"].items():
        assert entry["lag"] == sum(report["lag_by_topic"].get(t, 0) for t in entry["topics"]), name
        assert set(entry["topics"]) <= set(report["lag_by_topic"]) | set(report["changelog_lag"])
    assert set(report["lag_by_topic"]) | set(report["changelog_lag"]) == set(report["assignment"])
    assert report["changelog_lag"] and all(t.endswith("-changelog") for t in report["changelog_lag"])
    assert sum(report["changelog_lag"].values()) > 0, report
    assert report["consumer_lag"] == 0, report  # everything read; only changelogs "behind"


def _hour_of_samples(now: datetime, source: str) -> list[MetricEvent]:
    """One synthetic hour: a sample or two per minute of every metric the charts read, with
    event times over the last hour (the real aggregator folds them into windows), and a gap of
    six minutes in the sink latency series."""
    out: list[MetricEvent] = []
    worker = {"worker": source}
    for m in range(60):
        t = now - timedelta(minutes=60 - m, seconds=-10)

        def sample(name: str, value: float, kind: str = "gauge", at: datetime = t, **labels: str) -> None:
            out.append(MetricEvent(name=name, value=value, metric_type=kind, labels=labels, occurred_at=at))

        sample("prd_completion_ms", 80.0 + m, "histogram", status="complete", **worker)
        sample("codegen_node_duration_ms", 12.0, "histogram", node_type="effect", **worker)
        sample("codegen_node_duration_ms", 15.0, "histogram", node_type="compute", **worker)
        sample("template_cache_hit_rate", 0.9, **worker)
        sample("omnistream_model_progressive_accuracy", 0.93, node_type="compute", **worker)
        for i, at in enumerate((t, t + timedelta(seconds=30))):  # cumulative counters: rise per window
            sample("omnistream_events_processed_total", 600.0 * m + 300 * i, "counter", at=at,
                   agent="codegen-render", outcome="ok", **worker)
            sample("omnistream_dlq_events_total", 2.0 * m + i, "counter", at=at, topic="prd.requests",
                   reason="schema", **worker)
        sample("omnistream_agent_consumer_lag", float(m % 7), agent="prd-fanout", **worker)
        if not 30 <= m < 36:
            sample("sink_flush_ms", 4.0 + m % 5, "histogram", table="alerts", **worker)
    return out


def test_dashboard_answers_what_happened_when_in_chromium(worker, services, tmp_path):
    """An hour of synthetic samples through the real pipeline, then the page in headless
    Chromium: every chart has time ticks, y ticks with units, a legend, a readout, gaps where a
    series has no windows, and stable colours; the range and filter controls are there."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)  # windows start on the minute
    source = f"synthetic-{uuid.uuid4().hex[:6]}"
    samples = _hour_of_samples(now, source)

    async def publish() -> None:
        async with OmnistreamClient(services.bootstrap) as client:
            await client.publish_metrics(samples)

    asyncio.run(publish())
    deadline = time.monotonic() + 120
    data: dict = {}
    while time.monotonic() < deadline:
        data = http_json(f"{worker.base}/api/dashboard?range=1h&worker={source}")
        sink = data["charts"]["sink_latency"]["series"].get("table=alerts", [])
        if len(sink) >= 45 and data["charts"]["events_per_s"]["series"].get("agent=codegen-render"):
            break
        time.sleep(2)
    sink = data["charts"]["sink_latency"]["series"].get("table=alerts", [])
    assert len(sink) >= 45, data["charts"]["sink_latency"]
    rate = data["charts"]["events_per_s"]["series"]["agent=codegen-render"]
    assert all(abs(v - 5.0) < 1e-6 for _, v in rate)  # 300 events in each 60 s window
    assert source in data["filters"]["worker"]
    assert {"effect", "compute"} <= set(data["filters"]["node_type"])
    bad = http_json(f"{worker.base}/api/dashboard?range=2d", any_status=True)
    assert bad["error"].startswith("range must")

    url = f"{worker.base}/dashboard"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="true"' in dom
    assert len(re.findall(r'<option value="(15m|1h|6h|24h)"', dom)) == 4
    assert re.search(rf'<select id="worker">.*{source}.*</select>', dom, re.S)
    units = {"latency": "ms", "throughput": "/s", "cache_hit_rate": "%", "model_accuracy": "%",
             "events_per_s": "/s", "dead_letters": "letters", "consumer_lag": "messages",
             "sink_latency": "ms"}
    for chart, unit in units.items():
        pattern = rf'<div class="card" data-chart="{chart}">(.*?)<div class="readout"[^>]*>(.*?)</div>'
        card = re.search(pattern, dom, re.S)
        assert card, chart
        body, readout = card.groups()
        svg = re.search(r'<svg class="chart"([^>]*)>', body).group(1)
        xticks = int(re.search(r'data-xticks="(\d+)"', svg).group(1))
        yticks = int(re.search(r'data-yticks="(\d+)"', svg).group(1))
        assert 3 <= xticks <= 8 and 3 <= yticks <= 6, (chart, xticks, yticks)
        xlabels = re.findall(r'class="tick xtick"[^>]*>([^<]+)<', body)
        assert xlabels and all(re.fullmatch(r"\d\d:\d\d( [AP]M)?", x) for x in xlabels), xlabels
        ylabels = re.findall(r'class="tick ytick"[^>]*>([^<]+)<', body)
        yunit = re.findall(r'class="tick yunit"[^>]*>([^<]+)<', body)  # counts: the unit once
        shown = ("ms", " s") if unit == "ms" else (unit,)  # ms from 1000 on read as seconds
        assert ylabels and (all(any(u in y for u in shown) for y in ylabels) or yunit == [unit]), (
            chart, ylabels, yunit)
        assert re.search(rf'<span class="unit">\({re.escape(unit)}\)</span>', body), chart
        assert "<li data-series=" in body, chart
        assert "(latest)" in readout, (chart, readout)
    sink_card = re.search(r'data-chart="sink_latency">(.*?)<div class="readout"', dom, re.S).group(1)
    assert int(re.search(r'data-segments="(\d+)"', sink_card).group(1)) >= 2  # the six-minute gap
    # The same series has the same colour in the plot and the legend, refresh after refresh.
    stroke = re.search(r'<path d="[^"]*" fill="none" stroke="(#[0-9a-f]{6})"[^>]*data-series="table=alerts"',
                       sink_card).group(1)
    assert f'<li data-series="table=alerts"><span class="swatch" style="background:{stroke}"' in sink_card
    shot = tmp_path / "dashboard.png"
    subprocess.run([*common, "--window-size=1400,1800", f"--screenshot={shot}", url],
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
