"""Postgres as a Dagster resource: a URL from configuration, connections on demand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource
from pydantic import Field


class PostgresResource(ConfigurableResource):
    """Connections to the Postgres that holds results, rejected rows and batch tracking."""

    url: str = Field(
        description="libpq URL, e.g. postgresql://user:pass@host:5432/db "
        "(a socket folder goes in ?host=/path)."
    )
    connect_timeout: int = Field(default=10, description="Seconds to wait for a connection.")

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection, committed when the block ends cleanly, rolled back otherwise."""
        with psycopg.connect(self.url, connect_timeout=self.connect_timeout) as conn:
            yield conn
