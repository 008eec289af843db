"""The pipeline templates' commands, run: the GitLab plan step writes a child pipeline that is
itself valid GitLab CI, and the GitHub plan step writes $GITHUB_OUTPUT lines whose matrix is
what the workflow's fromJSON expects (real registry: plan asks it for every image)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from needs import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _registry_up() -> None:
    import requests

    try:
        requests.get("http://127.0.0.1:5000/v2/", timeout=3)
    except requests.RequestException as e:
        unavailable(f"registry on 127.0.0.1:5000 ({e}); start it with scripts/services.sh")


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a `harden` that is this checkout's, a signing key pair, images/ copied."""
    _registry_up()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "harden"
    shim.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "from harden.cli import main; main()" "$@"\n'
    )
    shim.chmod(0o755)
    shutil.copytree(ROOT / "images", tmp_path / "images")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARDEN_")}
    env |= {
        "PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),
        "HARDEN_HOME": str(tmp_path / "home"),
        "HARDEN_KEY_PASSWORD": "deploy-test",
    }
    subprocess.run(
        ["harden", "keygen", "--out", str(tmp_path / "keys" / "signing")],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return env


def _script(lines: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gitlab_plan_step_writes_a_valid_child_pipeline(
    shell_env: dict[str, str], tmp_path: Path
) -> None:
    doc = yaml.safe_load((DEPLOY / "gitlab" / "harden.gitlab-ci.yml").read_text())
    env = shell_env | {k: str(v) for k, v in doc["variables"].items()}
    env["HARDEN_SIGNING_KEY"] = str(tmp_path / "keys" / "signing.key")
    _script(doc["harden-plan"]["script"], env, tmp_path)
    child = tmp_path / "rebuild.yml"
    proc = subprocess.run(
        [
            shutil.which("check-jsonschema") or "check-jsonschema",
            "--builtin-schema",
            "vendor.gitlab-ci",
            str(child),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + child.read_text()
    pipeline = yaml.safe_load(child.read_text())
    assert "harden-golden" in " ".join(pipeline["default"]["before_script"])
    jobs = [v for k, v in pipeline.items() if k.startswith(("rebuild-wave-", "nothing-to-"))]
    assert jobs
    for job in jobs:
        if "parallel" in job:  # images not built here are "missing": a wave to build
            assert job["script"][0].startswith('harden build "$DEFINITION" --force --key "file:')


def test_github_plan_step_writes_the_matrix(shell_env: dict[str, str], tmp_path: Path) -> None:
    wf = yaml.safe_load((DEPLOY / "github" / "rebuild.yml").read_text())
    step = next(s for s in wf["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    out = tmp_path / "github_output"
    env = shell_env | {
        "GITHUB_OUTPUT": str(out),
        "IMAGES": "images/",
        "PUBLIC_KEY": str(tmp_path / "keys" / "signing.pub"),
    }
    _script([step["run"]], env, tmp_path)
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    waves = int(lines["waves"])
    assert waves >= 1  # a fresh key verifies no attestation: every image needs a rebuild
    matrix = json.loads(lines["wave0"])
    assert {item["definition"] for item in matrix["include"]} <= {
        f"images/{p.name}" for p in (ROOT / "images").glob("*.yaml")
    }
