"""A team's testinfra suites as verifiers, against the real engine and registry.

The same files run under plain ``pytest --harden-target`` and under ``harden verify --tests`` /
``harden build`` (a definition's ``tests``), with the same outcomes; failed tests are in the
signed test-result attestation by node id and the gate denies the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import harden_cli
import pytest
from needs import unavailable

from harden.attest import dsse
from harden.attest.keys import load_public_key
from harden.attest.predicates import TEST_RESULT
from harden.attest.store import fetch_envelopes
from harden.oci import RegistryClient

ROOT = harden_cli.ROOT
REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
EXAMPLE = ROOT / "images" / "tests"
UMASK_TEST = "images/tests/test_golden_example.py::test_login_defs_umask_027"
PASSWORD = "suite-password"


@pytest.fixture(scope="module", autouse=True)
def _engine() -> None:
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        unavailable("docker engine is not running (scripts/services.sh)")


def _testinfra(results: list[dict[str, Any]]) -> dict[str, str]:
    return {r["rule_id"]: r["status"] for r in results if r["kind"] == "testinfra"}


def test_same_suite_same_outcomes_under_pytest_and_harden_verify(tmp_path: Path) -> None:
    out = tmp_path / "pytest.jsonl"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harden.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(ROOT),
            "--harden-target",
            "debian:12",
            "--harden-results",
            str(out),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr  # the umask test fails on the base
    by_pytest = {r["nodeid"]: r["outcome"] for r in map(json.loads, out.read_text().splitlines())}
    r = harden_cli.run(
        "verify", "docker-image://debian:12", "--tests", "images/tests", "--format", "json"
    )
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    by_harden = _testinfra(report["results"])
    as_status = {"passed": "passed", "failed": "failed", "skipped": "not_applicable"}
    assert by_harden == {k: as_status[v] for k, v in by_pytest.items()}
    assert by_harden[UMASK_TEST] == "failed"
    (umask,) = [x for x in report["results"] if x["rule_id"] == UMASK_TEST]
    assert umask["controls"] == {"iso27017": ["CLD.9.5.2"]}
    assert umask["evidence"] and umask["duration"] >= 0
    assert not report["compliant"]


def test_broken_suites_are_reported_not_hidden(tmp_path: Path) -> None:
    (tmp_path / "test_syntax.py").write_text("def test_x(host:\n    pass\n")
    (tmp_path / "test_hangs.py").write_text(
        "import time\n\ndef test_hangs(host):\n    time.sleep(600)\n\n"
        "def test_after(host):\n    assert host.file('/etc/passwd').exists\n"
    )
    r = harden_cli.run(
        "verify",
        "docker-image://debian:12",
        "--tests",
        str(tmp_path),
        "--test-timeout",
        "3",
        "--format",
        "json",
        timeout=300,
    )
    assert r.returncode == 1, r.stderr
    results = {
        x["rule_id"].rpartition("/")[2]: x
        for x in json.loads(r.stdout)["results"]
        if x["kind"] == "testinfra"
    }
    assert results["test_syntax.py"]["status"] == "error"
    assert "SyntaxError" in "\n".join(results["test_syntax.py"]["evidence"])
    assert results["test_hangs.py::test_hangs"]["status"] == "error"
    assert "did not finish within 3s" in results["test_hangs.py::test_hangs"]["reason"]
    assert results["test_hangs.py::test_after"]["status"] == "passed"  # the run went on
    left = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=dev.harden.temporary",
            "--format",
            "{{.ID}} {{.Command}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    left = [line for line in left if "sleep 3600 & wait" in line]  # the suites' containers
    assert left == [], "the test container was not removed"


def test_missing_suite_path_in_a_definition_names_file_and_line(tmp_path: Path) -> None:
    d = tmp_path / "def.yaml"
    d.write_text(
        "name: suite-missing\nbase: 127.0.0.1:5000/library/debian:12\ntarget: container\n"
        "baseline: {id: debian-container}\ntests:\n  - tests/absent\n"
    )
    r = harden_cli.run("verify", "docker-image://debian:12", "--definition", str(d))
    assert r.returncode == 3, r.stderr
    assert f"{d}:6" in r.stderr and "tests/absent" in r.stderr
    assert "Traceback" not in r.stderr


def test_build_runs_the_suites_signs_them_and_the_gate_denies_a_failure(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HARDEN_HOME": str(home), "HARDEN_KEY_PASSWORD": PASSWORD}
    r = harden_cli.run("keygen", "--out", str(tmp_path / "k"), env=env)
    assert r.returncode == 0, r.stderr
    team = tmp_path / "team"
    team.mkdir()
    (team / "test_ca.py").write_text(
        "import pytest\n\n@pytest.mark.controls('iso27017:CLD.9.5.2')\n"
        "def test_team_ca_bundle_present(host):\n"
        "    assert host.file('/usr/local/share/ca-certificates/team-ca.crt').exists\n"
    )
    repo = f"harden-test/suites-{uuid.uuid4().hex[:8]}/golden"
    definition = tmp_path / "golden.yaml"
    definition.write_text(
        json.dumps(
            {
                "name": "itest-suites",
                "base": BASE,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": f"{REGISTRY}/{repo}:latest",
                "tests": [str(EXAMPLE), "team"],
            }
        )
    )
    r = harden_cli.run(
        "build",
        str(definition),
        "--key",
        f"file:{tmp_path / 'k.key'}",
        "--allow-noncompliant",
        "--format",
        "json",
        env=env,
    )
    assert r.returncode == 1, r.stderr  # pushed (asked for) but not compliant
    digest = json.loads(r.stdout)["digest"]
    fetched = fetch_envelopes(RegistryClient(REGISTRY), repo, digest)
    trusted = [load_public_key(tmp_path / "k.pub")]
    statements = [dsse.verify(e, trusted).statement for _, e in fetched.envelopes]
    (tr,) = [s for s in statements if s.predicateType == TEST_RESULT]
    pred = tr.test_result()
    assert "team/test_ca.py::test_team_ca_bundle_present" in pred.failedTests
    # node ids are relative to the definition's folder; the example passes on the golden image
    assert any(
        t.endswith("test_golden_example.py::test_login_defs_umask_027") for t in pred.passedTests
    )
    r = harden_cli.run(
        "promote",
        f"{REGISTRY}/{repo}:latest",
        f"{REGISTRY}/{repo}-prod:latest",
        "--key",
        str(tmp_path / "k.pub"),
        env=env,
    )
    assert r.returncode == 1, r.stderr
    assert "not compliant" in (r.stdout + r.stderr)
