"""`harden verify REF`: check an image, a running container or a machine against a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from harden.cli.common import (
    baselines_option,
    catalogue,
    complete_baseline_ids,
    complete_definitions,
    context,
    exit_code_option,
    fail_on_option,
    output_option,
    policy_exit,
    warn,
)
from harden.cli.output import FORMAT_CHOICES, render_report
from harden.imagedef import load_definition
from harden.testsuite import Suite

if TYPE_CHECKING:
    from harden.baseline.resolve import Catalogue
    from harden.results import VerifyReport


@click.command()
@click.argument("ref")
@click.option(
    "--baseline",
    "baseline_id",
    shell_complete=complete_baseline_ids,
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
    "--no-boot",
    is_flag=True,
    default=False,
    help="For FILE.qcow2: read the template's file system without booting or mounting it "
    "(seconds instead of a boot); rules that need a running system (command checks, live "
    "sysctl, loaded modules, mounts) are errors saying so, never passes.",
)
@click.option(
    "--definition",
    shell_complete=complete_definitions,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Image definition (images/*.yaml) whose baseline, parameters and waivers to verify "
    "against, as the build did.",
)
@baselines_option
@click.option(
    "--format", "-f", "fmt", type=click.Choice(FORMAT_CHOICES), default="table", show_default=True
)
@output_option
@fail_on_option
@exit_code_option
@click.option(
    "--tests",
    "test_paths",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="testinfra test file or folder to run against REF as well (repeatable); each test "
    "becomes a result. --definition adds the definition's own 'tests'.",
)
@click.option("--tests-k", default=None, metavar="EXPR", help="pytest -k selection for --tests.")
@click.option("--tests-m", default=None, metavar="EXPR", help="pytest -m selection for --tests.")
@click.option(
    "--test-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds one test may take before it is an error.",
)
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
    fail_on: str | None,
    exit_code: int | None,
    test_paths: tuple[Path, ...],
    tests_k: str | None,
    tests_m: str | None,
    test_timeout: float,
    known_hosts: Path | None,
    identity: Path | None,
    scan_profile: str | None,
    local: bool,
    no_boot: bool,
) -> None:
    """Verify REF against a baseline and report every rule.

    \b
    REF is one of:
      127.0.0.1:5000/staging/app:1       a registry reference (read from the registry)
      docker-image://debian:12           an image of the local engine (or: --local debian:12)
      docker://NAME                      a running container
      ssh://USER@HOST:PORT               a running machine (host key must be pinned)
      template.qcow2                     a VM template (booted in a throwaway overlay;
                                         --no-boot: its file system read, nothing booted)

    Images are read from their layers: nothing in them runs, except the baseline's
    `command` checks (in a container; the report marks those results as executed).

    With --definition the image definition's baseline, parameter overrides and waivers are
    used, exactly as `harden build` verified the image, and its testinfra suites run too.

    \b
    --tests runs a testinfra suite (the same files `pytest --harden-target REF` runs) on REF:
      harden verify 127.0.0.1:5000/staging/app:1 --tests tests/golden/
    An image is tested in one throwaway container (network none): a test that writes to it
    changes nothing that stays.

    With --scan an OpenSCAP second opinion (docs/scanner-agreement.md) is added to every
    report format; it does not change the exit code.

    Exit 0 when compliant, 1 when not (a failure, an error or an expired waiver),
    3 for bad input, 4 when the engine, registry or machine cannot be reached (a registry
    reference that cannot be read is exit 4 with the registry's own message).
    """
    from harden.app.verify import verify_reference

    suites = [
        Suite(
            (p.resolve(),),
            root=Path.cwd(),
            keyword=tests_k,
            markers=tests_m,
            test_timeout=test_timeout,
        )
        for p in test_paths
    ]
    cat = catalogue(baseline_dirs)
    report = verify_reference(
        ref,
        cat,
        context(),
        baseline_id=baseline_id,
        definition=load_definition(definition) if definition is not None else None,
        known_hosts=known_hosts,
        identity=identity,
        suites=suites,
        scan_profile=scan_profile,
        local=local,
        boot=not no_boot,
    )
    render_report(report, fmt, output, cat)
    warn_target_mismatch(report, cat)
    policy_exit(not report.compliant_at(fail_on), exit_code)


def warn_target_mismatch(report: VerifyReport, cat: Catalogue) -> None:
    """`--baseline debian-vm` on a container: say so instead of a silent pile of n/a results."""
    from harden.baseline.resolve import resolve
    from harden.errors import HardenError

    try:
        targets = sorted(t.value for t in resolve(cat, report.baseline.id).targets)
    except HardenError:
        return
    if report.target not in targets:
        na = report.summary()["not_applicable"]
        warn(
            f"baseline {report.baseline.id} targets {', '.join(targets)}, not {report.target} "
            f"images: {na} of its results are not applicable here; pick a baseline for "
            f"{report.target}s (harden baseline list shows TARGETS)"
        )
