"""Dataset entries: each dataset is one frozen entry; the factory builds the rest from it."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, Literal, get_args

import pandera.polars as pa
import polars as pl
from dagster import Backoff, Jitter, RetryPolicy

from batch_assets.errors import ConfigError
from batch_assets.json_reader import RECORD_COLUMN
from batch_assets.processors import Processor
from batch_assets.processors.hooks import resolve_hook, with_hooks
from batch_assets.processors.sentiment import SENTIMENT, score_sentiment
from batch_assets.processors.transform import TRANSFORM
from batch_assets.schemas.comments import CommentRecord
from batch_assets.schemas.events import EventRecord
from batch_assets.schemas.reviews import ReviewRecord
from batch_assets.sinks.records import RecordLayout
from batch_assets.sinks.results_tables import ResultsTables
from batch_assets.sql_source import SqlTable

Sink = Literal["postgres", "dynamodb", "kinesis"]
"""Where a dataset's results can go."""

SINKS: tuple[Sink, ...] = get_args(Sink)


def inbox_queues(text: str) -> dict[str, str]:
    """`reviews=https://sqs.../q1,events=q2` as a mapping of dataset name to queue URL or
    name; a bad pair is a `ConfigError` naming it."""
    queues = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, sep, queue = pair.partition("=")
        if not sep or not name.strip() or not queue.strip():
            raise ConfigError(
                f"BATCH_ASSETS_INBOX_QUEUES: {pair!r} is not dataset=queue (a queue URL or name)"
            )
        queues[name.strip()] = queue.strip()
    return queues


POOLED_CHUNK_ROWS = 10_000
INLINE_CHUNK_ROWS = 50_000


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
        sinks: where results go, in order, each once: `postgres` first (it checks the
            accounting), then `dynamodb` or `kinesis`; the last one completes the batch.
        chunk_size: records per chunk (the unit of validation, checkpoints and resume); 0
            chooses by processor (`rows_per_chunk`).
        inbox: the S3 prefix the sensor watches, under the bucket.
        source: for `sql`, the table whose increments are the batches (instead of files).
        lag: for `sql`, how old a row must be to enter an increment: a transaction that
            stamped its rows earlier may still commit, and an increment closed past them
            would never see them.
        empty_increments: for `sql`, what a check that finds no new rows does: `skip` (no
            partition) or `advance` (an empty increment, so the UI shows the check).
        pre_process: a function (`package.module:function`) each chunk goes through before
            the processor; it keeps the chunk's rows, columns and statuses (see
            `processors.hooks`).
        post_process: the same, after the processor.
        chunk_timeout: how long one chunk may take to be processed (and, for `sql`, read);
            past it the step fails naming the chunk. None: no limit.
        max_retries: how many times a failed step is tried again (each attempt resumes
            after the last durable chunk); attempt n waits a random 0 to
            (2**n - 1) * `retry_delay` seconds (exponential backoff, full jitter).
        batch_objects: for files, the most objects the sensor puts in one batch (one
            partition, one run).
        batch_bytes: for files, the most bytes of objects in one batch; a larger object is
            a batch of its own.
        batch_wait: for files, how long the sensor may hold new objects back for their
            batch to fill (up to `batch_objects` or `batch_bytes`), from the oldest one's
            upload; 0: each tick takes what it finds.
        queue: for files, the SQS queue (URL or name) the bucket sends the inbox's S3
            event notifications to; the sensor then takes new objects from it and lists
            the inbox only every `reconcile_every`. Empty: the sensor lists the inbox at
            every tick. `BATCH_ASSETS_INBOX_QUEUES` (`name=queue,...`) overrides it per
            deployment (`inbox_queue`).
        reconcile_every: with a queue, how often the sensor also lists the inbox, to catch
            what the queue missed.
        incremental_listing: for files whose keys sort in upload order (a date and time
            first, as Firehose and most exporters write them), the sensor lists the inbox
            from the greatest key it has listed on, so a listing reads only new keys; a key
            written again, or written later but sorting before it, is then found by its
            notification only.
        retention: the partitions and checkpoints of batches completed or failed longer
            ago than this are deleted (their batch records and results stay). None: kept.
        processed_objects: for files, what becomes of inbox objects a completed batch
            loaded, `processed_objects_after` after they were taken: `keep`, `archive`
            (moved under `archive`) or `delete`.
        processed_objects_after: how long processed objects stay in the inbox.
        archive: where `archive` moves processed objects (the key under the inbox is kept
            under it): a prefix outside the inbox; empty: `archive/<name>/`.
        rejection_warn: the share of a batch's rows rejected or failed above which its
            `rejection_rate` check warns (0: any such row).
        rejection_error: the share above which the check fails as an error.
    """

    name: str
    columns: tuple[str, ...]
    schema: type[pa.DataFrameModel]
    processor: Processor
    format: Literal["csv", "json", "sql"] = "csv"
    json_columns: tuple[str, ...] = ()
    sinks: tuple[Sink, ...] = ("postgres",)
    chunk_size: int = 0
    inbox: str = ""
    source: SqlTable | None = None
    lag: timedelta = timedelta(seconds=30)
    empty_increments: Literal["skip", "advance"] = "skip"
    pre_process: str | None = None
    post_process: str | None = None
    chunk_timeout: timedelta | None = None
    max_retries: int = 2
    retry_delay: float = 2.0
    batch_objects: int = 500
    batch_bytes: int = 64 * 2**20
    batch_wait: timedelta = timedelta(0)
    queue: str = ""
    reconcile_every: timedelta = timedelta(minutes=10)
    incremental_listing: bool = False
    retention: timedelta | None = None
    processed_objects: Literal["keep", "archive", "delete"] = "keep"
    processed_objects_after: timedelta = timedelta(days=7)
    archive: str = ""
    rejection_warn: float = 0.0
    rejection_error: float = 0.1

    CHECKPOINTED: ClassVar[tuple[str, ...]] = ("raw", "processed")
    """The assets whose outputs are chunk checkpoints, under `<name>/<asset>`."""

    def __post_init__(self) -> None:
        where = f"dataset {self.name}"
        if self.chunk_timeout is not None and self.chunk_timeout.total_seconds() <= 0:
            raise ConfigError(f"{where}: chunk_timeout must be positive, or None for no limit")
        if self.max_retries < 0 or self.retry_delay < 0:
            raise ConfigError(f"{where}: max_retries and retry_delay cannot be negative")
        if self.chunk_size < 0:
            raise ConfigError(f"{where}: chunk_size must be positive, or 0 to choose by processor")
        if not 0 <= self.rejection_warn <= self.rejection_error <= 1:
            raise ConfigError(
                f"{where}: rejection_warn and rejection_error must be shares, 0 to 1, "
                "the first no greater than the second"
            )
        if self.batch_objects < 1 or self.batch_bytes < 1:
            raise ConfigError(f"{where}: batch_objects and batch_bytes must be at least 1")
        if self.batch_wait.total_seconds() < 0:
            raise ConfigError(f"{where}: batch_wait cannot be negative")
        if self.reconcile_every.total_seconds() <= 0:
            raise ConfigError(f"{where}: reconcile_every must be positive")
        self._check_retention(where)
        self._check_sinks(where)

    def _check_retention(self, where: str) -> None:
        if self.retention is not None and self.retention.total_seconds() < 0:
            raise ConfigError(f"{where}: retention cannot be negative")
        if self.processed_objects not in ("keep", "archive", "delete"):
            raise ConfigError(
                f"{where}: processed_objects must be keep, archive or delete, "
                f"found {self.processed_objects!r}"
            )
        if self.processed_objects_after.total_seconds() < 0:
            raise ConfigError(f"{where}: processed_objects_after cannot be negative")
        if self.archive_prefix.startswith(self.prefix) or self.prefix.startswith(
            self.archive_prefix
        ):
            raise ConfigError(
                f"{where}: archive {self.archive_prefix!r} must be outside the inbox "
                f"{self.prefix!r} (an archived object would be taken again)"
            )

    @property
    def archive_prefix(self) -> str:
        return self.archive or f"archive/{self.name}/"

    def _check_sinks(self, where: str) -> None:
        unknown = [s for s in self.sinks if s not in SINKS]
        if unknown:
            raise ConfigError(
                f"{where}: unknown sink {', '.join(map(repr, unknown))} in sinks; the known "
                f"sinks are {', '.join(SINKS)}"
            )
        twice = sorted({s for s in self.sinks if self.sinks.count(s) > 1})
        if twice:
            raise ConfigError(
                f"{where}: sinks lists {', '.join(twice)} more than once; name each sink once"
            )
        if not self.sinks or self.sinks[0] != "postgres":
            raise ConfigError(
                f"{where}: sinks must start with postgres (it loads the batch and checks its "
                f"row accounting before any other sink), found {self.sinks!r}"
            )

    @property
    def rows_per_chunk(self) -> int:
        """`chunk_size`, or by processor: 10,000 rows for one scored in a pool of processes
        (chunks small enough that the last ones keep every worker busy), 50,000 otherwise
        (each chunk costs about 25 ms whatever its size: validation, two checkpoint files
        and their frontiers made durable)."""
        if self.chunk_size:
            return self.chunk_size
        return POOLED_CHUNK_ROWS if self.processor.parallel else INLINE_CHUNK_ROWS

    @property
    def job_name(self) -> str:
        return f"{self.name}_job"

    @property
    def sensor_name(self) -> str:
        kind = "increment" if self.source is not None else "inbox"
        return f"{self.name}_{kind}_sensor"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            delay=self.retry_delay,
            backoff=Backoff.EXPONENTIAL,
            jitter=Jitter.FULL,
        )

    @property
    def time_limit(self) -> float | None:
        """`chunk_timeout` in seconds."""
        return None if self.chunk_timeout is None else self.chunk_timeout.total_seconds()

    def process_fn(self) -> Callable[[pl.DataFrame], pl.DataFrame]:
        """The processor with the entry's hooks around it (resolved now: a name that does
        not resolve is a `ConfigError` when definitions load)."""
        hooks = {
            option: resolve_hook(name, dataset=self.name, option=option)
            for option, name in (
                ("pre_process", self.pre_process),
                ("post_process", self.post_process),
            )
            if name is not None
        }
        return with_hooks(
            self.processor.fn, pre=hooks.get("pre_process"), post=hooks.get("post_process")
        )

    @property
    def inbox_queue(self) -> str:
        """The notification queue of the inbox: this deployment's
        (`BATCH_ASSETS_INBOX_QUEUES`, `name=queue` pairs separated by commas), else the
        entry's `queue`; empty for none (and always for a SQL dataset)."""
        if self.source is not None:
            return ""
        return inbox_queues(os.environ.get("BATCH_ASSETS_INBOX_QUEUES", "")).get(
            self.name, self.queue
        )

    @property
    def prefix(self) -> str:
        return self.inbox or f"inbox/{self.name}/"

    @property
    def tables(self) -> ResultsTables:
        columns: dict[str, pl.DataType] = {column: pl.String() for column in self.columns}
        columns.update(self.processor.columns)
        json_columns = self.json_columns + self.processor.json_columns
        key = self.source.key if self.source is not None else None
        id_field = "id" if self.format == "json" else None
        return ResultsTables(self.name, columns, self.columns, json_columns, key, id_field)

    @property
    def record_layout(self) -> RecordLayout:
        """How its records become the record sinks' documents."""
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

COMMENTS = Dataset(
    name="comments",
    columns=("id", "body"),
    schema=CommentRecord,
    processor=dataclasses.replace(
        SENTIMENT, fn=functools.partial(score_sentiment, text_column="body")
    ),
    format="sql",
    source=SqlTable("comments", key="id", cursor="updated_at", columns=("id", "body")),
    pre_process="batch_assets.processors.text:collapse_body_whitespace",
    chunk_timeout=timedelta(minutes=5),
)

DATASETS: tuple[Dataset, ...] = (REVIEWS, EVENTS, COMMENTS)


def dataset_of_job(job_name: str) -> Dataset | None:
    """The dataset whose job is `job_name`, if any."""
    return next((d for d in DATASETS if d.job_name == job_name), None)


def dataset_named(name: str) -> Dataset:
    for dataset in DATASETS:
        if dataset.name == name:
            return dataset
    known = ", ".join(d.name for d in DATASETS)
    raise KeyError(f"no dataset named {name!r}; known datasets: {known}")
