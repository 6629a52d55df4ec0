"""Checkpoint writes done behind a pass, in order, by one thread of their own.

Writing a chunk's Parquet file, syncing it and its frontier to disk (or putting them on S3)
takes a fifth of a load's time when the pass waits for it. `WriteBehind` takes each write
and goes on at once; one thread does the writes in the order they were handed over (so a
`raw` chunk is durable before the `processed` chunk computed from it), and what follows a
write (the stage's frontier moved, its listeners told) runs in the caller's thread, in the
same order, once the write is done. At most `depth` writes wait, so the chunks they hold
bound the memory it costs. `Inline` does each write at once, in the caller's thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Protocol

DEPTH = 4
"""Writes that may wait at once: two chunks of each of the two checkpointed stages."""


class Writes(Protocol):
    def submit(self, write: Callable[[], None], then: Callable[[], None]) -> None:
        """Has `write` done, then `then` run in the caller's thread."""

    def drain(self) -> None:
        """Returns once every write handed over is done and its `then` has run.

        Raises:
            Exception: the first write that failed (the writes after it are not done).
        """


class Inline:
    """Each write done at once, in the caller's thread."""

    def submit(self, write: Callable[[], None], then: Callable[[], None]) -> None:
        write()
        then()

    def drain(self) -> None:
        return None


class WriteBehind:
    """Writes done in order by one thread while the caller goes on (see the module).

    A write that fails stops the ones after it; its error is raised to the caller at its
    next `submit` or `drain`. Leaving the `with` block waits for the writes still running,
    also when the block ends with an error (what they make durable stays valid).
    """

    def __init__(self, *, depth: int = DEPTH, name: str = "checkpoint-writes"):
        self.depth = depth
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: deque[tuple[Future[None], Callable[[], None]]] = deque()
        self._failed = False

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._executor.shutdown(wait=True, cancel_futures=self._failed)

    def submit(self, write: Callable[[], None], then: Callable[[], None]) -> None:
        while self._pending and self._pending[0][0].done():
            self._finish_first()
        while len(self._pending) >= self.depth:
            self._finish_first()
        self._pending.append((self._executor.submit(self._guarded, write), then))

    def drain(self) -> None:
        while self._pending:
            self._finish_first()

    def _guarded(self, write: Callable[[], None]) -> None:
        if self._failed:
            raise RuntimeError("an earlier checkpoint write failed")
        try:
            write()
        except BaseException:
            self._failed = True
            raise

    def _finish_first(self) -> None:
        future, then = self._pending[0]
        try:
            future.result()
        except BaseException:
            self._pending.clear()
            raise
        self._pending.popleft()
        then()
