"""Signed model snapshots: compact bytes that are only unpickled after their HMAC checks out.

Loading a pickle runs code, so a snapshot from anywhere but our own signer must never be
loaded: the tag is checked (constant time) before anything else is parsed beyond the header.

Layout: MAGIC | u32 header length | header (JSON) | 32-byte HMAC-SHA256 tag | zlib(pickle).
The tag covers header and payload, so a changed version number is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.errors import OmnistreamError

MAGIC = b"OMSM1"
TAG_BYTES = 32


class SnapshotRejected(OmnistreamError):
    """The bytes are not a snapshot we signed (tampered, truncated, other key, other format)."""


@dataclass(frozen=True)
class SnapshotHeader:
    node_type: str
    version: int
    updates: int
    created_at: float
    # An install (a model trained by `replay`) names the version it replaces, inside the signed
    # header: a re-sent old install names a version that is no longer current and is refused.
    replaces: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_type": self.node_type, "version": self.version,
                               "updates": self.updates, "created_at": self.created_at}
        if self.replaces is not None:
            out["replaces"] = self.replaces
        return out


def digest(blob: bytes) -> str:
    """A snapshot's identity in logs and refusals: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(blob).hexdigest()[:16]


def _tag(key: bytes, header: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(struct.pack(">I", len(header)))
    mac.update(header)
    mac.update(payload)
    return mac.digest()


def dumps(obj: Any, header: SnapshotHeader, key: bytes) -> bytes:
    head = orjson.dumps(header.as_dict())
    payload = zlib.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), 6)
    return MAGIC + struct.pack(">I", len(head)) + head + _tag(key, head, payload) + payload


def read_header(blob: bytes) -> SnapshotHeader:
    """The header only, unverified: for cheap 'is this still the snapshot I know' checks."""
    head, _, _ = _split(blob)
    try:
        return SnapshotHeader(**orjson.loads(head))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise SnapshotRejected(f"unreadable snapshot header: {exc}") from None


def loads(blob: bytes, key: bytes) -> tuple[SnapshotHeader, Any]:
    head, tag, payload = _split(blob)
    if not hmac.compare_digest(tag, _tag(key, head, payload)):
        raise SnapshotRejected("authentication tag does not match (tampered, or signed with another key)")
    header = read_header(blob)
    try:
        return header, pickle.loads(zlib.decompress(payload))  # noqa: S301 - verified above
    except Exception as exc:  # signed by us but unreadable: a version mismatch, not an attack
        raise SnapshotRejected(f"signed snapshot does not load: {type(exc).__name__}: {exc}") from None


def _split(blob: bytes) -> tuple[bytes, bytes, bytes]:
    if not isinstance(blob, bytes | bytearray) or not blob.startswith(MAGIC):
        raise SnapshotRejected("not a model snapshot (bad magic)")
    at = len(MAGIC)
    if len(blob) < at + 4:
        raise SnapshotRejected("truncated snapshot")
    (n,) = struct.unpack(">I", blob[at:at + 4])
    at += 4
    if len(blob) < at + n + TAG_BYTES:
        raise SnapshotRejected("truncated snapshot")
    return bytes(blob[at:at + n]), bytes(blob[at + n:at + n + TAG_BYTES]), bytes(blob[at + n + TAG_BYTES:])
