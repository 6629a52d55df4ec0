"""Dataset entries: each dataset is one frozen entry; the factory builds the rest from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandera.polars as pa
import polars as pl

from batch_assets.processors import Processor
from batch_assets.processors.sentiment import SENTIMENT
from batch_assets.schemas.reviews import ReviewRecord
from batch_assets.sinks.postgres import ResultsTables


@dataclass(frozen=True)
class Dataset:
    """Everything that makes one dataset.

    Attributes:
        name: the dataset's name: asset key prefix, partitions, tables and sensor derive
            from it.
        columns: the columns every record carries (the CSV header must name them).
        schema: the pandera model each chunk is validated against.
        processor: what turns a valid record into a result.
        format: the files' format.
        sinks: where results go.
        chunk_size: records per chunk (validation and checkpoint unit).
        inbox: the S3 prefix the sensor watches, under the bucket.
    """

    name: str
    columns: tuple[str, ...]
    schema: type[pa.DataFrameModel]
    processor: Processor
    format: Literal["csv"] = "csv"
    sinks: tuple[Literal["postgres"], ...] = ("postgres",)
    chunk_size: int = 10_000
    inbox: str = ""

    @property
    def job_name(self) -> str:
        return f"{self.name}_job"

    @property
    def sensor_name(self) -> str:
        return f"{self.name}_inbox_sensor"

    @property
    def prefix(self) -> str:
        return self.inbox or f"inbox/{self.name}/"

    @property
    def tables(self) -> ResultsTables:
        columns: dict[str, pl.DataType] = {column: pl.String() for column in self.columns}
        columns.update(self.processor.columns)
        return ResultsTables(self.name, columns, self.columns)


REVIEWS = Dataset(
    name="reviews",
    columns=("id", "text"),
    schema=ReviewRecord,
    processor=SENTIMENT,
)

DATASETS: tuple[Dataset, ...] = (REVIEWS,)


def dataset_of_job(job_name: str) -> Dataset | None:
    """The dataset whose job is `job_name`, if any."""
    return next((d for d in DATASETS if d.job_name == job_name), None)


def dataset_named(name: str) -> Dataset:
    for dataset in DATASETS:
        if dataset.name == name:
            return dataset
    known = ", ".join(d.name for d in DATASETS)
    raise KeyError(f"no dataset named {name!r}; known datasets: {known}")
