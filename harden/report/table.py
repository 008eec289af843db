"""The table format: a rich table for a colour terminal, plain aligned text otherwise."""

from __future__ import annotations

import io

from harden.report.formats import (
    RenderOptions,
    clean_line,
    ordered,
    scan_lines,
    short_reason,
    truncate,
)
from harden.results import RuleResult, Status, VerifyReport

HEADERS = ("RULE", "STATUS", "SEVERITY", "EVIDENCE/REASON")
_MIN_LAST = 20
_STATUS_STYLE = {
    Status.FAILED: "bold red",
    Status.ERROR: "bold magenta",
    Status.WAIVED: "yellow",
    Status.PASSED: "green",
    Status.NOT_APPLICABLE: "dim",
}


def _rows(report: VerifyReport) -> list[tuple[RuleResult, list[str]]]:
    return [
        (r, [clean_line(r.rule_id), r.status.value, clean_line(r.severity), short_reason(r)])
        for r in ordered(report.results)
    ]


class TableFormatter:
    def render(self, report: VerifyReport, options: RenderOptions) -> str:
        rows = _rows(report)
        text = (
            _rich_table(rows, options.width) if options.color else _plain_table(rows, options.width)
        )
        extra = scan_lines(report)
        return text + ("\n\n" + "\n".join(extra) if extra else "")


def _plain_table(rows: list[tuple[RuleResult, list[str]]], width: int) -> str:
    widths = [len(h) for h in HEADERS[:-1]]
    for _, cells in rows:
        for i in range(len(widths)):
            widths[i] = max(widths[i], len(cells[i]))
    last = max(_MIN_LAST, width - sum(widths) - 2 * len(widths))

    def line(cells: list[str]) -> str:
        head = "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:-1]))
        return f"{head}  {truncate(cells[-1], last)}".rstrip()

    out = [line(list(HEADERS)), line(["-" * w for w in widths] + ["-" * min(last, 40)])]
    out += [line(cells) for _, cells in rows]
    return "\n".join(out)


def _rich_table(rows: list[tuple[RuleResult, list[str]]], width: int) -> str:
    # rich is an output adapter: imported only when a colour table is asked for.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    widths = [len(h) for h in HEADERS[:-1]]
    for _, cells in rows:
        for i in range(len(widths)):
            widths[i] = max(widths[i], len(cells[i]))
    # one space of padding either side of each cell: 2 per column
    last = max(_MIN_LAST, width - sum(widths) - 2 * len(HEADERS))
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for header, w in zip(HEADERS[:-1], widths, strict=True):
        table.add_column(header, no_wrap=True, min_width=w, max_width=w)
    table.add_column(HEADERS[-1], no_wrap=True, overflow="ellipsis", max_width=last)
    for result, cells in rows:
        style = _STATUS_STYLE[result.status]
        # Text(...) never interprets markup: "[bold]" in evidence stays literal.
        table.add_row(
            Text(cells[0]),
            Text(cells[1], style=style),
            Text(cells[2]),
            Text(cells[3], style="dim" if result.status == Status.NOT_APPLICABLE else ""),
        )
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=max(width, sum(widths) + 2 * len(HEADERS) + last),
        force_terminal=True,
        color_system="standard",
        emoji=False,
        highlight=False,
        markup=False,
        legacy_windows=False,
    )
    console.print(table)
    return buf.getvalue().rstrip("\n")
