"""The code location of `bench_many_files.py`'s per-object mode: the repository's own
definitions, but for the reviews inbox sensor, which puts each object in a batch of its own
(`batch_objects=1`: one partition and one run per object). Every other dataset, resource
and sensor is the same.

    python -m dagster dev -f benchmarks/many_files_location.py -d .
"""

from __future__ import annotations

import dataclasses

from batch_assets.datasets import DATASETS, REVIEWS
from batch_assets.definitions import build_definitions

ONE_OBJECT_PER_BATCH = tuple(
    dataclasses.replace(dataset, batch_objects=1) if dataset is REVIEWS else dataset
    for dataset in DATASETS
)

defs = build_definitions(ONE_OBJECT_PER_BATCH)
