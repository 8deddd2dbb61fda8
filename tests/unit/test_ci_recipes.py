"""The CI recipes in docs/ci.md parse, and each runs conveyor the way the README says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conveyor.ci import detect

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_there_is_a_recipe_for_every_ci() -> None:
    text = DOC.read_text()
    for heading in ("## GitHub Actions", "## GitLab CI", "## Buildkite", "## CircleCI"):
        assert heading in text
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"recipe-{i}" for i in range(len(BLOCKS))])
def test_every_recipe_is_valid_yaml_that_runs_conveyor(block: str) -> None:
    parsed = yaml.safe_load(block)
    assert isinstance(parsed, dict) and parsed
    assert re.search(r"conveyor (run|worker|report)", block)
    assert "pip install 'conveyor[redis]'" in block


@pytest.mark.parametrize(
    ("env", "build"),
    [
        ({"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "5", "GITHUB_RUN_ATTEMPT": "2"}, "github-5-2"),
        ({"GITLAB_CI": "true", "CI_PIPELINE_ID": "7", "CI_NODE_INDEX": "1"}, "gitlab-7"),
        (
            {"CIRCLECI": "true", "CIRCLE_WORKFLOW_ID": "w", "CIRCLE_JOB": "test"},
            "circleci-w-test",
        ),
        ({"JENKINS_URL": "http://j", "BUILD_TAG": "jenkins-x-3"}, "jenkins-x-3"),
    ],
)
def test_the_documented_build_ids_are_the_ones_conveyor_reads(
    env: dict[str, str], build: str
) -> None:
    found = detect(env)
    assert found is not None and found.build == build
