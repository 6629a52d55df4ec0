"""Running a batch in this process: drop an object, evaluate the sensor, run its partition.

This is what `batch-assets demo` does on the embedded stack, and what the tests drive. In a
deployment, the Dagster daemon evaluates the sensor and a run launcher starts the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagster import (
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    RunRequest,
    SensorResult,
    build_sensor_context,
)

from batch_assets.datasets import Dataset


@dataclass(frozen=True)
class Tick:
    run_requests: list[RunRequest]
    cursor: str | None
    skipped: str | None


def evaluate_inbox_sensor(
    defs: Definitions, instance: DagsterInstance, dataset: Dataset, cursor: str | None = None
) -> Tick:
    """One evaluation of the dataset's inbox sensor, its partitions added to `instance`."""
    sensor = defs.resolve_sensor_def(dataset.sensor_name)
    with build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)
    if not isinstance(result, SensorResult):
        return Tick([], cursor, str(getattr(result, "skip_message", result)))
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(
            request.partitions_def_name, list(request.partition_keys or [])
        )
    return Tick(list(result.run_requests or []), result.cursor, None)


def run_partition(
    defs: Definitions,
    instance: DagsterInstance,
    dataset: Dataset,
    partition_key: str,
    *,
    run_config: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> ExecuteInProcessResult:
    """Materializes one partition of the dataset's job in this process."""
    job = defs.resolve_job_def(dataset.job_name)
    return job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        run_config=run_config,
        tags=tags,
        raise_on_error=False,
    )
