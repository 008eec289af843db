"""The Python snippet of docs/architecture.md builds, verifies and promotes a golden image without
click, against the real Docker Engine and the local registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from harden.attest.keys import KeyType, keygen
from harden.oci import RegistryClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "127.0.0.1:5000"
MARKER = "<!-- snippet: no-click -->"
HARDEN = [sys.executable, "-c", "from harden.cli import main; main()"]


def snippet() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, f"no python block after {MARKER} in docs/architecture.md"
    return found.group(1)


def test_the_snippet_is_the_documented_one() -> None:
    code = snippet()
    assert "import click" not in code and "harden.cli" not in code
    compile(code, "docs/architecture.md", "exec")


def test_the_snippet_builds_verifies_and_promotes(
    tmp_path: Path, local_registry: RegistryClient
) -> None:
    run = uuid.uuid4().hex[:10]
    staging = f"{REGISTRY}/harden-test/{run}/snippet:1"
    production = f"{REGISTRY}/harden-test/{run}/snippet-prod:1"
    (tmp_path / "images").mkdir()
    definition = {
        "name": f"itest-snippet-{run}",
        "base": f"{REGISTRY}/library/debian:12",
        "target": "container",
        "baseline": {"id": "debian-container"},
        "destination": staging,
        "promote_to": production,
        "max_age": "30d",
    }
    (tmp_path / "images" / "golden.yaml").write_text(json.dumps(definition))  # JSON is YAML
    keygen(KeyType.ECDSA_P256, tmp_path / "signing", b"snippet-pw")
    script = tmp_path / "snippet.py"
    script.write_text(snippet(), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HARDEN_HOME": str(tmp_path / "home"),
        "HARDEN_KEY_PASSWORD": "snippet-pw",
        # this run's signed revocation list, created once as a setup would (the gate requires it)
        "HARDEN_REVOCATIONS": f"{REGISTRY}/harden-test/{run}/revocations:current",
    }
    init = subprocess.run(
        [*HARDEN, "revocations", "init", REGISTRY, "--key", f"file:{tmp_path / 'signing.key'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    r = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        staged = local_registry.head_manifest(f"harden-test/{run}/snippet", "1")
        promoted = local_registry.head_manifest(f"harden-test/{run}/snippet-prod", "1")
        assert staged is not None and promoted is not None
        assert promoted.digest == staged.digest  # promotion copies by digest
        assert f"promoted {staged.digest} to {production}" in r.stdout
        # the attestations came along, and the audit log has the build, verify and promotion
        referrers = requests.get(
            f"http://{REGISTRY}/v2/harden-test/{run}/snippet-prod/referrers/{staged.digest}",
            timeout=30,
        )
        tag_index = local_registry.head_manifest(
            f"harden-test/{run}/snippet-prod", staged.digest.replace(":", "-")
        )
        assert referrers.ok or tag_index is not None
        audit = subprocess.run(
            [*HARDEN, "audit", "show"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert audit.returncode == 0, audit.stderr
        actions = [line.split()[2] for line in audit.stdout.splitlines()[2:]]
        assert actions == ["build", "verify", "promote", "promote"], audit.stdout
    finally:
        subprocess.run(
            ["docker", "image", "rm", "--force", staging, production],
            capture_output=True,
            timeout=120,
        )
