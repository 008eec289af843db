"""Provenance names the CI run that built the image (GitHub Actions, GitLab CI), else the host."""

from __future__ import annotations

import datetime as dt

from harden.attest.statements import (
    BUILD_TYPE_CONTAINER,
    BUILD_TYPE_VM,
    BuildInfo,
    Subject,
    provenance,
)
from harden.ci import detect

GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "acme/golden",
    "GITHUB_WORKFLOW_REF": "acme/golden/.github/workflows/harden.yml@refs/heads/main",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_RUN_ATTEMPT": "2",
}
GITLAB = {
    "GITLAB_CI": "true",
    "CI_SERVER_URL": "https://gitlab.example.com",
    "CI_PROJECT_PATH": "ops/golden",
    "CI_RUNNER_ID": "17",
    "CI_JOB_ID": "901",
    "CI_JOB_URL": "https://gitlab.example.com/ops/golden/-/jobs/901",
    "CI_PIPELINE_URL": "https://gitlab.example.com/ops/golden/-/pipelines/55",
}


def test_github_actions() -> None:
    run = detect(GITHUB)
    assert run.system == "github-actions"
    assert run.builder_id == (
        "https://github.com/acme/golden/.github/workflows/harden.yml@refs/heads/main"
    )
    assert run.invocation_id == "https://github.com/acme/golden/actions/runs/4242/attempts/2"
    assert run.run_url == "https://github.com/acme/golden/actions/runs/4242"


def test_gitlab_ci() -> None:
    run = detect(GITLAB)
    assert run.system == "gitlab-ci"
    assert run.builder_id == "https://gitlab.example.com/ops/golden/-/runners/17"
    assert run.invocation_id == GITLAB["CI_JOB_URL"]
    assert run.run_url == GITLAB["CI_PIPELINE_URL"]


def test_local_and_half_set_variables() -> None:
    assert detect({}, hostname="ws1").builder_id == "https://harden.dev/builders/local/ws1"
    # GITHUB_ACTIONS without a run id is not trusted to describe a run
    assert detect({"GITHUB_ACTIONS": "true"}, hostname="ws1").system == "local"
    assert detect({"GITLAB_CI": "true"}, hostname="ws1").invocation_id is None


def test_provenance_carries_the_run_and_the_build_type() -> None:
    run = detect(GITHUB)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for build_type in (BUILD_TYPE_CONTAINER, BUILD_TYPE_VM):
        info = BuildInfo(
            build_type=build_type,
            image_definition={"name": "app", "path": "images/app.yaml", "sha256": "c" * 64},
            base_name="127.0.0.1:5000/library/debian:12",
            base_digest="sha256:" + "a" * 64,
            baseline_id="debian-container",
            baseline_version="1.0.0",
            baseline_digest="sha256:" + "b" * 64,
            builder_id=run.builder_id,
            harden_version="0.1.0",
            started_on=t,
            finished_on=t,
            invocation_id=run.invocation_id,
            internal_parameters={"ci": run.to_json()},
        )
        pred = provenance(Subject("app", "sha256:" + "d" * 64), info)["predicate"]
        assert pred["buildDefinition"]["buildType"] == build_type
        assert pred["runDetails"]["builder"]["id"] == run.builder_id
        assert pred["runDetails"]["metadata"]["invocationId"] == run.invocation_id
        assert pred["buildDefinition"]["internalParameters"]["ci"]["runUrl"] == run.run_url
