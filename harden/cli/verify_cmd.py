"""`harden verify REF`: check an image, a running container or a machine against a baseline."""

from __future__ import annotations

from pathlib import Path

import click

from harden.audit import AuditAction, AuditLog
from harden.cli.common import baselines_option, catalogue, output_option, progress
from harden.cli.output import FORMAT_CHOICES, render_report
from harden.clock import SystemClock
from harden.errors import UsageError
from harden.imagedef import load_definition
from verifiers.refs import verify_ref


@click.command()
@click.argument("ref")
@click.option(
    "--baseline",
    "baseline_id",
    default=None,
    help="Baseline id (default: debian-container for containers, debian-vm for machines). "
    "A baseline label on the image is only compared: a mismatch is a failure.",
)
@click.option(
    "--local",
    is_flag=True,
    default=False,
    help="REF names an image of the local Docker Engine (same as docker-image://REF).",
)
@click.option(
    "--definition",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Image definition (images/*.yaml) whose baseline, parameters and waivers to verify "
    "against, as the build did.",
)
@baselines_option
@click.option(
    "--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="table", show_default=True
)
@output_option
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="known_hosts file pinning the host key of an ssh:// target.",
)
@click.option(
    "--identity",
    "-i",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Private key for an ssh:// target.",
)
def verify(
    ref: str,
    baseline_id: str | None,
    definition: Path | None,
    baseline_dirs: tuple[Path, ...],
    fmt: str,
    output: Path | None,
    known_hosts: Path | None,
    identity: Path | None,
    local: bool,
) -> None:
    """Verify REF against a baseline and report every rule.

    \b
    REF is one of:
      127.0.0.1:5000/staging/app:1       a registry reference (read from the registry)
      docker-image://debian:12           an image of the local engine (or: --local debian:12)
      docker://NAME                      a running container
      ssh://USER@HOST:PORT               a running machine (host key must be pinned)
      template.qcow2                     a VM template (booted in a throwaway overlay)

    Images are read from their layers: nothing in them runs, except the baseline's
    `command` checks (in a container; the report marks those results as executed).

    With --definition the image definition's baseline, parameter overrides and waivers are
    used, exactly as `harden build` verified the image.

    Exit 0 when compliant, 1 when not (a failure, an error or an expired waiver),
    3 for bad input, 4 when the engine, registry or machine cannot be reached (a registry
    reference that cannot be read is exit 4 with the registry's own message).
    """
    cat = catalogue(baseline_dirs)
    clock = SystemClock()
    overrides = None
    if definition is not None:
        defn = load_definition(definition)
        if baseline_id is not None and baseline_id != defn.doc.baseline.id:
            raise UsageError(
                f"--baseline {baseline_id} contradicts {definition} "
                f"(baseline {defn.doc.baseline.id})"
            )
        baseline_id, overrides = defn.doc.baseline.id, defn.overrides()
    report = verify_ref(
        ref,
        cat,
        clock,
        baseline_id=baseline_id,
        overrides=overrides,
        known_hosts=known_hosts,
        identity=identity,
        progress=progress,
        local=local,
    )
    render_report(report, fmt, output)
    AuditLog.default(clock).append(
        AuditAction.VERIFY,
        report.image,
        report.digest,
        "compliant" if report.compliant else "non-compliant",
        {"baseline": report.baseline.to_json(), "summary": report.summary()},
    )
    if not report.compliant:
        raise click.exceptions.Exit(1)
