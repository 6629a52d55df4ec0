"""Dataset entries: each dataset is one frozen entry; the factory builds the rest from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandera.polars as pa
import polars as pl

from batch_assets.json_reader import RECORD_COLUMN
from batch_assets.processors import Processor
from batch_assets.processors.sentiment import SENTIMENT
from batch_assets.processors.transform import TRANSFORM
from batch_assets.schemas.events import EventRecord
from batch_assets.schemas.reviews import ReviewRecord
from batch_assets.sinks.dynamodb import RecordLayout
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
        format: the files' format: `csv` (a header naming `columns`), or `json` (JSON Lines
            or one JSON array of objects; `columns` is then the one column holding each
            object's text).
        json_columns: record columns that hold JSON text (jsonb in Postgres).
        sinks: where results go, in order (`postgres` first: it checks the accounting);
            the last one completes the batch.
        chunk_size: records per chunk (validation and checkpoint unit).
        inbox: the S3 prefix the sensor watches, under the bucket.
    """

    name: str
    columns: tuple[str, ...]
    schema: type[pa.DataFrameModel]
    processor: Processor
    format: Literal["csv", "json"] = "csv"
    json_columns: tuple[str, ...] = ()
    sinks: tuple[Literal["postgres", "dynamodb", "kinesis"], ...] = ("postgres",)
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
        json_columns = self.json_columns + self.processor.json_columns
        return ResultsTables(self.name, columns, self.columns, json_columns)

    @property
    def record_layout(self) -> RecordLayout:
        """How its records become DynamoDB items."""
        return RecordLayout(
            dataset=self.name,
            record_columns=self.columns,
            json_record=self.format == "json",
            processor_columns=tuple(self.processor.columns),
            json_columns=self.processor.json_columns,
        )


REVIEWS = Dataset(
    name="reviews",
    columns=("id", "text"),
    schema=ReviewRecord,
    processor=SENTIMENT,
)

EVENTS = Dataset(
    name="events",
    columns=(RECORD_COLUMN,),
    schema=EventRecord,
    processor=TRANSFORM,
    format="json",
    json_columns=(RECORD_COLUMN,),
    sinks=("postgres", "dynamodb", "kinesis"),
)

DATASETS: tuple[Dataset, ...] = (REVIEWS, EVENTS)


def dataset_of_job(job_name: str) -> Dataset | None:
    """The dataset whose job is `job_name`, if any."""
    return next((d for d in DATASETS if d.job_name == job_name), None)


def dataset_named(name: str) -> Dataset:
    for dataset in DATASETS:
        if dataset.name == name:
            return dataset
    known = ", ".join(d.name for d in DATASETS)
    raise KeyError(f"no dataset named {name!r}; known datasets: {known}")
