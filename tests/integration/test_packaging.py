"""The distribution as a user gets it: build the sdist and wheel, install the wheel in a fresh venv
outside the checkout, and run the CLI from another directory (shipped baselines found in the wheel)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DIST_NAME = "harden-golden"


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cikit-dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("cikit-venv") / "venv"
    run([sys.executable, "-m", "venv", str(env_dir)], cwd=dist)
    wheel = next(dist.glob("*.whl"))
    run([str(env_dir / "bin" / "pip"), "install", "-q", str(wheel)], cwd=dist)
    return env_dir


def test_sdist_carries_license_and_no_bench_or_ci(dist: Path) -> None:
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tops = {name.split("/")[1] for name in tar.getnames() if name.count("/") >= 1}
    assert "LICENSE" in tops
    assert "bench" not in tops
    assert ".ci" not in tops
    assert {"harden", "baselines", "templates", "tests", "builder", "verifiers"} <= tops
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    # the repository's folders, as real files (no symlink in the sdist, none doubled)
    assert members["builder/qemu.py"].isfile()
    assert members["verifiers/static_verify.py"].isfile()
    assert not any(m.issym() for m in members.values())
    assert not any(n.startswith(("harden/builder/", "harden/verifiers/")) for n in members)


def test_wheel_metadata_and_shipped_data(dist: Path) -> None:
    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta_name).decode()
    assert f"Name: {DIST_NAME}" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "harden/_data/baselines/debian-container.yaml" in names
    assert "harden/_data/templates" in {n.rsplit("/", 2)[0] for n in names if "templates" in n}
    assert not any(n.startswith(("bench/", "tests/")) for n in names)
    # exactly one top-level import package: builder/ and verifiers/ ship as harden.builder/.verifiers
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"harden"}
    assert "harden/builder/qemu.py" in names
    assert "harden/verifiers/behaviour/container/test_container_behaviour.py" in names


def test_installed_cli_runs_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    harden = str(venv / "bin" / "harden")
    assert "Usage: harden" in run([harden, "--help"], cwd=tmp_path).stdout
    listed = run([harden, "baseline", "list"], cwd=tmp_path).stdout
    assert "debian-container" in listed
    assert "debian-vm" in listed
    shown = run([harden, "baseline", "show", "debian-container", "--resolved"], cwd=tmp_path)
    assert "debian-common" in shown.stdout or "rules" in shown.stdout
    # the code really comes from the venv, not from the checkout
    where = run(
        [str(venv / "bin" / "python"), "-c", "import harden; print(harden.__file__)"], cwd=tmp_path
    ).stdout
    assert str(venv) in where
    assert str(ROOT) not in where
    python = str(venv / "bin" / "python")
    run([python, "-c", "import harden.builder.qemu, harden.verifiers.static_verify"], cwd=tmp_path)
    for name in ("builder", "verifiers"):  # no top-level package of another project's name
        gone = subprocess.run(
            [python, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, check=False
        )
        assert gone.returncode != 0, name
    info = run([str(venv / "bin" / "pip"), "show", "-f", DIST_NAME], cwd=tmp_path).stdout
    files = [ln.strip() for ln in info.split("Files:", 1)[1].splitlines() if ln.strip()]
    packages = {f.split("/")[0] for f in files if not f.startswith(("..", "harden_golden-"))}
    assert packages == {"harden"}
