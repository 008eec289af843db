"""Helpers shared by the CLI modules: output files, baseline options, plain tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from harden.baseline.resolve import Catalogue
from harden.files import write_atomic

baselines_option = click.option(
    "--baselines",
    "baseline_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of baseline YAML files (searched before the shipped ones; "
    "also $HARDEN_BASELINES).",
)


output_option = click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE (atomically) instead of stdout.",
)


def duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """click callback: '12h', '30d', '4w' -> timedelta (None stays None)."""
    if value is None:
        return None
    from harden.imagedef import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


def catalogue(dirs: Sequence[Path]) -> Catalogue:
    return Catalogue.from_search_path(dirs)


def emit(text: str, output: Path | None) -> None:
    """Data to stdout, or atomically to ``output`` (opened only once there is something)."""
    if not text.endswith("\n"):
        text += "\n"
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(output, text.encode())


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def progress(message: str) -> None:
    """Human progress goes to stderr."""
    click.echo(message, err=True)
