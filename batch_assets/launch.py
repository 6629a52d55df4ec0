"""Requesting a batch's run from Dagster's webserver (its GraphQL API), as the UI's Launch
button does: the batch's partition is added, then a run of the dataset's job for it is
submitted to the instance's run coordinator. The HTTP API uses it so that an upload's run
starts at once rather than at the inbox sensor's next tick."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from batch_assets.datasets import Dataset

ADD_PARTITION = """
mutation AddPartition($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on Error { message }
  }
}
"""

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def source_tags(uri: str, etag: str, **more: str) -> dict[str, str]:
    """A batch run's tags: the (first) object it reads, its ETag (the run failure sensor
    fails a batch still queued for that version), and `more` as `batch_assets/<name>`."""
    tags = {"batch_assets/source": uri, "batch_assets/etag": etag}
    tags.update({f"batch_assets/{name}": value for name, value in more.items()})
    return tags


REQUESTED_BY = "batch_assets/requested_by"
"""The run tag naming who requested a batch's run other than its sensor (`api`)."""


class LaunchFailed(RuntimeError):
    """The webserver did not take the run: unreachable, or it answered with an error."""


@dataclass(frozen=True)
class RunRequester:
    """Dagster's webserver at `url` (`http://host:port`), serving the code location
    `location`."""

    url: str
    location: str = "batch_assets"
    repository: str = "__repository__"
    timeout: float = 10.0

    def request(self, dataset: Dataset, batch_id: str, tags: dict[str, str]) -> str:
        """Adds `batch_id` to the dataset's partitions and submits a run of its job for
        it, tagged `tags`; returns the run's id. Raises `LaunchFailed` saying why."""
        repo = {"repositoryLocationName": self.location, "repositoryName": self.repository}
        added = self._call(ADD_PARTITION, {"repo": repo, "name": dataset.name, "key": batch_id})
        kind = added["addDynamicPartition"]["__typename"]
        if kind not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise LaunchFailed(f"adding partition {batch_id}: {_why(added['addDynamicPartition'])}")
        all_tags = {"dagster/partition": batch_id, **tags}
        params = {
            "selector": {**repo, "jobName": dataset.job_name},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in all_tags.items()]},
        }
        launched = self._call(LAUNCH_RUN, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise LaunchFailed(f"launching {dataset.job_name} for {batch_id}: {_why(launched)}")
        return str(launched["run"]["runId"])

    def _call(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise LaunchFailed(f"Dagster's webserver at {self.url} did not answer: {exc}") from None
        if answer.get("errors"):
            raise LaunchFailed("; ".join(str(e.get("message", e)) for e in answer["errors"]))
        data: dict[str, Any] = answer["data"]
        return data


def _why(result: dict[str, Any]) -> str:
    errors = result.get("errors") or []
    message = result.get("message") or "; ".join(str(e.get("message")) for e in errors)
    return f"{result['__typename']}: {message}" if message else str(result["__typename"])
