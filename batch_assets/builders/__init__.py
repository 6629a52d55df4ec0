"""Dagster definitions built from a `Dataset` entry, one builder per kind: the streaming
pipeline step, the downstream sinks, the sensor and the retry job. Each stays a thin layer
over the plain modules it calls."""
