"""The checkpoint IO manager: `Chunks` outputs stored as Parquet chunks with a frontier.

A retry or a re-execution from failure belongs to the same lineage (Dagster's root run id)
and resumes after the lineage's frontier; a fresh materialization is a new lineage and
starts over. Inputs load as lazy `Chunks` over the run's own upstream output when its
lineage has one, else over the latest complete output.
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batch_assets.checkpoints import (
    CheckpointStore,
    checkpoint_store,
    frontier_report,
    load_chunks,
    store_chunks,
)
from batch_assets.chunks import Chunks, Throttled

LOG_SECONDS = 5.0
"""How often, at most, the run's log says how far an output's frontier has come (each line
is an event in Dagster's storage)."""


def _lineage(context: InputContext | OutputContext) -> str:
    run = context.step_context.dagster_run
    return run.root_run_id or run.run_id


def _asset_path(context: InputContext | OutputContext) -> str:
    return "/".join(context.asset_key.path)


class CheckpointIOManager(ConfigurableIOManager):
    """Stores `Chunks` chunk by chunk under `base` (a folder or `s3://bucket/prefix`)."""

    base: str = Field(description="Where checkpoints live: a local folder or s3://bucket/prefix.")
    s3: S3Resource = Field(
        default_factory=S3Resource, description="S3 client settings, used for an s3:// base."
    )

    def store(self) -> CheckpointStore:
        return checkpoint_store(self.base, s3_client=self.s3.get_client)

    def handle_output(self, context: OutputContext, obj: Chunks) -> None:
        if not isinstance(obj, Chunks):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; the "
                "checkpoint IO manager stores Chunks only"
            )
        lineage = _lineage(context)
        asset = _asset_path(context)
        partition = context.asset_partition_key
        log = context.log

        def report(chunk: Any, frontier: Any) -> None:
            if log is not None:
                log.info(
                    f"{asset} [{partition}]: chunk {chunk.index} durable, "
                    f"{frontier.rows:,} rows behind the frontier"
                )

        store = self.store()
        try:
            frontier, first = store_chunks(
                store,
                obj.on_durable(Throttled(report, seconds=LOG_SECONDS)),
                asset=asset,
                partition=partition,
                lineage=lineage,
            )
        except Exception:
            if log is not None:
                where = frontier_report(store, asset, partition, lineage)
                log.error(
                    f"{asset} [{partition}] stopped: "
                    + (
                        f"{where['chunks']:,} chunks durable ({where['rows']:,} rows); a retry "
                        f"or re-execution from failure resumes at chunk {where['chunks']}"
                        if where
                        else "no chunk is durable yet"
                    )
                )
            raise
        context.add_output_metadata(
            {
                "dagster/row_count": frontier.rows,
                "chunks": frontier.chunks,
                # -1: no chunk (an empty source)
                "last_durable_chunk": frontier.chunks - 1,
                "rows_behind_frontier": frontier.rows,
                "rows_by_status": MetadataValue.json(frontier.counts),
                "resumed_from_chunk": first,
                "chunks_computed_this_attempt": frontier.chunks - first,
                "lineage": lineage,
            }
        )

    def load_input(self, context: InputContext) -> Chunks:
        asset = _asset_path(context)
        chunks, _ = load_chunks(
            self.store(),
            asset=asset,
            partition=context.asset_partition_key,
            lineage=_lineage(context),
        )
        return chunks
