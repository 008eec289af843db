"""`harden baseline list|show|lint`: the rule catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harden.baseline.resolve import lint_file, resolve
from harden.cli.common import (
    baselines_option,
    catalogue,
    complete_baseline_ids,
    dump_json,
    emit,
    output_option,
    plain_table,
    progress,
)
from harden.errors import BaselineError, HardenError


@click.group()
def baseline() -> None:
    """List, show and lint hardening baselines (YAML rule sets).

    Baselines are searched in --baselines DIR, then $HARDEN_BASELINES, then the shipped
    baselines/ folder. See docs/baselines.md for the format.
    """


@baseline.command("list")
@baselines_option
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@output_option
def list_(baseline_dirs: tuple[Path, ...], fmt: str, output: Path | None) -> None:
    """List every baseline on the search path with its resolved rule count."""
    cat = catalogue(baseline_dirs)
    rows: list[dict[str, Any]] = []
    for bid in cat.ids():
        r = resolve(cat, bid)
        loaded = cat.get(bid)
        assert loaded is not None
        rows.append(
            {
                "id": r.id,
                "version": r.version,
                "targets": sorted(t.value for t in r.targets),
                "extends": list(loaded.doc.extends),
                "rules": len(r.rules),
                "title": r.title,
                "path": str(loaded.path),
            }
        )
    if fmt == "json":
        emit(dump_json({"schema_version": 1, "baselines": rows}), output)
        return
    emit(
        plain_table(
            ["ID", "VERSION", "TARGETS", "EXTENDS", "RULES", "TITLE"],
            [
                [
                    r["id"],
                    r["version"],
                    ",".join(r["targets"]),
                    ",".join(r["extends"]) or "-",
                    str(r["rules"]),
                    r["title"],
                ]
                for r in rows
            ],
        ),
        output,
    )


@baseline.command()
@click.argument("baseline_id", shell_complete=complete_baseline_ids)
@baselines_option
@click.option("--resolved", is_flag=True, help="Merge parents, parameters and waivers.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@output_option
def show(
    baseline_id: str, baseline_dirs: tuple[Path, ...], resolved: bool, fmt: str, output: Path | None
) -> None:
    """Show one baseline's rules.

    Without --resolved only the rules the baseline's own file declares are shown; with it,
    the rules of every parent too, parameters substituted. The JSON of --resolved is stable:
    {"schema_version", "id", "version", "targets", "parameters", "rules": [...], "digest"}.
    """
    cat = catalogue(baseline_dirs)
    r = resolve(cat, baseline_id)
    rules = list(r.rules) if resolved else [x for x in r.rules if x.baseline == baseline_id]
    if fmt == "json":
        body = r.to_json()
        if not resolved:
            body["rules"] = [x.to_json() for x in rules]
            body["resolved"] = False
        emit(dump_json(body), output)
        return
    rows = []
    for x in rules:
        waiver = r.waivers.get(x.id)
        rows.append(
            [
                x.id,
                x.kind.value,
                x.severity.value,
                ",".join(sorted(t.value for t in x.targets)),
                ",".join(x.controls.get("iso27017", ())),
                ",".join(x.references.get("cis", ())) or "-",
                ",".join(x.references.get("anssi", ())) or "-",
                ",".join(x.references.get("ssg", ())) or "-",
                f"waived until {waiver.expires}" if waiver else "",
            ]
        )
    head = f"{r.id} {r.version}: {r.title}\nextends: {' -> '.join(r.chain)}\n"
    leaf = cat.get(baseline_id)
    if leaf is not None and leaf.doc.select is not None:
        sel = leaf.doc.select
        head += f"profile: {sel.framework.value} {sel.level} (unmapped rules: {sel.unmapped})"
        head += "\n" if resolved else f"; --resolved lists its {len(r.rules)} rules\n"
    head += f"rules: {len(rules)}\n"
    emit(
        head
        + plain_table(
            [
                "RULE",
                "KIND",
                "SEVERITY",
                "TARGETS",
                "ISO27017",
                "CIS-DEB12",
                "ANSSI-BP28",
                "SSG",
                "WAIVER",
            ],
            rows,
        ),
        output,
    )


@baseline.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@baselines_option
def lint(files: tuple[Path, ...], baseline_dirs: tuple[Path, ...]) -> None:
    """Validate baseline files: schema, ids, extends, parameters, waivers.

    Exit 0 when every file is valid, 3 when one is not (each problem names file and line).
    """
    cat = catalogue(baseline_dirs)
    failures: list[HardenError] = []
    for f in files:
        try:
            r = lint_file(f, cat)
        except BaselineError as e:
            failures.append(e)
            click.echo(e.diagnostics(), err=True)
            continue
        progress(f"ok: {f}: {r.id} {r.version}, {len(r.rules)} rules resolved")
    if failures:
        raise BaselineError(f"{len(failures)} of {len(files)} baseline file(s) invalid")
