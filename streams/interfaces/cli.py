"""The `omnistream` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from schemas.errors import OmnistreamError
from streams.config import ConfigError
from streams.infra.errors import InfraError
from streams.runtime.errors import FATAL_KAFKA, refusal

if TYPE_CHECKING:
    from schemas.events import Alert


class UsageError(OmnistreamError):
    """Bad input from the user: printed as one line, exit status 1."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, not {text!r}")
    return value


def _infra(args: argparse.Namespace) -> int:
    from agents.logging import redacted
    from streams.infra import stack

    if args.action != "up" and args.secure:
        raise UsageError("--secure goes with `infra up` (a stack once started secure stays so)")
    if args.action != "env" and args.as_role:
        raise UsageError("--as goes with `infra env`")
    if args.action == "up":
        stack.up(brokers=args.brokers, secured=args.secure)
    elif args.action == "down":
        stack.down()
    elif args.action == "status":
        report = stack.status()
        if args.json:
            print(redacted(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()))
        else:
            for name, svc in report.items():
                where = redacted(svc.get("bootstrap") or svc.get("url"))
                state = "up" if svc["answering"] else "DOWN"
                pid = svc["pid"]
                if pid is not None and not svc["pid_is_ours"]:
                    pid = f"{pid}({'not ours' if svc['pid_alive'] else 'gone'})"
                print(f"{name:9} {state:5} {where}  owner={svc['owner']} source={svc['source']} "
                      f"pid={pid} version={svc['version']}")
                for node in svc.get("nodes") or []:
                    print(f"  node {node['node_id']}  {'up' if node['alive'] else 'GONE':5} "
                          f"{node['address']}  pid={node['pid']}")
                if svc.get("under_replicated"):
                    print("  topics with fewer replicas than asked: " + ", ".join(
                        f"{t} ({n})" for t, n in sorted(svc["under_replicated"].items())))
        return 0 if all(s["answering"] for s in report.values()) else 3
    elif args.action == "env":
        print("\n".join(stack.env_lines(args.as_role)))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from streams.config import Settings
    from streams.infra.migrate import MigrationError, migrate

    try:
        asyncio.run(migrate(Settings.from_env().database_url))
    except MigrationError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot reach PostgreSQL: {exc} (run `omnistream infra up`)") from None
    return 0


def _worker(args: argparse.Namespace) -> int:
    from streams.worker import run

    run()
    return 0


def read_json_events(source: str) -> list[dict]:
    """One JSON object, or JSON lines, from a file or '-' (stdin)."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    text = raw.strip()
    if not text:
        raise UsageError(f"{source}: empty input")
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [whole]
    if isinstance(whole, list):
        raise UsageError(f"{source}: expected one JSON object or JSON lines, got a JSON array")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"{source}:{n}: not valid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise UsageError(f"{source}:{n}: expected a JSON object")
        out.append(item)
    return out


def _validated(source: str, model) -> list:
    from schemas.codec import DecodeError, validate

    events = []
    for n, item in enumerate(read_json_events(source), 1):
        try:
            events.append(validate(model, item))
        except DecodeError as exc:
            raise UsageError(f"{source}: event {n}: {exc}") from None
    return events


def _publish(args: argparse.Namespace) -> int:
    from schemas.events import PrdSubmitted
    from streams.interfaces.client import OmnistreamClient

    prds = _validated(args.file, PrdSubmitted)

    async def go() -> None:
        async with OmnistreamClient() as client:
            for prd in prds:
                cid = await client.publish_prd(prd)
                print(f"{cid}\t{prd.prd_id}")

    asyncio.run(go())
    return 0


def _publish_metrics(args: argparse.Namespace) -> int:
    from schemas.events import MetricEvent
    from streams.interfaces.client import OmnistreamClient

    samples = _validated(args.file, MetricEvent)

    async def go() -> int:
        async with OmnistreamClient() as client:
            return await client.publish_metrics(samples)

    records = asyncio.run(go())
    print(f"published {len(samples)} samples in {records} records", file=sys.stderr)
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from streams.interfaces.client import OmnistreamClient
    from streams.interfaces.output import write_node

    ids = set(args.correlation_id or [])
    out = Path(args.out) if args.out else None

    async def go() -> int:
        seen = 0
        async with OmnistreamClient() as client:
            async for node in client.generated(
                    correlation_ids=ids or None, count=args.count, timeout=args.timeout,
                    from_beginning=bool(ids) or args.from_beginning):
                seen += 1
                paths = write_node(out, node) if out else []
                print(orjson.dumps({
                    "correlation_id": str(node.correlation_id), "prd_id": node.prd_id,
                    "node": node.node_name, "node_type": node.node_type, "success": node.success,
                    "failure_reason": node.failure_reason, "quality_score": node.quality_score,
                    "findings": len(node.findings), "operations": node.operations,
                    "scaffold_operations": node.scaffold_operations,
                    "files": [str(p) for p in paths] if out else [f.path for f in node.files],
                }).decode(), flush=True)
        return seen

    seen = asyncio.run(go())
    if args.count is not None and seen < args.count:
        print(f"omnistream: timed out after {seen} of {args.count} nodes", file=sys.stderr)
        return 4
    return 0


def _feedback(args: argparse.Namespace) -> int:
    import getpass

    from schemas import topics as spec
    from schemas.events import PatternFeedback
    from streams.interfaces.client import OmnistreamClient

    events = _validated(args.file, PatternFeedback)
    who = args.source or f"cli:{getpass.getuser()}"
    # Without a source all unnamed feedback would share one source's bounded influence.
    events = [e if e.source else e.model_copy(update={"source": who}) for e in events]

    async def go() -> None:
        async with OmnistreamClient() as client:
            for event in events:
                await client.publish(spec.PATTERN_FEEDBACK, event)
                print(f"{event.id}\t{event.pattern_name}\t{event.feedback_type}")

    asyncio.run(go())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from schemas.events import PredictRequest
    from streams.config import Settings, model_key
    from streams.learning.replay import current_models

    mixins = [m.strip() for m in args.mixins.split(",") if m.strip()]
    try:
        req = PredictRequest(node_type=args.node_type, mixins=mixins)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    settings = Settings.from_env()
    registry = asyncio.run(current_models(settings, model_key()))
    prediction = registry.predict(req.node_type, list(req.mixins)).as_dict()
    if registry.refused:
        prediction["snapshots_refused"] = registry.refused
    print(orjson.dumps(prediction, option=orjson.OPT_INDENT_2).decode())
    return 0


def _replay(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from streams.config import Settings
    from streams.learning.replay import ReplayError, replay
    from streams.learning.training import TrainingError

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise UsageError(f"--since {args.since!r} is not an ISO-8601 date/time") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    try:
        report = asyncio.run(replay(Settings.from_env(), args.topic, since, swap=not args.no_swap,
                                    wait_s=args.wait, progress=not args.quiet))
    except ReplayError as exc:
        raise UsageError(str(exc)) from None
    except TrainingError as exc:  # a bug or a killed process, not the input: said, nothing changed
        print(f"omnistream: {exc}", file=sys.stderr)
        return 1
    rate = report.events / report.seconds if report.seconds else 0.0
    print(f"replayed {report.events} events ({report.invalid} invalid, {report.duplicates} "
          f"sent twice, skipped) in "
          f"{report.seconds:.1f}s, {rate:,.0f} events/s")
    print("old: the model in use, scored on the replayed events (it may have learnt from them); "
          "new: the rebuilt model, progressive (each event scored before it is learnt)")
    print(f"{'node type':13} {'events':>7}  {'old acc':>8} {'old logloss':>11}  "
          f"{'new acc':>8} {'new logloss':>11}  version")
    for row in report.rows():
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"
        version = (f"{row['old_version']} -> {row['new_version']}" if row["new_version"]
                   else f"{row['old_version']} (not swapped)")
        print(f"{row['node_type']:13} {row['events']:>7}  {f(row['old_accuracy']):>8} "
              f"{f(row['old_log_loss']):>11}  {f(row['new_accuracy']):>8} {f(row['new_log_loss']):>11}"
              f"  {version}")
    if args.json:
        print(orjson.dumps({"events": report.events, "invalid": report.invalid,
                            "duplicates": report.duplicates, "seconds": round(report.seconds, 3),
                            "swapped": report.swapped,
                            "models": report.rows()}).decode())
    if not args.no_swap and not report.swapped:
        print("omnistream: the new models were sent but no worker swapped them in within "
              f"{args.wait:.0f}s (is `omnistream worker` running?)", file=sys.stderr)
        return 5
    return 0


def _alerts(args: argparse.Namespace) -> int:
    """The alerts topic: a table of each alert's latest state (default), JSON lines (--json),
    and with --follow one line per change as it comes."""
    if args.action:
        return _alert_command(args)
    from datetime import UTC, datetime

    from streams.interfaces import alert_table

    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def shown(alert: Alert) -> bool:
        return not (args.open_only and alert.state == "resolved")

    async def go() -> None:
        if args.json:  # machines: every event as it is, in topic order
            async for alert in _alert_events(to_end=not args.follow):
                if shown(alert):
                    print(alert.model_dump_json(), flush=True)
            return
        history = [a async for a in _alert_events(to_end=True)]
        print(alert_table.table([a for a in alert_table.latest(history) if shown(a)],
                                datetime.now(UTC), colour), flush=True)
        if not args.follow:
            return
        already = {a.id for a in history}  # read again from the start: no gap between the two
        async for alert in _alert_events(to_end=False):
            if alert.id not in already and shown(alert):
                print(alert_table.change_line(alert, datetime.now(UTC), colour), flush=True)

    asyncio.run(go())
    return 0


async def _alert_events(to_end: bool) -> AsyncIterator[Alert]:
    from schemas.events import Alert
    from schemas.topics import ALERTS
    from streams.interfaces.client import OmnistreamClient

    async with OmnistreamClient() as client:
        async for alert in client.subscribe(ALERTS, Alert, to_end=to_end):
            yield alert


def _alert_command(args: argparse.Namespace) -> int:
    import getpass

    from schemas import topics as spec
    from schemas.events import AlertCommand
    from streams.interfaces import alert_table
    from streams.interfaces.client import OmnistreamClient

    if not args.alert_id:
        raise UsageError(f"alerts {args.action} needs the alert id or fingerprint (or a unique prefix)")

    async def full_id() -> str:
        """A prefix (as the table shows) is completed from the alerts topic."""
        if len(args.alert_id) in (36, 64):
            return str(args.alert_id)
        try:
            return alert_table.resolve_id(args.alert_id, [a async for a in _alert_events(to_end=True)])
        except alert_table.Ambiguous as exc:
            raise UsageError(f"{exc.prefix!r} names more than one alert: {', '.join(exc.matches)}") from None

    async def go() -> AlertCommand:
        try:
            cmd = AlertCommand(alert_id=await full_id(), action=args.action,
                               by=args.by or getpass.getuser(),
                               duration_s=int(args.duration) if args.duration else None)
        except ValueError as exc:
            raise UsageError(str(exc).splitlines()[0]) from None
        async with OmnistreamClient() as client:
            await client.publish(spec.ALERTS_COMMANDS, cmd, key=cmd.alert_id)
        return cmd

    cmd = asyncio.run(go())
    print(f"{cmd.id}\t{cmd.action}\t{cmd.alert_id}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.infra.migrate import MigrationError
    from streams.interfaces.demo import run_demo

    try:
        return run_demo(Path(args.examples), Path(args.out), serve=args.serve, timeout=args.timeout)
    except MigrationError as exc:
        raise UsageError(str(exc)) from None


def _bench(args: argparse.Namespace) -> int:
    try:
        from bench.run import main as bench_main
    except ImportError as exc:
        raise UsageError(f"the benchmarks are not installed with this omnistream ({exc})") from None

    return bench_main(quick=args.quick, only=args.only, minutes=args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnistream", description="omnistream: PRDs to code on Kafka")
    sub = parser.add_subparsers(dest="command", required=True)

    infra = sub.add_parser("infra", help="start, stop, report the local Kafka + PostgreSQL")
    infra.add_argument("action", choices=["up", "down", "status", "env"])
    infra.add_argument("--json", action="store_true", help="status as JSON")
    infra.add_argument("--brokers", type=_positive, default=None, metavar="N",
                       help="up: a local Kafka cluster of N nodes (each broker and controller); "
                            "default: what the stack runs, else 1")
    infra.add_argument("--secure", action="store_true",
                       help="up: Kafka with TLS, SCRAM-SHA-512 logins and ACLs per role "
                            "(worker, publisher, operator, reader); kept on later `up`s")
    infra.add_argument("--as", dest="as_role", default=None, metavar="ROLE",
                       help="env: the client settings of this principal of a secure stack (default worker)")
    infra.set_defaults(func=_infra)

    sub.add_parser("migrate", help="apply migrations/*.sql").set_defaults(func=_migrate)
    sub.add_parser("worker", help="run the Faust worker with all agents").set_defaults(func=_worker)

    pub = sub.add_parser("publish", help="validate and publish events")
    pub_sub = pub.add_subparsers(dest="kind", required=True)
    prd = pub_sub.add_parser("prd", help="one PRD (JSON object) or many (JSON lines)")
    prd.add_argument("file", help="path, or - for stdin")
    prd.set_defaults(func=_publish)
    metrics = pub_sub.add_parser("metrics", help="metric samples (JSON lines of MetricEvent), sent in "
                                 "batched records per metric name")
    metrics.add_argument("file", help="path, or - for stdin")
    metrics.set_defaults(func=_publish_metrics)

    subscribe = sub.add_parser("subscribe", help="stream generated code")
    subscribe.add_argument("kind", choices=["generated"])
    subscribe.add_argument("--correlation-id", action="append",
                           help="only this PRD's nodes (repeatable); reads from the beginning")
    subscribe.add_argument("--out", help="write the files under this folder, one tree per PRD")
    subscribe.add_argument("--count", type=int, help="stop after this many nodes")
    subscribe.add_argument("--timeout", type=float, help="stop after this many seconds")
    subscribe.add_argument("--from-beginning", action="store_true",
                           help="also read nodes generated before now")
    subscribe.set_defaults(func=_subscribe)

    fb = sub.add_parser("feedback", help="publish pattern-feedback events (JSON object or lines)")
    fb.add_argument("file", help="path, or - for stdin")
    fb.add_argument("--source", help="who gives the feedback (default cli:<user>) when events lack one")
    fb.set_defaults(func=_feedback)

    pred = sub.add_parser("predict", help="score a mixin combination with the current model")
    pred.add_argument("--node-type", required=True, help="effect, compute, reducer or orchestrator")
    pred.add_argument("--mixins", required=True, help="comma-separated, e.g. MixinRetry,MixinTimeout")
    pred.set_defaults(func=_predict)

    rp = sub.add_parser("replay", help="rebuild the mixin models from a retained topic and swap them in")
    rp.add_argument("--topic", required=True, help="codegen.results")
    when = rp.add_mutually_exclusive_group(required=True)
    when.add_argument("--from-beginning", action="store_true")
    when.add_argument("--since", help="ISO-8601 time (UTC when no offset is given)")
    rp.add_argument("--no-swap", action="store_true", help="only compare old and new models")
    rp.add_argument("--wait", type=float, default=60, help="seconds to wait for the workers' swap")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    rp.set_defaults(func=_replay)

    al = sub.add_parser("alerts", help="read the alerts topic; ack / resolve / silence an alert")
    al.add_argument("action", nargs="?", choices=["ack", "resolve", "silence"])
    al.add_argument("alert_id", nargs="?", help="alert id (annotations.alert_id) or fingerprint")
    al.add_argument("--follow", action="store_true",
                    help="after the table, one line per change as it comes")
    al.add_argument("--open", dest="open_only", action="store_true", help="skip resolved ones")
    al.add_argument("--json", action="store_true", help="every alert event as a JSON line")
    al.add_argument("--by", help="who acts (default: your user name)")
    al.add_argument("--duration", type=float, help="silence: seconds (default 3600)")
    al.set_defaults(func=_alerts)

    demo = sub.add_parser("demo", help="infra up, migrate, worker, publish examples/, summary")
    demo.add_argument("--examples", default="examples")
    demo.add_argument("--out", default="generated")
    demo.add_argument("--timeout", type=float, default=180)
    demo.add_argument("--serve", action="store_true",
                      help="keep the worker running after the summary (Ctrl-C stops it)")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks beside their baselines (on a throwaway stack)")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--only", choices=["cache", "pipeline", "learning", "learner", "metrics", "scaleout",
                                                "soak"],
                       help="one benchmark; `soak` (30 minutes of mixed load) runs only when named")
    bench.add_argument("--minutes", type=float, default=30, help="length of the soak run")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Whatever it prints on failure goes through `redacted`: a secret (a
    password in DATABASE_URL, the webhook URL, …) is never shown."""
    from agents.logging import redacted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UsageError as exc:
        print(redacted(f"omnistream: {exc}"), file=sys.stderr)
        return 1
    except InfraError as exc:
        print(redacted(f"omnistream: {exc}"), file=sys.stderr)
        if exc.detail:
            print(redacted(exc.detail), file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(redacted(f"omnistream: bad setting: {exc}"), file=sys.stderr)
        return 2
    except UnknownTopicOrPartitionError:
        print("omnistream: a topic this command uses does not exist, and this principal may not create "
              "it (a secure stack creates no topic on use): start a worker first, it creates them",
              file=sys.stderr)
        return 2
    except FATAL_KAFKA as exc:
        from streams.config import Settings

        principal = Settings.from_env().kafka_sasl_username
        print(redacted(f"omnistream: {refusal(exc, principal)}"), file=sys.stderr)
        return 2
    except KafkaConnectionError:
        from streams.config import Settings

        settings = Settings.from_env()
        who = f" as {settings.kafka_sasl_username!r}" if settings.kafka_sasl_username else ""
        print(redacted(f"omnistream: cannot reach Kafka at {settings.kafka_bootstrap}{who}: is it running "
                       "(`omnistream infra status`), and are its login settings right?"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        import traceback

        print(redacted(traceback.format_exc()), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
