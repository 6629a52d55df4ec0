"""The project's one exception family.

Every message names the file, line or field concerned and says what would fix it.
"""

from __future__ import annotations


class BatchError(Exception):
    """Base of every error batch_assets raises on purpose."""


class BatchInputError(BatchError):
    """The input itself is unusable (encoding, header, structure); retrying cannot help."""


class SinkError(BatchError):
    """A destination refused or failed a write after its retries."""


class ConfigError(BatchError):
    """A setting is missing or wrong."""
