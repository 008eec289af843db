"""The promotion gate: small policy objects combined with :class:`AllOf`.

Pure: no I/O and no clock; the caller verifies the envelopes (only statements that verified
against trusted keys reach here) and passes the time in :class:`Evidence`. ``check`` returns the
reasons to deny; an empty list means the policy is satisfied. An empty :class:`AllOf` is an error,
never a pass.

Which compliance attestation counts: of the verified compliance statements whose subject is the
promoted digest, the one with the latest ``verifiedAt`` (a newer failing verification supersedes
an older pass). Equal ``verifiedAt`` are decided without looking at their order in the index (an
attacker chooses it): a failing result wins the tie, then the one that expires first, then the
larger statement hash (:func:`harden.attest.verification.newest_compliance`).

Nothing here decides from the absence of a record in the referrers index (which whoever can push
to the repository can rewrite): revocations and failed verifications also come from the signed,
expiring, versioned revocation list (:mod:`harden.attest.revlist`), keyed by digest across all
repositories, and a missing, expired, unverifiable or rolled-back list denies
(:class:`RevocationListCurrent`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harden.attest.dsse import VerifiedStatement, verify
from harden.attest.keys import PublicKey
from harden.attest.predicates import (
    HARDEN_COMPLIANCE,
    HARDEN_OPENSCAP_SCAN,
    HARDEN_REVOCATION,
    SLSA_PROVENANCE,
    TEST_RESULT,
    ComplianceV1,
    RevocationListEntry,
)
from harden.attest.verification import newest_compliance
from harden.errors import AttestationError, UsageError
from harden.results import rfc3339

__all__ = [
    "KNOWN_PREDICATES",
    "AllOf",
    "BaselineAllowed",
    "Decision",
    "Evidence",
    "GateConfigError",
    "KnownPredicate",
    "NoLaterFailure",
    "NotOlderThan",
    "NotRevoked",
    "Policy",
    "ResultPassed",
    "RevocationListCurrent",
    "RevocationListView",
    "ScanScoreAtLeast",
    "SignatureValid",
    "SubjectMatches",
    "ValidUntilFuture",
    "decide",
    "default_gate",
    "gather_evidence",
]

SCHEMA_VERSION = 1
KNOWN_PREDICATES = frozenset({HARDEN_COMPLIANCE, TEST_RESULT, SLSA_PROVENANCE})
# a verifiedAt this far ahead of the gate's clock is accepted (clock skew between machines)
CLOCK_SKEW = dt.timedelta(minutes=5)


class GateConfigError(UsageError, ValueError):
    """A gate that cannot be evaluated as configured (e.g. no policies)."""


@dataclass(frozen=True)
class RevocationListView:
    """The revocation list as read and checked (signature, version, rollback) by
    :func:`harden.attest.revlist.fetch`; ``problem`` says why it cannot be trusted."""

    location: str
    version: int = 0
    issued_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    entries: tuple[RevocationListEntry, ...] = ()
    keyid: str = ""
    problem: str | None = None

    def for_digest(self, digest: str, kind: str) -> list[RevocationListEntry]:
        return [e for e in self.entries if e.digest == digest and e.kind == kind]


@dataclass(frozen=True)
class Evidence:
    subject_digest: str  # the digest being promoted, sha256:<hex>
    statements: Sequence[VerifiedStatement]  # only the ones that verified against trusted keys
    rejected: Sequence[str]  # why other envelopes were rejected (bad signature, malformed, ...)
    revocations: Sequence[VerifiedStatement]
    now: dt.datetime
    revocation_list: RevocationListView | None = None  # None: no list was consulted (deny)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("Evidence.now must be an aware datetime")

    def for_subject(self, predicate_type: str | None = None) -> list[VerifiedStatement]:
        """Statements naming the promoted digest (optionally of one predicate type)."""
        return [
            s
            for s in self.statements
            if s.statement.matches(self.subject_digest)
            and (predicate_type is None or s.statement.predicateType == predicate_type)
        ]


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, ev: Evidence) -> list[str]: ...


def latest_compliance(ev: Evidence) -> tuple[ComplianceV1 | None, list[str]]:
    """The newest valid compliance predicate for the subject and the problems found on the way."""
    newest, problems = newest_compliance(ev.for_subject(HARDEN_COMPLIANCE))
    return (newest[1] if newest else None), problems


def _need_compliance(ev: Evidence) -> tuple[ComplianceV1 | None, list[str]]:
    c, problems = latest_compliance(ev)
    if c is None:
        problems.append(f"no valid compliance attestation for {ev.subject_digest}")
    return c, problems


@dataclass(frozen=True)
class SignatureValid:
    """At least one attestation verified against a trusted key."""

    name: str = "SignatureValid"

    def check(self, ev: Evidence) -> list[str]:
        if ev.statements:
            return []
        reasons = ["no attestation verified against a trusted key"]
        reasons += [f"rejected: {r}" for r in ev.rejected]
        return reasons


@dataclass(frozen=True)
class SubjectMatches:
    """A verified attestation names the promoted digest (matched purely by digest)."""

    name: str = "SubjectMatches"

    def check(self, ev: Evidence) -> list[str]:
        if ev.for_subject():
            return []
        others = sorted({d for s in ev.statements for d in s.statement.subject_digests})
        found = f" (attestations found for: {', '.join(others)})" if others else ""
        return [f"no verified attestation has subject {ev.subject_digest}{found}"]


@dataclass(frozen=True)
class KnownPredicate:
    """At least one attestation for the subject has a predicate type harden understands."""

    known: frozenset[str] = KNOWN_PREDICATES
    name: str = "KnownPredicate"

    def check(self, ev: Evidence) -> list[str]:
        mine = ev.for_subject()
        if any(s.statement.predicateType in self.known for s in mine):
            return []
        types = sorted({s.statement.predicateType for s in mine})
        return [
            f"no attestation with a known predicate type for {ev.subject_digest}"
            + (f" (found: {', '.join(types)})" if types else "")
        ]


@dataclass(frozen=True)
class ResultPassed:
    """The latest compliance attestation is compliant and each waiver in it is unexpired.

    Without a compliance attestation, every test-result attestation must be PASSED (WARNED is
    denied: test-result v0.1 does not carry when a waiver expires).
    """

    name: str = "ResultPassed"

    def check(self, ev: Evidence) -> list[str]:
        c, problems = latest_compliance(ev)
        if c is not None:
            return problems + self._compliance(c, ev)
        results = ev.for_subject(TEST_RESULT)
        if not results:
            return [
                *problems,
                f"no verification result (compliance or test-result) for {ev.subject_digest}",
            ]
        reasons = list(problems)
        for s in results:
            try:
                t = s.statement.test_result()
            except AttestationError as e:
                reasons.append(e.message)
                continue
            if t.result == "FAILED":
                reasons.append(f"test result FAILED: {', '.join(t.failedTests) or '(no ids)'}")
            elif t.result == "WARNED":
                reasons.append(
                    "test result WARNED (waived rules: "
                    f"{', '.join(t.warnedTests)}) and no compliance attestation carries the "
                    "waivers' expiry"
                )
        return reasons

    @staticmethod
    def _compliance(c: ComplianceV1, ev: Evidence) -> list[str]:
        reasons = []
        if not c.compliant:
            s = c.summary
            reasons.append(
                f"verification at {rfc3339(c.verifiedAt)} was not compliant "
                f"({s.get('failed', '?')} failed, {s.get('error', '?')} error)"
            )
        today = ev.now.astimezone(dt.UTC).date()
        for w in c.waivers:
            if w.expires < today:
                reasons.append(
                    f"waiver for rule {w.rule} (owner {w.owner}) expired on {w.expires.isoformat()}"
                )
        return reasons


@dataclass(frozen=True)
class NotOlderThan:
    """The latest compliance attestation's verifiedAt is within ``max_age`` of now."""

    max_age: dt.timedelta
    name: str = "NotOlderThan"

    def __post_init__(self) -> None:
        if self.max_age <= dt.timedelta(0):
            raise GateConfigError(f"max age must be positive, got {self.max_age}")

    def check(self, ev: Evidence) -> list[str]:
        c, problems = _need_compliance(ev)
        if c is None:
            return problems
        reasons = problems
        if c.verifiedAt < ev.now - self.max_age:
            reasons.append(
                f"verified at {rfc3339(c.verifiedAt)}, older than the maximum age "
                f"{_fmt_delta(self.max_age)}"
            )
        elif c.verifiedAt > ev.now + CLOCK_SKEW:
            reasons.append(f"verifiedAt {rfc3339(c.verifiedAt)} is in the future")
        return reasons


@dataclass(frozen=True)
class ValidUntilFuture:
    """The latest compliance attestation's validUntil is still ahead."""

    name: str = "ValidUntilFuture"

    def check(self, ev: Evidence) -> list[str]:
        c, problems = _need_compliance(ev)
        if c is None:
            return problems
        if c.validUntil <= ev.now:
            problems.append(f"compliance attestation expired at {rfc3339(c.validUntil)}")
        return problems


@dataclass(frozen=True, init=False)
class BaselineAllowed:
    """The latest compliance attestation verified against an allowed baseline.

    An entry is a baseline id (any version) or ``id@version``.
    """

    allowed: frozenset[str]
    name: str = "BaselineAllowed"

    def __init__(self, allowed: Iterable[str], name: str = "BaselineAllowed") -> None:
        ids = frozenset(allowed)
        if not ids:
            raise GateConfigError(
                "BaselineAllowed needs at least one baseline id",
                hint="leave the policy out to accept any baseline",
            )
        object.__setattr__(self, "allowed", ids)
        object.__setattr__(self, "name", name)

    def check(self, ev: Evidence) -> list[str]:
        c, problems = _need_compliance(ev)
        if c is None:
            return problems
        b = c.baseline
        if b.id in self.allowed or f"{b.id}@{b.version}" in self.allowed:
            return problems
        allowed = ", ".join(sorted(self.allowed))
        problems.append(f"baseline {b.id}@{b.version} is not allowed (allowed: {allowed})")
        return problems


@dataclass(frozen=True)
class RevocationListCurrent:
    """A revocation list was read, verified against a trusted key, is unexpired and is not
    older than a version seen before. Missing, stale or rolled back: deny."""

    name: str = "RevocationListCurrent"

    def check(self, ev: Evidence) -> list[str]:
        rl = ev.revocation_list
        if rl is None:
            return ["no revocation list was consulted"]
        if rl.problem is not None:
            return [rl.problem]
        if rl.expires_at is None or rl.expires_at <= ev.now:
            when = rfc3339(rl.expires_at) if rl.expires_at else "?"
            return [f"the revocation list {rl.location} (version {rl.version}) expired at {when}"]
        if rl.issued_at is not None and rl.issued_at > ev.now + CLOCK_SKEW:
            return [f"the revocation list {rl.location} was issued in the future"]
        return []


@dataclass(frozen=True)
class NoLaterFailure:
    """No failed verification of the digest recorded in the revocation list at or after the
    latest passing compliance result (the index may no longer list that failure)."""

    name: str = "NoLaterFailure"

    def check(self, ev: Evidence) -> list[str]:
        rl = ev.revocation_list
        if rl is None or rl.problem is not None:
            return []  # RevocationListCurrent denies
        failures = rl.for_digest(ev.subject_digest, "failed")
        if not failures:
            return []
        c, _ = latest_compliance(ev)
        return [
            f"verification at {rfc3339(f.at)} failed ({f.reason}), recorded in the revocation "
            f"list version {rl.version}"
            for f in failures
            if c is None or f.at >= c.verifiedAt
        ]


@dataclass(frozen=True)
class NotRevoked:
    """No verified revocation names the promoted digest: neither a referrer signed by a trusted
    key nor an entry of the revocation list (which covers every repository)."""

    name: str = "NotRevoked"

    def check(self, ev: Evidence) -> list[str]:
        reasons = []
        rl = ev.revocation_list
        if rl is not None and rl.problem is None:
            for e in rl.for_digest(ev.subject_digest, "revoked"):
                where = f" in {e.repository}" if e.repository else ""
                cascade = f", cascaded from {e.cascadeFrom}" if e.cascadeFrom else ""
                reasons.append(
                    f"revoked{where} at {rfc3339(e.at)} by {e.by}: {e.reason}{cascade} "
                    f"(revocation list version {rl.version})"
                )
        seen: set[bytes] = set()
        for s in [*ev.revocations, *ev.statements]:
            st = s.statement
            if st.predicateType != HARDEN_REVOCATION or not st.matches(ev.subject_digest):
                continue
            if s.payload in seen:
                continue
            seen.add(s.payload)
            try:
                r = st.revocation()
            except AttestationError as e:
                # a trusted key signed a revocation we cannot read: still a revocation
                reasons.append(f"revoked (unreadable revocation: {e.message})")
                continue
            cascade = f", cascaded from {r.cascadeFrom}" if r.cascadeFrom else ""
            reasons.append(
                f"revoked at {rfc3339(r.revokedAt)} by {r.revokedBy}: {r.reason}{cascade}"
            )
        return reasons


@dataclass(frozen=True)
class ScanScoreAtLeast:
    """A signed OpenSCAP scan attestation names the subject and its score is at least
    ``minimum`` (``harden promote --min-scan-score``). No valid scan attestation denies.

    Of several, the latest ``scannedAt`` counts (a newer, lower scan supersedes an older one).
    The predicate model re-derives the score from the signed counts, so a score that does not
    match its own counts is malformed, never a pass.
    """

    minimum: float
    name: str = "ScanScoreAtLeast"

    def __post_init__(self) -> None:
        if not 0 <= self.minimum <= 100:
            raise GateConfigError(f"the minimum scan score must be 0..100, got {self.minimum}")

    def check(self, ev: Evidence) -> list[str]:
        reasons: list[str] = []
        best = None
        for s in ev.for_subject(HARDEN_OPENSCAP_SCAN):
            try:
                scan = s.statement.openscap_scan()
            except AttestationError as e:
                reasons.append(f"scan attestation signed by {s.keyid[:12]}: {e.message}")
                continue
            if best is None or scan.scannedAt > best.scannedAt:
                best = scan
        if best is None:
            return [*reasons, f"no valid OpenSCAP scan attestation for {ev.subject_digest}"]
        if best.score is None or best.score < self.minimum:
            return [
                f"OpenSCAP {best.profile} score {best.score} at {rfc3339(best.scannedAt)} is "
                f"below the minimum {self.minimum:g}"
            ]
        return []


class AllOf:
    """Every policy must pass; ``check`` returns every reason of every failing policy."""

    def __init__(self, policies: Sequence[Policy], name: str = "AllOf") -> None:
        if not policies:
            raise GateConfigError(
                "a gate with no policies would allow everything",
                hint="use default_gate() or list at least one policy",
            )
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.name = name

    def check(self, ev: Evidence) -> list[str]:
        reasons: list[str] = []
        for p in self.policies:
            reasons += [f"{p.name}: {r}" for r in p.check(ev)]
        return reasons

    def names(self) -> list[str]:
        out: list[str] = []
        for p in self.policies:
            out += p.names() if isinstance(p, AllOf) else [p.name]
        return out


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: list[str]
    subject_digest: str = ""
    policies: list[str] = field(default_factory=list)
    decided_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "allowed": self.allowed,
            "subject": self.subject_digest,
            "decided_at": rfc3339(self.decided_at) if self.decided_at else None,
            "policies": list(self.policies),
            "reasons": list(self.reasons),
        }


def default_gate(max_age: dt.timedelta | None, baselines: Sequence[str]) -> AllOf:
    """Signature, subject, known predicate, passed result, validity, a current revocation list,
    no later failure, not revoked; plus
    NotOlderThan when ``max_age`` is given and BaselineAllowed when ``baselines`` is not empty."""
    policies: list[Policy] = [
        SignatureValid(),
        SubjectMatches(),
        KnownPredicate(),
        ResultPassed(),
        ValidUntilFuture(),
    ]
    if max_age is not None:
        policies.append(NotOlderThan(max_age))
    if baselines:
        policies.append(BaselineAllowed(baselines))
    policies += [RevocationListCurrent(), NoLaterFailure(), NotRevoked()]
    return AllOf(policies, name="default")


def decide(gate: AllOf, ev: Evidence) -> Decision:
    reasons = gate.check(ev)
    return Decision(
        allowed=not reasons,
        reasons=reasons,
        subject_digest=ev.subject_digest,
        policies=gate.names(),
        decided_at=ev.now,
    )


def gather_evidence(
    envelopes: Iterable[tuple[str, bytes]],
    trusted: Sequence[PublicKey],
    subject_digest: str,
    now: dt.datetime,
    revocation_list: RevocationListView | None = None,
) -> Evidence:
    """Verify ``(label, envelope bytes)`` pairs into :class:`Evidence` (no I/O; pure crypto).

    Envelopes that do not verify are listed in ``rejected`` as ``"<label>: <why>"``; verified
    revocations go to ``revocations``, everything else that verified to ``statements``.
    """
    statements: list[VerifiedStatement] = []
    revocations: list[VerifiedStatement] = []
    rejected: list[str] = []
    for label, env in envelopes:
        try:
            v = verify(env, trusted)
        except AttestationError as e:
            rejected.append(f"{label}: {e.message}")
            continue
        if v.statement.predicateType == HARDEN_REVOCATION:
            revocations.append(v)
        else:
            statements.append(v)
    return Evidence(subject_digest, statements, rejected, revocations, now, revocation_list)


def _fmt_delta(d: dt.timedelta) -> str:
    if d.total_seconds() % 86400 == 0:
        return f"{d.days}d"
    if d.total_seconds() % 3600 == 0:
        return f"{int(d.total_seconds() // 3600)}h"
    return str(d)
