"""Chunk checkpoints in Dagster: the resource a batch's step writes them through, and the IO
manager that hands them to downstream steps.

The step that streams a batch makes each stage's chunks durable itself, as they come (see
`one_pass`), and yields the stage's output once its frontier is complete, as a `Durable`
note: the IO manager checks it and stores nothing more. Inputs load as lazy `Chunks` over
the run's own upstream output when its lineage has a complete one, else over the latest
complete output.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batch_assets.checkpoints import CheckpointStore, checkpoint_store, load_chunks
from batch_assets.chunks import Chunks


@dataclass(frozen=True)
class Durable:
    """A stage's output, already stored by its step: `asset` of `partition` by `lineage`."""

    asset: str
    partition: str
    lineage: str


class CheckpointsResource(ConfigurableResource):
    """Where checkpoints live: a local folder or `s3://bucket/prefix`."""

    base: str = Field(description="Where checkpoints live: a local folder or s3://bucket/prefix.")
    s3: S3Resource = Field(
        default_factory=S3Resource, description="S3 client settings, used for an s3:// base."
    )

    def store(self) -> CheckpointStore:
        return checkpoint_store(self.base, s3_client=self.s3.get_client)


class CheckpointIOManager(ConfigurableIOManager):
    """Checks the stages a step yields are durable, and loads them as lazy `Chunks`."""

    checkpoints: CheckpointsResource

    def handle_output(self, context: OutputContext, obj: Durable) -> None:
        if not isinstance(obj, Durable):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; its "
                "step stores its chunks itself and yields a Durable note"
            )
        frontier = self.checkpoints.store().frontier(obj.asset, obj.partition, obj.lineage)
        if frontier is None or frontier.status != "complete":
            raise RuntimeError(
                f"{obj.asset} [{obj.partition}] was yielded before its chunks were durable"
            )

    def load_input(self, context: InputContext) -> Chunks:
        run = context.step_context.dagster_run
        chunks, _ = load_chunks(
            self.checkpoints.store(),
            asset="/".join(context.asset_key.path),
            partition=context.asset_partition_key,
            lineage=run.root_run_id or run.run_id,
        )
        return chunks
