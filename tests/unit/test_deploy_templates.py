"""deploy/: the CI templates validate against the published schemas (check-jsonschema's vendored
copies, offline), and every harden command line in them parses with this harden."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

SCHEMAS = [
    ("vendor.github-actions", DEPLOY / "github" / "harden-action" / "action.yml"),
    ("vendor.github-workflows", DEPLOY / "github" / "rebuild.yml"),
    ("vendor.github-workflows", DEPLOY / "github" / "example-caller.yml"),
    ("vendor.gitlab-ci", DEPLOY / "gitlab" / "harden.gitlab-ci.yml"),
]


def _check_jsonschema() -> list[str]:
    exe = shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is a dev dependency (pip install check-jsonschema)"
    return [exe]


@pytest.mark.parametrize(("schema", "path"), SCHEMAS, ids=[p.name for _, p in SCHEMAS])
def test_template_validates_against_its_schema(schema: str, path: Path) -> None:
    proc = subprocess.run(
        [*_check_jsonschema(), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "wf.yml"
    bad.write_text("name: x\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps: []\n")  # no on:
    proc = subprocess.run(
        [*_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0


def harden_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `harden`) for every harden invocation in deploy/."""
    found: list[tuple[str, list[str]]] = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix in (".service",):
            cp = configparser.ConfigParser(strict=False, interpolation=None)
            cp.read_string(text)
            cmd = shlex.split(cp["Service"]["ExecStart"])
            found.append((path.name, cmd[1:]))
        elif path.name == "cronjob.yaml":
            doc = yaml.safe_load(text)
            for c in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
                found.append((path.name, [str(a) for a in c["args"]]))
        else:
            text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
            for m in re.finditer(
                r"(?:^|[\s\"'`])harden ((?:plan|build|status|verify)[^\n>|]*)", text
            ):
                argv = shlex.split(m.group(1).replace("\\\n", " "))
                found.append((path.name, argv))
    return found


@pytest.mark.parametrize(
    "where_argv", harden_lines(), ids=lambda x: x[0] + ":" + " ".join(x[1][:2])
)
def test_every_harden_command_in_the_templates_parses(where_argv: tuple[str, list[str]]) -> None:
    where, argv = where_argv
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARDEN_")}
    env["PYTHONPATH"] = str(ROOT)
    # --help after the arguments: click parses every option first (an unknown or misspelt one
    # fails with exit 2), then prints the help instead of running
    proc = subprocess.run(
        [sys.executable, "-c", "from harden.cli import main; main()", *argv, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{where}: harden {' '.join(argv)}\n{proc.stderr}"
    assert "Usage: harden" in proc.stdout


def test_there_are_commands_to_check() -> None:
    names = {w for w, _ in harden_lines()}
    assert {
        "harden-rebuild.service",
        "cronjob.yaml",
        "rebuild.yml",
        "harden.gitlab-ci.yml",
    } <= names


def test_cronjob_runs_unprivileged() -> None:
    doc = yaml.safe_load((DEPLOY / "kubernetes" / "cronjob.yaml").read_text())
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_timer_triggers_the_service() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string((DEPLOY / "systemd" / "harden-rebuild.timer").read_text())
    assert cp["Timer"]["OnCalendar"]
    assert cp["Install"]["WantedBy"] == "timers.target"
    assert (DEPLOY / "systemd" / "harden-rebuild.service").is_file()
