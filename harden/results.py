"""Verification results: a sealed sum of rule outcomes and the report of one verification.

A rule is ``passed``, ``failed`` (with evidence), ``waived`` (with the waiver), ``not_applicable``
(with why) or ``error``. Waived and not-applicable are never collapsed into passed.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


def compliance_word(compliant: bool) -> str:
    """The one wording of a verification outcome (audit entries, tables, JSON summaries)."""
    return "compliant" if compliant else "not compliant"


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    WAIVED = "waived"
    NOT_APPLICABLE = "not_applicable"
    ERROR = "error"


@dataclass(frozen=True)
class WaiverInfo:
    reason: str
    owner: str
    expires: dt.date
    expired: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "owner": self.owner,
            "expires": self.expires.isoformat(),
            "expired": self.expired,
        }


SEVERITY_ORDER = ("low", "medium", "high", "critical")


def _severity_rank(severity: str) -> int:
    """Unknown severities rank highest: a threshold never hides what it cannot place."""
    try:
        return SEVERITY_ORDER.index(severity)
    except ValueError:
        return len(SEVERITY_ORDER)


@dataclass(frozen=True)
class RuleResult:
    rule_id: str
    status: Status
    title: str
    severity: str
    kind: str
    controls: Mapping[str, tuple[str, ...]]
    evidence: tuple[str, ...] = ()  # what was found, one line each
    reason: str = ""  # why not applicable / error message / waiver note
    waiver: WaiverInfo | None = None
    duration: float | None = None  # seconds, for results that are tests (kind testinfra)
    executed: bool = False  # the result came from running code in the target (a command check)

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {} if self.duration is None else {"duration": self.duration}
        return extra | {
            "rule_id": self.rule_id,
            "status": self.status.value,
            "title": self.title,
            "severity": self.severity,
            "kind": self.kind,
            "evidence": list(self.evidence),
            "reason": self.reason,
            "waiver": self.waiver.to_json() if self.waiver else None,
            "controls": {k: list(v) for k, v in sorted(self.controls.items())},
            "executed": self.executed,
        }


@dataclass(frozen=True)
class BaselineRef:
    id: str
    version: str
    digest: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "digest": self.digest}


@dataclass(frozen=True)
class VerifyReport:
    image: str  # what was verified, as the user named it
    digest: str | None  # image manifest/config digest or qcow2 sha256 when known
    target: str  # "container" | "vm"
    platform: str  # e.g. "debian 12"
    baseline: BaselineRef
    results: tuple[RuleResult, ...]
    started_at: dt.datetime
    finished_at: dt.datetime
    facts_seconds: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)
    # an OpenSCAP second opinion (`--scan`): harden.scan.model.ScanResult.summary_json()
    scan: Mapping[str, Any] | None = None

    @property
    def compliant(self) -> bool:
        return not any(r.status in (Status.FAILED, Status.ERROR) for r in self.results)

    def compliant_at(self, min_severity: str | None) -> bool:
        """Compliant when only failures below ``min_severity`` (low < medium < high < critical)
        remain; an error always counts (nothing is known about that rule). ``None``: all count."""
        if min_severity is None:
            return self.compliant
        floor = SEVERITY_ORDER.index(min_severity)
        return not any(
            r.status is Status.ERROR
            or (r.status is Status.FAILED and _severity_rank(r.severity) >= floor)
            for r in self.results
        )

    def summary(self) -> dict[str, int]:
        counts = Counter(r.status for r in self.results)
        return {s.value: counts.get(s, 0) for s in Status} | {"total": len(self.results)}

    def by_status(self, status: Status) -> Sequence[RuleResult]:
        return [r for r in self.results if r.status == status]

    def to_json(self) -> dict[str, Any]:
        out = self._to_json()
        if self.scan is not None:
            out["scan"] = dict(self.scan)
        return out

    def _to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "image": self.image,
            "digest": self.digest,
            "target": self.target,
            "platform": self.platform,
            "baseline": self.baseline.to_json(),
            "compliant": self.compliant,
            "summary": self.summary(),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "results": [r.to_json() for r in self.results],
        }


def rfc3339(t: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, second precision."""
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
