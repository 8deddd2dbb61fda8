"""Build and node identity from the CI environment, so one command works on every CI machine.

Every parallel job of one CI build must agree on the build id (that is what puts them in one
queue) and must differ in node id (that is what tells their workers apart).

Re-runs: where the CI numbers its attempts (GitHub's GITHUB_RUN_ATTEMPT, Buildkite's
BUILDKITE_RETRY_COUNT), each attempt is a build of its own and runs every test again. Elsewhere
a retried job joins the build of its pipeline: a stopped build is resumed (what is left runs),
a finished one is replayed after a check that the collection and the code are the same.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CIIdentity:
    provider: str
    build: str
    node: str | None


def _get(env: Mapping[str, str], *names: str) -> str | None:
    values = [env.get(name, "").strip() for name in names]
    return "-".join(values) if all(values) else None


def detect(env: Mapping[str, str] | None = None) -> CIIdentity | None:
    """The CI build this process belongs to, or None outside a known CI.

    GitHub Actions: GITHUB_RUN_ID[-GITHUB_RUN_ATTEMPT] (node: host name)
    GitLab CI:      CI_PIPELINE_ID (node: CI_NODE_INDEX)
    Buildkite:      BUILDKITE_BUILD_ID[-BUILDKITE_STEP_ID][-retry-N] (node: BUILDKITE_PARALLEL_JOB)
    CircleCI:       CIRCLE_WORKFLOW_ID or CIRCLE_BUILD_NUM[-CIRCLE_JOB] (node: CIRCLE_NODE_INDEX)
    Jenkins:        BUILD_TAG (node: NODE_NAME-EXECUTOR_NUMBER)
    """
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true" and (run := _get(env, "GITHUB_RUN_ID")):
        attempt = _get(env, "GITHUB_RUN_ATTEMPT")
        if attempt and attempt != "1":
            run = f"{run}-{attempt}"
        return CIIdentity("github", f"github-{run}", None)
    if env.get("GITLAB_CI") and (pipeline := _get(env, "CI_PIPELINE_ID")):
        return CIIdentity("gitlab", f"gitlab-{pipeline}", _get(env, "CI_NODE_INDEX"))
    if env.get("BUILDKITE") == "true" and (build := _get(env, "BUILDKITE_BUILD_ID")):
        step = _get(env, "BUILDKITE_STEP_ID")
        retry = _get(env, "BUILDKITE_RETRY_COUNT")
        return CIIdentity(
            "buildkite",
            f"buildkite-{build}"
            + (f"-{step}" if step else "")
            + (f"-retry-{retry}" if retry and retry != "0" else ""),
            _get(env, "BUILDKITE_PARALLEL_JOB"),
        )
    if env.get("CIRCLECI") == "true":
        build = _get(env, "CIRCLE_WORKFLOW_ID") or _get(env, "CIRCLE_BUILD_NUM")
        if build:
            job = _get(env, "CIRCLE_JOB")
            return CIIdentity(
                "circleci",
                f"circleci-{build}" + (f"-{job}" if job else ""),
                _get(env, "CIRCLE_NODE_INDEX"),
            )
    if env.get("JENKINS_URL") and (tag := _get(env, "BUILD_TAG")):
        return CIIdentity("jenkins", tag, _get(env, "NODE_NAME", "EXECUTOR_NUMBER"))
    return None


# How many parallel jobs of one CI step run the same command (a CI matrix of N machines).
MAX_PARALLEL_JOBS = 1000  # a count beyond this is taken as this: a plan, not an allocation
PARALLEL_JOB_COUNTS = (
    ("GITLAB_CI", "CI_NODE_TOTAL"),
    ("BUILDKITE", "BUILDKITE_PARALLEL_JOB_COUNT"),
    ("CIRCLECI", "CIRCLE_NODE_TOTAL"),
)


def parallel_jobs(env: Mapping[str, str] | None = None) -> int | None:
    """How many machines the CI runs this job on in parallel, where it says so (GitLab's
    `parallel:`, Buildkite's `parallelism:`, CircleCI's `parallelism:`); None elsewhere
    (GitHub Actions and Jenkins do not tell a job how many others run beside it)."""
    env = os.environ if env is None else env
    for marker, name in PARALLEL_JOB_COUNTS:
        raw = env.get(name, "").strip()
        if env.get(marker) and raw.isascii() and raw.isdigit() and int(raw) >= 1:
            return min(int(raw), MAX_PARALLEL_JOBS)
    return None


def node_id(ci: CIIdentity | None, explicit: str | None = None) -> str:
    """A name for this machine's process tree that no other machine of the build uses."""
    base = explicit or (ci.node if ci and ci.node else None) or socket.gethostname()
    return f"{base}-{os.getpid()}"


def machine_of(node: str) -> str:
    """The machine's part of a `node_id` (with or without its trailing "/"): processes of
    one machine share it."""
    return node.rstrip("/").rpartition("-")[0]
