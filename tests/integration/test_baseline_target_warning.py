"""A baseline for VMs on a container image is said, not left as a silent pile of n/a results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from needs import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _verify(baseline: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARDEN_")}
    env |= {"PYTHONPATH": str(ROOT), "HARDEN_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "verify",
            "docker-image://debian:12",  # the local engine's image, said so
            "--baseline",
            baseline,
            "-f",
            "json",
            "-o",
            str(tmp_path / f"{baseline}.json"),
            "--exit-code",
            "0",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_vm_baseline_on_a_container_warns(tmp_path: Path) -> None:
    if subprocess.run(
        ["docker", "image", "inspect", "debian:12"], capture_output=True, check=False
    ).returncode:
        unavailable("base image debian:12 (scripts/services.sh builds it)")
    vm = _verify("debian-vm", tmp_path)
    assert vm.returncode == 0, vm.stderr
    assert "warning: baseline debian-vm targets vm, not container" in vm.stderr
    container = _verify("debian-container", tmp_path)
    assert container.returncode == 0, container.stderr
    assert "warning:" not in container.stderr
