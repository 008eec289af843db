"""Report formatters: table, JSON, JUnit XML, SARIF 2.1.0 and self-contained HTML.

One :class:`~harden.report.formats.Formatter` interface; the format is chosen by :class:`Format`
with an exhaustive match. Formatters return text; the CLI decides where it goes (data to stdout,
:func:`summary_line` to stderr).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import assert_never

from harden.report.formats import Formatter, RenderOptions, clean_line, ordered
from harden.results import Status, VerifyReport

__all__ = ["Format", "Formatter", "RenderOptions", "formatter", "render", "summary_line"]

_MAX_IDS = 5


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    JUNIT = "junit"
    SARIF = "sarif"
    HTML = "html"


def formatter(fmt: Format) -> Formatter:
    """The formatter of one format; each is imported only when asked for."""
    match fmt:
        case Format.TABLE:
            from harden.report.table import TableFormatter

            return TableFormatter()
        case Format.JSON:
            from harden.report.formats import JsonFormatter

            return JsonFormatter()
        case Format.JUNIT:
            from harden.report.junit import JUnitFormatter

            return JUnitFormatter()
        case Format.SARIF:
            from harden.report.sarif import SarifFormatter

            return SarifFormatter()
        case Format.HTML:
            from harden.report.html import HtmlFormatter

            return HtmlFormatter()
        case _:
            assert_never(fmt)


def render(
    report: VerifyReport,
    fmt: Format,
    *,
    color: bool = False,
    width: int = 100,
    rule_sources: Mapping[str, str] | None = None,
    rule_help: Mapping[str, str] | None = None,
) -> str:
    """The text of ``report`` in ``fmt``.

    ``color`` only affects the table (the caller decides: stdout is a tty and NO_COLOR unset).
    ``rule_sources`` (rule id -> Rule.source, "path:line") and ``rule_help`` (rule id ->
    Rule.rationale) enrich SARIF; without them SARIF points at baselines/<baseline-id>.yaml.
    """
    options = RenderOptions(
        color=color,
        width=max(40, width),
        rule_sources=dict(rule_sources or {}),
        rule_help=dict(rule_help or {}),
    )
    return formatter(Format(fmt)).render(report, options)


def summary_line(report: VerifyReport) -> str:
    """One human line for stderr.

    ``compliant: 61 passed, 2 waived, 30 n/a`` or
    ``NOT compliant: 3 failed, 1 error (ssh.permit-root-login, ...); 58 passed, 2 waived``.
    """
    s = report.summary()
    rest = ", ".join(
        f"{s[st.value]} {label}"
        for st, label in (
            (Status.PASSED, "passed"),
            (Status.WAIVED, "waived"),
            (Status.NOT_APPLICABLE, "n/a"),
        )
        if s[st.value] or st == Status.PASSED
    )
    expired = sum(1 for r in report.results if r.waiver is not None and r.waiver.expired)
    if expired:
        rest += f", {expired} expired waiver{'s' if expired != 1 else ''}"
    if report.compliant:
        if not report.results:
            return "compliant: no rules applied"
        return f"compliant: {rest}"
    bad = [r for r in ordered(report.results) if r.status in (Status.FAILED, Status.ERROR)]
    head = ", ".join(
        f"{s[st.value]} {label}"
        for st, label in ((Status.FAILED, "failed"), (Status.ERROR, "error"))
        if s[st.value]
    )
    if s[Status.ERROR.value] > 1:
        head += "s"
    ids = ", ".join(clean_line(r.rule_id) for r in bad[:_MAX_IDS])
    if len(bad) > _MAX_IDS:
        ids += f", ... {len(bad) - _MAX_IDS} more"
    return f"NOT compliant: {head} ({ids}); {rest}"
