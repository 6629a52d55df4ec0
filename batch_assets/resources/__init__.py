"""Dagster resources: thin, configurable handles on S3 and Postgres."""
