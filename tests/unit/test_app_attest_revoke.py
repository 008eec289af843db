"""Attest, check attestations, revoke (with cascade) and promote through the use-case layer
(harden.app), against the in-memory registry of test_oci_client: no click, no engine, no network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harden.verifiers.refs import Opened
from harden.verifiers.runner import verify
from test_oci_client import FakeRegistry, client_for, manifest_bytes, seed_image

from harden import labels
from harden.app.attest import attest, list_attestations, verify_attestations
from harden.app.context import Context
from harden.app.promote import promote
from harden.app.revoke import revoke
from harden.attest import dsse, revlist
from harden.attest.keys import KeyType, PublicKey, Signer, keygen, load_public_key, load_signer
from harden.attest.predicates import HARDEN_COMPLIANCE, HARDEN_REVOCATION, TEST_RESULT
from harden.attest.statements import Subject, serialize, test_result
from harden.attest.store import ProblemKind, attach
from harden.audit import AuditLog
from harden.baseline.resolve import Catalogue, resolve
from harden.clock import FixedClock
from harden.errors import UsageError
from harden.imagedef import load_definitions
from harden.oci import Descriptor, RegistryClient
from harden.oci.model import OCI_MANIFEST, compute_digest
from harden.results import VerifyReport
from harden.target import CommandResult, TargetKind

NOW = dt.datetime(2026, 8, 10, 12, 0, tzinfo=dt.UTC)
REG = "reg.test:5000"
BASELINE = """\
id: unit-tiny
version: 1.0.0
title: one rule
platforms: [{family: debian, versions: ["12"]}]
targets: [container, vm]
rules:
  - id: pkg.telnet-absent
    title: no telnet
    controls: {iso27017: [CLD.9.5.2]}
    package_absent: {packages: [telnet]}
"""


class PackagesTarget:
    """A container whose fact script answers with a Debian 12 os-release and ``packages``."""

    kind = TargetKind.CONTAINER

    def __init__(self, packages: list[str]) -> None:
        self.packages = packages
        self.scripts: list[str] = []

    def describe(self) -> str:
        return "fake"

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        self.scripts.append(script)
        nonce = script.split("N=", 1)[1].split("\n", 1)[0].strip("'")
        sections = {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "packages": "".join(f"ii \t{p}\n" for p in self.packages),
        }
        body = "".join(f"\n@@F-{nonce} {k}\n{v}\n@@E-{nonce} 0\n" for k, v in sections.items())
        return CommandResult(0, body.encode(), b"")

    def image_config(self) -> dict[str, Any] | None:
        return {"User": "app", "Env": [], "Labels": {}}


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.fake = FakeRegistry()
        self.client, _ = client_for(self.fake, max_retries=0)
        self.progress: list[str] = []
        clock = FixedClock(NOW)
        self.ctx = Context(clock, AuditLog(tmp_path / "audit.db", clock), self.factory, self.log)
        bdir = tmp_path / "baselines"
        bdir.mkdir()
        (bdir / "unit-tiny.yaml").write_text(BASELINE)
        self.catalogue = Catalogue.from_search_path([bdir])
        keygen(KeyType.ECDSA_P256, tmp_path / "k", b"pw")
        keygen(KeyType.ED25519, tmp_path / "other", b"pw")
        self.signer: Signer = load_signer(f"file:{tmp_path / 'k.key'}", b"pw")
        self.public: PublicKey = load_public_key(tmp_path / "k.pub")
        self.other: PublicKey = load_public_key(tmp_path / "other.pub")
        self.opened: list[str] = []

    def factory(self, registry: str) -> RegistryClient:
        assert registry == REG
        return self.client

    def log(self, line: str) -> None:
        self.progress.append(line)

    def opener(self, packages: list[str]) -> Any:
        @contextlib.contextmanager
        def open_image(ref: str) -> Iterator[Opened]:
            self.opened.append(ref)
            yield Opened(PackagesTarget(packages), ref.partition("@")[2], None)

        return open_image

    def entries(self) -> list[tuple[str, str, str | None, str]]:
        return [(e.action, e.image, e.digest, e.outcome) for e in self.ctx.audit.entries()]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "home"))  # the inventory cache
    monkeypatch.delenv(revlist.LOCATION_ENV, raising=False)
    w = World(tmp_path)
    # the signed revocation list the gate requires (and revoke / failed attest write to)
    revlist.init(w.client, revlist.location_for(REG), w.signer, NOW - dt.timedelta(hours=1))
    return w


def _attest(world: World, ref: str, packages: list[str]) -> Any:
    return attest(
        ref,
        world.signer,
        world.catalogue,
        world.ctx,
        baseline_id="unit-tiny",
        open_image=world.opener(packages),
    )


def test_attest_verifies_the_pinned_digest_signs_attaches_and_audits(world: World) -> None:
    digest, _ = seed_image(world.fake, "staging/app", "1")
    done = _attest(world, f"{REG}/staging/app:1", ["bash"])
    pinned = f"{REG}/staging/app@{digest}"
    assert world.opened == [pinned]  # exactly the resolved digest is verified, never the tag
    assert done.digest == digest and done.pinned == pinned and done.compliant
    assert not done.provenance  # no definition: test-result and compliance only
    assert [a.predicate_type for a in done.attached] == [TEST_RESULT, HARDEN_COMPLIANCE]
    listed = list_attestations(f"{REG}/staging/app:1", world.ctx)
    assert {d.digest for d in listed.referrers} == {a.referrer for a in done.attached}
    assert world.entries() == [("attest", f"{REG}/staging/app:1", digest, "compliant")]
    [entry] = world.ctx.audit.entries()
    assert entry.details["referrers"] == [a.referrer for a in done.attached]
    assert entry.details["baseline"] == "unit-tiny"
    assert f"verifying {pinned}" in world.progress
    assert f"attached 2 attestation(s) to {pinned}" in world.progress

    checked = verify_attestations(f"{REG}/staging/app:1", [world.public], world.ctx)
    assert checked.digest == digest and checked.problems == []
    assert {s.statement.predicateType for s in checked.statements} == {
        TEST_RESULT,
        HARDEN_COMPLIANCE,
    }
    [compliance] = [s for s in checked.statements if s.statement.predicateType == HARDEN_COMPLIANCE]
    c = compliance.statement.compliance()
    assert c.compliant and c.verifiedAt == NOW and c.validUntil == NOW + dt.timedelta(days=30)


def test_a_failed_verification_is_attested_too(world: World) -> None:
    digest, _ = seed_image(world.fake, "staging/app", "1")
    done = _attest(world, f"{REG}/staging/app:1", ["bash", "telnet"])
    assert not done.compliant and done.report.summary()["failed"] == 1
    assert world.entries() == [("attest", f"{REG}/staging/app:1", digest, "not compliant")]
    checked = verify_attestations(f"{REG}/staging/app:1", [world.public], world.ctx)
    [compliance] = [s for s in checked.statements if s.statement.predicateType == HARDEN_COMPLIANCE]
    assert compliance.statement.compliance().compliant is False
    # recorded in the signed revocation list too: dropping it from the index cannot hide it
    view = revlist.fetch_for(world.client, [world.public])
    [failed] = view.for_digest(digest, "failed")
    assert view.problem is None and view.version == 2 and failed.at == NOW
    [entry] = world.ctx.audit.entries()
    assert entry.details["revocation_list_version"] == 2


def test_attestation_problems_are_typed(world: World) -> None:
    digest, data = seed_image(world.fake, "staging/app", "1")
    subject = Descriptor(OCI_MANIFEST, digest, len(data))
    _attest(world, f"{REG}/staging/app:1", ["bash"])
    # signed by a trusted key, but for another image
    other = "sha256:" + "e" * 64
    report = verify_attestations(f"{REG}/staging/app:1", [world.public], world.ctx)
    assert report.problems == []
    elsewhere = _attest_statement_for(other, world)
    foreign = attach(world.client, "staging/app", subject, elsewhere, TEST_RESULT, NOW)
    # not an envelope at all
    junk = attach(world.client, "staging/app", subject, b"not json", HARDEN_COMPLIANCE, NOW)
    # one the registry serves with other bytes than its digest
    broken = attach(world.client, "staging/app", subject, b"{}", HARDEN_COMPLIANCE, NOW)
    manifest, media_type = world.fake.manifests["staging/app"][broken.digest]
    world.fake.manifests["staging/app"][broken.digest] = (manifest + b" ", media_type)
    fresh, _ = client_for(world.fake, max_retries=0)  # a reader that has not seen it yet
    world.client = fresh

    checked = verify_attestations(f"{REG}/staging/app:1", [world.public], world.ctx)
    kinds = {p.referrer: p.kind for p in checked.problems}
    assert kinds == {
        foreign.digest: ProblemKind.OTHER_SUBJECT,
        junk.digest: ProblemKind.UNVERIFIED,
        broken.digest: ProblemKind.UNREADABLE,
    }
    [other_subject] = [p for p in checked.problems if p.kind is ProblemKind.OTHER_SUBJECT]
    assert other_subject.predicate_type == TEST_RESULT and other in other_subject.message
    assert str(other_subject).startswith(f"referrer {foreign.digest}: signed, but for another")
    assert len(checked.statements) == 2  # the good ones still count

    untrusted = verify_attestations(f"{REG}/staging/app:1", [world.other], world.ctx)
    assert untrusted.statements == []
    assert {p.kind for p in untrusted.problems} == {
        ProblemKind.UNVERIFIED,
        ProblemKind.UNREADABLE,
    }


def _attest_statement_for(digest: str, world: World) -> bytes:
    """A test-result statement about ``digest``, signed by the trusted key."""
    done = _attest_report(world)
    statement = test_result(Subject("elsewhere", digest), done, "harden:baseline/unit-tiny")
    return dsse.sign(serialize(statement), world.signer)


def _attest_report(world: World) -> VerifyReport:
    return verify(
        PackagesTarget(["bash"]),
        resolve(world.catalogue, "unit-tiny"),
        world.ctx.clock,
        image="x",
        digest=None,
    )


def _seed_child(fake: FakeRegistry, repo: str, tag: str, base_digest: str) -> str:
    config = json.dumps(
        {"os": "linux", "config": {"Labels": {labels.BASE_DIGEST: base_digest}}}
    ).encode()
    layer = repo.encode() * 10
    for blob in (config, layer):
        fake.blobs.setdefault(repo, {})[compute_digest(blob)] = blob
    data = manifest_bytes(config, layer)
    digest = compute_digest(data)
    fake.manifests.setdefault(repo, {})[digest] = (data, OCI_MANIFEST)
    fake.tags.setdefault(repo, {})[tag] = digest
    return digest


def _definitions(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name, base in [
        ("app", f"{REG}/library/debian:12"),
        ("child", f"{REG}/staging/app:1"),
        ("grandchild", f"{REG}/staging/child:1"),
        ("unrelated", f"{REG}/library/debian:12"),
    ]:
        (images / f"{name}.yaml").write_text(
            textwrap.dedent(
                f"""\
                name: {name}
                base: {base}
                target: container
                baseline: {{id: unit-tiny}}
                destination: {REG}/staging/{name}:1
                """
            )
        )
    return images


def test_revoke_signs_attaches_and_audits_and_the_gate_then_denies(
    world: World, tmp_path: Path
) -> None:
    digest, _ = seed_image(world.fake, "staging/app", "1")
    _attest(world, f"{REG}/staging/app:1", ["bash"])
    allowed = promote(
        f"{REG}/staging/app:1", f"{REG}/prod/app:1", [world.public], world.ctx, dry_run=True
    )
    assert allowed.allowed

    with pytest.raises(UsageError):
        revoke(f"{REG}/staging/app:1", world.signer, world.catalogue, world.ctx, reason=" ", by="x")
    done = revoke(
        f"{REG}/staging/app:1",
        world.signer,
        world.catalogue,
        world.ctx,
        reason="CVE-2026-0001",
        by="alice@host",
    )
    [revoked] = done.revoked
    assert revoked.image == f"{REG}/staging/app" and revoked.digest == digest
    assert revoked.cascade_from is None
    checked = verify_attestations(f"{REG}/staging/app:1", [world.public], world.ctx)
    [revocation] = checked.revocations
    r = revocation.statement.revocation()
    assert r.reason == "CVE-2026-0001" and r.revokedBy == "alice@host" and r.revokedAt == NOW
    entries = world.ctx.audit.entries()
    assert entries[-1].action == "revoke" and entries[-1].digest == digest
    assert entries[-1].details["referrer"] == revoked.referrer
    assert entries[-1].details["revocation_list_version"] == 2
    [listed] = revlist.fetch_for(world.client, [world.public]).for_digest(digest, "revoked")
    assert listed.reason == "CVE-2026-0001" and listed.repository == f"{REG}/staging/app"
    denied = promote(f"{REG}/staging/app:1", f"{REG}/prod/app:1", [world.public], world.ctx)
    assert not denied.allowed and not denied.copied
    assert any(reason.startswith("NotRevoked") for reason in denied.decision.reasons)
    assert "1" not in world.fake.tags.get("prod/app", {})


def test_revoke_cascades_to_everything_built_on_it(world: World, tmp_path: Path) -> None:
    seed_image(world.fake, "library/debian", "12")
    app, _ = seed_image(world.fake, "staging/app", "1")
    child = _seed_child(world.fake, "staging/child", "1", app)
    grandchild = _seed_child(world.fake, "staging/grandchild", "1", child)
    _seed_child(world.fake, "staging/unrelated", "1", "sha256:" + "0" * 64)
    images = _definitions(tmp_path)

    done = revoke(
        f"{REG}/staging/app:1",
        world.signer,
        world.catalogue,
        world.ctx,
        reason="bad build",
        by="ci",
        cascade=load_definitions(images),
    )
    assert [(r.image, r.digest, r.cascade_from) for r in done.revoked] == [
        (f"{REG}/staging/app", app, None),
        (f"{REG}/staging/child", child, app),
        (f"{REG}/staging/grandchild", grandchild, child),
    ]
    revocations = [e for e in world.ctx.audit.entries() if e.action == "revoke"]
    assert [e.digest for e in revocations] == [app, child, grandchild]
    assert revocations[1].details["cascade_from"] == app
    assert revocations[1].details["reason"] == f"bad build (built on revoked {app})"
    for repo, digest in [("staging/child", child), ("staging/grandchild", grandchild)]:
        checked = verify_attestations(f"{REG}/{repo}:1", [world.public], world.ctx)
        [rev] = checked.revocations
        assert rev.statement.matches(digest)
        assert rev.statement.predicateType == HARDEN_REVOCATION
    unrelated = verify_attestations(f"{REG}/staging/unrelated:1", [world.public], world.ctx)
    assert unrelated.revocations == []
