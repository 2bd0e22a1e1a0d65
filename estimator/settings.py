"""Estimator service settings: environment variables `BLOCK_ESTIMATOR_*`, overridden by flags.

Built once in `block estimator serve` and passed down; nothing reads the environment later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EstimatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLOCK_ESTIMATOR_", frozen=True, extra="ignore")

    # Address and port the HTTP service listens on.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8003
    # Artifact folder from `block estimator train`; unset: the one shipped in the package.
    artifact: Path | None = None
    # Largest request body accepted, bytes: 256 prompts of ~16k characters fit with room.
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    # Threads running estimates off the event loop (CPU-bound numpy and tokenizer work).
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
