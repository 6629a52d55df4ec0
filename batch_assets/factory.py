"""The dataset factory: partitions, assets, checks, job and sensor from one `Dataset` entry.

Asset bodies stay a few lines; what they do lives in plain modules (`batches`, `readers`,
`validation`, `processors`, `sinks`, `tracking`).
"""

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetSelection,
    Backoff,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TableColumn,
    TableSchema,
    asset,
    define_asset_job,
    sensor,
)
from dagster_aws.s3 import S3Resource

from batch_assets import batches
from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk, Chunks
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError, BatchInputError
from batch_assets.resources.postgres import PostgresResource
from batch_assets.resources.settings import BatchSettings
from batch_assets.s3_objects import InboxCursor, head, new_objects, partition_key_for
from batch_assets.sinks.postgres import (
    duplicate_ids,
    preview_markdown,
    replace_batch,
    stored_counts,
    summarize,
)
from batch_assets.tracking import BatchCounts, BatchJobs

CHECKPOINTS = "checkpoint_io_manager"
STEP_RETRY = RetryPolicy(max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)


def build_dataset(dataset: Dataset) -> Definitions:
    """The Dagster definitions of one dataset."""
    name = dataset.name
    partitions = DynamicPartitionsDefinition(name=name)
    tables = dataset.tables
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
        kinds={"s3", "polars"},
        description=f"The batch's source records, validated by {dataset.schema.__name__}: "
        "valid rows, and rejected rows with their reason and line.",
    )
    def raw(
        context: AssetExecutionContext,
        s3: S3Resource,
        postgres: PostgresResource,
        settings: BatchSettings,
    ) -> Chunks:
        batch_id = context.partition_key
        fail = _failer(postgres, batch_id)
        client = s3.get_client()
        with postgres.connect() as conn:
            jobs = BatchJobs(conn)
            jobs.ensure()
            sources = jobs.sources(batch_id)
            if not sources:
                raise BatchInputError(
                    f"batch {batch_id} has no registered source; drop its file under "
                    f"s3://{settings.bucket}/{dataset.prefix} for the sensor to register it"
                )
        try:
            source = head(client, sources[0].uri)
        except BatchError as exc:
            fail(exc)
            raise
        with postgres.connect() as conn:
            BatchJobs(conn).start(batch_id, run_id=context.run.run_id, source=source)
        context.log.info(f"reading {source.uri} (ETag {source.etag}, {source.size:,} bytes)")

        def progress(chunk: Chunk, frontier: Frontier) -> None:
            with postgres.connect() as conn:
                BatchJobs(conn).progress(batch_id, batches.counts_while_reading(frontier))

        chunks = batches.read_source(
            client, source, dataset, chunk_size=settings.chunk_size or dataset.chunk_size
        ).on_durable(progress)
        return batches.on_error(chunks, fail)

    @asset(
        key=[name, "processed"],
        ins={"raw": AssetIn(key=raw.key)},
        partitions_def=partitions,
        io_manager_key=CHECKPOINTS,
        group_name=name,
        retry_policy=STEP_RETRY,
        kinds={"polars"},
        description=f"Records after the {dataset.processor.name} processor: processed, or "
        "failed with their error; rejected rows carried along.",
    )
    def processed(
        context: AssetExecutionContext,
        raw: Chunks,
        postgres: PostgresResource,
        settings: BatchSettings,
    ) -> Chunks:
        batch_id = context.partition_key
        raw_rows, raw_counts = raw.rows or 0, raw.counts
        workers = settings.worker_count() if dataset.processor.parallel else 1

        def progress(chunk: Chunk, frontier: Frontier) -> None:
            counts = batches.counts_while_processing(raw_rows, raw_counts, frontier)
            with postgres.connect() as conn:
                BatchJobs(conn).progress(batch_id, counts)

        with postgres.connect() as conn:
            BatchJobs(conn).resume(batch_id, run_id=context.run.run_id)
        context.log.info(f"processing {raw_rows:,} rows with {workers} worker(s)")
        return raw.map(dataset.processor.fn, workers=workers).on_durable(progress)

    @asset(
        key=[name, "postgres"],
        ins={"processed": AssetIn(key=processed.key)},
        partitions_def=partitions,
        group_name=name,
        retry_policy=STEP_RETRY,
        kinds={"postgres"},
        check_specs=[accounting, unique_ids],
        description=f"{tables.results} and {tables.rejected}: the batch's rows, replaced "
        "in one transaction; batch_jobs marked completed in the same one.",
    )
    def postgres_table(
        context: AssetExecutionContext, processed: Chunks, postgres: PostgresResource
    ) -> MaterializeResult:
        batch_id = context.partition_key
        with postgres.connect() as conn:
            tables.ensure(conn)
            stats = replace_batch(conn, tables, batch_id, processed)
            summary = (
                summarize(
                    conn,
                    tables,
                    batch_id,
                    dataset.processor.summary_column,
                    dataset.processor.summary_labels,
                )
                if dataset.processor.summary_column
                else {}
            )
            stored = stored_counts(conn, tables, batch_id)
            counts = BatchCounts(processed.rows or 0, *stored)
            BatchJobs(conn).complete(batch_id, counts, summary)
            duplicates = duplicate_ids(conn, tables, batch_id)
            preview = preview_markdown(conn, tables, batch_id)
        read = processed.rows or 0
        accounted = sum(stored)
        return MaterializeResult(
            metadata={
                "dagster/row_count": stats.processed,
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(c, str(t)) for c, t in tables.columns.items()]
                ),
                "rows_read": read,
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

    job = define_asset_job(
        f"{name}_job",
        selection=AssetSelection.assets(raw, processed, postgres_table),
        description=f"Reads, validates, processes and loads one {name} batch.",
    )

    @sensor(
        name=f"{name}_inbox_sensor",
        job=job,
        minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Turns each new object under the {name} inbox into a partition and a run.",
    )
    def inbox_sensor(
        context: SensorEvaluationContext,
        s3: S3Resource,
        postgres: PostgresResource,
        settings: BatchSettings,
    ) -> SensorResult | SkipReason:
        cursor = InboxCursor.parse(context.cursor)
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
        with postgres.connect() as conn:
            jobs = BatchJobs(conn)
            jobs.ensure()
            for key, obj in zip(keys, taken, strict=True):
                jobs.register(key, name, [obj.source(settings.bucket)])
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

    return Definitions(assets=[raw, processed, postgres_table], jobs=[job], sensors=[inbox_sensor])


def _failer(postgres: PostgresResource, batch_id: str) -> Any:
    def fail(error: BatchError) -> None:
        with postgres.connect() as conn:
            BatchJobs(conn).fail(batch_id, str(error))

    return fail
