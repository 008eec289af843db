"""Rendering verification reports for the CLI (stdout or --output; summary on stderr)."""

from __future__ import annotations

import sys
from pathlib import Path

from harden.cli.common import color_allowed, dump_json, emit, note, plain_table
from harden.results import Status, VerifyReport

FORMAT_CHOICES = ["table", "json", "junit", "sarif", "html"]


def render_report(report: VerifyReport, fmt: str, output: Path | None) -> None:
    try:
        from harden.report import Format, render, summary_line
    except ImportError:  # formatters not available: fall back to the built-in two
        emit(_fallback(report, fmt), output)
        note(_fallback_summary(report))
        return
    color = fmt == "table" and output is None and color_allowed(sys.stdout)
    emit(render(report, Format(fmt), color=color), output)
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
