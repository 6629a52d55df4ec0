"""A watchdog that brings a dead code server back, for a Dagster that runs on one machine.

`dagster dev` (and `dagster code-server start`) runs the code location in a child process and
does not restart it when it dies: the sensors stop ticking, run failures are not handed to
the run failure sensor, and run retries cannot launch, until somebody clicks "Reload" in
the UI. Orchestrators restart a dead code server container by themselves; on one machine this
watchdog does: every few seconds it asks the webserver's GraphQL API for the code location,
and when it failed to load it asks the webserver to reload it, which starts a new code
server. A location that keeps failing (its code does not import) is asked again less and
less often, at most once a minute. The location's error is logged each time.

`batch-assets dev` runs it beside `dagster dev`; `batch-assets watchdog --dagster-url URL`
runs it beside a webserver of one's own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

LOCATION = "batch_assets"
CHECK_EVERY_S = 3.0
MAX_PAUSE_S = 60.0

LOCATION_QUERY = """
query Location {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry {
      locationOrLoadError { __typename ... on PythonError { message } }
    }
    ... on PythonError { message }
  }
}
"""


@dataclass
class Watchdog:
    """Reloads the code location `location` through the webserver at `dagster_url` when it
    failed to load (see the module). `reloads` counts the reloads asked for."""

    dagster_url: str
    location: str = LOCATION
    reloads: int = 0
    _pause: float = field(default=0.0, repr=False)
    _next_reload: float = field(default=0.0, repr=False)

    def _graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = httpx.post(
            f"{self.dagster_url.rstrip('/')}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=60,
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()["data"]
        return data

    def location_error(self) -> str | None:
        """The location's load error, None while it is loaded (or loading)."""
        workspace = self._graphql(LOCATION_QUERY)["workspaceOrError"]
        for entry in workspace.get("locationEntries", []):
            if entry["name"] != self.location or entry["loadStatus"] == "LOADING":
                continue
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                return str(loaded.get("message", "")).strip() or "unknown error"
        return None

    def check(self, now: float | None = None) -> bool:
        """One look; whether it asked for a reload."""
        now = time.monotonic() if now is None else now
        error = self.location_error()
        if error is None:
            self._pause = 0.0
            return False
        if now < self._next_reload:
            return False
        log.warning(
            "code location %s failed to load (%s); reloading it", self.location, error[:500]
        )
        self._graphql(RELOAD, {"name": self.location})
        self.reloads += 1
        self._pause = min(max(self._pause * 2, CHECK_EVERY_S), MAX_PAUSE_S)
        self._next_reload = now + self._pause
        return True

    def run(self, stop: threading.Event, every: float = CHECK_EVERY_S) -> None:
        """Checks every `every` seconds until `stop` is set; a webserver not answering (not
        up yet, restarting) is waited for."""
        while not stop.wait(every):
            try:
                self.check()
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                log.debug("watchdog: the webserver did not answer: %s", exc)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """Runs in a daemon thread; set the event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="watchdog", daemon=True)
        thread.start()
        return thread, stop
