"""Versioned state records: what the workers keep in changelog-backed tables.

Each record carries `version`. A record without it was written before versions existed and
is version 1. A record from a newer release (a version above `VERSION`) is refused with a
clear error instead of being misread. A future change bumps `VERSION` on the model and adds
a step to `migrate` that lifts the older shape, so the changelog can be replayed by the new
code. No I/O here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel

from schemas.errors import OmnistreamError


class StateVersionError(OmnistreamError, ValueError):
    """A state record written by a newer release than this one."""


class VersionedState(BaseModel):
    VERSION: ClassVar[int] = 1
    version: int = 1

    @classmethod
    def migrate(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Lift an older record to VERSION (nothing to do yet: there is only version 1)."""
        return raw

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> Self | None:
        if raw is None:
            return None
        version = raw.get("version", 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise StateVersionError(f"{cls.__name__} record of version {version!r}: this release "
                                    f"reads up to version {cls.VERSION}")
        if version < cls.VERSION:
            raw = cls.migrate(raw)
        return cls.model_validate({**raw, "version": cls.VERSION})

    def dump(self) -> dict[str, Any]:
        """What goes into the table (JSON-able)."""
        return self.model_dump(mode="json")
