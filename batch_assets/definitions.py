"""The one `Definitions` of the code location: every dataset, resource and sensor.

Environments differ by configuration only: the environment variables below point the same
code at the embedded local stack or at AWS and a real Postgres.

- `BATCH_ASSETS_PG_URL`: Postgres for results, rejected rows and batch tracking.
- `BATCH_ASSETS_BUCKET`: the S3 bucket of the datasets' inboxes.
- `BATCH_ASSETS_CHECKPOINT_BASE`: a folder or `s3://bucket/prefix` for chunk checkpoints.
- `BATCH_ASSETS_SOURCE_PG_URL`: the Postgres holding SQL sources' tables (default: the
  results one).
- `BATCH_ASSETS_JOBS_STORE`: `postgres` (default) or `dynamodb` for `batch_jobs`, and
  `BATCH_ASSETS_JOBS_TABLE` its DynamoDB table (default `batch_jobs`).
- boto3's own variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials) for S3.
"""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar

from batch_assets.builders.retention_job import retention_job, retention_schedule
from batch_assets.datasets import DATASETS, Dataset
from batch_assets.factory import CHECKPOINTS, build_dataset
from batch_assets.failures import batch_run_failure_sensor
from batch_assets.io_managers.checkpoint import CheckpointIOManager, CheckpointsResource
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.resources.s3 import S3
from batch_assets.resources.settings import BatchSettings


def build_definitions(datasets: tuple[Dataset, ...] = DATASETS) -> Definitions:
    """The code location's definitions: `datasets` (all of them unless given), with the
    shared resources and sensors."""
    s3 = S3()
    postgres = PostgresResource(url=EnvVar("BATCH_ASSETS_PG_URL"))
    checkpoints = CheckpointsResource(base=EnvVar("BATCH_ASSETS_CHECKPOINT_BASE"), s3=s3)
    retention = retention_job(datasets)
    return Definitions.merge(
        *(build_dataset(dataset) for dataset in datasets),
        Definitions(
            jobs=[retention],
            schedules=[retention_schedule(retention)],
            sensors=[batch_run_failure_sensor],
            resources={
                "s3": s3,
                "postgres": postgres,
                "source_postgres": PostgresResource(
                    url=EnvVar(
                        "BATCH_ASSETS_SOURCE_PG_URL"
                        if os.environ.get("BATCH_ASSETS_SOURCE_PG_URL")
                        else "BATCH_ASSETS_PG_URL"
                    )
                ),
                "jobs": JobsResource.from_env(postgres),
                "dynamodb": DynamoDBResource(),
                "kinesis": KinesisResource(),
                "settings": BatchSettings(bucket=EnvVar("BATCH_ASSETS_BUCKET")),
                "checkpoints": checkpoints,
                CHECKPOINTS: CheckpointIOManager(checkpoints=checkpoints),
            },
        ),
    )


defs = build_definitions()
