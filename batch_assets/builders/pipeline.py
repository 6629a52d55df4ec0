"""The step that streams a batch: one multi-asset materializing `<dataset>/raw`,
`<dataset>/processed` and `<dataset>/postgres` in one pass (see `one_pass`), with the
`row_accounting` and `unique_ids` checks of the load."""

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    PreviewWarning,
    multi_asset,
)
from dagster_aws.s3 import S3Resource

from batch_assets import batches
from batch_assets.batch_picture import (
    StageClock,
    accounting_line,
    batch_picture,
    duplicates_table,
    picture_keys,
    rejection_rate,
    results_schema,
    statuses_table,
)
from batch_assets.batch_step import BatchStep
from batch_assets.checkpoints import CheckpointStore, Stage
from batch_assets.chunks import Chunk, Resume
from batch_assets.datasets import Dataset
from batch_assets.io_managers.checkpoint import CheckpointsResource, Durable
from batch_assets.load import Loaded, load_batch, load_line, recount
from batch_assets.one_pass import (
    Scoring,
    durable_log,
    open_stage,
    processed_origin,
    run_pass,
    stage_line,
    stage_metadata,
    where_it_stopped,
)
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.resources.settings import BatchSettings
from batch_assets.sinks.postgres import duplicate_ids, preview_markdown
from batch_assets.tracking import ObjectOutcome, Source
from batch_assets.write_behind import WriteBehind

CHECKPOINTS = "checkpoint_io_manager"
STAGES = ("raw", "processed", "postgres")


def pipeline_asset(dataset: Dataset, partitions: DynamicPartitionsDefinition) -> AssetsDefinition:
    """The dataset's streaming step; any subset of its assets can be selected, the others
    are read from their latest complete checkpoints."""
    name = dataset.name
    keys = {stage: AssetKey([name, stage]) for stage in STAGES}
    # resolved now, so that a hook that does not import fails when the definitions load
    process = dataset.process_fn()

    @multi_asset(
        name=f"{name}_pipeline",
        outs=_outs(dataset, keys),
        internal_asset_deps={
            "processed": {keys["raw"]},
            "postgres": {keys["raw"], keys["processed"]},
        },
        check_specs=_checks(dataset, keys["postgres"], partitions),
        partitions_def=partitions,
        can_subset=True,
        group_name=name,
        retry_policy=dataset.retry_policy,
    )
    def pipeline(
        context: AssetExecutionContext,
        s3: S3Resource,
        postgres: PostgresResource,
        source_postgres: PostgresResource,
        jobs: JobsResource,
        settings: BatchSettings,
        checkpoints: CheckpointsResource,
    ) -> Iterator[Output[Durable] | MaterializeResult | AssetCheckResult]:
        step = BatchStep.of(context, dataset, jobs)
        chunk_size = settings.chunk_size or dataset.rows_per_chunk

        def open_source() -> batches.Opened:
            if dataset.source is not None:
                return batches.open_increment(
                    step, postgres.connect, source_postgres.connect, chunk_size=chunk_size
                )
            return batches.open_file(
                step, s3.get_client(), bucket=settings.bucket, chunk_size=chunk_size
            )

        selected = {key.path[-1] for key in context.selected_asset_keys}
        workers = settings.worker_count() if dataset.processor.parallel else 1
        scoring = Scoring(
            process,
            workers=workers,
            time_limit=dataset.time_limit,
            label=f"{name}/processed [{step.batch_id}]",
        )
        streamed = stream_batch(
            step, checkpoints.store(), open_source, postgres, scoring, selected=selected
        )
        checks = {key.name for key in context.selected_asset_check_keys}
        yield from streamed.results(postgres, selected, checks)

    return pipeline


def _outs(dataset: Dataset, keys: dict[str, AssetKey]) -> dict[str, AssetOut]:
    schema = dataset.schema.__name__
    tables = dataset.tables
    raw = (
        f"The increment's rows of {dataset.source.name}, read by keyset"
        if dataset.source is not None
        else "The batch's source records"
    )
    return {
        "raw": AssetOut(
            key=keys["raw"],
            io_manager_key=CHECKPOINTS,
            is_required=False,
            kinds={"postgres" if dataset.source is not None else "s3", "polars"},
            description=f"{raw}, validated by {schema}: valid rows, and rejected rows with "
            "their reason and line." + keys_explained(STAGE_KEYS),
        ),
        "processed": AssetOut(
            key=keys["processed"],
            io_manager_key=CHECKPOINTS,
            is_required=False,
            kinds={"polars"},
            description=f"Records after the {dataset.processor.name} processor: processed, "
            "or failed with their error; rejected rows carried along." + keys_explained(STAGE_KEYS),
        ),
        "postgres": AssetOut(
            key=keys["postgres"],
            is_required=False,
            kinds={"postgres"},
            description=f"{tables.results} and {tables.rejected}: the batch's rows, replaced "
            "in one transaction; batch_jobs marked completed in the same one."
            + keys_explained(picture_keys(dataset) | LOAD_KEYS),
        ),
    }


STAGE_KEYS = {
    "dagster/row_count, rows_done": "rows in the durable chunks (all of them once complete)",
    "rows_by_status": "those rows per record status, with their share",
    "chunks, last_durable_chunk": "the chunks written, and the index of the last (-1: none)",
    "resumed_from_chunk": "where this attempt started: 0, or the chunk after the last one "
    "an earlier attempt made durable",
    "chunks_computed_this_attempt": "the chunks this attempt computed",
    "lineage": "the run lineage the chunks belong to (the root run id)",
}
LOAD_KEYS = {
    "dagster/row_count": "processed rows stored",
    "dagster/column_schema": "every column of the results view, its Postgres type and meaning",
    "rows_read, chunks, source": "what reading the source came to (an increment's bounds)",
    "postgres_copies, postgres_bytes": "the COPY statements the load sent, and their bytes",
    "table, preview": "the results view, and the batch's first rows in it",
    "objects, objects_failed, failed_objects": "the source objects, and those that could "
    "not be read, with their error",
}


def keys_explained(keys: dict[str, str]) -> str:
    """The metadata keys and what they mean, as a Markdown list for a description."""
    return "\n\nMetadata:\n" + "\n".join(f"- `{k}`: {v}" for k, v in keys.items())


def _checks(
    dataset: Dataset, postgres: AssetKey, partitions: DynamicPartitionsDefinition
) -> list[AssetCheckSpec]:
    """The load's checks, partitioned as the asset: one result per batch."""
    with warnings.catch_warnings():
        # partitioned checks are a preview feature of Dagster 1.13
        warnings.simplefilter("ignore", PreviewWarning)
        return [
            AssetCheckSpec(
                "row_accounting",
                asset=postgres,
                description="rows read = processed + rejected + failed, recounted in Postgres",
                partitions_def=partitions,
            ),
            AssetCheckSpec(
                "unique_ids",
                asset=postgres,
                description="no id appears twice in the batch (warning); a repeated id is "
                "named with its count and the lines it is on",
                partitions_def=partitions,
            ),
            AssetCheckSpec(
                "rejection_rate",
                asset=postgres,
                description=f"the share of the batch's rows rejected or failed: a warning "
                f"above {dataset.rejection_warn:.1%}, an error above "
                f"{dataset.rejection_error:.1%} (the dataset's rejection_warn and "
                "rejection_error)",
                partitions_def=partitions,
            ),
        ]


@dataclass
class Streamed:
    """What one pass over a batch left: its stages and, when loaded, the load's figures."""

    step: BatchStep
    raw: Stage
    processed: Stage
    loaded: Loaded | None
    clock: StageClock = field(default_factory=StageClock)
    sources: list[Source] = field(default_factory=list)

    def results(
        self, postgres: PostgresResource, selected: set[str], checks: set[str]
    ) -> Iterator[Output[Durable] | MaterializeResult | AssetCheckResult]:
        """The selected stages' outputs (each durable by now), then the load's
        materialization and its selected `checks`."""
        for stage in (self.raw, self.processed):
            name = _stage_name(stage)
            if name in selected:
                metadata = stage_metadata(stage)
                metadata["rows_by_status"] = statuses_table(metadata["rows_by_status"])
                yield Output(
                    Durable(stage.asset, stage.partition, stage.lineage),
                    output_name=name,
                    metadata=metadata,
                )
        if self.loaded is not None:
            yield from self._loaded(postgres, self.loaded, checks)

    def _loaded(
        self, postgres: PostgresResource, loaded: Loaded, checks: set[str]
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        dataset, batch_id = self.step.dataset, self.step.batch_id
        tables = dataset.tables
        stats = loaded.stats
        rows = {"raw": self.raw.frontier.rows, "processed": self.processed.frontier.rows}
        rows["postgres"] = loaded.counts.total
        with postgres.connect() as conn:
            picture = batch_picture(
                conn,
                dataset,
                batch_id,
                loaded.counts,
                loaded.summary,
                sources=self.sources,
                times=self.clock.times(rows),
            )
            preview = preview_markdown(conn, tables, batch_id)
            if "row_accounting" in checks:
                accounted, figures = recount(conn, dataset, batch_id, loaded.counts.total)
            if "unique_ids" in checks:
                duplicates = duplicate_ids(conn, tables, batch_id) if stats.ids_may_repeat else {}
        yield MaterializeResult(
            asset_key=AssetKey([dataset.name, "postgres"]),
            metadata={
                "dagster/row_count": stats.processed,
                "dagster/column_schema": results_schema(dataset),
                **picture,
                "rows_read": loaded.counts.total,
                "source": MetadataValue.json(loaded.source),
                "chunks": loaded.source["chunks"],
                "postgres_copies": stats.copies,
                "postgres_bytes": stats.bytes,
                "table": tables.results,
                "preview": MetadataValue.md(preview),
                **objects_metadata(loaded.objects),
            },
        )
        key = AssetKey([dataset.name, "postgres"])
        if "row_accounting" in checks:
            yield AssetCheckResult(
                asset_key=key,
                check_name="row_accounting",
                passed=accounted,
                metadata=figures,
                description=accounting_line(figures),
            )
        if "unique_ids" in checks:
            yield AssetCheckResult(
                asset_key=key,
                check_name="unique_ids",
                passed=not duplicates,
                severity=AssetCheckSeverity.WARN,
                metadata={"duplicated_ids": duplicates_table(duplicates)},
                description=f"{len(duplicates):,} id(s) appear more than once"
                if duplicates
                else "every id appears once",
            )
        if "rejection_rate" in checks:
            rate = rejection_rate(dataset, loaded.counts)
            yield AssetCheckResult(
                asset_key=key,
                check_name="rejection_rate",
                passed=rate.passed,
                severity=rate.severity,
                metadata=rate.metadata,
                description=rate.metadata["summary"],
            )


FAILED_OBJECTS_SHOWN = 20


def objects_metadata(objects: tuple[ObjectOutcome, ...]) -> dict[str, Any]:
    """The source objects in a load's metadata: how many, how many failed, and a table of
    the first failed ones with their errors."""
    failed = [o for o in objects if o.state == "failed"]
    metadata: dict[str, Any] = {"objects": len(objects), "objects_failed": len(failed)}
    if failed:
        lines = ["| object | error |", "|---|---|"]
        lines += [
            f"| {o.uri} | {(o.error or '').replace('|', '/')[:300]} |"
            for o in failed[:FAILED_OBJECTS_SHOWN]
        ]
        if len(failed) > FAILED_OBJECTS_SHOWN:
            lines.append(
                f"| ... | {len(failed) - FAILED_OBJECTS_SHOWN:,} more: batch-assets status |"
            )
        metadata["failed_objects"] = MetadataValue.md("\n".join(lines))
    return metadata


def stream_batch(
    step: BatchStep,
    store: CheckpointStore,
    open_source: Callable[[], batches.Opened],
    postgres: PostgresResource,
    scoring: Scoring,
    *,
    selected: set[str],
) -> Streamed:
    """One pass over the batch: the `selected` stages computed (each resumed after its own
    frontier), the others read from their latest complete checkpoints; with `postgres`
    selected, every processed chunk loaded in one transaction."""
    dataset, partition = step.dataset, step.batch_id
    with (
        step.failing(),
        WriteBehind() as writes,
        scoring.started("processed" in selected) as scoring,
    ):
        opened = open_source() if "raw" in selected else None
        sizes, total = (opened.sizes, opened.rows) if opened else (None, None)
        raw = open_stage(
            store,
            asset=f"{dataset.name}/raw",
            partition=partition,
            lineage=step.lineage,
            origin=opened.chunks.origin if opened else None,
            listeners=(
                durable_log(step.log, f"{dataset.name}/raw", partition, sizes=sizes, total=total),
            ),
            writes=writes,
        )
        processed = open_stage(
            store,
            asset=f"{dataset.name}/processed",
            partition=partition,
            lineage=step.lineage,
            origin=processed_origin(raw) if "processed" in selected else None,
            writes=writes,
        )
        if total is None and raw.complete:
            total = raw.frontier.rows  # read from its checkpoint: every row is known
        processed.listeners += (
            durable_log(step.log, processed.asset, partition, sizes=sizes, total=total),
            step.progress_listener(raw, processed, sizes=sizes, total=total),
        )
        if opened is not None and raw.first == 0 and not raw.complete:
            step.start(opened.source)
        else:
            step.resume()
        source = opened.chunks.iter if opened else _no_source
        computed = ("raw" in selected, "processed" in selected)
        streamed = Streamed(step, raw, processed, None)
        for stage, computing in zip((raw, processed), computed, strict=True):
            if computing:
                stage.listeners += (streamed.clock.listener(_stage_name(stage)),)
        try:
            _pass(streamed, source, scoring, computed, postgres, selected)
        except BaseException:
            # what was handed over before the error is written before saying where it stopped
            with contextlib.suppress(Exception):
                writes.drain()
            for stage, computing in zip((raw, processed), computed, strict=True):
                if computing:
                    step.log.error(where_it_stopped(stage))
            raise
    for stage, computing in zip((raw, processed), computed, strict=True):
        at = streamed.clock.finished.get(_stage_name(stage))
        if computing and at is not None:
            seconds = at - streamed.clock.started
            step.log.info(stage_line(f"{stage.asset} [{partition}]", stage.frontier, seconds))
    return streamed


def _stage_name(stage: Stage) -> str:
    return stage.asset.rsplit("/", 1)[-1]


def _pass(
    streamed: Streamed,
    source: Callable[[Resume], Iterator[Chunk]],
    scoring: Scoring,
    computed: tuple[bool, bool],
    postgres: PostgresResource,
    selected: set[str],
) -> None:
    """Runs the pass, loading into Postgres when it is selected (`streamed.loaded`)."""
    step, raw, processed = streamed.step, streamed.raw, streamed.processed
    if "postgres" not in selected:
        run_pass(raw, processed, source, scoring, compute=computed, load=None)
        return
    with postgres.connect() as conn:
        step.dataset.tables.ensure(conn)
    streamed.sources = sources = step.registered()
    with postgres.connect() as conn:

        def load(chunks: Iterator[Chunk]) -> Loaded:
            return load_batch(
                conn,
                step.dataset,
                step.batch_id,
                chunks,
                lambda: raw.frontier,
                tracking=step.within(conn),
                attempt=step.attempt,
                retries=step.retry_number,
                sources=sources,
            )

        loaded = run_pass(raw, processed, source, scoring, compute=computed, load=load)
    streamed.clock.done("postgres")
    streamed.loaded = loaded
    if loaded is not None:
        where = f"{step.dataset.name}/postgres [{step.batch_id}]"
        seconds = streamed.clock.finished["postgres"] - streamed.clock.started
        step.log.info(load_line(where, loaded, seconds))


def _no_source(resume: Resume) -> Iterator[Chunk]:
    raise RuntimeError("the raw stage is read from its checkpoint, not from its source")
