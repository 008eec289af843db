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
    help="Baseline id (default: the one recorded in the image's labels, else debian-container "
    "for containers and debian-vm for machines).",
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
@click.option(
    "--scan",
    "scan_profile",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[PROFILE]",
    help="Also scan REF with OpenSCAP and the SCAP Security Guide (scripts/openscap.sh) and "
    "show the score in the report; PROFILE e.g. anssi_bp28_high (default: anssi_bp28_enhanced). "
    "Put it after REF, or write --scan=PROFILE.",
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
    scan_profile: str | None,
) -> None:
    """Verify REF against a baseline and report every rule.

    \b
    REF is one of:
      debian:12                          a local image
      127.0.0.1:5000/staging/app:1       a registry reference (pulled)
      docker://NAME                      a running container
      ssh://USER@HOST:PORT               a running machine (host key must be pinned)
      template.qcow2                     a VM template (booted in a throwaway overlay)

    With --definition the image definition's baseline, parameter overrides and waivers are
    used, exactly as `harden build` verified the image.

    With --scan an OpenSCAP second opinion (docs/scanner-agreement.md) is added to every
    report format; it does not change the exit code.

    Exit 0 when compliant, 1 when not (a failure, an error or an expired waiver),
    3 for bad input, 4 when the engine, registry or machine cannot be reached.
    """
    if scan_profile is not None:  # a bad profile or target fails before the verification
        from builder.openscap import check_scan_ref

        check_scan_ref(ref, scan_profile or None)
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
    )
    if scan_profile is not None:
        import dataclasses

        from builder.openscap import scan_ref

        scan = scan_ref(ref, scan_profile or None, progress=progress)
        progress(f"OpenSCAP {scan.profile_short}: score {scan.score} ({scan.seconds:.1f} s)")
        report = dataclasses.replace(report, scan=scan.summary_json())
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
