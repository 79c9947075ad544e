"""Writing generated files to disk, safely: every path stays under the chosen folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from schemas.errors import OmnistreamError
from schemas.events import GeneratedNode


class UnsafeOutput(OmnistreamError):
    pass


def write_node(root: Path, node: GeneratedNode) -> list[Path]:
    """Write a node's files under root/<prd_id>/…; check each file's sha256 first."""
    base = (root / node.prd_id).resolve()
    written = []
    for f in node.files:
        if hashlib.sha256(f.content.encode()).hexdigest() != f.sha256:
            raise UnsafeOutput(f"{f.path}: content does not match its sha256")
        target = (base / f.path).resolve()
        if base not in target.parents:
            raise UnsafeOutput(f"{f.path}: path leaves the output folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content, encoding="utf-8")
        written.append(target)
    return written
