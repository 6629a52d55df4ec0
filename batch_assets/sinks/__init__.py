"""Sinks: the write logic of each destination, plain and testable without Dagster."""
