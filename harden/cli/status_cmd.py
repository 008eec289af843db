"""`harden status [DIR]`: age and freshness of every golden image.

Also the pieces `rebuild`, `plan` and `revoke` share: the CLI clock (``$HARDEN_NOW``), loading
the definitions of a directory, gathering the statuses.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from harden.cli.common import (
    baselines_option,
    catalogue,
    dump_json,
    duration,
    emit,
    output_option,
    plain_table,
    progress,
)
from harden.clock import Clock, SystemClock
from harden.errors import UsageError

if TYPE_CHECKING:
    from harden.attest.keys import PublicKey
    from harden.imagedef import ImageDefinition
    from harden.inventory import Inventory
    from harden.lifecycle import ImageStatus

DEFAULT_DIR = Path("images")


class ShiftedClock:
    """The system clock moved to start at ``start`` (and running on from there)."""

    def __init__(self, start: dt.datetime, system: Clock | None = None) -> None:
        self._system = system or SystemClock()
        self._offset = start - self._system.now()

    def now(self) -> dt.datetime:
        return self._system.now() + self._offset


def cli_clock() -> Clock:
    """SystemClock, or - as a testing aid - one that starts at ``$HARDEN_NOW`` (RFC 3339)."""
    text = os.environ.get("HARDEN_NOW", "").strip()
    if not text:
        return SystemClock()
    try:
        start = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise UsageError(
            f"HARDEN_NOW={text!r} is not an RFC 3339 time", hint="e.g. 2026-05-01T12:00:00Z"
        ) from e
    if start.tzinfo is None:
        raise UsageError(f"HARDEN_NOW={text!r} has no time zone", hint="end it with Z")
    return ShiftedClock(start.astimezone(dt.UTC))


def load_definitions(directory: Path) -> list[ImageDefinition]:
    """Every ``*.yaml``/``*.yml`` image definition in ``directory`` (sorted by file name)."""
    from harden.imagedef import load_definition

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory of image definitions")
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    defs = [load_definition(f) for f in files]
    names: dict[str, Path] = {}
    for d in defs:
        if d.name in names:
            raise UsageError(f"{d.path} and {names[d.name]} both define {d.name}")
        names[d.name] = d.path
    return defs


def tracked(defs: Sequence[ImageDefinition], *, vms: bool = False) -> list[ImageDefinition]:
    """The definitions with a destination: container images, and VM templates with ``vms``.

    ``status``, ``rebuild`` and ``plan`` pass ``vms=True`` (a pushed VM template artifact has the
    same facts as a container image, and rebuild builds either); ``revoke --cascade`` follows
    registry base digests, which a VM template (based on a disk file) does not have."""
    out = []
    for d in defs:
        is_vm = d.doc.target.value == "vm"
        if not d.doc.destination or (is_vm and not vms):
            what = "images" if vms else "container images"
            progress(f"skipping {d.path}: only {what} with a destination are tracked")
            continue
        out.append(d)
    return out


def make_inventory(
    baseline_dirs: Sequence[Path], trusted: Sequence[PublicKey], clock: Clock, jobs: int
) -> Inventory:
    from harden.inventory import ContentCache, Inventory
    from harden.paths import harden_home

    cache = ContentCache(harden_home() / "inventory.db")
    if cache.rebuilt:
        progress("the local inventory cache was unreadable: rebuilding it from the registry")
    return Inventory(catalogue(baseline_dirs), trusted, clock, jobs=jobs, cache=cache)


def gather(
    defs: Sequence[ImageDefinition], inventory: Inventory, warn_within: dt.timedelta
) -> list[ImageStatus]:
    from harden.lifecycle import assess

    return [assess(f, inventory.clock, warn_within) for f in inventory.facts(defs)]


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def _when(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def render_table(statuses: Sequence[ImageStatus]) -> str:
    from harden.lifecycle import format_age

    rows = []
    for s in statuses:
        f = s.facts
        v = f.verification
        base = "-"
        if f.recorded_base_digest or f.current_base_digest:
            same = f.recorded_base_digest == f.current_base_digest
            base = _short(f.recorded_base_digest) + (
                "" if same else " -> " + _short(f.current_base_digest)
            )
        rec = s.recorded_baseline
        baseline = _short(rec) + (
            "" if rec == f.current_baseline_digest else " -> " + _short(f.current_baseline_digest)
        )
        prod = "-"
        if f.production:
            prod = _short(f.production_digest) if f.production_digest else "(none)"
        rows.append(
            [
                f.name,
                s.label + (" REVOKED" if f.revocations and s.state.value != "revoked" else ""),
                _short(f.digest),
                prod,
                _when(f.created),
                _when(v.verified_at if v else None),
                format_age(s.age),
                _when(v.valid_until if v else None),
                base,
                baseline,
            ]
        )
    table = plain_table(
        [
            "IMAGE",
            "STATE",
            "STAGING",
            "PRODUCTION",
            "BUILT",
            "VERIFIED",
            "AGE",
            "VALID UNTIL",
            "BASE (built -> now)",
            "BASELINE (built -> now)",
        ],
        rows,
    )
    notes = [f"{s.name}: {r}" for s in statuses if s.state.value != "fresh" for r in s.reasons]
    return table + ("\n\n" + "\n".join(notes) if notes else "")


def load_trusted(keys: Sequence[Path]) -> list[PublicKey]:
    from harden.attest.keys import load_public_key

    return [load_public_key(k) for k in keys]


@click.command()
@click.argument("directory", required=False, default=DEFAULT_DIR, type=click.Path(path_type=Path))
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted public key (repeatable). Without one no attestation verifies: all stale.",
)
@baselines_option
@click.option(
    "--warn-within",
    default="7d",
    show_default=True,
    callback=duration,
    help="Say 'expiring' when an image turns stale within this (12h, 7d, 2w).",
)
@click.option("--jobs", "-j", default=8, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "junit"]),
    default="table",
    show_default=True,
    help="junit: one testcase per image, failing when it needs a rebuild (for CI dashboards).",
)
@output_option
def status(
    directory: Path,
    keys: tuple[Path, ...],
    baseline_dirs: tuple[Path, ...],
    warn_within: dt.timedelta,
    jobs: int,
    fmt: str,
    output: Path | None,
) -> None:
    """Freshness of the golden image of every definition in DIRECTORY (default images/).

    \b
    States: fresh, expiring (stale within --warn-within), stale (older than max_age, past
    validUntil, a waiver expired, or no verified compliance attestation), outdated (base or
    baseline changed since the build: "outdated (base)"), revoked, missing (nothing at the
    destination), unknown (a registry could not be asked; never fresh).
    Exit 0 all fresh or expiring, 1 something needs a rebuild, 4 a registry is unreachable.
    """
    from harden.lifecycle import SCHEMA_VERSION, exit_code
    from harden.results import rfc3339

    clock = cli_clock()
    defs = tracked(load_definitions(directory), vms=True)
    inventory = make_inventory(baseline_dirs, load_trusted(keys), clock, jobs)
    statuses = gather(defs, inventory, warn_within)
    code = exit_code(statuses)
    if fmt == "json":
        doc = {
            "schema_version": SCHEMA_VERSION,
            "checked_at": rfc3339(clock.now()),
            "exit_code": int(code),
            "images": [s.to_json() for s in statuses],
        }
        emit(dump_json(doc), output)
    elif fmt == "junit":
        emit(junit_xml(statuses, rfc3339(clock.now())), output)
    else:
        emit(render_table(statuses) if statuses else "no image definitions", output)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.value] = counts.get(s.state.value, 0) + 1
    progress(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing tracked")
    if code:
        raise click.exceptions.Exit(int(code))


def junit_xml(statuses: Sequence[ImageStatus], checked_at: str) -> str:
    """One testcase per golden image: passes when fresh or expiring, fails with the reasons when
    it needs a rebuild, errors when its state is unknown."""
    from harden.lifecycle import State
    from harden.report.cases import Case, cases_junit

    cases = []
    for st in statuses:
        name = f"{st.name} ({st.label})"
        if st.state is State.UNKNOWN:
            cases.append(Case(name, error="; ".join(st.reasons) or "unknown"))
        elif st.needs_rebuild or st.state is State.SERVING_REVOKED:
            cases.append(Case(name, tuple(st.reasons) or (st.label,), failure_type=st.state.value))
        else:
            cases.append(Case(name))
    return cases_junit(
        "harden status",
        "harden.status",
        "harden.status.image",
        cases,
        properties={"checked_at": checked_at},
    )
