"""`harden build` of a VM template: the real base template, qemu (TCG here) and SSH.

Three VM starts in all: the build VM (rebooted once), the clone of the sealed template, and
`harden verify` of the unhardened base.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vm_fixtures import VmTemplate, vm_template  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "images" / "debian12-vm.yaml"


def harden(
    *args: str, env: dict[str, str], timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from harden.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_build_seals_a_compliant_standalone_template(
    vm_template: VmTemplate,  # noqa: F811
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "templates"
    env = {"HARDEN_TEMPLATES": str(out_dir)}
    report = tmp_path / "build.json"
    proc = harden("build", str(DEFINITION), "--format", "json", "-o", str(report), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(report.read_text())
    assert result["compliant"] is True
    assert result["written"] is True
    assert result["summary"]["failed"] == 0 and result["summary"]["error"] == 0
    # the hygiene rules were judged on the sealed disk (on the running clone they would fail)
    assert {"template.ssh-host-keys-removed", "template.machine-id-empty"} <= set(
        result["sealed_rules"]
    )
    sys.stderr.write(f"\nVM build timings: {result['timings']}\n")

    sealed = out_dir / "debian12-vm.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output", "json", str(sealed)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info and "full-backing-filename" not in info
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["base"] == str(sealed)
    assert manifest["template_sha256"] == result["digest"]
    assert Path(manifest["kernel"]).is_file() and Path(manifest["initrd"]).is_file()
    assert not list(out_dir.glob(".*"))  # no staging or temp files left behind

    # the unhardened base is not compliant against the same baseline
    base = vm_template.image.disk
    proc = harden("verify", str(base), "--baseline", "debian-vm", "--format", "json", env=env)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["compliant"] is False
