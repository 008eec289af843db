"""The OpenSCAP second opinion against the real scanner, engine and registry.

One golden image is built per session from images/debian12.yaml (destination renamed to a
repository of its own) with ``harden build --scan --key``; the attestation, the promotion gate
and the agreement test all use it. The scanner is OpenSCAP 1.3.7 with the SSG Debian content
installed by scripts/openscap.sh.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harden_cli
import jsonschema
import pytest
import yaml
from needs import unavailable

from harden.attest import dsse
from harden.attest.keys import load_public_key, load_signer
from harden.attest.predicates import HARDEN_OPENSCAP_SCAN
from harden.attest.statements import serialize
from harden.attest.store import attach, fetch_envelopes
from harden.errors import TargetError
from harden.oci import RegistryClient, copy_image, list_referrers
from harden.scan.agreement import compare, mapping_of, parse_known

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "scan-it-password"
SSG_DIR = Path(os.environ.get("HARDEN_SSG_DIR") or "/usr/share/harden/ssg")


def _need_scanner() -> None:
    if shutil.which("oscap-chroot") is None or not (SSG_DIR / "ssg-debian12-ds.xml").is_file():
        unavailable("OpenSCAP or the SSG content is missing; run sudo scripts/openscap.sh")


@dataclass
class Session:
    home: Path
    key: Path
    pub: Path
    other_key: Path
    run: str

    def env(self) -> dict[str, str]:
        return {
            "HARDEN_HOME": str(self.home),
            "HARDEN_KEY_PASSWORD": PASSWORD,
            # this session's signed revocation list (the gate requires one)
            "HARDEN_REVOCATIONS": f"{REGISTRY}/{self.repo('revocations')}:current",
        }

    def harden(self, *args: str) -> subprocess.CompletedProcess[str]:
        return harden_cli.run(*args, env=self.env(), timeout=900)

    def repo(self, name: str) -> str:
        return f"harden-test/scan-{self.run}/{name}"


@pytest.fixture(scope="session")
def scan_sess(tmp_path_factory: pytest.TempPathFactory, local_registry: RegistryClient) -> Session:
    _need_scanner()
    d = tmp_path_factory.mktemp("scan")
    s = Session(d / "home", d / "t.key", d / "t.pub", d / "o.key", uuid.uuid4().hex[:8])
    for prefix in ("t", "o"):
        r = s.harden("keygen", "--out", str(d / prefix))
        assert r.returncode == 0, r.stderr
    r = s.harden("revocations", "init", REGISTRY, "--key", f"file:{s.key}")
    assert r.returncode == 0, r.stderr
    return s


@dataclass(frozen=True)
class Golden:
    ref: str
    repo: str
    digest: str
    definition: Path
    build: dict[str, Any]
    stderr: str


@pytest.fixture(scope="session")
def golden(scan_sess: Session, tmp_path_factory: pytest.TempPathFactory) -> Golden:
    """The demo's golden image (images/debian12.yaml), built with --scan --key."""
    doc = harden_cli.demo_definition()
    repo = scan_sess.repo("staging/debian12-hardened")
    doc["destination"] = f"{REGISTRY}/{repo}:latest"
    doc.pop("promote_to", None)
    definition = tmp_path_factory.mktemp("def") / "debian12.yaml"
    definition.write_text(yaml.safe_dump(doc))
    r = scan_sess.harden(
        "build", str(definition), "--key", f"file:{scan_sess.key}", "--scan", "--format", "json"
    )
    assert r.returncode == 0, r.stderr
    build = json.loads(r.stdout)
    return Golden(f"{REGISTRY}/{repo}:latest", repo, build["digest"], definition, build, r.stderr)


def _scan_statements(repo: str, digest: str, pub: Path) -> list[dict[str, Any]]:
    fetched = fetch_envelopes(RegistryClient(REGISTRY), repo, digest)
    out = []
    for _, env in fetched.envelopes:
        v = dsse.verify(env, [load_public_key(pub)])
        if v.statement.predicateType == HARDEN_OPENSCAP_SCAN:
            out.append(json.loads(v.payload))
    return out


# ---------------------------------------------------------------- build --scan


def test_build_scan_attaches_a_signed_scan(scan_sess: Session, golden: Golden) -> None:
    scan = golden.build["scan"]
    assert scan["profile"] == "xccdf_org.ssgproject.content_profile_anssi_bp28_enhanced"
    assert scan["content"] == "ssg-debian12-ds.xml" and scan["scanner"] == "OpenSCAP 1.3.7"
    assert "attached the signed OpenSCAP scan" in golden.stderr
    statements = _scan_statements(golden.repo, golden.digest, scan_sess.pub)
    assert len(statements) == 1
    st = statements[0]
    assert st["subject"][0]["digest"]["sha256"] == golden.digest.removeprefix("sha256:")
    p = st["predicate"]
    assert p["score"] == scan["score"] and p["arfDigest"] == scan["arf_digest"]
    assert p["counts"] == scan["counts"] and p["contentVersion"] == scan["content_version"]
    judged = {r["id"]: r["result"] for r in p["rules"]}
    assert judged["package_telnet_removed"] == "pass"
    assert sum(1 for v in judged.values() if v == "fail") == p["counts"]["fail"]


def test_evidence_bundle_shows_the_signed_scan(
    scan_sess: Session, golden: Golden, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(golden.definition, images / "debian12.yaml")
    out = tmp_path / "bundle"
    r = scan_sess.harden("evidence", str(images), "--key", str(scan_sess.pub), "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    bundle = json.loads((out / "evidence.json").read_text())
    (image,) = bundle["images"]
    scan = image["openscap_scan"]
    assert scan["score"] == golden.build["scan"]["score"]
    assert scan["arf_digest"] == golden.build["scan"]["arf_digest"]
    assert "openscap-scan" in {a["kind"] for a in image["attestations"]}
    assert "OpenSCAP second opinion" in (out / "index.html").read_text()


# ---------------------------------------------------------------- promote --min-scan-score


def _promote(sess: Session, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    dst = f"{REGISTRY}/{sess.repo('prod/' + uuid.uuid4().hex[:6])}:latest"
    return sess.harden("promote", ref, dst, "--key", str(sess.pub), *extra)


def test_min_scan_score_allows_at_or_below_the_score(scan_sess: Session, golden: Golden) -> None:
    score = golden.build["scan"]["score"]
    r = _promote(scan_sess, golden.ref, "--min-scan-score", str(math.floor(score)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "promoted" in r.stderr


def test_min_scan_score_denies_above_the_score(scan_sess: Session, golden: Golden) -> None:
    score = golden.build["scan"]["score"]
    assert score < 100
    r = _promote(scan_sess, golden.ref, "--min-scan-score", f"{score + 0.1:.1f}", "--dry-run")
    assert r.returncode == 1
    assert f"score {score}" in r.stdout and "below the minimum" in r.stdout


@pytest.fixture
def without_scan(scan_sess: Session, golden: Golden) -> Iterator[tuple[str, str, Any]]:
    """The golden digest in a new repository with every attestation except the scan."""
    client = RegistryClient(REGISTRY)
    repo = scan_sess.repo(f"noscan-{uuid.uuid4().hex[:6]}")
    subject = copy_image(
        client, golden.repo, golden.digest, client, repo, tag="cand", with_referrers=False
    )
    assert list_referrers(client, repo, golden.digest) == []
    fetched = fetch_envelopes(client, golden.repo, golden.digest)
    trusted = [load_public_key(scan_sess.pub)]
    for _, env in fetched.envelopes:
        kind = dsse.verify(env, trusted).statement.predicateType
        if kind != HARDEN_OPENSCAP_SCAN:
            attach(client, repo, subject, env, kind, dt.datetime.now(dt.UTC))
    yield f"{REGISTRY}/{repo}:cand", repo, subject


def test_no_scan_attestation_is_a_denial(scan_sess: Session, without_scan: Any) -> None:
    ref, _, _ = without_scan
    assert _promote(scan_sess, ref, "--dry-run").returncode == 0  # the rest of the gate passes
    r = _promote(scan_sess, ref, "--min-scan-score", "0", "--dry-run")
    assert r.returncode == 1
    assert "no valid OpenSCAP scan attestation" in r.stdout


def test_forged_scan_attestations_are_denied(
    scan_sess: Session, golden: Golden, without_scan: Any
) -> None:
    ref, repo, subject = without_scan
    client = RegistryClient(REGISTRY)
    good = _scan_statements(golden.repo, golden.digest, scan_sess.pub)[0]
    # 1. a perfect score signed by a key the gate does not trust
    perfect = json.loads(json.dumps(good))
    perfect["predicate"]["counts"] = dict(perfect["predicate"]["counts"], fail=0)
    perfect["predicate"]["score"] = 100.0
    other = load_signer(f"file:{scan_sess.other_key}", PASSWORD.encode())
    attach(
        client,
        repo,
        subject,
        dsse.sign(serialize(perfect), other),
        HARDEN_OPENSCAP_SCAN,
        dt.datetime.now(dt.UTC),
    )
    r = _promote(scan_sess, ref, "--min-scan-score", "1", "--dry-run")
    assert r.returncode == 1 and "no valid OpenSCAP scan attestation" in r.stdout
    # 2. signed by the trusted key, but the score is not what its own counts give
    inflated = json.loads(json.dumps(good))
    inflated["predicate"]["score"] = 100.0
    inflated["predicate"]["scannedAt"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    trusted = load_signer(f"file:{scan_sess.key}", PASSWORD.encode())
    attach(
        client,
        repo,
        subject,
        dsse.sign(serialize(inflated), trusted),
        HARDEN_OPENSCAP_SCAN,
        dt.datetime.now(dt.UTC),
    )
    r = _promote(scan_sess, ref, "--min-scan-score", "1", "--dry-run")
    assert r.returncode == 1
    assert "does not match the counts" in r.stdout


# ---------------------------------------------------------------- verify --scan


def test_verify_scan_json_and_html(scan_sess: Session, tmp_path: Path) -> None:
    r = scan_sess.harden("verify", BASE, "--scan=anssi_bp28_minimal", "--format", "json")
    assert r.returncode == 1, r.stderr  # the base is not compliant; the scan does not change it
    doc = json.loads(r.stdout)
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    scan = doc["scan"]
    assert scan["profile"].endswith("anssi_bp28_minimal")
    c = scan["counts"]
    assert scan["score"] == round(100 * c["pass"] / (c["pass"] + c["fail"] + c["error"]), 1)
    # the dpkginfo probe works: a package rule that needs the package database is judged
    assert "package_pam_pwquality_installed" in scan["failed_rules"]
    assert "OpenSCAP anssi_bp28_minimal: score" in r.stderr
    html = tmp_path / "r.html"
    r = scan_sess.harden(
        "verify", BASE, "--scan=anssi_bp28_minimal", "--format", "html", "-o", str(html)
    )
    assert r.returncode == 1
    text = html.read_text()
    assert 'id="openscap"' in text and f"<b>{scan['score']}</b>" in text


def test_verify_scan_refuses_targets_it_cannot_read(scan_sess: Session) -> None:
    r = scan_sess.harden("verify", "ssh://root@127.0.0.1:1", "--scan")
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = scan_sess.harden("verify", BASE, "--scan=../../etc/passwd")
    assert r.returncode == 2 and "not an XCCDF profile" in r.stderr


# ---------------------------------------------------------------- containment


@pytest.fixture(scope="session")
def base_root(tmp_path_factory: pytest.TempPathFactory, scan_sess: Session) -> Path:
    from harden.builder.docker_engine import Engine, exported_filesystem
    from harden.scan.rootfs import unpack_export

    root = tmp_path_factory.mktemp("base") / "root"
    root.mkdir(mode=0o700)
    with exported_filesystem(Engine.connect(), BASE) as stream:
        unpack_export(stream, root)
    return root


def test_scanning_never_runs_the_images_programs(base_root: Path, tmp_path: Path) -> None:
    """libapt would run the image's /usr/bin/dpkg in a chroot; harden's apt.conf stops that."""
    from harden.builder.openscap import scan_root

    dpkg = base_root / "usr/bin/dpkg"
    original = dpkg.read_bytes()
    marker = base_root / "PWNED"
    try:
        dpkg.unlink()
        dpkg.write_text("#!/bin/sh\necho pwned > /PWNED\nexit 0\n")
        dpkg.chmod(0o755)
        result = scan_root(base_root, "anssi_bp28_minimal", tmp_path)
    finally:
        dpkg.unlink()
        dpkg.write_bytes(original)
        dpkg.chmod(0o755)
    assert not marker.exists()
    assert result.by_short_id()["package_telnet_removed"].result.value == "pass"


def test_a_failed_dpkginfo_probe_is_an_error_not_a_score(
    base_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pitfall itself: without the status file and cache directory in the apt.conf (only the
    architectures, so the image's dpkg still never runs) dpkginfo_init fails, and the real
    scanner then passes every package_*_removed rule. harden refuses the result."""
    import harden.builder.openscap as adapter

    def architectures_only(root: Path, cache: str = "") -> str:
        return 'APT::Architecture "amd64";\nAPT::Architectures { "amd64"; };\n'

    monkeypatch.setattr(adapter, "apt_config", architectures_only)
    with pytest.raises(TargetError, match="dpkginfo_init has failed"):
        adapter.scan_root(base_root, "anssi_bp28_minimal", tmp_path)


# ---------------------------------------------------------------- the agreement test


def _mapping() -> dict[str, tuple[str, ...]]:
    """harden rule -> SSG ids, from the baselines' ``references.ssg``."""
    from harden.baseline.resolve import Catalogue, resolve

    rules = resolve(Catalogue.from_search_path(), "debian-container").rules
    mapping = mapping_of(rules)
    assert len(mapping) >= 10, "the rule library lost its SSG references"
    return mapping


def test_agreement_no_false_pass(scan_sess: Session, golden: Golden) -> None:
    from harden.builder.docker_engine import Engine
    from harden.builder.openscap import DEFAULT_PROFILE, content_rule_ids, scan_image

    r = scan_sess.harden(
        "verify", golden.ref, "--definition", str(golden.definition), "--format", "json"
    )
    assert r.returncode == 0, r.stderr
    status = {x["rule_id"]: x["status"] for x in json.loads(r.stdout)["results"]}
    mapping = _mapping()
    defined = content_rule_ids(SSG_DIR / "ssg-debian12-ds.xml")
    wanted = sorted({i for ids in mapping.values() for i in ids} & defined)
    scan = scan_image(
        Engine.connect(), golden.ref, DEFAULT_PROFILE["container"], extra_rules=wanted
    )
    known = parse_known((ROOT / "docs" / "scanner-agreement.md").read_text(encoding="utf-8"))
    agreement = compare("container", status, mapping, scan, known, defined)
    print("\n".join(agreement.lines()))
    assert not agreement.false_passes, "\n".join(agreement.lines())
    assert not agreement.unknown_ids, "\n".join(agreement.lines())
    stale = [(k.rule, k.ssg) for k in agreement.stale_entries]
    assert not stale, f"docs/scanner-agreement.md lists disagreements that no longer occur: {stale}"
    assert len(agreement.confirmed) >= 10  # the comparison really compared something
