"""The default container definition's profile: what a container can meet is checked, the rest is
listed as not applicable with the reason, and the image still runs as its non-root user."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker
import docker_run
import harden_cli
import pytest

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
ROOT = Path(__file__).resolve().parents[2]


def test_anssi_high_container_profile_builds_and_explains_what_the_host_enforces(
    tmp_path: Path,
) -> None:
    doc = harden_cli.demo_definition()
    assert doc["baseline"]["id"] == "debian-container-anssi-bp28-high"
    name = f"itest-anssi-{uuid.uuid4().hex[:8]}"
    doc.update(name=name, destination=f"{REGISTRY}/test/{name}:latest")
    doc.pop("promote_to", None)
    d = tmp_path / "def.yaml"
    d.write_text(json.dumps(doc))
    r = harden_cli.run("build", str(d), "--force", "--format", "json")
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["compliant"] and built["summary"]["failed"] == 0
    ref = f"{built['image']}@{built['digest']}"
    r = harden_cli.run("verify", ref, "--baseline", doc["baseline"]["id"], "--format", "json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    na = [x for x in results if x["status"] == "not_applicable"]
    checked = [x for x in results if x["status"] == "passed"]
    assert len(checked) >= 79 and len(na) >= 100
    # every rule the image does not carry says why: the host enforces it
    assert all("not a container;" in x["reason"] for x in na), na[0]
    by_id = {x["rule_id"]: x for x in results}
    assert "host's kernel" in by_id["sysctl.kernel-kptr-restrict"]["reason"]
    assert by_id["login.umask-profile"]["status"] == "passed"
    assert "umask 077" in by_id["login.umask-profile"]["evidence"][0]
    out = docker_run.output(docker.from_env(), built["image_id"], ["sh", "-lc", "id -un; umask"])
    assert out.split() == ["app", "0077"]
