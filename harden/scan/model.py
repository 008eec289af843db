"""The result of one OpenSCAP scan and the score harden computes from it (pure, no I/O).

XCCDF gives each selected rule one result: ``pass``, ``fail``, ``error``, ``unknown``,
``notapplicable``, ``notchecked``, ``notselected``, ``informational`` or ``fixed``. harden's score
is a pass rate over the rules OpenSCAP could judge on the scanned file system:

    score = 100 * (pass + fixed) / (pass + fixed + fail + error + unknown)

``notapplicable``, ``notchecked``, ``notselected`` and ``informational`` are left out (OpenSCAP
could not or was not asked to judge them). ``error`` and ``unknown`` count against the score: a
rule the scanner could not read is never a pass.

Two families are scored separately and left out of the main score, because ``oscap-chroot`` on an
unpacked root cannot judge them from the artefact: ``sysctl_*`` (the sysctl probe reads the
*scanning host's* running kernel) and ``kernel_config_*`` (kernel build options). The agreement
test judges those from the artefact's configuration files instead (docs/scanner-agreement.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SSG_RULE_PREFIX = "xccdf_org.ssgproject.content_rule_"
SSG_PROFILE_PREFIX = "xccdf_org.ssgproject.content_profile_"


class XccdfResult(StrEnum):
    PASS = "pass"  # noqa: S105 - an XCCDF result, not a password
    FAIL = "fail"
    ERROR = "error"
    UNKNOWN = "unknown"
    NOTAPPLICABLE = "notapplicable"
    NOTCHECKED = "notchecked"
    NOTSELECTED = "notselected"
    INFORMATIONAL = "informational"
    FIXED = "fixed"


PASSING = frozenset({XccdfResult.PASS, XccdfResult.FIXED})
JUDGED = PASSING | {XccdfResult.FAIL, XccdfResult.ERROR, XccdfResult.UNKNOWN}


class Family(StrEnum):
    """Which score a rule counts in."""

    FILE = "file"  # judged on the scanned file system: the main score
    SYSCTL = "sysctl"  # runtime sysctl probes: under oscap-chroot they read the host's kernel
    KERNEL_CONFIG = "kernel_config"  # kernel build options


def short_rule_id(rule_id: str) -> str:
    """``xccdf_org.ssgproject.content_rule_package_telnet_removed`` -> ``package_telnet_removed``
    (the id the SSG project and harden's ``references.ssg`` use)."""
    return rule_id.removeprefix(SSG_RULE_PREFIX)


def profile_id(profile: str) -> str:
    """A short profile name (``anssi_bp28_enhanced``) or a full XCCDF id -> the full id."""
    return profile if profile.startswith("xccdf_") else SSG_PROFILE_PREFIX + profile


def family_of(rule_id: str) -> Family:
    short = short_rule_id(rule_id)
    if short.startswith("sysctl_"):
        return Family.SYSCTL
    if short.startswith("kernel_config_"):
        return Family.KERNEL_CONFIG
    return Family.FILE


@dataclass(frozen=True)
class RuleOutcome:
    rule_id: str  # the full XCCDF rule id
    result: XccdfResult
    severity: str = "unknown"

    @property
    def short_id(self) -> str:
        return short_rule_id(self.rule_id)

    @property
    def family(self) -> Family:
        return family_of(self.rule_id)


@dataclass(frozen=True)
class FamilyScore:
    passed: int
    judged: int

    @property
    def score(self) -> float | None:
        """Pass rate in percent, one decimal; None when nothing was judged."""
        return None if self.judged == 0 else round(100.0 * self.passed / self.judged, 1)

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "passed": self.passed, "judged": self.judged}


def family_scores(rules: Sequence[RuleOutcome]) -> dict[Family, FamilyScore]:
    out: dict[Family, FamilyScore] = {}
    for fam in Family:
        mine = [r for r in rules if r.family == fam]
        out[fam] = FamilyScore(
            passed=sum(1 for r in mine if r.result in PASSING),
            judged=sum(1 for r in mine if r.result in JUDGED),
        )
    return out


def score_of(counts: Mapping[str, int]) -> float | None:
    """The pass rate from result counts (the same formula the gate re-checks)."""
    passed = sum(int(counts.get(r.value, 0)) for r in PASSING)
    judged = sum(int(counts.get(r.value, 0)) for r in JUDGED)
    return None if judged == 0 else round(100.0 * passed / judged, 1)


@dataclass(frozen=True)
class ScanResult:
    """One ``oscap xccdf eval`` of one profile on one artefact."""

    profile: str  # full XCCDF profile id
    benchmark: str  # XCCDF benchmark id, e.g. xccdf_org.ssgproject.content_benchmark_DEBIAN-12
    content: str  # data stream file name, e.g. ssg-debian12-ds.xml
    content_version: str  # SSG version (the benchmark's version / the package version)
    scanner: str  # e.g. "OpenSCAP 1.3.7"
    rules: tuple[RuleOutcome, ...]
    xccdf_score: float | None = None  # OpenSCAP's own urn:xccdf:scoring:default score
    arf_digest: str = ""  # sha256:<hex> of the ARF file
    started_at: str = ""  # as recorded in the TestResult
    finished_at: str = ""
    seconds: float = 0.0  # how long the scan took here
    families: dict[Family, FamilyScore] = field(default_factory=dict)
    # mapped rules the profile does not select, evaluated apart (agreement only, never scored)
    extra: tuple[RuleOutcome, ...] = ()

    def __post_init__(self) -> None:
        if not self.families:
            object.__setattr__(self, "families", family_scores(self.rules))

    @property
    def profile_short(self) -> str:
        return self.profile.removeprefix(SSG_PROFILE_PREFIX)

    @property
    def file_rules(self) -> list[RuleOutcome]:
        return [r for r in self.rules if r.family == Family.FILE]

    def counts(self, family: Family | None = Family.FILE) -> dict[str, int]:
        """Results per XCCDF result (of one family; None: every rule)."""
        c = Counter(r.result for r in self.rules if family is None or r.family == family)
        return {res.value: c.get(res, 0) for res in XccdfResult}

    @property
    def score(self) -> float | None:
        """The main score: pass rate over the file-judged rules (sysctl, kernel_config apart)."""
        return self.families[Family.FILE].score

    def by_short_id(self) -> dict[str, RuleOutcome]:
        """Every rule's outcome; an ``extra`` result stands in for a notselected one."""
        out = {r.short_id: r for r in self.rules}
        for r in self.extra:
            if r.short_id not in out or out[r.short_id].result is XccdfResult.NOTSELECTED:
                out[r.short_id] = r
        return out

    def failing(self, family: Family | None = Family.FILE) -> list[RuleOutcome]:
        bad = {XccdfResult.FAIL, XccdfResult.ERROR, XccdfResult.UNKNOWN}
        return [r for r in self.rules if r.result in bad and (family is None or r.family == family)]

    def summary_json(self) -> dict[str, Any]:
        """What every report format shows (no per-rule list)."""
        return {
            "scanner": self.scanner,
            "profile": self.profile,
            "benchmark": self.benchmark,
            "content": self.content,
            "content_version": self.content_version,
            "score": self.score,
            "xccdf_score": self.xccdf_score,
            "counts": self.counts(),
            "families": {f.value: s.to_json() for f, s in self.families.items()},
            "failed_rules": sorted(r.short_id for r in self.failing(None)),
            "arf_digest": self.arf_digest,
            "seconds": round(self.seconds, 1),
        }

    def to_json(self) -> dict[str, Any]:
        """The summary plus every selected rule's result (notselected rules left out)."""
        return self.summary_json() | {
            "rules": [
                {"id": r.short_id, "result": r.result.value, "severity": r.severity}
                for r in self.rules
                if r.result != XccdfResult.NOTSELECTED
            ]
        }
