"""Settings shared by every dataset's assets and sensor."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field


class BatchSettings(ConfigurableResource):
    """Where batches land and how they are worked through."""

    bucket: str = Field(description="The S3 bucket holding the datasets' inbox prefixes.")
    max_objects_per_tick: int = Field(
        default=5000,
        description="New objects a sensor tick takes at most (grouped into batches).",
    )
    inbox_lookback_minutes: int = Field(
        default=30,
        description="How far behind the newest object taken the sensor still looks for "
        "objects it has not taken: S3 stamps a multipart upload with its start time.",
    )
    chunk_size: int = Field(
        default=0,
        description="Records per chunk; 0 takes the dataset's own (its chunk_size, or "
        "10,000 when a pool of processes scores the chunks, 50,000 otherwise).",
    )
    workers: int = Field(
        default=0,
        description="Processes scoring chunks in parallel; 0 uses every core, 1 scores "
        "in the step's own process.",
    )

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)
