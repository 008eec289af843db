"""Freshness end to end on the real engine and registry: status, rebuild --stale, revoke.

One parent golden image built on a TEST base repository (never library/debian:12, which other
tests use) and one child built on the parent's destination. Each scenario starts from "all
fresh", breaks something real (a new base image, a baseline edit, a revocation, time), checks
what `harden status` says, and lets `harden rebuild --stale` (the crontab line of
docs/operations.md, run as written) bring everything back to fresh.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harden_cli
import pytest

from harden.oci import RegistryClient, copy_image, parse_reference
from harden.results import rfc3339

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "freshness-password"
BASELINE = """\
id: freshness-test
version: 1.0.0
title: freshness test baseline
extends: [debian-container]
platforms:
  - {family: debian, versions: ["12", "13"]}
targets: [container]
set_parameters:
  pass_max_days: %d
"""


def crontab_command() -> str:
    """The command of the crontab line in docs/operations.md (after the 5 schedule fields)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"```crontab\n(.*?)```", text, re.S)
    assert block, "docs/operations.md has no ```crontab block"
    for line in block.group(1).splitlines():
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]:
            return line.split(None, 5)[5]
    raise AssertionError("no schedule line in the crontab block")


@dataclass
class World:
    home: Path
    key: Path
    pub: Path
    images: Path
    baselines: Path
    base_repo: str  # test-freshness/<run>/base
    parent: str  # destination refs
    child: str
    prod: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "HARDEN_HOME": str(self.home),
            "HARDEN_KEY_PASSWORD": PASSWORD,
            "HARDEN_BASELINES": str(self.baselines),
            # this run's signed revocation list (the gate requires one)
            "HARDEN_REVOCATIONS": f"{REGISTRY}/{self.base_repo.rsplit('/', 1)[0]}/revocations:current",
            **extra,
        }

    def harden(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return harden_cli.run(*args, env=self.env(**env))

    def status(self, **env: str) -> tuple[int, dict[str, dict[str, Any]], str]:
        r = self.harden(
            "status", str(self.images), "--key", str(self.pub), "--format", "json", **env
        )
        assert r.returncode in (0, 1, 4), r.stderr
        doc = json.loads(r.stdout)
        assert doc["schema_version"] == 1
        return r.returncode, {i["name"]: i for i in doc["images"]}, r.stderr

    def labels(self, **env: str) -> dict[str, str]:
        return {n: i["label"] for n, i in self.status(**env)[1].items()}

    def cron(self) -> subprocess.CompletedProcess[str]:
        """Run the crontab line's command as cron would (sh -c, the crontab's variables)."""
        env = self.env(
            HARDEN_SIGNING_KEY=str(self.key),
            HARDEN_IMAGES=str(self.images),
            PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        )
        return subprocess.run(
            ["sh", "-c", crontab_command()],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
        )

    def set_baseline(self, pass_max_days: int) -> None:
        (self.baselines / "freshness-test.yaml").write_text(BASELINE % pass_max_days)

    def push_base_variant(self) -> str:
        """A new base image (debian:12 plus one file) pushed to the TEST base repository."""
        import docker

        client = docker.from_env()
        tag = uuid.uuid4().hex[:8]
        c = client.containers.run(
            "debian:12",
            ["sh", "-c", f"echo {tag} > /etc/harden-test-variant"],
            network_mode="none",
            detach=True,
        )
        try:
            c.wait(timeout=60)
            image = c.commit(repository=f"{REGISTRY}/{self.base_repo}", tag="12")
        finally:
            c.remove(force=True)
        for line in client.images.push(
            f"{REGISTRY}/{self.base_repo}", tag="12", stream=True, decode=True
        ):
            assert "error" not in line, line
        client.images.remove(image.id, force=True)
        found = RegistryClient(REGISTRY).head_manifest(self.base_repo, "12")
        assert found is not None
        return found.digest


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, local_registry: RegistryClient
) -> Iterator[World]:
    d = tmp_path_factory.mktemp("freshness")
    run = uuid.uuid4().hex[:8]
    prefix = f"{REGISTRY}/test-freshness/{run}"
    w = World(
        home=d / "home",
        key=d / "signing.key",
        pub=d / "signing.pub",
        images=d / "images",
        baselines=d / "baselines",
        base_repo=f"test-freshness/{run}/base",
        parent=f"{prefix}/parent:latest",
        child=f"{prefix}/child:latest",
        prod=f"{prefix}/prod/parent:1",
    )
    r = w.harden("keygen", "--out", str(d / "signing"))
    assert r.returncode == 0, r.stderr
    r = w.harden("revocations", "init", REGISTRY, "--key", f"file:{w.key}")
    assert r.returncode == 0, r.stderr
    w.images.mkdir()
    w.baselines.mkdir()
    w.set_baseline(300)
    # the TEST base starts as a copy of library/debian:12 (same digest, blobs mounted)
    lib = parse_reference(f"{REGISTRY}/library/debian:12")
    digest = local_registry.get_manifest(lib.repository, "12").digest
    copy_image(local_registry, lib.repository, digest, local_registry, w.base_repo, tag="12")
    for name, base, dest, extra in (
        ("parent", f"{REGISTRY}/{w.base_repo}:12", w.parent, {"promote_to": w.prod}),
        ("child", w.parent, w.child, {}),
    ):
        (w.images / f"{name}.yaml").write_text(
            json.dumps(
                {
                    "name": f"fresh-{name}",
                    "base": base,
                    "target": "container",
                    "baseline": {"id": "freshness-test"},
                    "destination": dest,
                    "max_age": "30d",
                    # the tests move HARDEN_NOW weeks ahead, where today's signed Debian index is
                    # past its Valid-Until; a snapshot pin accepts it, so the states under test
                    # (fresh, expiring, stale) are about the image, not the archive's age
                    "archive": {"snapshot": True},
                    **extra,
                }
            )
        )
    yield w


def all_fresh(w: World) -> None:
    code, images, err = w.status()
    assert {n: i["label"] for n, i in images.items()} == {
        "fresh-parent": "fresh",
        "fresh-child": "fresh",
    }, err
    assert code == 0


def test_01_missing_then_rebuilt_parents_first(world: World) -> None:
    code, images, _ = world.status()
    assert code == 1
    assert {n: i["state"] for n, i in images.items()} == {
        "fresh-parent": "missing",
        "fresh-child": "missing",
    }
    plan = world.harden("plan", str(world.images), "--key", str(world.pub))
    assert plan.returncode == 0, plan.stderr
    waves = json.loads(plan.stdout)["waves"]
    assert [[b["name"] for b in wave] for wave in waves] == [["fresh-parent"], ["fresh-child"]]
    r = world.harden("rebuild", str(world.images), "--stale", "--key", f"file:{world.key}")
    assert r.returncode == 0, r.stderr
    assert "2 rebuilt, 0 failed" in r.stderr
    all_fresh(world)
    _, images, _ = world.status()
    child, parent = images["fresh-child"], images["fresh-parent"]
    assert child["base"]["recorded"] == parent["digest"]  # ancestry by digest
    # promote the parent (the gate passes) so the later scenarios have a production copy
    p = world.harden("promote", world.parent, world.prod, "--key", str(world.pub))
    assert p.returncode == 0, p.stderr


def test_02_new_base_outdates_parent_and_cron_rebuilds_both(world: World) -> None:
    all_fresh(world)
    before = world.status()[1]
    new_base = world.push_base_variant()
    code, images, _ = world.status()
    assert code == 1
    assert images["fresh-parent"]["label"] == "outdated (base)"
    assert images["fresh-parent"]["base"]["current"] == new_base
    assert images["fresh-child"]["label"] == "fresh"  # its base (the parent) has not moved yet
    plan = world.harden(
        "plan", str(world.images), "--key", str(world.pub), "--format", "github-matrix"
    )
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == "waves=2"
    r = world.cron()  # the crontab line of docs/operations.md, exactly
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fresh-child" in r.stdout and "parent rebuilt (fresh-parent)" in r.stdout
    all_fresh(world)
    after = world.status()[1]
    assert after["fresh-parent"]["digest"] != before["fresh-parent"]["digest"]
    assert after["fresh-child"]["digest"] != before["fresh-child"]["digest"]
    assert after["fresh-parent"]["base"]["recorded"] == new_base
    # the audit log has each rebuild with its reason
    audit = world.harden("audit", "show", "--format", "json")
    assert audit.returncode == 0, audit.stderr
    reasons = [
        e["details"].get("reason")
        for e in json.loads(audit.stdout)["entries"]
        if e["action"] == "rebuild" and e["outcome"] == "rebuilt"
    ]
    assert "outdated (base)" in reasons and "parent rebuilt (fresh-parent)" in reasons


def test_03_baseline_edit_outdates_both(world: World) -> None:
    all_fresh(world)
    world.set_baseline(200)
    code, images, _ = world.status()
    assert code == 1
    assert {n: i["label"] for n, i in images.items()} == {
        "fresh-parent": "outdated (baseline)",
        "fresh-child": "outdated (baseline)",
    }
    r = world.harden(
        "rebuild", str(world.images), "--stale", "--jobs", "2", "--key", f"file:{world.key}"
    )
    assert r.returncode == 0, r.stderr
    all_fresh(world)


def test_04_revoked_parent_cascades_to_child(world: World, tmp_path: Path) -> None:
    all_fresh(world)
    # production serves the parent that is about to be revoked
    p = world.harden("promote", world.parent, world.prod, "--key", str(world.pub))
    assert p.returncode == 0, p.stderr
    r = world.harden(
        "revoke",
        world.parent,
        str(world.images),
        "--key",
        f"file:{world.key}",
        "--reason",
        "CVE-2026-1234 in the base",
        "--cascade",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    revoked = json.loads(r.stdout)["revoked"]
    assert len(revoked) == 2 and revoked[1]["cascade_from"] == revoked[0]["digest"]
    code, images, _ = world.status()
    assert code == 1
    assert {n: i["state"] for n, i in images.items()} == {
        "fresh-parent": "serving-revoked",  # revoked, and production serves it
        "fresh-child": "revoked",
    }
    assert images["fresh-parent"]["needs_rebuild"] is True
    assert "cascaded from " + revoked[0]["digest"] in images["fresh-child"]["reasons"][0]
    # the gate denies the revoked child
    p = world.harden(
        "promote", world.child, world.child.replace(":latest", ":prod"), "--key", str(world.pub)
    )
    assert p.returncode == 1, p.stderr
    assert "NotRevoked" in p.stdout and "CVE-2026-1234" in p.stdout
    r = world.harden("rebuild", str(world.images), "--stale", "--key", f"file:{world.key}")
    assert r.returncode == 0, r.stderr
    assert "revoked" in r.stdout
    # staging is fresh again, but production still serves the revoked digest: not green
    code, images, _ = world.status()
    assert code == 1
    assert images["fresh-parent"]["state"] == "serving-revoked"
    assert images["fresh-child"]["state"] == "fresh"
    reason = images["fresh-parent"]["reasons"][0]
    assert f"production {world.prod} still serves {revoked[0]['digest']}" in reason
    assert "CVE-2026-1234" in reason
    # ... and the evidence bundle says so first
    r = world.harden(
        "evidence", str(world.images), "--key", str(world.pub), "-o", str(tmp_path / "ev")
    )
    assert r.returncode == 1, r.stdout + r.stderr
    first = next(line for line in r.stderr.splitlines() if line.startswith("PROBLEM: "))
    assert f"production {world.prod} serves {revoked[0]['digest']}, revoked" in first
    doc = json.loads((tmp_path / "ev" / "evidence.json").read_text())
    assert doc["problems"][0] == doc["serving_revoked"][0]
    # promoting the rebuilt image makes it green
    p = world.harden("promote", world.parent, world.prod, "--key", str(world.pub))
    assert p.returncode == 0, p.stderr
    all_fresh(world)


def test_05_thirty_one_days_later_everything_is_stale(world: World) -> None:
    all_fresh(world)
    later = rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(days=31))
    code, images, _ = world.status(HARDEN_NOW=later)
    assert code == 1
    assert {n: i["label"] for n, i in images.items()} == {
        "fresh-parent": "stale",
        "fresh-child": "stale",
    }
    assert any("older than max_age 30d" in r for r in images["fresh-parent"]["reasons"])
    soon = rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(days=25))
    code, images, err = world.status(HARDEN_NOW=soon)
    assert code == 0, (err, {n: i["reasons"] for n, i in images.items()})
    assert {i["state"] for i in images.values()} == {"expiring"}


def test_06_cache_deleted_or_corrupt_is_rebuilt_from_the_registry(world: World) -> None:
    all_fresh(world)
    cache = world.home / "inventory.db"
    assert cache.exists()
    cache.write_bytes(b"this is not sqlite" * 100)
    code, images, err = world.status()
    assert code == 0 and "rebuilding it from the registry" in err
    assert {i["state"] for i in images.values()} == {"fresh"}
    cache.unlink()
    all_fresh(world)


def test_07_unreachable_registry_is_unknown_exit_4(world: World, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    d = tmp_path / "images"
    d.mkdir()
    (d / "x.yaml").write_text(
        json.dumps(
            {
                "name": "nowhere",
                "base": f"127.0.0.1:{port}/library/debian:12",
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": f"127.0.0.1:{port}/staging/x:latest",
            }
        )
    )
    r = world.harden("status", str(d), "--key", str(world.pub), "--format", "json")
    assert r.returncode == 4, r.stderr
    (img,) = json.loads(r.stdout)["images"]
    assert img["state"] == "unknown" and "cannot connect" in img["reasons"][0]


def test_08_killed_rebuild_keeps_production_and_the_next_run_finishes(world: World) -> None:
    all_fresh(world)
    prod_ref = parse_reference(world.prod)
    client = RegistryClient(REGISTRY)
    prod_before = client.head_manifest(prod_ref.repository, "1")
    assert prod_before is not None
    world.push_base_variant()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "rebuild",
            str(world.images),
            "--stale",
            "--key",
            f"file:{world.key}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=world.env(),
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # kill it in the middle of the parent's remediation
        if "[fresh-parent] remediation" in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    prod_after = client.head_manifest(prod_ref.repository, "1")
    assert prod_after is not None and prod_after.digest == prod_before.digest
    assert world.labels()["fresh-parent"] == "outdated (base)"
    r = world.harden(
        "rebuild", str(world.images), "--stale", "--key", f"file:{world.key}", "--lock-timeout", "5"
    )
    assert r.returncode == 0, r.stderr  # the killed run's lock died with it
    all_fresh(world)
    assert client.head_manifest(prod_ref.repository, "1").digest == prod_before.digest  # type: ignore[union-attr]
