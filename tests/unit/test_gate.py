"""The promotion gate: each policy alone and composed; clocks are injected, never read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harden.attest import statements as st
from harden.attest.dsse import VerifiedStatement, sign
from harden.attest.keys import KeyType, PublicKey, Signer, keygen, load_public_key, load_signer
from harden.attest.predicates import RevocationListEntry
from harden.attest.statements import Subject
from harden.baseline.model import Waiver
from harden.clock import FixedClock
from harden.errors import HardenError
from harden.gate import (
    AllOf,
    BaselineAllowed,
    Decision,
    Evidence,
    KnownPredicate,
    NotOlderThan,
    NotRevoked,
    ResultPassed,
    RevocationListView,
    SignatureValid,
    SubjectMatches,
    ValidUntilFuture,
    decide,
    default_gate,
    gather_evidence,
    latest_compliance,
)
from harden.results import BaselineRef, RuleResult, Status, VerifyReport, WaiverInfo

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
T0 = dt.datetime(2026, 8, 1, 12, 0, tzinfo=dt.UTC)
WAIVER = Waiver(rule="deb12.aide", reason="host IDS", owner="secops", expires=dt.date(2026, 8, 20))


def _rule(rule_id: str, status: Status) -> RuleResult:
    waiver = None
    if status is Status.WAIVED:
        waiver = WaiverInfo(WAIVER.reason, WAIVER.owner, WAIVER.expires, False)
    return RuleResult(rule_id, status, rule_id, "high", "file", {}, waiver=waiver)


def _report(*statuses: Status, baseline: str = "debian12-cis") -> VerifyReport:
    ids = {Status.WAIVED: "deb12.aide"}
    results = tuple(
        _rule(ids.get(s, f"deb12.r{i}"), s) for i, s in enumerate((Status.PASSED, *statuses))
    )
    return VerifyReport(
        image="img",
        digest=A,
        target="container",
        platform="debian 12",
        baseline=BaselineRef(baseline, "1.0.0", "sha256:" + "e" * 64),
        results=results,
        started_at=T0,
        finished_at=T0,
    )


def _verified(statement: dict[str, Any], keyid: str = "k1") -> VerifiedStatement:
    payload = st.serialize(statement)
    return VerifiedStatement(payload, st.parse(payload), keyid)


def compliance(
    *statuses: Status,
    digest: str = A,
    at: dt.datetime = T0,
    valid: dt.timedelta = dt.timedelta(days=30),
    baseline: str = "debian12-cis",
) -> VerifiedStatement:
    return _verified(
        st.compliance(
            Subject("reg/img", digest),
            _report(*statuses, baseline=baseline),
            verified_at=at,
            valid_until=at + valid,
            waivers={WAIVER.rule: WAIVER},
            controls={},
        )
    )


def revoked(digest: str = A) -> VerifiedStatement:
    return _verified(
        st.revocation(
            Subject("reg/img", digest),
            reason="CVE-2026-1",
            revoked_at=T0,
            revoked_by="secops",
            cascade_from=None,
        )
    )


def other_predicate(digest: str = A) -> VerifiedStatement:
    return _verified(
        {
            "_type": st.STATEMENT_TYPE,
            "subject": [{"digest": {"sha256": digest[7:]}}],
            "predicateType": "https://example.com/unknown/v1",
            "predicate": {"x": 1},
        }
    )


def rlist(*entries: RevocationListEntry, **changes: Any) -> RevocationListView:
    """A revocation list as harden.attest.revlist.fetch returns it once it verified."""
    fields: dict[str, Any] = {
        "location": "reg/harden/revocations:current",
        "version": 3,
        "issued_at": T0 - dt.timedelta(days=1),
        "expires_at": T0 + dt.timedelta(days=60),
        "entries": entries,
        "keyid": "k1",
    }
    return RevocationListView(**{**fields, **changes})


def entry(kind: str, digest: str = A, at: dt.datetime = T0, repo: str = "reg/other") -> Any:
    return RevocationListEntry.model_validate(
        {
            "digest": digest,
            "kind": kind,
            "at": at,
            "reason": "CVE-2026-9",
            "by": "secops",
            "repository": repo,
        }
    )


GOOD_LIST = rlist()


def ev(
    *statements: VerifiedStatement,
    now: dt.datetime = T0 + dt.timedelta(hours=1),
    subject: str = A,
    rejected: Sequence[str] = (),
    revocations: Sequence[VerifiedStatement] = (),
    revocation_list: RevocationListView | None = GOOD_LIST,
) -> Evidence:
    return Evidence(
        subject, list(statements), list(rejected), list(revocations), now, revocation_list
    )


GATE = default_gate(dt.timedelta(days=7), ["debian12-cis"])


# ---------------------------------------------------------------- the good case


def test_fresh_passing_attestation_allowed() -> None:
    d = decide(GATE, ev(compliance()))
    assert d == Decision(True, [], A, GATE.names(), T0 + dt.timedelta(hours=1))
    j = d.to_json()
    assert j["allowed"] is True and j["reasons"] == [] and j["schema_version"] == 1
    assert j["decided_at"] == "2026-08-01T13:00:00Z"
    assert "NotRevoked" in j["policies"] and "BaselineAllowed" in j["policies"]


# ---------------------------------------------------------------- each policy alone


def test_signature_valid() -> None:
    assert SignatureValid().check(ev(compliance())) == []
    reasons = SignatureValid().check(ev(rejected=["att-1: no signature by a trusted key"]))
    assert reasons == [
        "no attestation verified against a trusted key",
        "rejected: att-1: no signature by a trusted key",
    ]


def test_subject_matches_by_digest() -> None:
    assert SubjectMatches().check(ev(compliance(digest=A))) == []
    (reason,) = SubjectMatches().check(ev(compliance(digest=A), subject=B))
    assert B in reason and A in reason


def test_known_predicate() -> None:
    assert KnownPredicate().check(ev(compliance(), other_predicate())) == []
    (reason,) = KnownPredicate().check(ev(other_predicate()))
    assert "https://example.com/unknown/v1" in reason


def test_result_passed() -> None:
    assert ResultPassed().check(ev(compliance())) == []
    (reason,) = ResultPassed().check(ev(compliance(Status.FAILED)))
    assert "not compliant" in reason and "1 failed" in reason
    assert ResultPassed().check(ev(compliance(Status.ERROR)))
    assert ResultPassed().check(ev(compliance(Status.NOT_APPLICABLE))) == []


def test_waived_failures_allowed_until_the_waiver_expires() -> None:
    clock = FixedClock(T0 + dt.timedelta(hours=1))
    att = compliance(Status.WAIVED)
    assert ResultPassed().check(ev(att, now=clock.now())) == []
    clock.advance(dt.timedelta(days=18, hours=10))  # 2026-08-19 (still valid on expiry day)
    assert ResultPassed().check(ev(att, now=clock.now())) == []
    clock.advance(dt.timedelta(days=2))  # 2026-08-21
    (reason,) = ResultPassed().check(ev(att, now=clock.now()))
    assert "deb12.aide" in reason and "expired on 2026-08-20" in reason


def test_latest_compliance_decides() -> None:
    old_pass = compliance(at=T0 - dt.timedelta(hours=2))
    new_fail = compliance(Status.FAILED, at=T0)
    assert ResultPassed().check(ev(old_pass, new_fail))
    old_fail = compliance(Status.FAILED, at=T0 - dt.timedelta(hours=2))
    new_pass = compliance(at=T0)
    assert ResultPassed().check(ev(old_fail, new_pass)) == []


@pytest.mark.parametrize("order", ["fail-first", "pass-first"])
def test_equal_verified_at_is_decided_the_same_in_either_order_and_fails_closed(
    order: str,
) -> None:
    passing, failing = compliance(at=T0), compliance(Status.FAILED, at=T0)
    pair = (failing, passing) if order == "fail-first" else (passing, failing)
    d = decide(GATE, ev(*pair))
    assert not d.allowed
    assert any(r.startswith("ResultPassed: ") and "not compliant" in r for r in d.reasons)
    # status and the evidence bundle pick through the same function: the same answer there
    from harden.attest.verification import newest_compliance

    newest, _ = newest_compliance(ev(*pair).statements)
    assert newest is not None and newest[1].compliant is False


def test_equal_verified_at_between_passes_picks_the_one_expiring_first() -> None:
    short, long_ = compliance(valid=dt.timedelta(hours=2)), compliance(valid=dt.timedelta(days=9))
    for pair in ((short, long_), (long_, short)):
        c, _ = latest_compliance(ev(*pair))
        assert c is not None and c.validUntil == T0 + dt.timedelta(hours=2)


def test_revocation_list_missing_problem_or_expired_denies() -> None:
    fine = ev(compliance())
    assert decide(GATE, fine).allowed
    for bad, why in [
        (None, "no revocation list was consulted"),
        (rlist(problem="the revocation list x is missing"), "is missing"),
        (rlist(problem="the revocation list x was rolled back: version 2"), "rolled back"),
        (rlist(expires_at=T0), "expired at"),
    ]:
        d = decide(GATE, ev(compliance(), revocation_list=bad))
        assert not d.allowed
        assert any(r.startswith("RevocationListCurrent: ") and why in r for r in d.reasons)


def test_a_revocation_in_the_list_denies_whatever_the_index_lists() -> None:
    # no revocation referrer at all (dropped from the index); the list names the digest,
    # revoked while it lived in another repository
    d = decide(GATE, ev(compliance(), revocation_list=rlist(entry("revoked", repo="reg/x"))))
    assert not d.allowed
    assert any(r.startswith("NotRevoked: revoked in reg/x") for r in d.reasons), d.reasons
    assert decide(GATE, ev(compliance(), revocation_list=rlist(entry("revoked", B)))).allowed


def test_a_failure_in_the_list_beats_an_older_or_equal_pass_not_a_newer_one() -> None:
    failed_at_t0 = rlist(entry("failed", at=T0))
    for at in (T0 - dt.timedelta(hours=3), T0):
        d = decide(GATE, ev(compliance(at=at), revocation_list=failed_at_t0))
        assert not d.allowed
        assert any(r.startswith("NoLaterFailure: ") for r in d.reasons), d.reasons
    later_pass = compliance(at=T0 + dt.timedelta(minutes=30))
    assert decide(GATE, ev(later_pass, revocation_list=failed_at_t0)).allowed


def test_result_passed_falls_back_to_test_result() -> None:
    def tr(*statuses: Status) -> VerifiedStatement:
        return _verified(st.test_result(Subject("r", A), _report(*statuses), ""))

    assert ResultPassed().check(ev(tr())) == []
    assert "FAILED" in ResultPassed().check(ev(tr(Status.FAILED)))[0]
    assert "WARNED" in ResultPassed().check(ev(tr(Status.WAIVED)))[0]
    assert "no verification result" in ResultPassed().check(ev(other_predicate()))[0]


def test_not_older_than_with_a_moving_clock() -> None:
    clock = FixedClock(T0)
    policy = NotOlderThan(dt.timedelta(days=7))
    att = compliance(at=T0)
    assert policy.check(ev(att, now=clock.now())) == []
    clock.advance(dt.timedelta(days=7))
    assert policy.check(ev(att, now=clock.now())) == []
    clock.advance(dt.timedelta(seconds=1))
    (reason,) = policy.check(ev(att, now=clock.now()))
    assert "older than the maximum age 7d" in reason
    future = compliance(at=T0 + dt.timedelta(hours=1))
    assert "in the future" in policy.check(ev(future, now=T0))[0]
    with pytest.raises(HardenError):
        NotOlderThan(dt.timedelta(0))


def test_valid_until_future_with_a_moving_clock() -> None:
    clock = FixedClock(T0)
    att = compliance(at=T0, valid=dt.timedelta(days=1))
    assert ValidUntilFuture().check(ev(att, now=clock.now())) == []
    clock.advance(dt.timedelta(days=1))
    (reason,) = ValidUntilFuture().check(ev(att, now=clock.now()))
    assert "expired at 2026-08-02T12:00:00Z" in reason
    assert "no valid compliance" in ValidUntilFuture().check(ev(other_predicate()))[0]


def test_baseline_allowed() -> None:
    att = compliance(baseline="debian12-cis")
    assert BaselineAllowed(["debian12-cis"]).check(ev(att)) == []
    assert BaselineAllowed(["debian12-cis@1.0.0"]).check(ev(att)) == []
    (reason,) = BaselineAllowed(["debian12-cis@2.0.0", "other"]).check(ev(att))
    assert "debian12-cis@1.0.0 is not allowed" in reason
    with pytest.raises(ValueError):
        BaselineAllowed([])


def test_not_revoked() -> None:
    assert NotRevoked().check(ev(compliance())) == []
    (reason,) = NotRevoked().check(ev(compliance(), revocations=[revoked(A)]))
    assert reason == "revoked at 2026-08-01T12:00:00Z by secops: CVE-2026-1"
    # a revocation of another digest does not matter
    assert NotRevoked().check(ev(compliance(), revocations=[revoked(B)])) == []
    # a revocation handed in among the statements is still seen
    assert NotRevoked().check(ev(compliance(), revoked(A)))


def test_malformed_predicate_from_a_trusted_key_denies() -> None:
    bad = _verified(
        {
            "_type": st.STATEMENT_TYPE,
            "subject": [{"digest": {"sha256": "a" * 64}}],
            "predicateType": st.HARDEN_COMPLIANCE,
            "predicate": {"compliant": "yes"},
        }
    )
    reasons = decide(GATE, ev(bad)).reasons
    assert any("malformed" in r for r in reasons)
    assert any(r.startswith("ResultPassed:") for r in reasons)


# ---------------------------------------------------------------- composed


def test_empty_allof_raises() -> None:
    with pytest.raises(ValueError):
        AllOf([])
    with pytest.raises(HardenError):
        AllOf([])


def test_gate_without_optional_policies() -> None:
    g = default_gate(None, [])
    assert "NotOlderThan" not in g.names() and "BaselineAllowed" not in g.names()
    assert decide(g, ev(compliance(at=T0 - dt.timedelta(days=20)))).allowed


@pytest.mark.parametrize(
    ("evidence", "policy"),
    [
        (ev(rejected=["x: no signature by a trusted key"]), "SignatureValid"),
        (ev(compliance(digest=A), subject=B), "SubjectMatches"),
        (ev(compliance(Status.FAILED)), "ResultPassed"),
        (ev(compliance(at=T0 - dt.timedelta(days=8))), "NotOlderThan"),
        (ev(compliance(valid=dt.timedelta(minutes=30))), "ValidUntilFuture"),
        (ev(compliance(baseline="ubuntu-cis")), "BaselineAllowed"),
        (ev(compliance(), revocations=[revoked()]), "NotRevoked"),
        (ev(other_predicate()), "KnownPredicate"),
        (
            ev(compliance(Status.WAIVED), now=dt.datetime(2026, 8, 21, tzinfo=dt.UTC)),
            "ResultPassed",
        ),
    ],
)
def test_each_denial_through_the_default_gate(evidence: Evidence, policy: str) -> None:
    d = decide(GATE, evidence)
    assert not d.allowed
    assert any(r.startswith(f"{policy}: ") for r in d.reasons), d.reasons


def test_a_denial_lists_every_reason() -> None:
    att = compliance(
        Status.FAILED,
        at=T0 - dt.timedelta(days=8),
        valid=dt.timedelta(days=1),
        baseline="ubuntu-cis",
    )
    d = decide(GATE, ev(att, revocations=[revoked()]))
    failed = {r.split(":", 1)[0] for r in d.reasons}
    assert failed == {
        "ResultPassed",
        "NotOlderThan",
        "ValidUntilFuture",
        "BaselineAllowed",
        "NotRevoked",
    }
    nothing = decide(GATE, ev(rejected=["a: bad"]))
    assert {r.split(":", 1)[0] for r in nothing.reasons} == {
        "SignatureValid",
        "SubjectMatches",
        "KnownPredicate",
        "ResultPassed",
        "ValidUntilFuture",
        "NotOlderThan",
        "BaselineAllowed",
    }


def test_nested_allof() -> None:
    inner = AllOf([NotRevoked()], name="inner")
    outer = AllOf([SignatureValid(), inner])
    assert outer.names() == ["SignatureValid", "NotRevoked"]
    assert outer.check(ev(compliance(), revocations=[revoked()])) == [
        "inner: NotRevoked: revoked at 2026-08-01T12:00:00Z by secops: CVE-2026-1"
    ]


# ---------------------------------------------------------------- with real envelopes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, PublicKey, Signer]:
    d: Path = tmp_path_factory.mktemp("gate-keys")
    k, p = keygen(KeyType.ED25519, d / "trusted", b"pw")
    u, _ = keygen(KeyType.ED25519, d / "untrusted", b"pw")
    return load_signer(str(k), b"pw"), load_public_key(p), load_signer(str(u), b"pw")


def test_untrusted_signature_denied_end_to_end(keys: tuple[Signer, PublicKey, Signer]) -> None:
    trusted_signer, trusted_pub, untrusted_signer = keys
    good = compliance()
    env_untrusted = sign(good.payload, untrusted_signer)
    e = gather_evidence([("att-1", env_untrusted)], [trusted_pub], A, T0)
    assert e.statements == [] and e.rejected == ["att-1: no signature by a trusted key"]
    d = decide(GATE, e)
    assert (
        not d.allowed
        and "SignatureValid: rejected: att-1: no signature by a trusted key" in d.reasons
    )

    env_good = sign(good.payload, trusted_signer)
    env_revoked = sign(revoked().payload, trusted_signer)
    e2 = gather_evidence([("a", env_good), ("b", b"junk")], [trusted_pub], A, T0, GOOD_LIST)
    assert decide(GATE, e2).allowed  # junk next to a good attestation does not block
    e3 = gather_evidence([("a", env_good), ("r", env_revoked)], [trusted_pub], A, T0, GOOD_LIST)
    assert len(e3.revocations) == 1
    assert not decide(GATE, e3).allowed
