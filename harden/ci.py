"""Who ran the build: the CI system's own identifiers, read from its environment variables.

GitHub Actions (https://docs.github.com/actions/learn-github-actions/variables) and GitLab CI
(https://docs.gitlab.com/ee/ci/variables/predefined_variables.html) name the workflow, the run
and the job; SLSA provenance v1 carries them as ``runDetails.builder.id`` (what built: the
workflow file at its ref, or the GitLab runner) and ``runDetails.metadata.invocationId`` (this
run's URL, per attempt). Outside CI the builder is the local host.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CiRun:
    system: str  # "github-actions" | "gitlab-ci" | "local"
    builder_id: str
    invocation_id: str | None = None
    run_url: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"system": self.system}
        if self.run_url:
            out["runUrl"] = self.run_url
        return out


def detect(environ: Mapping[str, str], hostname: str | None = None) -> CiRun:
    """The CI run described by ``environ`` (os.environ in the use cases)."""
    if environ.get("GITHUB_ACTIONS") == "true" and environ.get("GITHUB_RUN_ID"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        repo = environ.get("GITHUB_REPOSITORY", "")
        workflow_ref = environ.get("GITHUB_WORKFLOW_REF")  # owner/repo/.github/workflows/x.yml@ref
        builder = f"{server}/{workflow_ref}" if workflow_ref else f"{server}/{repo}"
        run_url = f"{server}/{repo}/actions/runs/{environ['GITHUB_RUN_ID']}"
        attempt = environ.get("GITHUB_RUN_ATTEMPT", "1")
        return CiRun("github-actions", builder, f"{run_url}/attempts/{attempt}", run_url)
    if environ.get("GITLAB_CI") == "true" and environ.get("CI_JOB_ID"):
        server = environ.get("CI_SERVER_URL", "").rstrip("/")
        project = environ.get("CI_PROJECT_PATH", "")
        runner = environ.get("CI_RUNNER_ID")
        builder = f"{server}/{project}/-/runners/{runner}" if runner else f"{server}/{project}"
        job_url = environ.get("CI_JOB_URL") or f"{server}/{project}/-/jobs/{environ['CI_JOB_ID']}"
        return CiRun("gitlab-ci", builder, job_url, environ.get("CI_PIPELINE_URL") or job_url)
    host = hostname if hostname is not None else socket.gethostname()
    return CiRun("local", f"https://harden.dev/builders/local/{host}")
