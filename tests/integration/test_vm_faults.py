"""VM build faults: SSH dropped in the middle of the remediation; a failing remediation kept
for inspection (--keep-on-error).

The build must fail (exit 4), write no template, and leave no qemu process and no overlay.
One VM boot each (no reboot, no seal): about 30 s under TCG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from vm_fixtures import VmTemplate

pytestmark = [pytest.mark.integration, pytest.mark.vm]
ROOT = Path(__file__).resolve().parents[2]


def qemu_pids() -> set[str]:
    """qemu processes started from this checkout (other checkouts run VMs concurrently)."""
    out = subprocess.run(["pgrep", "-f", "qemu-system-x86_64"], capture_output=True, text=True)
    ours = set()
    for pid in out.stdout.split():
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == ROOT:
                ours.add(pid)
        except OSError:
            continue
    return ours


_tmpdirs: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_tmpdirs() -> Iterator[None]:
    yield
    while _tmpdirs:
        shutil.rmtree(_tmpdirs.pop(), ignore_errors=True)


def _build(
    vm_template: VmTemplate, tmp_path: Path, baseline: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """harden build of a VM definition on the cached base with ``baseline`` (YAML text); the
    result, the templates folder and harden's own temporary folder."""
    bdir = tmp_path / "baselines"
    bdir.mkdir()
    (bdir / "test.yaml").write_text(textwrap.dedent(baseline))
    bid = next(ln.split(":", 1)[1].strip() for ln in baseline.splitlines() if "id:" in ln)
    image = vm_template.image
    definition = tmp_path / "vm.yaml"
    definition.write_text(
        json.dumps(
            {
                "name": "fault-test",
                "target": "vm",
                "vm": {
                    "disk": str(image.disk),
                    "kernel": str(image.kernel),
                    "initrd": str(image.initrd),
                    "ssh_key": str(vm_template.build_key),
                    "append": image.append,
                    "ssh_user": str(vm_template.manifest.get("ssh_user") or "root"),
                },
                "baseline": {"id": bid},
            }
        )
    )
    out_dir = tmp_path / "templates"
    # harden's temporary directories, apart from concurrent runs; in /tmp because the qemu user
    # must reach the sealed-disk reader's files by path (pytest's own folders are private)
    tmpdir = Path(tempfile.mkdtemp(prefix="harden-vm-faults-", dir="/tmp"))
    tmpdir.chmod(0o711)
    _tmpdirs.append(tmpdir)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "build",
            str(definition),
            "--baselines",
            str(bdir),
            "--force",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={
            **os.environ,
            "HARDEN_TEMPLATES": str(out_dir),
            "HARDEN_HOME": str(tmp_path / "home"),
            "TMPDIR": str(tmpdir),
        },
    )
    return r, out_dir, tmpdir


def test_ssh_dropped_mid_remediation_fails_cleanly(vm_template: VmTemplate, tmp_path: Path) -> None:
    before = qemu_pids()
    r, out_dir, tmpdir = _build(
        vm_template,
        tmp_path,
        """\
        id: drop-ssh
        version: 1.0.0
        title: a remediation that kills the SSH connection it runs over
        platforms: [{family: debian}]
        targets: [vm]
        rules:
          - id: custom.kill-sshd
            title: kills every sshd process
            controls: {iso27017: [CLD.9.5.2]}
            command:
              check: test -e /nonexistent-marker
              remediation: pkill -9 sshd; sleep 10
        """,
    )
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "SSH connection dropped" in r.stderr
    assert not out_dir.exists() or not list(out_dir.glob("*.qcow2"))
    assert qemu_pids() <= before, "the build left its qemu process running"
    assert list(tmpdir.iterdir()) == [], "temporary files left behind"


def test_keep_on_error_keeps_the_failed_disk_flattened(
    vm_template: VmTemplate, tmp_path: Path
) -> None:
    before = qemu_pids()
    r, out_dir, tmpdir = _build(
        vm_template,
        tmp_path,
        """\
        id: fails-half-way
        version: 1.0.0
        title: a remediation that changes something, then fails
        platforms: [{family: debian}]
        targets: [vm]
        rules:
          - id: custom.half-way
            title: writes a marker, then fails
            controls: {iso27017: [CLD.9.5.2]}
            command:
              check: test -e /nonexistent-marker
              remediation: echo half-done > /root/marker; echo nope >&2; exit 3
        """,
        "--keep-on-error",
    )
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "custom.half-way" in r.stderr and "nope" in r.stderr
    found = list(out_dir.glob("fault-test.failed-*.qcow2"))
    assert len(found) == 1, r.stderr[-3000:]
    kept = found[0]
    assert f"the failed disk is kept as {kept}" in r.stderr
    assert "boot it (changes not saved): qemu-system-x86_64 " in r.stderr
    assert f"file={kept},format=qcow2" in r.stderr
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(kept)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert info["format"] == "qcow2" and "backing-filename" not in info  # standalone
    assert not list(out_dir.glob("fault-test.qcow2"))  # no template written
    assert qemu_pids() <= before, "the build left its qemu process running"
    assert list(tmpdir.iterdir()) == [], "temporary files left behind"
