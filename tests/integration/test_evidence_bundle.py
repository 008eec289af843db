"""`harden evidence` end to end: a signed golden image, one promotion, one denial, the bundle.

The golden image is built with `harden build --key` into a fresh repository of the local
registry, promoted once (allowed) and once with an untrusted key (denied); the audit log lives
in a HARDEN_HOME of its own. The bundle is then checked as JSON, as HTML text and in headless
Debian chromium (screenshot to tests/artifacts/evidence.png, the summary in the dumped DOM).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import harden_cli
import pytest

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "ev-password"


@dataclass
class World:
    home: Path
    images: Path
    pub: Path
    other_pub: Path
    keyid: str
    dest: str
    prod: str
    digest: str

    def harden(
        self, *args: str, timeout: float = 600, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "HARDEN_HOME": str(self.home),
            "HARDEN_KEY_PASSWORD": PASSWORD,
            "HARDEN_REVOCATIONS": self.dest.rsplit("/staging/", 1)[0] + "/revocations:current",
        }
        return harden_cli.run(*args, env={**env, **(extra or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, local_registry: object) -> World:
    d = tmp_path_factory.mktemp("evidence")
    run = uuid.uuid4().hex[:8]
    dest = f"{REGISTRY}/harden-test/{run}/staging/golden:latest"
    w = World(
        d / "home",
        d / "images",
        d / "trusted.pub",
        d / "other.pub",
        "",
        dest,
        f"{REGISTRY}/harden-test/{run}/prod/golden:1",
        "",
    )
    for prefix in ("trusted", "other"):
        r = w.harden("keygen", "--out", str(d / prefix))
        assert r.returncode == 0, r.stderr
    r = w.harden("revocations", "init", REGISTRY, "--key", f"file:{d / 'trusted.key'}")
    assert r.returncode == 0, r.stderr
    w.images.mkdir()
    (w.images / "golden.yaml").write_text(
        json.dumps(
            {
                "name": "itest-evidence-golden",
                "base": BASE,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": dest,
                "max_age": "30d",
            }
        )
    )
    r = w.harden(
        "build",
        str(w.images / "golden.yaml"),
        "--key",
        f"file:{d / 'trusted.key'}",
        "--format",
        "json",
        "--force",
    )  # fmt: skip  (--force: a new image, not one reused from an earlier run's cache)
    assert r.returncode == 0, r.stderr
    # provenance, test-result, compliance, the SBOM (and a VEX when the build applied updates)
    assert re.search(r"attached [45] signed attestation\(s\)", r.stderr), r.stderr
    w.digest = json.loads(r.stdout)["digest"]
    r = w.harden("promote", dest, w.prod, "--key", str(w.pub))
    assert r.returncode == 0, r.stderr
    r = w.harden("promote", dest, w.prod, "--key", str(w.other_pub))
    assert r.returncode == 1 and "DENIED" in r.stderr, r.stderr
    from harden.attest.keys import load_public_key

    w.keyid = load_public_key(w.pub).keyid
    return w


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "Debian chromium is not installed (apt-get install -y chromium)"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_evidence_bundle_for_signed_golden_image(world: World, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    r = world.harden("evidence", str(world.images), "--key", str(world.pub), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        ".harden-evidence",
        "evidence.json",
        "index.html",
    ]
    verified = f"signature verified with key {world.keyid}"
    assert verified in r.stderr

    doc = json.loads((out / "evidence.json").read_text())
    assert doc["ok"] is True and doc["problems"] == []
    [summary] = doc["summary"]
    assert summary["control"] == "iso27017:CLD.9.5.2"
    [row] = summary["images"]
    assert row["image"] == "itest-evidence-golden" and row["digest"] == world.digest
    assert row["signed_result"] == "compliant" and row["signature"] == verified
    assert row["last_rebuild"] is not None
    [img] = doc["images"]
    kinds = {a["kind"] for a in img["attestations"]}
    required = {"compliance", "provenance", "test-result", "https://cyclonedx.org/bom"}
    assert required <= kinds <= required | {"https://openvex.dev/ns/v0.2.0"}, kinds
    assert all(a["statement"] == verified for a in img["attestations"])
    last = img["last_verification"]
    assert last["compliant"] is True and last["keyid"] == world.keyid
    assert last["attestation"] in {a["referrer"] for a in img["attestations"]}
    # history: the build (with its details), the promotion and the denial
    [build] = doc["history"]["rebuilds"]
    assert build["action"] == "build" and build["digest"] == world.digest
    assert build["outcome"] == "compliant" and "baseline debian-container" in build["reason"]
    assert {p["outcome"] for p in doc["history"]["promotions"]} == {"allowed", "copied"}
    [denial] = doc["history"]["denials"]
    assert denial["digest"] == world.digest and "SignatureValid" in denial["reason"]
    assert doc["audit_log"]["intact"] is True
    cld = next(c for c in doc["controls"] if c["id"] == "CLD.9.5.2")
    assert "itest-evidence-golden" in cld["images"] and len(cld["rules"]) > 10

    html = (out / "index.html").read_text()
    top = html[html.index('id="summary"') : html.index('id="images"')]
    assert "iso27017:CLD.9.5.2" in top and "itest-evidence-golden" in top
    assert verified in top and row["last_rebuild"] in top
    assert "Builds and rebuilds" in html and "audit log intact" in html

    # in a real browser: a screenshot for people, the summary in the DOM
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "evidence.png"
    shot.unlink(missing_ok=True)
    page = (out / "index.html").as_uri()
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", page)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    dom = _chromium(tmp_path, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="summary"' in dom.stdout and "iso27017:CLD.9.5.2" in dom.stdout
    assert verified in dom.stdout and "itest-evidence-golden" in dom.stdout


def test_untrusted_key_and_tampered_log_exit_1(world: World, tmp_path: Path) -> None:
    # the attestations do not verify with a key that did not sign them
    out = tmp_path / "other"
    r = world.harden("evidence", str(world.images), "--key", str(world.other_pub), "-o", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "evidence.json").read_text())
    assert doc["ok"] is False
    assert all(
        a["statement"] == "NOT verified: no signature by a trusted key"
        for a in doc["images"][0]["attestations"]
    )

    # tamper with one entry of a copy of the log: exit 1, the bundle is written and says so
    home = tmp_path / "home"
    shutil.copytree(world.home, home)
    conn = sqlite3.connect(home / "audit.db", isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("UPDATE entries SET outcome = 'allowed' WHERE action = 'deny'")
    conn.close()
    tampered = World(**{**world.__dict__, "home": home})
    out = tmp_path / "tampered"
    r = tampered.harden("evidence", str(world.images), "--key", str(world.pub), "-o", str(out))
    assert r.returncode == 1, r.stderr
    assert "audit log is TAMPERED" in r.stderr
    doc = json.loads((out / "evidence.json").read_text())
    assert doc["audit_log"]["intact"] is False
    assert any("hash mismatch" in p for p in doc["audit_log"]["problems"])
    html = (out / "index.html").read_text()
    assert "audit log TAMPERED" in html


def test_bad_input_and_unreachable_registry(world: World, tmp_path: Path) -> None:
    r = world.harden("evidence", str(tmp_path / "nothing"), "-o", str(tmp_path / "o"))
    assert r.returncode == 3 and "not a directory of image definitions" in r.stderr
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.yaml").write_text(
        json.dumps(
            {
                "name": "x",
                "base": BASE,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": "127.0.0.1:9/nowhere/x:latest",  # nothing listens on port 9
            }
        )
    )
    r = world.harden("evidence", str(images), "-o", str(tmp_path / "o"))
    assert r.returncode == 4, r.stderr
    assert not (tmp_path / "o").exists()


def test_a_missing_audit_log_with_existing_images_is_a_problem_listed_first(
    world: World, tmp_path: Path
) -> None:
    """An ephemeral runner lost the log: the bundle must not say "intact (0 entries)"."""
    out = tmp_path / "bundle"
    r = world.harden(
        "evidence",
        str(world.images),
        "--key",
        str(world.pub),
        "-o",
        str(out),
        extra={"HARDEN_HOME": str(tmp_path / "fresh-runner")},
    )
    assert r.returncode == 1, r.stdout + r.stderr
    first = next(line for line in r.stderr.splitlines() if line.startswith("PROBLEM: "))
    assert "does not exist, but 1 golden image(s) exist" in first, r.stderr
    doc = json.loads((out / "evidence.json").read_text())
    assert doc["audit_log"]["gaps"] and doc["ok"] is False
    assert doc["problems"][0] == doc["audit_log"]["gaps"][0]
    html = (out / "index.html").read_text()
    assert "audit log MISSING OR INCOMPLETE" in html and "audit log intact" not in html


def test_evidence_output_over_foreign_files_is_refused_and_they_stay(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    (out / "evidence.json").write_text('{"mine": true}')
    (out / "notes.md").write_text("precious")
    r = world.harden("evidence", str(world.images), "--key", str(world.pub), "-o", str(out))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "harden did not write" in r.stderr and "Traceback" not in r.stderr
    assert (out / "notes.md").read_text() == "precious"
    assert (out / "evidence.json").read_text() == '{"mine": true}'
