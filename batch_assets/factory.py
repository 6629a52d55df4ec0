"""The dataset factory: partitions, assets, checks, job and sensor from one `Dataset` entry.

Asset bodies stay a few lines; what they do lives in plain modules (`batches`, `readers`,
`validation`, `processors`, `sinks`, `tracking`).
"""

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetSelection,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TableColumn,
    TableSchema,
    asset,
    define_asset_job,
    job,
    op,
    sensor,
)
from dagster_aws.s3 import S3Resource

from batch_assets import batches
from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk, Chunks, Throttled
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError, BatchInputError, ConfigError
from batch_assets.increments import Increments
from batch_assets.readers import STATUS
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.resources.settings import BatchSettings
from batch_assets.retry import retry_failed
from batch_assets.s3_objects import InboxCursor, head, new_objects, partition_key_for
from batch_assets.sinks.dynamodb import (
    WriteStats,
    chunk_items,
    ensure_records_table,
    write_chunk_items,
)
from batch_assets.sinks.kinesis import chunk_entries
from batch_assets.sinks.postgres import (
    duplicate_ids,
    preview_markdown,
    replace_batch,
)
from batch_assets.sql_source import check_table, encode_mark
from batch_assets.tracking import Attempt, BatchCounts, Source

CHECKPOINTS = "checkpoint_io_manager"
PROGRESS_SECONDS = 0.5
"""How often, at most, a step writes a batch's progress to batch_jobs."""


def build_dataset(dataset: Dataset) -> Definitions:
    """The Dagster definitions of one dataset."""
    name = dataset.name
    partitions = DynamicPartitionsDefinition(name=name)
    tables = dataset.tables
    process = dataset.process_fn()
    accounting = AssetCheckSpec(
        "row_accounting",
        asset=AssetKey([name, "postgres"]),
        description="rows read = processed + rejected + failed",
    )
    unique_ids = AssetCheckSpec(
        "unique_ids",
        asset=AssetKey([name, "postgres"]),
        description="no id appears twice in the batch (warning)",
    )

    @asset(
        key=[name, "raw"],
        partitions_def=partitions,
        io_manager_key=CHECKPOINTS,
        group_name=name,
        retry_policy=dataset.retry_policy,
        kinds={"s3", "polars"},
        description=f"The batch's source records, validated by {dataset.schema.__name__}: "
        "valid rows, and rejected rows with their reason and line.",
    )
    def raw_file(
        context: AssetExecutionContext,
        s3: S3Resource,
        jobs: JobsResource,
        settings: BatchSettings,
    ) -> Chunks:
        batch_id, attempt = context.partition_key, Attempt.of_run(context.run)
        fail = _failer(jobs, name, batch_id, attempt, final=_last_attempt(context, dataset))
        client = s3.get_client()
        with jobs.open(name) as store:
            store.ensure()
            sources = store.sources(batch_id)
            if not sources:
                raise BatchInputError(
                    f"batch {batch_id} has no registered source; drop its file under "
                    f"s3://{settings.bucket}/{dataset.prefix} for the sensor to register it"
                )
        try:
            source = head(client, sources[0].uri)
        except BatchError as exc:
            # the lineage has not taken the batch yet: fail it as the run of this version
            raise _failer(jobs, name, batch_id, attempt, etag=sources[0].etag)(exc) from exc
        with jobs.open(name) as store:
            store.start(batch_id, attempt=attempt, source=source)
        context.log.info(f"reading {source.uri} (ETag {source.etag}, {source.size:,} bytes)")

        chunks = batches.read_source(
            client, source, dataset, chunk_size=settings.chunk_size or dataset.chunk_size
        ).on_durable(_reading_progress(jobs, name, batch_id, attempt))
        return batches.on_error(chunks, fail)

    @asset(
        key=[name, "raw"],
        partitions_def=partitions,
        io_manager_key=CHECKPOINTS,
        group_name=name,
        retry_policy=dataset.retry_policy,
        kinds={"postgres", "polars"},
        description=f"The increment's rows of {dataset.source.name if dataset.source else ''}, "
        f"read by keyset and validated by {dataset.schema.__name__}: valid rows, and rejected "
        "rows with their reason.",
    )
    def raw_sql(
        context: AssetExecutionContext,
        postgres: PostgresResource,
        source_postgres: PostgresResource,
        jobs: JobsResource,
        settings: BatchSettings,
    ) -> Chunks:
        batch_id, attempt = context.partition_key, Attempt.of_run(context.run)
        fail = _failer(jobs, name, batch_id, attempt, final=_last_attempt(context, dataset))
        with postgres.connect() as conn:
            Increments(conn, name).ensure()
            increment = Increments(conn, name).get(batch_id)
        if increment is None:
            raise fail(
                BatchInputError(f"no increment {batch_id} of {name}: the sensor closes them")
            )
        with jobs.open(name) as store:
            registered = store.sources(batch_id)
            if not registered:
                raise fail(BatchInputError(f"increment {batch_id} is not registered as a batch"))
            store.start(batch_id, attempt=attempt, source=registered[0])
        context.log.info(
            f"reading {registered[0].uri}: ({increment.lower}, {increment.upper}] by keyset"
        )

        chunks = batches.read_increment(
            source_postgres.connect,
            increment,
            dataset,
            chunk_size=settings.chunk_size or dataset.chunk_size,
        ).on_durable(_reading_progress(jobs, name, batch_id, attempt))
        return batches.on_error(chunks, fail)

    raw = raw_sql if dataset.source is not None else raw_file

    @asset(
        key=[name, "processed"],
        ins={"raw": AssetIn(key=raw.key)},
        partitions_def=partitions,
        io_manager_key=CHECKPOINTS,
        group_name=name,
        retry_policy=dataset.retry_policy,
        kinds={"polars"},
        description=f"Records after the {dataset.processor.name} processor: processed, or "
        "failed with their error; rejected rows carried along.",
    )
    def processed(
        context: AssetExecutionContext,
        raw: Chunks,
        jobs: JobsResource,
        settings: BatchSettings,
    ) -> Chunks:
        batch_id, attempt = context.partition_key, Attempt.of_run(context.run)
        raw_rows, raw_counts = raw.rows or 0, raw.counts
        workers = settings.worker_count() if dataset.processor.parallel else 1

        def progress(chunk: Chunk, frontier: Frontier) -> None:
            counts = batches.counts_while_processing(raw_rows, raw_counts, frontier)
            with jobs.open(name) as store:
                store.progress(batch_id, counts, attempt=attempt)

        with jobs.open(name) as store:
            store.resume(batch_id, attempt=attempt)
        context.log.info(f"processing {raw_rows:,} rows with {workers} worker(s)")
        chunks = raw.map(
            process,
            workers=workers,
            time_limit=dataset.time_limit,
            label=f"{name}/processed [{batch_id}]",
        ).on_durable(Throttled(progress, seconds=PROGRESS_SECONDS))
        fail = _failer(jobs, name, batch_id, attempt, final=_last_attempt(context, dataset))
        return batches.on_error(chunks, fail)

    @asset(
        key=[name, "postgres"],
        ins={"raw": AssetIn(key=raw.key), "processed": AssetIn(key=processed.key)},
        partitions_def=partitions,
        group_name=name,
        retry_policy=dataset.retry_policy,
        kinds={"postgres"},
        check_specs=[accounting, unique_ids],
        description=f"{tables.results} and {tables.rejected}: the batch's rows, replaced "
        "in one transaction; batch_jobs marked completed in the same one.",
    )
    def postgres_table(
        context: AssetExecutionContext,
        raw: Chunks,
        processed: Chunks,
        postgres: PostgresResource,
        jobs: JobsResource,
    ) -> MaterializeResult:
        batch_id, attempt = context.partition_key, Attempt.of_run(context.run)
        read = raw.rows or 0
        with jobs.open(name) as store:
            store.resume(batch_id, attempt=attempt)
        fail = _failer(jobs, name, batch_id, attempt, final=_last_attempt(context, dataset))
        with _failing_batch(fail), postgres.connect() as conn:
            tables.ensure(conn)
            stats = replace_batch(
                conn, tables, batch_id, processed, summary_column=dataset.processor.summary_column
            )
            stored = stats.stored
            summary = batches.summary_of(dataset, stats.summary, stored)
            accounted = sum(stored)
            if read != accounted:
                raise BatchError(
                    f"row accounting failed for batch {batch_id}: {read:,} rows read, "
                    f"{accounted:,} stored (processed, rejected, failed: {stored}); "
                    "nothing was committed"
                )
            counts = BatchCounts(read, *stored)
            increment = None
            if dataset.source is not None:
                # a later version of a source row replaces the earlier one's result, and the
                # increment's mark moves in this transaction, with its rows
                replaced = tables.drop_older_versions(conn, batch_id)
                context.log.info(f"{replaced:,} earlier results replaced by this increment")
                increments = Increments(conn, name)
                increment = increments.get(batch_id)
                increments.commit(batch_id)
            source_figures = batches.source_figures(raw, increment)
            store = jobs.within(conn, name)
            store.record_source(batch_id, source_figures, attempt=attempt)
            figures = stats.sink_stats(retries=context.retry_number)
            store.record_sink(batch_id, "postgres", figures, attempt=attempt)
            store.complete(
                batch_id, counts, summary, attempt=attempt, final=dataset.sinks[-1] == "postgres"
            )
            duplicates = duplicate_ids(conn, tables, batch_id)
            preview = preview_markdown(conn, tables, batch_id)
        return MaterializeResult(
            metadata={
                "dagster/row_count": stats.processed,
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(c, str(t)) for c, t in tables.columns.items()]
                ),
                "rows_read": read,
                "source": MetadataValue.json(source_figures),
                "chunks": source_figures["chunks"],
                "postgres_copies": stats.copies,
                "postgres_bytes": stats.bytes,
                "processed": stats.processed,
                "rejected": stats.rejected,
                "failed": stats.failed,
                "summary": MetadataValue.json(summary),
                "table": tables.results,
                "preview": MetadataValue.md(preview),
            },
            check_results=[
                AssetCheckResult(
                    check_name="row_accounting",
                    passed=read == accounted,
                    metadata={
                        "rows_read": read,
                        "processed": stored[0],
                        "rejected": stored[1],
                        "failed": stored[2],
                    },
                ),
                AssetCheckResult(
                    check_name="unique_ids",
                    passed=not duplicates,
                    severity=AssetCheckSeverity.WARN,
                    metadata={"duplicated_ids": MetadataValue.json(duplicates)},
                ),
            ],
        )

    layout = dataset.record_layout
    ChunkWriter = Callable[[pl.DataFrame, str, WriteStats], list[int]]

    def sink_step(
        context: AssetExecutionContext,
        processed: Chunks,
        jobs: JobsResource,
        sink: str,
        open_writer: Callable[[str], ChunkWriter],
    ) -> MaterializeResult:
        """Writes every chunk's records with the writer `open_writer(batch_id)` makes (it
        returns the lines of records too large to write); the last sink completes the batch."""
        batch_id, attempt = context.partition_key, Attempt.of_run(context.run)
        with jobs.open(name) as store:
            store.resume(batch_id, attempt=attempt)
        fail = _failer(jobs, name, batch_id, attempt, final=_last_attempt(context, dataset))
        stats = WriteStats()
        oversized: list[int] = []
        seen = Counter[str]()
        with _failing_batch(fail):
            write = open_writer(batch_id)
            created_at = datetime.now(UTC).isoformat()
            for chunk in processed:
                seen.update(chunk.frame[STATUS].to_list())
                oversized += write(chunk.frame, created_at, stats)
                context.log.info(
                    f"{name}/{sink} [{batch_id}]: chunk {chunk.index}, {stats.items:,} records"
                )
        figures = stats.sink_stats(
            read=seen.total(), rejected=seen["rejected"], failed=seen["failed"]
        )
        with jobs.open(name) as store:
            store.record_sink(batch_id, sink, figures, attempt=attempt)
            if dataset.sinks[-1] == sink:
                store.finish(batch_id, attempt=attempt)
        metadata: dict[str, Any] = {f"{sink}_{k}": v for k, v in figures.items()}
        if oversized:
            metadata["oversized_lines"] = MetadataValue.json(oversized[:100])
        return MaterializeResult(metadata=metadata)

    sink_keys = {"postgres": postgres_table.key}

    @asset(
        key=[name, "dynamodb"],
        ins={"processed": AssetIn(key=processed.key)},
        deps=[sink_keys["postgres"]],
        partitions_def=partitions,
        group_name=name,
        retry_policy=dataset.retry_policy,
        kinds={"dynamodb"},
        description="data_records: one item per record (processed, failed or rejected), "
        "keyed by dataset, batch and line, so a rerun overwrites; queryable by batch and "
        "status through batch_status_index.",
    )
    def dynamodb_table(
        context: AssetExecutionContext,
        processed: Chunks,
        jobs: JobsResource,
        dynamodb: DynamoDBResource,
    ) -> MaterializeResult:
        def open_writer(batch_id: str) -> ChunkWriter:
            capacity = (dynamodb.read_capacity, dynamodb.write_capacity)
            ensure_records_table(
                dynamodb.get_client(),
                dynamodb.records_table,
                billing_mode=dynamodb.billing_mode,
                capacity=capacity,
            )
            writer = dynamodb.writer()

            def write(frame: pl.DataFrame, created_at: str, stats: WriteStats) -> list[int]:
                items = chunk_items(frame, layout, batch_id=batch_id, created_at=created_at)
                before = len(stats.oversized)
                write_chunk_items(writer, items, batch_id=batch_id, stats=stats)
                return [int(items[o.position]["line"]["N"]) for o in stats.oversized[before:]]

            return write

        return sink_step(context, processed, jobs, "dynamodb", open_writer)

    @asset(
        key=[name, "kinesis"],
        ins={"processed": AssetIn(key=processed.key)},
        deps=[dynamodb_table.key if "dynamodb" in dataset.sinks else sink_keys["postgres"]],
        partitions_def=partitions,
        group_name=name,
        retry_policy=dataset.retry_policy,
        kinds={"kinesis"},
        description="Every record of the batch on the dataset's stream, as JSON with its "
        "record_id (also its partition key) so consumers can drop a rerun's copies.",
    )
    def kinesis_stream(
        context: AssetExecutionContext,
        processed: Chunks,
        jobs: JobsResource,
        kinesis: KinesisResource,
    ) -> MaterializeResult:
        def open_writer(batch_id: str) -> ChunkWriter:
            writer = kinesis.writer(name)

            def write(frame: pl.DataFrame, created_at: str, stats: WriteStats) -> list[int]:
                entries = chunk_entries(frame, layout, batch_id=batch_id, created_at=created_at)
                before = len(stats.oversized)
                writer.write(entries, batch_id=batch_id, stats=stats)
                return [
                    int(json.loads(entries[o.position]["Data"])["line"])
                    for o in stats.oversized[before:]
                ]

            return write

        return sink_step(context, processed, jobs, "kinesis", open_writer)

    by_sink = {"postgres": postgres_table, "dynamodb": dynamodb_table, "kinesis": kinesis_stream}
    sink_assets = [by_sink[sink] for sink in dataset.sinks]
    batch_job = define_asset_job(
        dataset.job_name,
        selection=AssetSelection.assets(raw, processed, *sink_assets),
        description=f"Reads, validates, processes and loads one {name} batch.",
    )

    @sensor(
        name=dataset.sensor_name,
        job=batch_job,
        minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Turns each new object under the {name} inbox into a partition and a run.",
    )
    def inbox_sensor(
        context: SensorEvaluationContext,
        s3: S3Resource,
        jobs: JobsResource,
        settings: BatchSettings,
    ) -> SensorResult | SkipReason:
        cursor = InboxCursor.parse(
            context.cursor, lookback=timedelta(minutes=settings.inbox_lookback_minutes)
        )
        taken, after, backlog = new_objects(
            s3.get_client(),
            settings.bucket,
            dataset.prefix,
            cursor,
            limit=settings.max_objects_per_tick,
        )
        if not taken:
            return SkipReason(f"no new objects under s3://{settings.bucket}/{dataset.prefix}")
        keys = [partition_key_for(obj.key, dataset.prefix) for obj in taken]
        with jobs.open(name) as store:
            store.ensure()
            for key, obj in zip(keys, taken, strict=True):
                # an unchanged object seen again keeps its batch's state; its run request
                # carries the same run key, which the daemon never launches twice
                store.register(key, [obj.source(settings.bucket)])
        if backlog > len(taken):
            context.log.info(f"{backlog - len(taken)} more new objects wait for the next tick")
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"{obj.key}@{obj.etag}",
                    partition_key=key,
                    tags={
                        "batch_assets/source": f"s3://{settings.bucket}/{obj.key}",
                        "batch_assets/etag": obj.etag,
                    },
                )
                for key, obj in zip(keys, taken, strict=True)
            ],
            dynamic_partitions_requests=[partitions.build_add_request(sorted(set(keys)))],
            cursor=after.serialize(),
        )

    @sensor(
        name=dataset.sensor_name,
        job=batch_job,
        minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Closes the next increment of {name}'s table once the last one has "
        "committed, and starts its run.",
    )
    def increment_sensor(
        context: SensorEvaluationContext,
        postgres: PostgresResource,
        source_postgres: PostgresResource,
        jobs: JobsResource,
    ) -> SensorResult | SkipReason:
        source = dataset.source
        assert source is not None
        with postgres.connect() as conn, source_postgres.connect() as source_conn:
            increments = Increments(conn, name)
            increments.ensure()
            latest = increments.latest()
            if latest is not None and latest.state == "open":
                increment = latest  # requested again: its run key launches it once
            else:
                if latest is None:
                    check = check_table(source_conn, source)
                    if check.warning:
                        context.log.warning(check.warning)
                closing = increments.close_next(
                    source_conn, source, lag=dataset.lag, empty=dataset.empty_increments
                )
                if closing.increment is None:
                    return SkipReason(closing.reason)
                increment = closing.increment
        key = increment.increment_id
        registered = Source(f"sql://{source.name}#{key}", key, 0, datetime.now(UTC))
        with jobs.open(name) as store:
            store.ensure()
            store.register(key, [registered])
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"{name}:{key}",
                    partition_key=key,
                    tags={
                        "batch_assets/source": registered.uri,
                        "batch_assets/etag": key,
                        "batch_assets/upper": encode_mark(increment.upper) or "",
                    },
                )
            ],
            dynamic_partitions_requests=[partitions.build_add_request([key])],
        )

    @op(
        name=f"{name}_retry_failed_records",
        description="Runs the processor again on the batch's failed records only and updates "
        "every sink and the batch's counts.",
    )
    def retry_failed_records(
        context: OpExecutionContext,
        postgres: PostgresResource,
        jobs: JobsResource,
        dynamodb: DynamoDBResource,
        kinesis: KinesisResource,
    ) -> Output[dict[str, int]]:
        batch_id = context.partition_key
        with postgres.connect() as conn:
            result = retry_failed(
                dataset,
                batch_id,
                conn=conn,
                jobs=jobs.within(conn, name),
                dynamodb=dynamodb.writer() if "dynamodb" in dataset.sinks else None,
                kinesis=kinesis.writer(name) if "kinesis" in dataset.sinks else None,
            )
        context.log.info(
            f"{name} batch {batch_id}: {result.retried} failed records retried, "
            f"{result.processed} processed now, {result.failed} still failed"
        )
        return Output(result.as_dict(), metadata=result.as_dict())

    @job(
        name=f"{name}_retry_failed",
        partitions_def=partitions,
        description=f"Retries the failed records of one {name} batch (pick its partition).",
    )
    def retry_job() -> None:
        retry_failed_records()

    return Definitions(
        assets=[raw, processed, *sink_assets],
        jobs=[batch_job, retry_job],
        sensors=[increment_sensor if dataset.source is not None else inbox_sensor],
    )


def _reading_progress(
    jobs: JobsResource, dataset: str, batch_id: str, attempt: Attempt
) -> Callable[[Chunk, Frontier], None]:
    """Records the counts known while a source is read, after each durable chunk."""

    def progress(chunk: Chunk, frontier: Frontier) -> None:
        with jobs.open(dataset) as store:
            store.progress(batch_id, batches.counts_while_reading(frontier), attempt=attempt)

    return Throttled(progress, seconds=PROGRESS_SECONDS)


def _failer(
    jobs: JobsResource,
    dataset: str,
    batch_id: str,
    attempt: Attempt,
    *,
    etag: str | None = None,
    final: bool = True,
) -> Callable[[Exception], Exception]:
    """Records an error as the batch's failure when no retry will follow, and returns what
    the step should raise: a `Failure` that Dagster does not retry for a bad input or a
    wrong setting (a hook that breaks its contract), which would fail the same way again."""

    def fail(error: Exception) -> Exception:
        bad_input = isinstance(error, BatchInputError | ConfigError)
        if bad_input or final:
            message = (
                str(error) if isinstance(error, BatchError) else f"{type(error).__name__}: {error}"
            )
            with jobs.open(dataset) as store:
                store.fail(batch_id, message, attempt=attempt, etag=etag)
        if bad_input:
            return Failure(description=str(error), allow_retries=False)
        return error

    return fail


def _last_attempt(context: AssetExecutionContext, dataset: Dataset) -> bool:
    return context.retry_number >= dataset.max_retries


@contextlib.contextmanager
def _failing_batch(fail: Callable[[Exception], Exception]) -> Iterator[None]:
    """Records an error of the block as the batch's failure (see `_failer`) and raises."""
    try:
        yield
    except Exception as exc:
        raise fail(exc) from exc
