"""Write the JSON Schema of every topic's value to schemas/json/ (`python -m schemas.export`).

`--check` exits 1 when a file on disk differs from what the models produce (stale export).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from schemas.topics import ALL

JSON_DIR = Path(__file__).parent / "json"


def render() -> dict[str, bytes]:
    out = {}
    for topic in ALL:
        assert topic.model is not None, topic.name  # every public topic has a value model
        schema = topic.model.model_json_schema(mode="validation")
        schema["$id"] = f"https://omnistream.local/schemas/{topic.name}.schema.json"
        schema["x-topic"] = topic.name
        schema["x-key"] = topic.key
        out[f"{topic.name}.schema.json"] = orjson.dumps(
            schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    return out


def stale(folder: Path = JSON_DIR) -> list[str]:
    wanted = render()
    have = {p.name for p in folder.glob("*.schema.json")}
    diff = [n for n, b in wanted.items() if not (folder / n).exists()
            or (folder / n).read_bytes() != b]
    return sorted(diff + sorted(have - wanted.keys()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        bad = stale()
        if bad:
            print("stale JSON Schema exports (run: python -m schemas.export): " + ", ".join(bad))
            return 1
        return 0
    JSON_DIR.mkdir(exist_ok=True)
    for old in JSON_DIR.glob("*.schema.json"):
        old.unlink()
    for name, body in render().items():
        (JSON_DIR / name).write_bytes(body)
    print(f"wrote {len(ALL)} schemas to {JSON_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
