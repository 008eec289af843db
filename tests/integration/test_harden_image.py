"""The harden image: built from the Dockerfile (the wheel, offline from a wheelhouse), non-root,
hardened, verified and signed by harden itself (images/harden.yaml), then running
`harden verify` from inside it against the local registry."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from needs import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOCK = Path("/var/run/docker.sock")
USER_RULE = "image.non-root-user"


def sh(*cmd: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 1200) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{cmd}: {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, str]]:
    """(local tag, unique registry repository prefix)."""
    try:
        subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        unavailable(f"Docker Engine ({e}); start it with scripts/services.sh")
    uid = secrets.token_hex(4)
    tag = f"cikit-harden-{uid}:test"
    sh("scripts/harden-image.sh", tag)
    yield tag, f"127.0.0.1:5000/cikit-{uid}"
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120, check=False)


def test_runs_as_non_root_and_finds_its_data(image: tuple[str, str]) -> None:
    tag, _ = image
    assert sh("docker", "run", "--rm", "--entrypoint", "id", tag, "-u").strip() == "10001"
    assert "version 0.1.0" in sh("docker", "run", "--rm", tag, "--version")
    assert "debian-container" in sh("docker", "run", "--rm", tag, "baseline", "list")


def test_hardened_by_harden_then_verifies_from_inside(
    image: tuple[str, str], tmp_path: Path
) -> None:
    tag, repo = image
    base = f"{repo}/harden-base:test"
    sh("docker", "tag", tag, base)
    sh("docker", "push", base)
    definition = (ROOT / "images" / "harden.yaml").read_text()
    definition = (
        definition.replace("127.0.0.1:5000/tools/harden-base:0.1.0", base)
        .replace("127.0.0.1:5000/staging/harden:0.1.0", f"{repo}/staging/harden:test")
        .replace("127.0.0.1:5000/prod/harden:0.1.0", f"{repo}/prod/harden:test")
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "harden.yaml").write_text(definition)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARDEN_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "HARDEN_HOME": str(tmp_path / "home"),
        "HARDEN_KEY_PASSWORD": "image-test",
    }
    harden = [sys.executable, "-c", "from harden.cli import main; main()"]
    sh(*harden, "keygen", "--out", str(tmp_path / "k"), cwd=tmp_path, env=env)
    sh(
        *harden,
        "build",
        "images/harden.yaml",
        "--key",
        f"file:{tmp_path / 'k.key'}",
        cwd=tmp_path,
        env=env,
    )
    golden = f"{repo}/staging/harden:test"
    sh(
        *harden,
        "attestation",
        "verify",
        golden,
        "--key",
        str(tmp_path / "k.pub"),
        cwd=tmp_path,
        env=env,
    )
    # the golden harden image verifies an image in the registry from inside a container
    gid = str(SOCK.stat().st_gid)
    out = sh(
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        "--group-add",
        gid,
        "-v",
        f"{SOCK}:{SOCK}",
        golden,
        "-q",
        "verify",
        golden,
        "--baseline",
        "debian-container",
        "-f",
        "json",
        "--exit-code",
        "0",
    )
    report = json.loads(out)
    assert report["image"] == golden
    assert report["summary"]["passed"] > 50
    # without the definition, the baseline's default container_user ("app") is expected, not
    # the image's own "harden" user: that one rule, and only it, fails here
    failed = {r["rule_id"] for r in report["results"] if r["status"] in ("failed", "error")}
    assert failed <= {USER_RULE}, failed
    subprocess.run(
        ["docker", "rmi", "-f", base, golden], capture_output=True, timeout=120, check=False
    )
