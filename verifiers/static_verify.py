"""Verify a container image without running it: facts read from its layers by harden.

Only the rules that genuinely need execution (kind ``command``) run, in a container, through a
callable the caller passes (the engine path); their results are marked ``executed``. Without
such rules no engine is involved at all. When they cannot run (no engine), they are ``error``
results: a check that did not run never passes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from harden import labels
from harden.baseline.kinds import Command, RuleKind
from harden.baseline.resolve import ResolvedBaseline
from harden.clock import Clock
from harden.errors import HardenError
from harden.results import RuleResult, Status, VerifyReport
from harden.target import CommandResult, TargetKind
from harden.verifiers.facts import FactPlan, Facts, new_nonce, parse
from harden.verifiers.fsview import FsView
from harden.verifiers.image_layers import ImageFs
from harden.verifiers.runner import report_from_facts
from harden.verifiers.static_facts import gather_static

BASELINE_LABEL = labels.BASELINE_ID
LABEL_RULE_ID = "image.baseline-label"

CommandRunner = Callable[[str], CommandResult]
Progress = Callable[[str], None]


def verify_image(
    img: ImageFs,
    baseline: ResolvedBaseline,
    clock: Clock,
    *,
    image: str,
    run_commands: CommandRunner | None,
    command_facts: Facts | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Evaluate ``baseline`` on ``img``. ``command_facts`` are the ``command:`` sections when the
    caller already ran the checks (the build does, in its remediation container); otherwise
    ``run_commands`` runs them (None: they cannot run, so they are errors)."""
    started = clock.now()
    plan = FactPlan.for_rules(baseline.rules, TargetKind.CONTAINER)
    t0 = time.perf_counter()
    if progress:
        progress(
            f"reading {image} ({len(img.fs)} entries, nothing runs) for {len(baseline.rules)} rules"
        )
    facts = gather_static(img.fs, plan)
    failure: str | None = None
    if plan.commands:
        if command_facts is None:
            command_facts, failure = _run(plan, run_commands, progress)
        facts = merge_commands(facts, command_facts)
    seconds = time.perf_counter() - t0
    report = report_from_facts(
        baseline,
        facts,
        TargetKind.CONTAINER,
        img.container_config,
        clock,
        started=started,
        image=image,
        digest=img.digest,
        facts_seconds=seconds,
    )
    commands = {r.id for r in baseline.rules if isinstance(r.spec, Command)}
    results = tuple(_mark(r, commands, failure) for r in report.results)
    meta: dict[str, Any] = {"facts": "static", "source": img.source, **img.meta}
    return dataclasses.replace(report, results=results, meta={**report.meta, **meta})


# what a running system has and a file system at rest does not: a `command` check's execution,
# live kernel parameters, loaded modules and audit rules, mounts
RUNNING_KINDS = frozenset(
    {
        RuleKind.COMMAND,
        RuleKind.SYSCTL,
        RuleKind.KERNEL_MODULE_DISABLED,
        RuleKind.MOUNT_OPTION,
        RuleKind.AUDIT_RULES,
    }
)
NEEDS_RUNNING = "needs a running system: {why} (this verify read the file system without booting)"
_WHY = {
    RuleKind.COMMAND: "its check runs on the system",
    RuleKind.SYSCTL: "the kernel's live value is checked as well",
    RuleKind.KERNEL_MODULE_DISABLED: "whether the module is loaded is checked as well",
    RuleKind.MOUNT_OPTION: "the mounted options are checked",
    RuleKind.AUDIT_RULES: "the kernel's loaded audit rules are checked",
}


def verify_at_rest(
    view: FsView,
    baseline: ResolvedBaseline,
    clock: Clock,
    *,
    image: str,
    digest: str | None,
    meta: dict[str, Any],
    progress: Progress | None = None,
) -> VerifyReport:
    """Evaluate ``baseline`` on the file system of a sealed VM template, booting nothing.

    The file-level rules are judged from the view, as for a container image; a rule of a kind
    only a running system can answer (:data:`RUNNING_KINDS`) is an ``error`` saying so, never a
    pass, unless it does not apply or is waived."""
    started = clock.now()
    mine = tuple(r for r in baseline.rules if TargetKind.VM.value in {t.value for t in r.targets})
    plan = FactPlan.for_rules(mine, TargetKind.VM)
    plan.commands = {}
    if progress:
        progress(f"reading {image} without booting it for {len(baseline.rules)} rules")
    t0 = time.perf_counter()
    facts = gather_static(view, plan)
    report = report_from_facts(
        baseline,
        facts,
        TargetKind.VM,
        None,
        clock,
        started=started,
        image=image,
        digest=digest,
        facts_seconds=time.perf_counter() - t0,
    )
    kinds = {r.id: r.kind for r in baseline.rules}
    results = tuple(_at_rest(r, kinds.get(r.rule_id)) for r in report.results)
    waiting = sum(
        r.status is Status.ERROR and r.reason.startswith("needs a running") for r in results
    )
    if progress and waiting:
        progress(
            f"{waiting} rule(s) need a running system and were not judged: verify without "
            "--no-boot to boot the template for them"
        )
    return dataclasses.replace(
        report, results=results, meta={**report.meta, "facts": "static", **meta}
    )


def _at_rest(r: RuleResult, kind: RuleKind | None) -> RuleResult:
    if kind not in RUNNING_KINDS or r.status in (Status.NOT_APPLICABLE, Status.WAIVED):
        return r
    assert kind is not None
    return dataclasses.replace(
        r, status=Status.ERROR, evidence=(), reason=NEEDS_RUNNING.format(why=_WHY[kind])
    )


def _run(
    plan: FactPlan, runner: CommandRunner | None, progress: Progress | None
) -> tuple[Facts | None, str | None]:
    if runner is None:
        return None, "no container engine was given to run it"
    if progress:
        progress(f"running {len(plan.commands)} command check(s) in a container")
    nonce = new_nonce()
    try:
        result = runner(plan.commands_script(nonce))
    except HardenError as e:
        return None, e.message
    facts = parse(result.stdout, nonce)
    if not any(name.startswith("command:") for name in facts.sections):
        err = result.stderr.decode("utf-8", "replace").strip()[-300:]
        return None, f"the image could not run them (exit {result.exit_status}): {err}"
    return facts, None


def merge_commands(facts: Facts, command_facts: Facts | None) -> Facts:
    """The static facts plus the ``command:`` sections of a run."""
    if command_facts is None:
        return facts
    sections = dict(facts.sections)
    status = dict(facts.status)
    for name, text in command_facts.sections.items():
        if name.startswith("command:"):
            sections[name] = text
            status[name] = command_facts.status.get(name, -1)
    limits = dict(facts.limits)
    limits.update({k: v for k, v in command_facts.limits.items() if k.startswith("command:")})
    return Facts(sections, status, limits)


def _mark(r: RuleResult, commands: set[str], failure: str | None) -> RuleResult:
    if r.rule_id not in commands or r.status is Status.NOT_APPLICABLE:
        return r
    if failure is not None:
        return dataclasses.replace(
            r,
            status=Status.ERROR,
            evidence=(),
            reason=f"this check must run in the image and could not: {failure}",
            waiver=None,
        )
    return dataclasses.replace(r, executed=True)


def with_label_check(report: VerifyReport, recorded: str | None, chosen: str) -> VerifyReport:
    """The image's baseline label is only compared with the baseline the caller chose; a
    mismatch is a failed result (non-compliant), never a reason to verify against another."""
    if recorded is None or recorded == chosen:
        return report
    finding = RuleResult(
        rule_id=LABEL_RULE_ID,
        status=Status.FAILED,
        title="The image's baseline label names the baseline it is verified against",
        severity="high",
        kind="image_config",
        controls={"iso27017": ("CLD.9.5.2",)},
        evidence=(f"label {BASELINE_LABEL}={recorded!r}, verified against {chosen!r}",),
        reason="the image claims a different baseline than the one the caller chose",
    )
    return dataclasses.replace(report, results=(*report.results, finding))
