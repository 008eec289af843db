"""Signed attestations in the registry and the promotion gate, end to end on real registries.

One golden image is built per session with `harden build --key` (keys from `harden keygen`).
Every security case pushes its bad attestation onto a fresh copy of that image *without* its
referrers (same digest, mounted: cheap), so the only evidence the gate sees is the bad one.
The local registry (distribution 2.8) has no referrers API: the sha256-<hex> tag schema is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harden_cli
import pytest
from needs import unavailable

from harden.attest import dsse
from harden.attest.keys import load_public_key, load_signer
from harden.attest.predicates import HARDEN_COMPLIANCE, HARDEN_REVOCATION, TEST_RESULT
from harden.attest.statements import Subject, revocation, serialize
from harden.attest.store import attach, fetch_envelopes
from harden.audit import AuditLog
from harden.clock import SystemClock
from harden.errors import ExitCode, RegistryError
from harden.oci import (
    Descriptor,
    RegistryClient,
    RegistryNotFound,
    copy_image,
    list_referrers,
    parse_reference,
)
from harden.results import rfc3339

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "it-password"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Session:
    home: Path
    key: Path  # trusted private key
    pub: Path  # trusted public key
    other_pub: Path  # a key nobody trusts
    run: str  # unique repo prefix

    def env(self) -> dict[str, str]:
        return {
            "HARDEN_HOME": str(self.home),
            "HARDEN_KEY_PASSWORD": PASSWORD,
            "HARDEN_REVOCATIONS": self.revocations,
        }

    @property
    def revocations(self) -> str:
        """This session's signed revocation list (the gate requires one)."""
        return f"{REGISTRY}/harden-test/{self.run}/revocations:current"

    def harden(
        self, *args: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return harden_cli.run(*args, env={**self.env(), **(env or {})}, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", "from harden.cli import main; main()", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **self.env()},
            cwd=ROOT,
        )

    def repo(self, name: str) -> str:
        return f"harden-test/{self.run}/{name}"


@pytest.fixture(scope="session")
def sess(tmp_path_factory: pytest.TempPathFactory) -> Session:
    d = tmp_path_factory.mktemp("attest")
    s = Session(
        d / "home", d / "trusted.key", d / "trusted.pub", d / "other.pub", uuid.uuid4().hex[:8]
    )
    for prefix in ("trusted", "other"):
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
    statements: dict[str, dict[str, Any]]  # predicateType -> the signed statement (as built)
    envelopes: dict[str, bytes]  # predicateType -> the envelope bytes in the registry


@pytest.fixture(scope="session")
def golden(sess: Session, tmp_path_factory: pytest.TempPathFactory) -> Golden:
    repo = sess.repo("staging/golden")
    d = tmp_path_factory.mktemp("def")
    definition = d / "golden.yaml"
    definition.write_text(
        json.dumps(
            {
                "name": "itest-attest-golden",
                "base": BASE,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": f"{REGISTRY}/{repo}:latest",
                "max_age": "30d",
            }
        )
    )
    r = sess.harden("build", str(definition), "--key", f"file:{sess.key}", "--format", "json")
    assert r.returncode == 0, r.stderr
    # provenance, test-result, compliance, the SBOM (and a VEX when the build applied updates)
    attached = re.search(r"attached (\d+) signed attestation\(s\)", r.stderr)
    assert attached is not None and int(attached.group(1)) in (4, 5), r.stderr
    digest = json.loads(r.stdout)["digest"]
    client = RegistryClient(REGISTRY)
    fetched = fetch_envelopes(client, repo, digest)
    assert not fetched.problems and len(fetched.envelopes) == int(attached.group(1))
    trusted = [load_public_key(sess.pub)]
    statements, envelopes = {}, {}
    for _, env in fetched.envelopes:
        v = dsse.verify(env, trusted)
        statements[v.statement.predicateType] = json.loads(v.payload)
        envelopes[v.statement.predicateType] = env
    return Golden(f"{REGISTRY}/{repo}:latest", repo, digest, statements, envelopes)


@pytest.fixture
def fresh(sess: Session, golden: Golden) -> Callable[[str], tuple[str, str, Descriptor]]:
    """fresh(name) -> (ref, repo, subject): the golden digest in a new repo, no referrers."""
    client = RegistryClient(REGISTRY)

    def make(name: str) -> tuple[str, str, Descriptor]:
        repo = sess.repo(f"{name}-{uuid.uuid4().hex[:6]}")
        subject = copy_image(
            client, golden.repo, golden.digest, client, repo, tag="cand", with_referrers=False
        )
        assert list_referrers(client, repo, golden.digest) == []
        return f"{REGISTRY}/{repo}:cand", repo, subject

    return make


def sign(sess: Session, statement: dict[str, Any]) -> bytes:
    return dsse.sign(serialize(statement), load_signer(f"file:{sess.key}", PASSWORD.encode()))


def push(repo: str, subject: Descriptor, envelope: bytes, predicate_type: str) -> None:
    attach(
        RegistryClient(REGISTRY), repo, subject, envelope, predicate_type, dt.datetime.now(dt.UTC)
    )


def denied(sess: Session, ref: str, *expected: str, key: Path | None = None) -> str:
    dst = f"{REGISTRY}/{sess.repo('prod/denied')}:latest"
    r = sess.harden("promote", ref, dst, "--key", str(key or sess.pub))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DENIED" in r.stdout
    for text in expected:
        assert text in r.stdout, r.stdout
    assert_nothing_named(sess.repo("prod/denied"), ref)
    return r.stdout


def assert_nothing_named(dst_repo: str, src_ref: str) -> None:
    """No tag (not the target's, not a referrers index) and not the image's manifest at the
    destination: nothing a pull by tag or by digest could get."""
    client = RegistryClient(REGISTRY)
    with pytest.raises(RegistryNotFound):
        client.get_manifest(dst_repo, "latest")
    src = parse_reference(src_ref)
    digest = client.get_manifest(src.repository, src.digest or src.tag or "").digest
    assert client.head_manifest(dst_repo, digest) is None
    assert client.list_tags(dst_repo) == []


# ---- the good path --------------------------------------------------------------------------
def test_promote_copies_by_digest_and_pulls_with_docker_and_skopeo(
    sess: Session, golden: Golden
) -> None:
    r = sess.harden("attestation", "verify", golden.ref, "--key", str(sess.pub))
    assert r.returncode == 0, r.stderr
    for text in ("slsa.dev/provenance/v1", "PASSED", "compliant, verified"):
        assert text in r.stdout
    dst_repo = sess.repo("prod/golden")
    dst = f"{REGISTRY}/{dst_repo}:latest"
    r = sess.harden("promote", golden.ref, dst, "--key", str(sess.pub), "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["allowed"] is True and out["copied"] is True and out["digest"] == golden.digest
    assert out["verified"] == len(golden.envelopes)
    # identical digest, attestations carried along (verifiable at the destination)
    client = RegistryClient(REGISTRY)
    assert client.get_manifest(dst_repo, "latest").digest == golden.digest
    assert len(list_referrers(client, dst_repo, golden.digest)) == len(golden.envelopes)
    r = sess.harden("attestation", "verify", dst, "--key", str(sess.pub))
    assert r.returncode == 0, r.stderr
    # docker pull by tag gives the staging digest
    pulled = subprocess.run(["docker", "pull", dst], capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    repo_digests = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", dst],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{REGISTRY}/{dst_repo}@{golden.digest}" in json.loads(repo_digests)
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{dst}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    assert info["Digest"] == golden.digest
    # both decisions are in the audit log
    entries = AuditLog(sess.home / "audit.db", SystemClock()).entries()
    assert any(
        e.action == "promote" and e.outcome == "allowed" and e.digest == golden.digest
        for e in entries
    )


def test_dry_run_decides_and_copies_nothing(sess: Session, golden: Golden) -> None:
    dst_repo = sess.repo("prod/dry")
    r = sess.harden(
        "promote", golden.ref, f"{REGISTRY}/{dst_repo}:latest", "--key", str(sess.pub), "--dry-run"
    )
    assert r.returncode == 0, r.stderr
    assert "ALLOWED" in r.stdout and "dry run" in r.stderr
    assert_nothing_named(dst_repo, golden.ref)
    # a dry run writes nothing at all, not even the blobs a promotion mounts while it decides
    client = RegistryClient(REGISTRY)
    config = client.get_manifest(golden.repo, golden.digest).config
    assert config is not None and not client.blob_exists(dst_repo, config.digest)


# ---- security: each must be denied, with the reason named ------------------------------------
def test_denied_promotion_names_nothing_at_the_destination(
    sess: Session, golden: Golden, fresh: Any
) -> None:
    """The copy is prepared while the gate decides (blobs mounted into the destination): a
    denial must still leave no manifest, no tag and no referrers index there."""
    ref, repo, subject = fresh("revoked-prepared")
    for kind, env in golden.envelopes.items():  # every good attestation, as for a promotion
        push(repo, subject, env, kind)
    stmt = revocation(
        Subject(ref, golden.digest),
        reason="denied after the blobs were mounted",
        revoked_at=dt.datetime.now(dt.UTC),
        revoked_by="secops@example.com",
    )
    push(repo, subject, sign(sess, stmt), HARDEN_REVOCATION)
    dst_repo = sess.repo(f"prod/prepared-{uuid.uuid4().hex[:6]}")
    r = sess.harden("promote", ref, f"{REGISTRY}/{dst_repo}:latest", "--key", str(sess.pub))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NotRevoked" in r.stdout
    assert_nothing_named(dst_repo, ref)
    client = RegistryClient(REGISTRY)
    assert list_referrers(client, dst_repo, golden.digest) == []
    # the preparation did run (so the assertions above are about a destination it wrote to)
    config = client.get_manifest(repo, golden.digest).config
    assert config is not None and client.blob_exists(dst_repo, config.digest)


def test_untrusted_key_is_denied(sess: Session, golden: Golden) -> None:
    denied(sess, golden.ref, "no signature by a trusted key", key=sess.other_pub)
    r = sess.harden("attestation", "verify", golden.ref, "--key", str(sess.other_pub))
    assert r.returncode == 1 and "NOT VERIFIED" in r.stdout


def test_payload_changed_after_signing_is_denied(sess: Session, golden: Golden, fresh: Any) -> None:
    ref, repo, subject = fresh("tampered")
    env = json.loads(golden.envelopes[HARDEN_COMPLIANCE])
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["validUntil"] = "2099-01-01T00:00:00Z"
    env["payload"] = base64.b64encode(serialize(stmt)).decode()
    push(repo, subject, json.dumps(env).encode(), HARDEN_COMPLIANCE)
    denied(sess, ref, "SignatureValid", "no signature by a trusted key")


def test_attestation_of_another_image_is_denied(sess: Session, golden: Golden, fresh: Any) -> None:
    ref, repo, subject = fresh("other-image")
    other = "sha256:" + "ab" * 32
    for kind in (HARDEN_COMPLIANCE, TEST_RESULT):
        stmt = json.loads(json.dumps(golden.statements[kind]))
        stmt["subject"] = [Subject("elsewhere/image-b", other).descriptor()]
        push(repo, subject, sign(sess, stmt), kind)
    denied(sess, ref, "SubjectMatches", f"attestations found for: {other}")


def test_expired_attestation_is_denied(sess: Session, golden: Golden, fresh: Any) -> None:
    ref, repo, subject = fresh("expired")
    now = dt.datetime.now(dt.UTC)
    stmt = json.loads(json.dumps(golden.statements[HARDEN_COMPLIANCE]))
    stmt["predicate"]["verifiedAt"] = rfc3339(now - dt.timedelta(days=40))
    stmt["predicate"]["validUntil"] = rfc3339(now - dt.timedelta(days=10))
    push(repo, subject, sign(sess, stmt), HARDEN_COMPLIANCE)
    denied(sess, ref, "NotOlderThan", "older than the maximum age 30d", "ValidUntilFuture")


def test_failed_result_is_denied(sess: Session) -> None:
    client = RegistryClient(REGISTRY)
    base = parse_reference(BASE)
    base_digest = client.get_manifest(base.repository, "12").digest
    repo = sess.repo("base-copy")
    copy_image(client, base.repository, base_digest, client, repo, tag="12", with_referrers=False)
    ref = f"{REGISTRY}/{repo}:12"
    r = sess.harden("attest", ref, "--key", f"file:{sess.key}")
    assert r.returncode == 0, r.stderr
    assert "NOT compliant" in r.stdout
    denied(sess, ref, "ResultPassed", "was not compliant")


def test_revoked_image_is_denied(sess: Session, golden: Golden, fresh: Any) -> None:
    ref, repo, subject = fresh("revoked")
    for kind, env in golden.envelopes.items():  # the good attestations ...
        push(repo, subject, env, kind)
    stmt = revocation(
        Subject(ref, golden.digest),
        reason="CVE-2026-0001 in the base",
        revoked_at=dt.datetime.now(dt.UTC),
        revoked_by="secops@example.com",
    )
    push(repo, subject, sign(sess, stmt), HARDEN_REVOCATION)  # ... and a revocation
    denied(sess, ref, "NotRevoked", "CVE-2026-0001 in the base")


def test_only_unknown_predicate_types_are_denied(sess: Session, golden: Golden, fresh: Any) -> None:
    ref, repo, subject = fresh("unknown")
    stmt = json.loads(json.dumps(golden.statements[HARDEN_COMPLIANCE]))
    stmt["predicateType"] = "https://example.com/unknown/v9"
    push(repo, subject, sign(sess, stmt), "https://example.com/unknown/v9")
    denied(sess, ref, "KnownPredicate", "found: https://example.com/unknown/v9")


BAD_ENVELOPES: dict[str, tuple[bytes | None, str]] = {
    "garbage": (b"\x00\xffnot an envelope at all", "not UTF-8"),
    "truncated": (None, "not valid JSON"),
    "malformed-json": (
        b'{"payload": "e30=", "payloadType": "x", "payload": "e30="}',
        "duplicate JSON key",
    ),
    "oversized": (b"{" + b" " * (dsse.MAX_ENVELOPE_BYTES + 10) + b"}", "more than the limit"),
}


@pytest.mark.parametrize("name", sorted(BAD_ENVELOPES))
def test_bad_envelopes_are_denied(sess: Session, golden: Golden, fresh: Any, name: str) -> None:
    blob, reason = BAD_ENVELOPES[name]
    ref, repo, subject = fresh(name)
    if blob is None:
        good = golden.envelopes[HARDEN_COMPLIANCE]
        blob = good[: len(good) // 2]
    push(repo, subject, blob, HARDEN_COMPLIANCE)
    denied(sess, ref, "SignatureValid", reason)


# ---- registries we run ourselves (tamper with storage, kill during a copy) --------------------
@dataclass
class OwnRegistry:
    host: str
    data: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.proc = subprocess.Popen(
            [binary, "serve", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                RegistryClient(self.host, max_retries=0).ping()
                return
            except RegistryError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "no registry"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def blob_path(self, digest: str) -> Path:
        hexpart = digest.partition(":")[2]
        return self.data / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[OwnRegistry]:
    if not shutil.which("docker-registry") and not Path("/usr/bin/docker-registry").exists():
        unavailable("docker-registry missing; run scripts/services.sh")
    host = f"127.0.0.1:{_free_port()}"
    data = tmp_path / "data"
    config = tmp_path / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error"},
                "storage": {"filesystem": {"rootdirectory": str(data)}},
                "http": {"addr": host, "secret": secrets.token_hex(16)},
            }
        )
    )
    reg = OwnRegistry(host, data, config)
    reg.start()
    try:
        yield reg
    finally:
        reg.kill()


def test_referrer_whose_content_does_not_match_its_digest_is_denied(
    sess: Session, golden: Golden, own_registry: OwnRegistry
) -> None:
    src = RegistryClient(REGISTRY)
    mine = RegistryClient(own_registry.host, max_retries=0)
    copy_image(src, golden.repo, golden.digest, mine, "staging/golden", tag="cand")
    referrers = list_referrers(mine, "staging/golden", golden.digest)
    [compliance_ref] = [d for d in referrers if d.artifact_type and "compliance" in d.artifact_type]
    # keep only the compliance referrer's manifest bytes wrong on disk (same length)
    path = own_registry.blob_path(compliance_ref.digest)
    data = path.read_bytes()
    created = json.loads(data)["annotations"]["org.opencontainers.image.created"]
    tampered = data.replace(created.encode(), b"2099-01-01T00:00:00Z")
    assert tampered != data and len(tampered) == len(data)
    path.write_bytes(tampered)
    ref = f"{own_registry.host}/staging/golden:cand"
    r = sess.harden("promote", ref, f"{own_registry.host}/prod/golden:1", "--key", str(sess.pub))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"referrer {compliance_ref.digest}" in r.stdout
    assert "content has digest" in r.stdout
    assert "no valid compliance attestation" in r.stdout


# ---- faults ---------------------------------------------------------------------------------
def test_registry_killed_during_promotion_leaves_no_tag_and_rerun_completes(
    sess: Session, golden: Golden, own_registry: OwnRegistry
) -> None:
    dst = f"{own_registry.host}/prod/golden:latest"
    uploads = own_registry.data / "docker/registry/v2/repositories/prod/golden/_uploads"
    proc = sess.popen("promote", golden.ref, dst, "--key", str(sess.pub))
    deadline = time.monotonic() + 120
    while not (uploads.is_dir() and any(uploads.iterdir())):  # the first blob upload started
        assert proc.poll() is None, "promote finished before any blob upload was seen"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    own_registry.kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.ENVIRONMENT, err
    assert "hint:" in err
    own_registry.start()  # the same storage
    client = RegistryClient(own_registry.host, max_retries=0)
    with pytest.raises(RegistryNotFound):
        client.get_manifest("prod/golden", "latest")
    r = sess.harden("promote", golden.ref, dst, "--key", str(sess.pub), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert client.get_manifest("prod/golden", "latest").digest == golden.digest


def test_failed_attestation_push_leaves_the_image_unpromotable(
    sess: Session, golden: Golden, fresh: Any
) -> None:
    ref, _repo, subject = fresh("no-attest")
    dead = RegistryClient(f"127.0.0.1:{_free_port()}", max_retries=0)
    with pytest.raises(RegistryError) as info:
        attach(
            dead,
            "x/y",
            subject,
            golden.envelopes[HARDEN_COMPLIANCE],
            HARDEN_COMPLIANCE,
            dt.datetime.now(dt.UTC),
        )
    assert info.value.exit_code == ExitCode.ENVIRONMENT
    denied(sess, ref, "no attestation verified against a trusted key")


# ---- environment and input errors -----------------------------------------------------------
def test_bad_key_and_dead_registry_exit_4_malformed_ref_exit_3(
    sess: Session, golden: Golden, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    r = sess.harden("promote", golden.ref, f"{REGISTRY}/x/y:1", "--key", str(bad))
    assert r.returncode == 4 and "hint:" in r.stderr, r.stderr
    dead = f"127.0.0.1:{_free_port()}"
    r = sess.harden("promote", f"{dead}/a/b:1", f"{dead}/a/c:1", "--key", str(sess.pub))
    assert r.returncode == 4 and "hint:" in r.stderr, r.stderr
    r = sess.harden("promote", "no registry here", f"{REGISTRY}/x/y:1", "--key", str(sess.pub))
    assert r.returncode == 3, r.stderr
    r = sess.harden("build", "images/debian12.yaml", "--key", f"file:{tmp_path}/missing.key")
    assert r.returncode == 4 and "hint:" in r.stderr, r.stderr


# ---- decisions that do not depend on absence (the signed revocation list) ---------------------
@pytest.fixture
def own_list(sess: Session) -> dict[str, str]:
    """A revocation list of this test's own (revoking the golden digest in the session's list
    would deny every later test); returns the env that points harden at it."""
    env = {
        "HARDEN_REVOCATIONS": f"{REGISTRY}/{sess.repo('revlist-' + uuid.uuid4().hex[:6])}:current"
    }
    r = sess.harden("revocations", "init", REGISTRY, "--key", f"file:{sess.key}", env=env)
    assert r.returncode == 0, r.stderr
    return env


def _promote(sess: Session, ref: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    dst = f"{REGISTRY}/{sess.repo('prod/denied')}:latest"
    return sess.harden("promote", ref, dst, "--key", str(sess.pub), "--dry-run", env=env)


def _good_copy(fresh: Any, golden: Golden, name: str) -> tuple[str, str, Descriptor]:
    ref, repo, subject = fresh(name)
    for kind, env in golden.envelopes.items():
        push(repo, subject, env, kind)
    return ref, repo, subject


def _drop_from_index(repo: str, digest: str, artifact_type_part: str) -> None:
    """The attacker with push access rewrites the sha256-<hex> index without some entries."""
    from harden.oci.model import OCI_INDEX, canonical_json, referrers_tag

    client = RegistryClient(REGISTRY)
    tag = referrers_tag(digest)
    index = json.loads(client.get_manifest(repo, tag).data)
    kept = [m for m in index["manifests"] if artifact_type_part not in m.get("artifactType", "")]
    assert len(kept) < len(index["manifests"])
    index["manifests"] = kept
    client.put_manifest(repo, tag, canonical_json(index), OCI_INDEX)


def test_revocation_dropped_from_the_index_still_denies(
    sess: Session, golden: Golden, fresh: Any, own_list: dict[str, str]
) -> None:
    ref, repo, _ = _good_copy(fresh, golden, "drop-revocation")
    assert _promote(sess, ref, own_list).returncode == 0
    r = sess.harden(
        "revoke", ref, "--key", f"file:{sess.key}", "--reason", "CVE-2026-4242", env=own_list
    )
    assert r.returncode == 0, r.stderr
    _drop_from_index(repo, golden.digest, "revocation")
    assert not [
        d
        for d in list_referrers(RegistryClient(REGISTRY), repo, golden.digest)
        if "revocation" in (d.artifact_type or "")
    ]
    r = _promote(sess, ref, own_list)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NotRevoked: revoked in" in r.stdout and "CVE-2026-4242" in r.stdout


def test_digest_revoked_in_one_repository_is_denied_from_another(
    sess: Session, golden: Golden, fresh: Any, own_list: dict[str, str]
) -> None:
    ref_a, _, _ = _good_copy(fresh, golden, "revoked-here")
    ref_b, _, _ = _good_copy(fresh, golden, "same-digest-there")
    r = sess.harden(
        "revoke", ref_a, "--key", f"file:{sess.key}", "--reason", "bad build", env=own_list
    )
    assert r.returncode == 0, r.stderr
    r = _promote(sess, ref_b, own_list)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NotRevoked: revoked in" in r.stdout and ref_a.rsplit(":", 1)[0] in r.stdout


@pytest.mark.parametrize("order", ["pass-then-fail", "fail-then-pass"])
def test_equal_verified_at_is_denied_in_both_orders(
    sess: Session, golden: Golden, fresh: Any, order: str
) -> None:
    ref, repo, subject = fresh("tie")
    good = golden.statements[HARDEN_COMPLIANCE]
    bad = json.loads(json.dumps(good))
    bad["predicate"]["compliant"] = False
    bad["predicate"]["summary"]["failed"] = 1
    pair = [sign(sess, good), sign(sess, bad)]
    if order == "fail-then-pass":
        pair.reverse()
    for env in pair:
        push(repo, subject, env, HARDEN_COMPLIANCE)
    denied(sess, ref, "ResultPassed", "was not compliant")


def test_newest_failing_result_dropped_from_the_index_still_denies(
    sess: Session,
    golden: Golden,
    fresh: Any,
    own_list: dict[str, str],
    monkeypatch: Any,
    tmp_path: Path,
) -> None:
    from harden.attest import revlist

    ref, repo, subject = _good_copy(fresh, golden, "drop-failure")
    assert _promote(sess, ref, own_list).returncode == 0
    # a later verification fails: signed, attached, recorded (what `harden attest` does) ...
    good = golden.statements[HARDEN_COMPLIANCE]
    bad = json.loads(json.dumps(good))
    later = dt.datetime.now(dt.UTC).replace(microsecond=0)
    bad["predicate"].update(compliant=False, verifiedAt=rfc3339(later))
    push(repo, subject, sign(sess, bad), HARDEN_COMPLIANCE)
    monkeypatch.setenv("HARDEN_REVOCATIONS", own_list["HARDEN_REVOCATIONS"])
    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "home"))
    entry = revlist.Entry(golden.digest, "failed", later, "1 rule failed", "it", repo)
    signer = load_signer(f"file:{sess.key}", PASSWORD.encode())
    revlist.record(RegistryClient(REGISTRY), signer, entry, later)
    assert _promote(sess, ref, own_list).returncode == 1
    # ... and the attacker drops the failing result from the index: still denied
    client = RegistryClient(REGISTRY)
    from harden.oci.model import OCI_INDEX, canonical_json, referrers_tag

    tag = referrers_tag(golden.digest)
    index = json.loads(client.get_manifest(repo, tag).data)
    fetched = fetch_envelopes(client, repo, golden.digest)
    trusted = [load_public_key(sess.pub)]

    def is_failing(env: bytes) -> bool:
        doc = json.loads(dsse.verify(env, trusted).payload)
        return doc["predicateType"] == HARDEN_COMPLIANCE and not doc["predicate"]["compliant"]

    bad_label = next(label for label, env in fetched.envelopes if is_failing(env))
    index["manifests"] = [
        m for m in index["manifests"] if m["digest"] != bad_label.removeprefix("referrer ")
    ]
    client.put_manifest(repo, tag, canonical_json(index), OCI_INDEX)
    r = _promote(sess, ref, own_list)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NoLaterFailure" in r.stdout and "1 rule failed" in r.stdout


def test_revocation_list_missing_expired_or_rolled_back_denies(
    sess: Session, golden: Golden, fresh: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    from harden.attest import revlist

    location = f"{REGISTRY}/{sess.repo('revlist-' + uuid.uuid4().hex[:6])}:current"
    env = {"HARDEN_REVOCATIONS": location}
    ref, _, _ = _good_copy(fresh, golden, "list-states")
    r = _promote(sess, ref, env)  # no list at all
    assert r.returncode == 1 and "RevocationListCurrent" in r.stdout and "is missing" in r.stdout
    assert (
        sess.harden(
            "revocations", "init", REGISTRY, "--key", f"file:{sess.key}", env=env
        ).returncode
        == 0
    )
    assert _promote(sess, ref, env).returncode == 0
    # version 2, signed a month ago with a one-day window: expired
    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "writer-home"))
    signer = load_signer(f"file:{sess.key}", PASSWORD.encode())
    client = RegistryClient(REGISTRY)
    loc = parse_reference(location)
    month_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    revlist.refresh(client, loc, signer, month_ago, dt.timedelta(days=1))
    r = _promote(sess, ref, env)
    assert r.returncode == 1 and "expired at" in r.stdout, r.stdout
    old = client.get_manifest(loc.repository, "v1")
    assert (
        sess.harden(
            "revocations", "refresh", REGISTRY, "--key", f"file:{sess.key}", env=env
        ).returncode
        == 0
    )
    assert _promote(sess, ref, env).returncode == 0  # version 3 seen
    client.put_manifest(loc.repository, "current", old.data, old.media_type)  # replay v1
    r = _promote(sess, ref, env)
    assert r.returncode == 1 and "rolled back" in r.stdout, r.stdout


def test_promoting_to_a_referrers_tag_name_is_refused(sess: Session, golden: Golden) -> None:
    repo = sess.repo("prod/reserved")
    tag = "sha256-" + golden.digest.removeprefix("sha256:")
    r = sess.harden("promote", golden.ref, f"{REGISTRY}/{repo}:{tag}", "--key", str(sess.pub))
    assert r.returncode == ExitCode.INVALID_INPUT, r.stdout + r.stderr
    assert "reserved for the OCI referrers tag schema" in r.stderr and "Traceback" not in r.stderr
    assert RegistryClient(REGISTRY).head_manifest(repo, tag) is None
