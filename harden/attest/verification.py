"""The one verification of the attestations of a digest: signature with a trusted key, subject
= the digest, unreadable referrers kept. Pure (no I/O): the envelopes come from
:func:`harden.attest.store.fetch_envelopes`.

Each referrer becomes one :class:`CheckedAttestation`: a verified statement, or a typed
:class:`~harden.attest.store.AttestationProblem` (unreadable, unverified, other subject).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harden.attest.dsse import VerifiedStatement, verify
from harden.attest.keys import PublicKey
from harden.attest.predicates import HARDEN_COMPLIANCE, HARDEN_REVOCATION, ComplianceV1
from harden.attest.store import AttestationProblem, FetchedEnvelopes, ProblemKind
from harden.errors import AttestationError

__all__ = [
    "CheckedAttestation",
    "CheckedAttestations",
    "check_attestations",
    "newest_compliance",
]


@dataclass(frozen=True)
class CheckedAttestation:
    referrer: str  # the referrer manifest's digest
    verified: VerifiedStatement | None  # set when it counts
    problem: AttestationProblem | None  # set when it does not

    @property
    def ok(self) -> bool:
        return self.verified is not None


@dataclass(frozen=True)
class CheckedAttestations:
    digest: str
    attestations: tuple[CheckedAttestation, ...]

    @property
    def statements(self) -> list[VerifiedStatement]:
        """Verified statements about ``digest`` (revocations included)."""
        return [a.verified for a in self.attestations if a.verified is not None]

    @property
    def revocations(self) -> list[VerifiedStatement]:
        return [s for s in self.statements if s.statement.predicateType == HARDEN_REVOCATION]

    @property
    def problems(self) -> list[AttestationProblem]:
        return [a.problem for a in self.attestations if a.problem is not None]


def newest_compliance(
    statements: Iterable[VerifiedStatement],
) -> tuple[tuple[VerifiedStatement, ComplianceV1] | None, list[str]]:
    """The one choice of "the latest compliance": among verified statements (already about the
    right subject), the compliance predicate with the newest ``verifiedAt``, and the malformed
    ones found on the way. The promotion gate, status and the evidence bundle all use it.

    Equal ``verifiedAt`` are decided by :func:`_precedence`, never by the order of the
    statements (the order of a referrers index, which whoever can push chooses): ties fail
    closed."""
    problems: list[str] = []
    best: tuple[tuple[Any, ...], VerifiedStatement, ComplianceV1] | None = None
    for s in statements:
        if s.statement.predicateType != HARDEN_COMPLIANCE:
            continue
        try:
            c = s.statement.compliance()
        except AttestationError as e:
            problems.append(f"compliance attestation signed by {s.keyid[:12]}: {e.message}")
            continue
        key = _precedence(c, s.payload)
        if best is None or key > best[0]:
            best = (key, s, c)
    return (best[1], best[2]) if best else None, problems


def _precedence(c: ComplianceV1, payload: bytes) -> tuple[Any, ...]:
    """Order of compliance results, independent of where they sit in the index: the latest
    verifiedAt; on a tie the failing one, then the one expiring first (validUntil, waivers),
    then the larger statement hash (arbitrary, but the same every time)."""
    first_waiver = min((w.expires for w in c.waivers), default=dt.date.max)
    return (
        c.verifiedAt,
        not c.compliant,
        -c.validUntil.timestamp(),
        -first_waiver.toordinal(),
        hashlib.sha256(payload).hexdigest(),
    )


def check_envelope(
    referrer: str, envelope: bytes, trusted: Sequence[PublicKey], digest: str
) -> CheckedAttestation:
    """One envelope: verified with ``trusted`` keys and about the subject ``digest``, or the
    typed reason it does not count."""
    try:
        v = verify(envelope, trusted)
    except AttestationError as e:
        problem = AttestationProblem(referrer, ProblemKind.UNVERIFIED, e.message)
        return CheckedAttestation(referrer, None, problem)
    if not v.statement.matches(digest):
        problem = AttestationProblem(
            referrer,
            ProblemKind.OTHER_SUBJECT,
            "signed, but for another image: " + ", ".join(sorted(v.statement.subject_digests)),
            v.statement.predicateType,
        )
        return CheckedAttestation(referrer, None, problem)
    return CheckedAttestation(referrer, v, None)


def check_attestations(
    fetched: FetchedEnvelopes, trusted: Sequence[PublicKey], digest: str
) -> CheckedAttestations:
    """Verify every fetched envelope with ``trusted`` keys against the subject ``digest``."""
    out = [check_envelope(i.referrer, i.envelope, trusted, digest) for i in fetched.items]
    out += [CheckedAttestation(p.referrer, None, p) for p in fetched.unreadable]
    return CheckedAttestations(digest, tuple(out))
