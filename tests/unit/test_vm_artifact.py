"""A VM template as an OCI artifact: manifest, streamed push, attestations, promote (fake registry)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, cast

import pytest
from test_oci_client import FakeRegistry, client_for
from test_statements import report

from harden.attest import dsse
from harden.attest.keys import KeyType, keygen, load_public_key, load_signer
from harden.attest.statements import Subject
from harden.attest.store import attach_all, list_attestations, sign_statements
from harden.audit import AuditLog
from harden.baseline.resolve import ResolvedBaseline
from harden.clock import FixedClock
from harden.oci import parse_reference
from harden.oci.model import EMPTY_DIGEST, OCI_MANIFEST, compute_digest
from harden.promote import promote
from harden.vm_artifact import (
    ARTIFACT_TYPE,
    INITRD_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    QCOW2_MEDIA_TYPE,
    artifact_for,
    attestations_path,
    push_untagged,
    tag,
    write_attestations,
)

CREATED = dt.datetime(2026, 8, 1, 9, 0, tzinfo=dt.UTC)
BASE_DIGEST = "sha256:" + "c" * 64


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, data in (
        ("t.qcow2", b"QFI\xfb" + b"q" * 5000),
        ("t.vmlinuz", b"kernel" * 10),
        ("t.initrd.img", b"initrd" * 10),
    ):
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def _baseline() -> ResolvedBaseline:
    """artifact_for reads only id, version and digest of the resolved baseline."""
    b = report().baseline
    fake: Any = type("B", (), {"id": b.id, "version": b.version, "digest": b.digest})()
    return cast(ResolvedBaseline, fake)


def _artifact(files: dict[str, Path]) -> Any:
    qcow2 = files["t.qcow2"]
    return artifact_for(
        qcow2,
        _sha(qcow2.read_bytes()),
        kernel=files["t.vmlinuz"],
        initrd=files["t.initrd.img"],
        created=CREATED,
        base_name="/var/cache/harden/vm/current/base.qcow2",
        base_digest=BASE_DIGEST,
        baseline=_baseline(),
        labels={"org.opencontainers.image.title": "t"},
    )


def test_manifest_is_an_oci_artifact_with_the_build_facts(files: dict[str, Path]) -> None:
    a = _artifact(files)
    assert a.digest == compute_digest(a.manifest)
    assert _artifact(files).manifest == a.manifest  # deterministic: same inputs, same digest
    doc = json.loads(a.manifest)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"]["digest"] == EMPTY_DIGEST
    assert [
        (x["mediaType"], x["annotations"]["org.opencontainers.image.title"]) for x in doc["layers"]
    ] == [
        (QCOW2_MEDIA_TYPE, "t.qcow2"),
        (KERNEL_MEDIA_TYPE, "t.vmlinuz"),
        (INITRD_MEDIA_TYPE, "t.initrd.img"),
    ]
    for layer, path in zip(doc["layers"], files.values(), strict=True):
        assert layer["digest"] == _sha(path.read_bytes())
        assert layer["size"] == path.stat().st_size
    ann = doc["annotations"]
    assert ann["org.opencontainers.image.created"] == "2026-08-01T09:00:00Z"
    assert ann["org.opencontainers.image.base.digest"] == BASE_DIGEST
    assert ann["dev.harden.baseline.digest"] == report().baseline.digest
    assert ann["dev.harden.baseline.id"] == report().baseline.id


def test_push_sign_attach_tag_then_promote_by_digest(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("harden.oci.client.UPLOAD_CHUNK", 1024)  # the qcow2 goes in chunks
    fake = FakeRegistry()
    client, _ = client_for(fake, max_retries=0)
    a = _artifact(files)
    subject = push_untagged(client, "staging/vm", a)
    assert "staging/vm" not in fake.tags  # untagged until the attestations are attached
    assert sum(e.startswith("PATCH /v2/staging/vm/blobs/uploads/") for e in fake.log) >= 4

    keygen(KeyType.ECDSA_P256, tmp_path / "k", b"pw")
    signer = load_signer(f"file:{tmp_path / 'k.key'}", b"pw")
    qcow2 = files["t.qcow2"]
    r = report()
    signed = sign_statements(
        r,
        [
            Subject(qcow2.name, _sha(qcow2.read_bytes())),
            Subject("reg.test:5000/staging/vm", a.digest),
        ],
        signer,
        verified_at=r.finished_at,
        valid_until=r.finished_at + dt.timedelta(days=30),
        waivers={},
        build=None,
    )
    written = write_attestations(qcow2, [s.envelope for s in signed])
    assert written == attestations_path(qcow2) == qcow2.with_name("t.qcow2.attestations.json")
    assert not list(tmp_path.glob(".*"))
    pub = load_public_key(tmp_path / "k.pub")
    for env in json.loads(written.read_text()):
        v = dsse.verify(json.dumps(env).encode(), [pub])
        assert v.statement.matches(_sha(qcow2.read_bytes())) and v.statement.matches(a.digest)

    attach_all(client, "staging/vm", subject, signed, r.finished_at)
    tag(client, "staging/vm", "latest", a)
    assert fake.tags["staging/vm"]["latest"] == a.digest
    assert len(list_attestations(client, "staging/vm", a.digest)) == 2

    now = r.finished_at + dt.timedelta(hours=1)
    # the gate requires the registry's signed revocation list
    from harden.attest import revlist

    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(revlist.LOCATION_ENV, raising=False)
    revlist.init(client, revlist.location_for("reg.test:5000"), signer, r.finished_at)
    result = promote(
        client,
        parse_reference("reg.test:5000/staging/vm:latest"),
        client,
        parse_reference("reg.test:5000/prod/vm:latest"),
        [pub],
        FixedClock(now),
        AuditLog(tmp_path / "audit.db", FixedClock(now)),
    )
    assert result.allowed and result.copied, result.decision.reasons
    assert fake.tags["prod/vm"]["latest"] == a.digest
    assert fake.manifests["prod/vm"][a.digest] == (a.manifest, OCI_MANIFEST)
    assert fake.blobs["prod/vm"][_sha(qcow2.read_bytes())] == qcow2.read_bytes()


def test_a_statement_for_the_file_only_does_not_pass_the_gate(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRegistry()
    client, _ = client_for(fake, max_retries=0)
    a = _artifact(files)
    subject = push_untagged(client, "staging/vm", a)
    tag(client, "staging/vm", "latest", a)
    keygen(KeyType.ECDSA_P256, tmp_path / "k", b"pw")
    signer = load_signer(f"file:{tmp_path / 'k.key'}", b"pw")
    r = report()
    signed = sign_statements(
        r,
        Subject("t.qcow2", _sha(files["t.qcow2"].read_bytes())),
        signer,
        verified_at=r.finished_at,
        valid_until=r.finished_at + dt.timedelta(days=30),
        waivers={},
        build=None,
    )
    attach_all(client, "staging/vm", subject, signed, r.finished_at)
    now = r.finished_at + dt.timedelta(hours=1)
    # the gate requires the registry's signed revocation list
    from harden.attest import revlist

    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(revlist.LOCATION_ENV, raising=False)
    revlist.init(client, revlist.location_for("reg.test:5000"), signer, r.finished_at)
    result = promote(
        client,
        parse_reference("reg.test:5000/staging/vm:latest"),
        client,
        parse_reference("reg.test:5000/prod/vm:latest"),
        [load_public_key(tmp_path / "k.pub")],
        FixedClock(now),
        AuditLog(tmp_path / "audit.db", FixedClock(now)),
    )
    assert not result.allowed and not result.copied
    assert any(a.digest in reason for reason in result.decision.reasons)
