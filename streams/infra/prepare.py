"""`python -m streams.infra.prepare`: fetch what the local stack needs (run by `make setup`)."""

from __future__ import annotations

import sys

from streams.config import cache_dir
from streams.infra import kafka, postgres
from streams.infra.errors import InfraError


def main() -> int:
    try:
        lib = kafka.ensure_jars(cache_dir())
        bindir = postgres.ensure_binaries()
    except InfraError as exc:
        print(f"omnistream: {exc}", file=sys.stderr)
        return 2
    print(f"kafka jars: {lib}\npostgresql: {bindir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
