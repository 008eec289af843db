"""Rendering verification reports for the CLI (stdout or --output; summary on stderr)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harden.cli.common import color_allowed, dump_json, emit, note, plain_table
from harden.results import Status, VerifyReport

if TYPE_CHECKING:
    from harden.baseline.resolve import Catalogue

FORMAT_CHOICES = ["table", "json", "junit", "sarif", "html"]


def rule_locations(
    report: VerifyReport, cat: Catalogue | None
) -> tuple[dict[str, str], dict[str, str]]:
    """rule id -> "path:line" of its definition (relative to the working directory when it is
    below it, as code scanning wants repository paths) and rule id -> rationale."""
    if cat is None:
        return {}, {}
    from harden.baseline.resolve import resolve
    from harden.errors import HardenError

    try:
        resolved = resolve(cat, report.baseline.id)
    except HardenError:  # a baseline recorded in labels but not on this search path
        return {}, {}
    cwd = Path.cwd().resolve()
    sources: dict[str, str] = {}
    rationale: dict[str, str] = {}
    for rule in resolved.rules:
        path, sep, line = rule.source.rpartition(":")
        if not sep:
            path, line = rule.source, ""
        p = Path(path)
        if p.is_absolute() and p.resolve().is_relative_to(cwd):
            path = p.resolve().relative_to(cwd).as_posix()
        sources[rule.id] = f"{path}:{line}" if line else path
        if rule.rationale:
            rationale[rule.id] = rule.rationale
    return sources, rationale


def render_report(
    report: VerifyReport, fmt: str, output: Path | None, cat: Catalogue | None = None
) -> None:
    try:
        from harden.report import Format, render, summary_line
    except ImportError:  # formatters not available: fall back to the built-in two
        emit(_fallback(report, fmt), output)
        note(_fallback_summary(report))
        return
    color = fmt == "table" and output is None and color_allowed(sys.stdout)
    sources, rationale = rule_locations(report, cat) if fmt == "sarif" else ({}, {})
    emit(
        render(report, Format(fmt), color=color, rule_sources=sources, rule_help=rationale),
        output,
    )
    note(summary_line(report))


def _fallback(report: VerifyReport, fmt: str) -> str:
    if fmt == "json":
        return dump_json(report.to_json())
    order = [Status.FAILED, Status.ERROR, Status.WAIVED, Status.PASSED, Status.NOT_APPLICABLE]
    rows = []
    for status in order:
        for r in report.by_status(status):
            detail = r.reason or (r.evidence[0] if r.evidence else "")
            rows.append([r.rule_id, r.status.value, r.severity, detail[:100]])
    return plain_table(["RULE", "STATUS", "SEVERITY", "EVIDENCE"], rows)


def _fallback_summary(report: VerifyReport) -> str:
    s = report.summary()
    state = "compliant" if report.compliant else "NOT compliant"
    return (
        f"{report.image}: {state} with {report.baseline.id} {report.baseline.version}: "
        f"{s['passed']} passed, {s['failed']} failed, {s['error']} error, "
        f"{s['waived']} waived, {s['not_applicable']} not applicable"
    )
