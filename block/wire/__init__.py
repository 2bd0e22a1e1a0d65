"""Wire models: every JSON body that crosses a process boundary, as pydantic models.

Services import these, never each other's internals. One base model for Block's own APIs:
frozen and strict about unknown fields, so a typo in a client is a clear 422, not a silent default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Base of Block's own API bodies: a field takes its JSON type only (`"100"` is not 100)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


__all__ = ["WireModel"]
