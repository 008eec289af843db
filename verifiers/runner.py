"""Verify a target against a resolved baseline: one fact batch, then pure checks per rule."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

from harden.verifiers.checks import CheckContext, Outcome, evaluate
from harden.verifiers.facts import FactLimitExceeded, FactPlan, Facts, new_nonce, parse

from harden.baseline.kinds import HOST_ENFORCED_DEFAULT, HOST_ENFORCED_WHY
from harden.baseline.resolve import ResolvedBaseline, Rule
from harden.clock import Clock
from harden.errors import BaselineError, InputError, TargetError
from harden.results import BaselineRef, RuleResult, Status, VerifyReport, WaiverInfo
from harden.target import Target, TargetKind

CODENAMES = {"bookworm": "12", "trixie": "13", "bullseye": "11", "forky": "14"}


def gather(target: Target, rules: tuple[Rule, ...]) -> tuple[Facts, float]:
    # a rule for another kind of target is not applicable: it needs no facts (and a VM rule's
    # command check must not run in a container)
    mine = tuple(r for r in rules if target.kind.value in {t.value for t in r.targets})
    plan = FactPlan.for_rules(mine, target.kind)
    nonce = new_nonce()
    t0 = time.perf_counter()
    result = target.run(plan.script(nonce), timeout=600)
    elapsed = time.perf_counter() - t0
    facts = parse(result.stdout, nonce)
    if "os-release" not in facts.sections:
        err = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise TargetError(
            f"could not gather facts from {target.describe()} (exit {result.exit_status}): {err}",
            hint="the target needs /bin/sh and coreutils",
        )
    return facts, elapsed


def platform_of(facts: Facts) -> tuple[str, str]:
    try:
        osr = facts.os_release()
    except FactLimitExceeded as e:
        raise InputError(f"the target's os-release cannot be read: {e}") from e
    family = osr.get("ID", "unknown")
    like = osr.get("ID_LIKE", "").split()
    if family not in {"debian", "ubuntu", "alpine", "rhel"} and like:
        family = "rhel" if any(x in {"rhel", "fedora", "centos"} for x in like) else like[0]
    if family in {"rocky", "almalinux", "centos", "fedora"}:
        family = "rhel"
    version = osr.get("VERSION_ID") or CODENAMES.get(osr.get("VERSION_CODENAME", ""), "")
    return family, version


def _applicability(
    rule: Rule, kind: TargetKind, family: str, version: str, facts: Facts
) -> str | None:
    if kind.value not in {t.value for t in rule.targets}:
        why = f"applies to {', '.join(sorted(t.value for t in rule.targets))} only, not a {kind.value}"
        if kind is TargetKind.CONTAINER:
            why += "; " + HOST_ENFORCED_WHY.get(rule.kind, HOST_ENFORCED_DEFAULT)
        return why
    if not any(p.admits(family, version) for p in rule.platforms):
        plats = ", ".join(
            f"{p.family.value} {' '.join(p.versions)}".strip() for p in rule.platforms
        )
        return f"applies to {plats} only, the target is {family} {version}"
    installed = None
    for cond in rule.when:
        if cond.package_installed is not None:
            installed = installed if installed is not None else facts.installed_packages()
            if cond.package_installed not in installed:
                return f"package {cond.package_installed} is not installed"
        elif cond.file_exists is not None and not facts.exists(cond.file_exists):
            return f"{cond.file_exists} does not exist"
    return None


def evaluate_rules(
    baseline: ResolvedBaseline,
    facts: Facts,
    kind: TargetKind,
    image_config: Mapping[str, Any] | None,
    now_date: dt.date,
) -> tuple[RuleResult, ...]:
    family, version = platform_of(facts)
    if not any(p.admits(family, version) for p in baseline.platforms):
        plats = ", ".join(
            f"{p.family.value} {' '.join(p.versions)}".strip() for p in baseline.platforms
        )
        raise BaselineError(
            f"baseline {baseline.id} is for {plats}; the target runs {family} {version or '?'}",
            hint="pick a baseline for this platform with --baseline",
        )
    ctx = CheckContext(kind, facts, image_config)
    results = []
    for rule in baseline.rules:
        common: dict[str, Any] = {
            "rule_id": rule.id,
            "title": rule.title,
            "severity": rule.severity.value,
            "kind": rule.kind.value,
            "controls": rule.controls,
        }
        try:
            why = _applicability(rule, kind, family, version, facts)
        except FactLimitExceeded as e:
            results.append(_limit_error(e, common))
            continue
        if why is not None:
            results.append(RuleResult(status=Status.NOT_APPLICABLE, reason=why, **common))
            continue
        try:
            outcome = evaluate(rule, ctx)
        except FactLimitExceeded as e:
            results.append(_limit_error(e, common))
            continue
        except Exception as e:  # a check bug or facts it cannot read: report, never hide
            results.append(
                RuleResult(status=Status.ERROR, reason=f"{type(e).__name__}: {e}", **common)
            )
            continue
        results.append(_with_waiver(baseline, rule, outcome, now_date, common))
    return tuple(results)


def _limit_error(e: FactLimitExceeded, common: dict[str, Any]) -> RuleResult:
    """A fact the rule needs passed a limit: an error with the evidence, never a pass."""
    return RuleResult(
        status=Status.ERROR,
        reason=f"a fact this rule needs passed a limit, so it was not read in full ({e.section})",
        evidence=(e.why,),
        **common,
    )


def _with_waiver(
    baseline: ResolvedBaseline, rule: Rule, outcome: Outcome, today: dt.date, common: dict[str, Any]
) -> RuleResult:
    waiver = baseline.waivers.get(rule.id)
    if outcome.not_applicable is not None and waiver is None:
        return RuleResult(status=Status.NOT_APPLICABLE, reason=outcome.not_applicable, **common)
    if waiver is None:
        status = Status.PASSED if outcome.passed else Status.FAILED
        return RuleResult(status=status, evidence=outcome.evidence, **common)
    info = WaiverInfo(waiver.reason, waiver.owner, waiver.expires, not waiver.active_on(today))
    if info.expired:
        return RuleResult(
            status=Status.FAILED,
            evidence=outcome.evidence,
            reason=f"waiver expired on {waiver.expires} (owner {waiver.owner}); "
            f"the check {'passes' if outcome.passed else 'fails'}",
            waiver=info,
            **common,
        )
    return RuleResult(
        status=Status.WAIVED,
        evidence=outcome.evidence,
        reason=f"waived until {waiver.expires} by {waiver.owner}: {waiver.reason}",
        waiver=info,
        **common,
    )


def verify(
    target: Target,
    baseline: ResolvedBaseline,
    clock: Clock,
    *,
    image: str,
    digest: str | None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    started = clock.now()
    if progress:
        progress(f"gathering facts from {target.describe()} ({len(baseline.rules)} rules)")
    facts, seconds = gather(target, baseline.rules)
    return report_from_facts(
        baseline,
        facts,
        target.kind,
        target.image_config(),
        clock,
        started=started,
        image=image,
        digest=digest,
        facts_seconds=seconds,
    )


def report_from_facts(
    baseline: ResolvedBaseline,
    facts: Facts,
    kind: TargetKind,
    image_config: Mapping[str, Any] | None,
    clock: Clock,
    *,
    started: dt.datetime,
    image: str,
    digest: str | None,
    facts_seconds: float = 0.0,
) -> VerifyReport:
    """Evaluate every rule on facts already gathered (e.g. by the build, in one container run)."""
    results = evaluate_rules(baseline, facts, kind, image_config, started.date())
    family, version = platform_of(facts)
    return VerifyReport(
        image=image,
        digest=digest,
        target=kind.value,
        platform=f"{family} {version}".strip(),
        baseline=BaselineRef(baseline.id, baseline.version, baseline.digest),
        results=results,
        started_at=started,
        finished_at=clock.now(),
        facts_seconds=facts_seconds,
    )
