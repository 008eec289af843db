"""`harden status [DIR]`: age and freshness of every golden image."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from harden.cli.common import (
    DEFAULT_DIR,
    baselines_option,
    catalogue,
    context,
    dump_json,
    duration,
    emit,
    exit_code_option,
    load_trusted,
    output_option,
    plain_table,
    progress,
    trusted_keys_option,
)

if TYPE_CHECKING:
    from harden.lifecycle import ImageStatus
    from harden.report.cases import Case


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


@click.command()
@click.argument("directory", required=False, default=DEFAULT_DIR, type=click.Path(path_type=Path))
@trusted_keys_option(
    "Trusted public key (repeatable). Without one no attestation verifies: all stale."
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
    "-f",
    "fmt",
    type=click.Choice(["table", "json", "junit", "sarif"]),
    default="table",
    show_default=True,
    help="junit: one testcase per image, failing when it needs a rebuild (for CI dashboards); "
    "sarif: one result per image that needs a rebuild, at its definition file (code scanning).",
)
@output_option
@exit_code_option
def status(
    directory: Path,
    keys: tuple[Path, ...],
    baseline_dirs: tuple[Path, ...],
    warn_within: dt.timedelta,
    jobs: int,
    fmt: str,
    output: Path | None,
    exit_code: int | None,
) -> None:
    """Freshness of the golden image of every definition in DIRECTORY (default images/).

    \b
    States: fresh, expiring (stale within --warn-within), stale (older than max_age, past
    validUntil, a waiver expired, or no verified compliance attestation), outdated (base or
    baseline changed since the build: "outdated (base)"; or Debian published security fixes for
    packages in the image's signed SBOM: "outdated (security: 3 packages)", with the packages,
    versions and CVE/DSA ids), revoked, missing (nothing at the destination), unknown (a
    registry or the Debian archive could not be asked or did not verify; never fresh).
    Exit 0 all fresh or expiring, 1 something needs a rebuild, 4 a registry or archive problem.
    """
    from harden.app.status import status as run_status
    from harden.lifecycle import SCHEMA_VERSION
    from harden.results import rfc3339

    result = run_status(
        directory,
        catalogue(baseline_dirs),
        load_trusted(keys),
        context(),
        warn_within=warn_within,
        jobs=jobs,
    )
    statuses, code = result.images, result.exit_code
    if fmt == "json":
        doc = {
            "schema_version": SCHEMA_VERSION,
            "checked_at": rfc3339(result.checked_at),
            "exit_code": code,
            "images": [s.to_json() for s in statuses],
        }
        emit(dump_json(doc), output)
    elif fmt == "junit":
        emit(junit_xml(statuses, rfc3339(result.checked_at)), output)
    elif fmt == "sarif":
        emit(sarif(statuses, rfc3339(result.checked_at)), output)
    else:
        emit(render_table(statuses) if statuses else "no image definitions", output)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.value] = counts.get(s.state.value, 0) + 1
    progress(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing tracked")
    if code == 1 and exit_code is not None:
        code = exit_code  # a policy outcome only; unreachable registries stay 4
    if code:
        raise click.exceptions.Exit(code)


_STATE_HELP = {
    "stale": "The golden image is older than its max_age, past its attestation's validUntil, or "
    "has no verified compliance attestation: rebuild it (harden rebuild --stale).",
    "outdated": "The base image, the baseline or the Debian archive (security fixes for packages "
    "in the image's SBOM) changed since the build: rebuild it (harden rebuild --stale).",
    "revoked": "The golden image's digest is revoked: rebuild it (harden rebuild --stale).",
    "missing": "Nothing is at the definition's destination: build it (harden rebuild --stale).",
    "serving-revoked": "The production tag serves a digest the revocation list revokes, or one "
    "the gate would deny: promote a fresh build.",
    "unknown": "A registry or the Debian archive could not be asked or did not verify; the state "
    "is not known, so the image is never counted fresh.",
}


def _cases(statuses: Sequence[ImageStatus]) -> list[Case]:
    """One check per golden image: passes when fresh or expiring, fails with the reasons when
    it needs a rebuild (or production serves a revoked digest), errors when its state is
    unknown."""
    from harden.lifecycle import State
    from harden.report.cases import Case

    cases = []
    for st in statuses:
        name = f"{st.name} ({st.label})"
        at, subject = st.facts.definition, st.facts.destination
        if st.state is State.UNKNOWN:
            error = "; ".join(st.reasons) or "unknown"
            cases.append(Case(name, error=error, location=at, subject=subject))
        elif st.needs_rebuild or st.state is State.SERVING_REVOKED:
            reasons = tuple(st.reasons) or (st.label,)
            kind = st.state.value
            cases.append(Case(name, reasons, failure_type=kind, location=at, subject=subject))
        else:
            cases.append(Case(name, location=at, subject=subject))
    return cases


def sarif(statuses: Sequence[ImageStatus], checked_at: str) -> str:
    from harden.report.cases import cases_sarif

    return cases_sarif(
        "harden/status/",
        _cases(statuses),
        rule_help=_STATE_HELP,
        properties={"checked_at": checked_at},
    )


def junit_xml(statuses: Sequence[ImageStatus], checked_at: str) -> str:
    """One testcase per golden image (see _cases)."""
    from harden.report.cases import cases_junit

    cases = _cases(statuses)
    return cases_junit(
        "harden status",
        "harden.status",
        "harden.status.image",
        cases,
        properties={"checked_at": checked_at},
    )
