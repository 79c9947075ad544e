"""The `omnistream` command line."""

from __future__ import annotations

import argparse
import sys

import orjson

from streams.infra.errors import InfraError


def _infra(args: argparse.Namespace) -> int:
    from streams.infra import stack

    if args.action == "up":
        stack.up()
    elif args.action == "down":
        stack.down()
    elif args.action == "status":
        report = stack.status()
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        else:
            for name, svc in report.items():
                where = svc.get("bootstrap") or svc.get("url")
                state = "up" if svc["answering"] else "DOWN"
                print(f"{name:9} {state:5} {where}  source={svc['source']} pid={svc['pid']} "
                      f"version={svc['version']}")
        return 0 if all(s["answering"] for s in report.values()) else 3
    elif args.action == "env":
        print("\n".join(stack.env_lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnistream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    infra = sub.add_parser("infra", help="start, stop, report the local Kafka + PostgreSQL")
    infra.add_argument("action", choices=["up", "down", "status", "env"])
    infra.add_argument("--json", action="store_true", help="status as JSON")
    infra.set_defaults(func=_infra)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except InfraError as exc:
        print(f"omnistream: {exc}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
