"""promote() and the attestation store against the in-memory registry (no network, no engine)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from test_oci_client import FakeRegistry, client_for, seed_image

from harden.attest import dsse, revlist
from harden.attest.keys import KeyType, Signer, keygen, load_public_key, load_signer
from harden.attest.predicates import HARDEN_COMPLIANCE, HARDEN_REVOCATION, STATEMENT_TYPE
from harden.attest.statements import serialize
from harden.attest.store import attach, fetch_envelopes, list_attestations
from harden.audit import AuditLog
from harden.clock import FixedClock
from harden.errors import InputError, RegistryError, UsageError
from harden.oci import Descriptor, RegistryClient, parse_reference
from harden.oci.model import OCI_MANIFEST
from harden.promote import promote
from harden.results import rfc3339

NOW = dt.datetime(2026, 8, 10, 12, 0, tzinfo=dt.UTC)
SRC = parse_reference("reg.test:5000/staging/app:1")
DST = parse_reference("reg.test:5000/prod/app:1")


def statement(digest: str, predicate_type: str, predicate: dict[str, Any]) -> bytes:
    return serialize(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "app", "digest": {"sha256": digest.partition(":")[2]}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        }
    )


def compliance(digest: str, *, age: dt.timedelta = dt.timedelta(hours=1), ok: bool = True) -> bytes:
    return statement(
        digest,
        HARDEN_COMPLIANCE,
        {
            "verifiedAt": rfc3339(NOW - age),
            "validUntil": rfc3339(NOW - age + dt.timedelta(days=30)),
            "compliant": ok,
            "baseline": {"id": "debian-container", "version": "1.0.0", "digest": digest},
            "summary": {"passed": 3, "failed": 0 if ok else 1, "error": 0},
        },
    )


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Signer, Path, Path]:
    _, pub = keygen(KeyType.ECDSA_P256, tmp_path / "k", b"pw")
    _, other = keygen(KeyType.ED25519, tmp_path / "o", b"pw")
    return load_signer(f"file:{tmp_path / 'k.key'}", b"pw"), pub, other


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HARDEN_HOME per test: the newest revocation list version seen is kept there."""
    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HARDEN_REVOCATIONS", raising=False)
    return tmp_path / "home"


LIST = revlist.location_for("reg.test:5000")


@pytest.fixture
def reg(keys: Any) -> tuple[FakeRegistry, RegistryClient, str, Descriptor]:
    fake = FakeRegistry()
    client, _ = client_for(fake, max_retries=0)
    digest, data = seed_image(fake, "staging/app", "1")
    revlist.init(client, LIST, keys[0], NOW - dt.timedelta(hours=2))
    return fake, client, digest, Descriptor(OCI_MANIFEST, digest, len(data))


def run(client: RegistryClient, pub: Path, home: Path, **kw: Any) -> Any:
    audit = AuditLog(home / "audit.db", FixedClock(NOW))
    result = promote(client, SRC, client, DST, [load_public_key(pub)], FixedClock(NOW), audit, **kw)
    return result, audit.entries()


def test_allowed_copies_identical_bytes_with_referrers_and_audits(
    reg: Any, keys: Any, tmp_path: Path
) -> None:
    fake, client, digest, subject = reg
    signer, pub, _ = keys
    attach(
        client,
        "staging/app",
        subject,
        dsse.sign(compliance(digest), signer),
        HARDEN_COMPLIANCE,
        NOW,
    )
    result, entries = run(client, pub, tmp_path, max_age=dt.timedelta(days=30))
    assert result.allowed and result.copied and result.digest == digest
    assert fake.tags["prod/app"]["1"] == digest
    assert fake.manifests["prod/app"][digest] == fake.manifests["staging/app"][digest]
    assert len(list_attestations(client, "prod/app", digest)) == 1
    assert [(e.action, e.outcome) for e in entries] == [
        ("promote", "allowed"),
        ("promote", "copied"),
    ]
    assert result.to_json()["schema_version"] == 1


def test_dry_run_and_denial_copy_nothing_but_are_audited(
    reg: Any, keys: Any, tmp_path: Path
) -> None:
    fake, client, digest, subject = reg
    signer, pub, other = keys
    attach(
        client,
        "staging/app",
        subject,
        dsse.sign(compliance(digest), signer),
        HARDEN_COMPLIANCE,
        NOW,
    )
    result, entries = run(client, pub, tmp_path, dry_run=True)
    assert result.allowed and not result.copied
    result, entries = run(client, other, tmp_path)
    assert not result.allowed and not result.copied
    assert any("no signature by a trusted key" in r for r in result.decision.reasons)
    assert "prod/app" not in fake.tags
    assert [e.outcome for e in entries] == ["allowed (dry run)", "denied"]
    assert entries[-1].details["reasons"] == result.decision.reasons


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda d: compliance(d, age=dt.timedelta(days=40)), "older than the maximum age"),
        (lambda d: compliance(d, ok=False), "was not compliant"),
        (lambda d: compliance("sha256:" + "cd" * 32), "no verified attestation has subject"),
    ],
)
def test_denials_name_the_reason(
    reg: Any, keys: Any, tmp_path: Path, payload: Any, reason: str
) -> None:
    _, client, digest, subject = reg
    signer, pub, _ = keys
    env = dsse.sign(payload(digest), signer)
    attach(client, "staging/app", subject, env, HARDEN_COMPLIANCE, NOW)
    result, _ = run(client, pub, tmp_path, max_age=dt.timedelta(days=30))
    assert not result.allowed
    assert any(reason in r for r in result.decision.reasons), result.decision.reasons


def test_revocation_next_to_a_good_attestation_denies(reg: Any, keys: Any, tmp_path: Path) -> None:
    _, client, digest, subject = reg
    signer, pub, _ = keys
    attach(
        client,
        "staging/app",
        subject,
        dsse.sign(compliance(digest), signer),
        HARDEN_COMPLIANCE,
        NOW,
    )
    revoked = statement(
        digest,
        HARDEN_REVOCATION,
        {"reason": "bad base", "revokedAt": rfc3339(NOW), "revokedBy": "secops"},
    )
    attach(client, "staging/app", subject, dsse.sign(revoked, signer), HARDEN_REVOCATION, NOW)
    result, _ = run(client, pub, tmp_path)
    assert not result.allowed
    assert any(
        r.startswith("NotRevoked: revoked") and "bad base" in r for r in result.decision.reasons
    )


def test_store_bounds_reads_and_reports_bad_content(reg: Any, keys: Any) -> None:
    fake, client, digest, subject = reg
    signer, _, _ = keys
    good = attach(
        client,
        "staging/app",
        subject,
        dsse.sign(compliance(digest), signer),
        HARDEN_COMPLIANCE,
        NOW,
    )
    big = attach(client, "staging/app", subject, b"x" * 100, HARDEN_COMPLIANCE, NOW)
    fetched = fetch_envelopes(client, "staging/app", digest, max_bytes=99)
    assert [label for label, _ in fetched.envelopes] == []  # both over 99 bytes
    fetched = fetch_envelopes(client, "staging/app", digest, max_bytes=10_000)
    assert {label for label, _ in fetched.envelopes} == {
        f"referrer {good.digest}",
        f"referrer {big.digest}",
    }
    # the registry serves other bytes for one referrer manifest: reported, not fatal (a new
    # reader: a client keeps the manifests it already verified by digest)
    data, media_type = fake.manifests["staging/app"][big.digest]
    fake.manifests["staging/app"][big.digest] = (
        data.replace(b'"size":100', b'"size":101'),
        media_type,
    )
    fresh, _ = client_for(fake, max_retries=0)
    assert fetch_envelopes(client, "staging/app", digest).problems == []  # the verified copy
    fetched = fetch_envelopes(fresh, "staging/app", digest)
    assert [label for label, _ in fetched.envelopes] == [f"referrer {good.digest}"]
    assert len(fetched.problems) == 1 and "content has digest" in fetched.problems[0]


def test_destination_needs_a_tag_and_a_key(reg: Any, keys: Any, tmp_path: Path) -> None:
    _, client, _, _ = reg
    _, pub, _ = keys
    audit = AuditLog(tmp_path / "a.db", FixedClock(NOW))
    with pytest.raises(UsageError):
        promote(
            client,
            SRC,
            client,
            parse_reference("reg.test:5000/prod/app"),
            [load_public_key(pub)],
            FixedClock(NOW),
            audit,
        )
    with pytest.raises(UsageError):
        promote(client, SRC, client, DST, [], FixedClock(NOW), audit)


def _good(client: RegistryClient, subject: Descriptor, signer: Signer) -> None:
    env = dsse.sign(compliance(subject.digest), signer)
    attach(client, "staging/app", subject, env, HARDEN_COMPLIANCE, NOW)


def test_missing_or_expired_revocation_list_denies(reg: Any, keys: Any, tmp_path: Path) -> None:
    fake, client, _digest, subject = reg
    signer, pub, _ = keys
    _good(client, subject, signer)
    assert run(client, pub, tmp_path, dry_run=True)[0].allowed
    revlist.refresh(client, LIST, signer, NOW - dt.timedelta(days=9), dt.timedelta(days=7))
    result, _ = run(client, pub, tmp_path, dry_run=True)
    assert not result.allowed
    assert any("RevocationListCurrent" in r and "expired" in r for r in result.decision.reasons)
    del fake.tags["harden/revocations"]["current"]
    result, _ = run(client, pub, tmp_path, dry_run=True)
    assert any("RevocationListCurrent" in r and "missing" in r for r in result.decision.reasons)


def test_revocation_list_signed_by_an_untrusted_key_denies(
    reg: Any, keys: Any, tmp_path: Path
) -> None:
    _fake, client, _digest, subject = reg
    signer, _pub, other = keys
    _good(client, subject, signer)
    result, _ = run(client, other, tmp_path, dry_run=True)  # trusts only the other key
    assert any(
        "RevocationListCurrent" in r and "cannot be trusted" in r for r in result.decision.reasons
    )


def test_rolled_back_revocation_list_denies(reg: Any, keys: Any, tmp_path: Path) -> None:
    fake, client, digest, subject = reg
    signer, pub, _ = keys
    _good(client, subject, signer)
    v1 = fake.tags["harden/revocations"]["current"]
    entry = revlist.Entry(digest, "revoked", NOW, "CVE-2026-7", "secops", "reg.test:5000/x")
    assert revlist.append(client, LIST, signer, [entry], NOW) == 2
    assert not run(client, pub, tmp_path, dry_run=True)[0].allowed  # revoked; v2 seen
    fake.tags["harden/revocations"]["current"] = v1  # the attacker serves the old version
    result, _ = run(client, pub, tmp_path, dry_run=True)
    assert not result.allowed
    assert any("rolled back" in r for r in result.decision.reasons), result.decision.reasons


def test_writers_never_recreate_a_list_that_is_gone(reg: Any, keys: Any) -> None:
    fake, client, digest, _ = reg
    signer = keys[0]
    del fake.tags["harden/revocations"]["current"]
    entry = revlist.Entry(digest, "revoked", NOW, "CVE-2026-7", "secops")
    with pytest.raises(RegistryError, match="missing"):
        revlist.append(client, LIST, signer, [entry], NOW)
    with pytest.raises(InputError, match="existed before"):
        revlist.init(client, LIST, signer, NOW)


@pytest.mark.parametrize("tag_of", [lambda d: "sha256-" + d[7:], lambda d: "sha512-abc"])
def test_reserved_referrers_tag_is_refused_as_target(
    reg: Any, keys: Any, tmp_path: Path, tag_of: Any
) -> None:
    fake, client, digest, subject = reg
    signer, pub, _ = keys
    _good(client, subject, signer)
    dst = parse_reference(f"reg.test:5000/prod/app:{tag_of(digest)}")
    audit = AuditLog(tmp_path / "audit.db", FixedClock(NOW))
    with pytest.raises(InputError, match="reserved for the OCI referrers tag schema") as e:
        promote(client, SRC, client, dst, [load_public_key(pub)], FixedClock(NOW), audit)
    assert e.value.exit_code == 3
    assert "prod/app" not in fake.tags and audit.entries() == []
