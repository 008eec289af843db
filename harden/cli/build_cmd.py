"""`harden build IMAGE-DEF`: build, verify (and push) one golden image."""

from __future__ import annotations

from pathlib import Path

import click

from harden.cli.common import (
    allow_unencrypted_option,
    baselines_option,
    catalogue,
    complete_definitions,
    context,
    dump_json,
    emit,
    exit_code_option,
    fail_on_option,
    load_signer_from_uri,
    output_option,
    policy_exit,
    progress,
)
from harden.cli.output import render_report
from harden.errors import ExitCode
from harden.imagedef import load_definition


@click.command()
@click.argument(
    "definition",
    type=click.Path(dir_okay=False, path_type=Path),
    shell_complete=complete_definitions,
)
@baselines_option
@click.option("--force", is_flag=True, help="Rebuild even when base and baseline are unchanged.")
@click.option(
    "--allow-noncompliant", is_flag=True, help="Push even when verification fails (says so loudly)."
)
@click.option("--no-push", is_flag=True, help="Build and verify only.")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "json", "junit", "sarif", "html"]),
    default="table",
    show_default=True,
    help="json: the build result; the others: the verification report of the built image.",
)
@output_option
@fail_on_option
@exit_code_option
@click.option(
    "--key",
    "key_uri",
    default=None,
    help="Sign provenance, test-result and compliance with this key (file:PATH) and "
    "attach them to the pushed image as referrers (a VM template: also written beside the "
    "qcow2 as NAME.qcow2.attestations.json).",
)
@click.option(
    "--scan",
    "scan_profile",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[PROFILE]",
    help="Scan the built image with OpenSCAP (default profile anssi_bp28_enhanced), show the "
    "score in the report and, with --key, attach the result as a signed openscap-scan "
    "attestation (what `promote --min-scan-score` requires). Write --scan=PROFILE.",
)
@click.option(
    "--keep-on-error",
    is_flag=True,
    help="When a remediation step fails, keep its state to inspect (as Packer's -on-error): a "
    "container build commits it as image harden-kept/NAME:STEP-TIME and prints the command that "
    "opens a shell in it (network none); a VM build keeps the build VM's disk, flattened, as "
    "NAME.failed-TIME.qcow2 beside the templates and prints how to boot it and log in.",
)
@allow_unencrypted_option
def build(
    keep_on_error: bool,
    allow_unencrypted: bool,
    definition: Path,
    baseline_dirs: tuple[Path, ...],
    force: bool,
    allow_noncompliant: bool,
    no_push: bool,
    fmt: str,
    output: Path | None,
    fail_on: str | None,
    exit_code: int | None,
    key_uri: str | None,
    scan_profile: str | None,
) -> None:
    """Build the golden image described by DEFINITION (images/*.yaml).

    Resolves the base to a digest, applies the baseline's remediation in throwaway containers,
    commits one image labelled with its base and baseline, verifies it, and pushes it to the
    definition's destination only when compliant. A vm definition seals a qcow2 template
    instead and pushes it as an OCI artifact (docs/vm-templates.md). Exit 0 compliant,
    1 not compliant (--fail-on, --exit-code: as for verify; the push still needs full
    compliance), 3 bad definition or baseline, 4 engine or registry problems.
    """
    from harden.app.build import build as run_build

    defn = load_definition(definition)
    signer = (
        load_signer_from_uri(key_uri, allow_unencrypted=allow_unencrypted)
        if key_uri is not None
        else None
    )  # fails first
    cat = catalogue(baseline_dirs)
    built = run_build(
        defn,
        cat,
        context(),
        signer=signer,
        force=force,
        allow_noncompliant=allow_noncompliant,
        push=not no_push,
        scan_profile=scan_profile,
        keep_on_error=keep_on_error,
    )
    if fmt == "json":
        emit(dump_json(built.to_json()), output)
    else:
        render_report(built.report, fmt, output, cat)
    if built.attestation_error is not None:
        progress(built.attestation_error.diagnostics())
        progress(
            f"error: {built.where} is pushed but has no attestations: "
            "it is NOT promotable; run `harden attest` or the build again"
        )
        raise click.exceptions.Exit(int(ExitCode.ENVIRONMENT))
    policy_exit(not built.report.compliant_at(fail_on), exit_code)
    if built.scan_error is not None:  # said above; the build is recorded and attested
        raise click.exceptions.Exit(int(ExitCode.ENVIRONMENT))
