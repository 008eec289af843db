"""The one Formatter interface and the text hygiene every format shares.

Evidence and reasons come from the target (a container or VM someone else controls): they are
untrusted text. Every formatter passes them through :func:`clean` (or :func:`clean_xml`) first:
ANSI escape sequences and control characters are stripped, bidi overrides removed, lone
surrogates replaced, so nothing from the target can repaint a terminal or break a document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from harden.results import RuleResult, Status, VerifyReport

# The order rules are listed in by the human formats: what needs attention first.
STATUS_ORDER: tuple[Status, ...] = (
    Status.FAILED,
    Status.ERROR,
    Status.WAIVED,
    Status.PASSED,
    Status.NOT_APPLICABLE,
)
SEVERITY_RANK: Mapping[str, int] = {"critical": 0, "high": 1, "medium": 2, "low": 3}

# Evidence longer than this (per rule) is cut in the document formats, with a note saying so;
# the JSON format always carries it whole.
MAX_EVIDENCE_CHARS = 64 * 1024


@dataclass(frozen=True)
class RenderOptions:
    color: bool = False
    width: int = 100
    # rule id -> "path:line" of the rule in its baseline file (Rule.source)
    rule_sources: Mapping[str, str] = field(default_factory=dict)
    # rule id -> rationale (Rule.rationale), the help text of SARIF rules
    rule_help: Mapping[str, str] = field(default_factory=dict)


class Formatter(Protocol):
    """Turns one verification report into the text of one format."""

    def render(self, report: VerifyReport, options: RenderOptions) -> str: ...


# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC (ESC P|X|^|_ ... ST),
# the 8-bit CSI/OSC forms, then any other two-character escape.
_ANSI = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]?
  | \x9b[0-?]*[ -/]*[@-~]?
  | \x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?
  | \x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?
  | \x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?
  | \x1b[ -/]*[0-~]?
    """,
    re.VERBOSE,
)
# C0 controls except TAB and LF, DEL, C1 controls; bidi embeddings/overrides/isolates.
# Also the noncharacters U+FFFE/U+FFFF, which XML 1.0 cannot carry at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffe\uffff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean(text: str) -> str:
    """Untrusted text made safe to show: no escapes, no controls, tabs as spaces."""
    text = _ANSI.sub("", text)
    text = _CONTROL.sub("", text)
    text = _SURROGATE.sub("\ufffd", text)
    return text.replace("\t", "    ")


def clean_line(text: str) -> str:
    """:func:`clean` and flattened to one line (line breaks become spaces)."""
    return " ".join(clean(text).split("\n")).strip()


def clean_xml(text: str) -> str:
    """Only characters XML 1.0 allows: what :func:`clean` leaves is always XML-safe."""
    return clean(text)


def truncate(text: str, limit: int) -> str:
    if limit <= 1:
        return text[:limit]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def evidence_text(result: RuleResult, limit: int = MAX_EVIDENCE_CHARS) -> str:
    """All evidence lines, cleaned, joined by newlines and cut at ``limit`` characters."""
    text = "\n".join(clean(line) for line in result.evidence)
    if len(text) > limit:
        dropped = len(text) - limit
        text = text[:limit] + f"\n… ({dropped} more characters cut; the JSON report has them all)"
    return text


def ordered(results: Sequence[RuleResult]) -> list[RuleResult]:
    """Failures first, then errors, waived, passed, not applicable; by severity, then id."""
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return sorted(
        results,
        key=lambda r: (rank[r.status], SEVERITY_RANK.get(r.severity, 9), r.rule_id),
    )


def waiver_note(result: RuleResult) -> str:
    """'reason (owner, expires 2025-06-30)' for a result that carries a waiver."""
    w = result.waiver
    if w is None:
        return clean_line(result.reason)
    state = "expired" if w.expired else "expires"
    reason = clean_line(w.reason or result.reason)
    return f"{reason} ({clean_line(w.owner)}, {state} {w.expires.isoformat()})"


def short_reason(result: RuleResult) -> str:
    """The one line a table shows for a result: evidence or reason, by status."""
    match result.status:
        case Status.WAIVED:
            return "waived: " + waiver_note(result)
        case Status.NOT_APPLICABLE | Status.ERROR:
            return clean_line(result.reason) or first_evidence(result)
        case Status.FAILED | Status.PASSED:
            return first_evidence(result) or clean_line(result.reason)


def first_evidence(result: RuleResult) -> str:
    for line in result.evidence:
        text = clean_line(line)
        if text:
            return text
    return ""


def parse_source(source: str) -> tuple[str, int | None]:
    """'path/to/file.yaml:12' -> ('path/to/file.yaml', 12); no line -> (source, None)."""
    path, sep, line = source.rpartition(":")
    if sep and path and line.isdigit():
        return path, int(line)
    return source, None


def scan_lines(report: VerifyReport) -> list[str]:
    """The OpenSCAP second opinion in a few human lines (empty without a scan)."""
    scan = report.scan
    if scan is None:
        return []
    fam = scan.get("families", {})
    file_fam = fam.get("file", {})
    profile = str(scan.get("profile", "")).removeprefix("xccdf_org.ssgproject.content_profile_")
    lines = [
        f"OpenSCAP second opinion: {clean_line(profile)} score {scan.get('score')} "
        f"({file_fam.get('passed', 0)} passed of {file_fam.get('judged', 0)} judged on files; "
        f"OpenSCAP's own XCCDF score {scan.get('xccdf_score')})",
        f"  {clean_line(str(scan.get('scanner', '')))}, {clean_line(str(scan.get('content', '')))} "
        f"{clean_line(str(scan.get('content_version', '')))}, ARF {scan.get('arf_digest', '')}",
    ]
    for name in ("sysctl", "kernel_config"):
        f = fam.get(name, {})
        if f.get("judged"):
            lines.append(
                f"  {name} (scored apart: read from the scanning host): "
                f"{f.get('passed')} passed of {f.get('judged')}"
            )
    failed = [clean_line(str(r)) for r in scan.get("failed_rules", [])]
    if failed:
        lines.append(f"  failing ({len(failed)}): " + ", ".join(failed))
    return lines


class JsonFormatter:
    """The JSON format is VerifyReport.to_json(); docs/report.schema.json describes it."""

    def render(self, report: VerifyReport, options: RenderOptions) -> str:
        return json.dumps(report.to_json(), indent=2)
