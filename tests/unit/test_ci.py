"""Build ids from the CI environment, re-run attempts included."""

from __future__ import annotations

from conveyor.ci import detect, parallel_jobs


def test_github_attempts_get_builds_of_their_own() -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "77"}
    first = detect(env)
    assert first is not None and first.build == "github-77"
    assert detect({**env, "GITHUB_RUN_ATTEMPT": "1"}) == first
    again = detect({**env, "GITHUB_RUN_ATTEMPT": "2"})
    assert again is not None and again.build == "github-77-2"


def test_buildkite_retries_get_builds_of_their_own() -> None:
    env = {"BUILDKITE": "true", "BUILDKITE_BUILD_ID": "b1", "BUILDKITE_STEP_ID": "s"}
    assert (found := detect(env)) is not None and found.build == "buildkite-b1-s"
    retried = detect({**env, "BUILDKITE_RETRY_COUNT": "1"})
    assert retried is not None and retried.build == "buildkite-b1-s-retry-1"


def test_gitlab_jobs_of_one_pipeline_share_a_build() -> None:
    env = {"GITLAB_CI": "true", "CI_PIPELINE_ID": "9", "CI_NODE_INDEX": "2"}
    found = detect(env)
    assert found is not None and (found.build, found.node) == ("gitlab-9", "2")


def test_the_parallel_jobs_count_comes_from_the_cis_that_tell_it() -> None:
    assert parallel_jobs({"GITLAB_CI": "true", "CI_NODE_TOTAL": "4"}) == 4
    assert parallel_jobs({"BUILDKITE": "true", "BUILDKITE_PARALLEL_JOB_COUNT": "3"}) == 3
    assert parallel_jobs({"CIRCLECI": "true", "CIRCLE_NODE_TOTAL": "6"}) == 6
    assert parallel_jobs({"CI_NODE_TOTAL": "4"}) is None  # not inside GitLab
    assert parallel_jobs({"GITLAB_CI": "true", "CI_NODE_TOTAL": "many"}) is None
    assert parallel_jobs({"GITLAB_CI": "true", "CI_NODE_TOTAL": "0"}) is None
    assert parallel_jobs({"GITHUB_ACTIONS": "true"}) is None
    assert parallel_jobs({"GITLAB_CI": "true", "CI_NODE_TOTAL": "\u00b2"}) is None  # a digit
    assert parallel_jobs({"CIRCLECI": "true", "CIRCLE_NODE_TOTAL": "9" * 20}) == 1000
