"""`harden build IMAGE-DEF`: build, verify (and push) one golden image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harden.cli.common import baselines_option, catalogue, dump_json, emit, output_option, progress
from harden.cli.output import render_report
from harden.clock import SystemClock
from harden.imagedef import load_definition


@click.command()
@click.argument("definition", type=click.Path(dir_okay=False, path_type=Path))
@baselines_option
@click.option("--force", is_flag=True, help="Rebuild even when base and baseline are unchanged.")
@click.option(
    "--allow-noncompliant", is_flag=True, help="Push even when verification fails (says so loudly)."
)
@click.option("--no-push", is_flag=True, help="Build and verify only.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "junit", "sarif", "html"]),
    default="table",
    show_default=True,
    help="json: the build result; the others: the verification report of the built image.",
)
@output_option
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
def build(
    definition: Path,
    baseline_dirs: tuple[Path, ...],
    force: bool,
    allow_noncompliant: bool,
    no_push: bool,
    fmt: str,
    output: Path | None,
    key_uri: str | None,
    scan_profile: str | None,
) -> None:
    """Build the golden image described by DEFINITION (images/*.yaml).

    Resolves the base to a digest, applies the baseline's remediation in throwaway containers,
    commits one image labelled with its base and baseline, verifies it, and pushes it to the
    definition's destination only when compliant. A vm definition seals a qcow2 template
    instead and pushes it as an OCI artifact (docs/vm-templates.md). Exit 0 compliant,
    1 not compliant, 3 bad definition or baseline, 4 engine or registry problems.
    """
    from builder.container_build import build_container
    from builder.docker_engine import Engine

    defn = load_definition(definition)
    signer = None
    if key_uri is not None:
        from harden.cli.attest_cmd import load_signer_from_uri

        signer = load_signer_from_uri(key_uri)  # a bad key fails before the build
    cat = catalogue(baseline_dirs)
    if scan_profile is not None:
        from builder.openscap import check_profile, oscap_version

        if scan_profile:
            check_profile(scan_profile)
        if defn.doc.target.value == "vm":
            from harden.errors import UsageError

            raise UsageError(
                "--scan is not available for vm definitions yet",
                hint="build the template, then scan its extracted root",
            )
        oscap_version()  # a missing scanner fails before the build
    if defn.doc.target.value == "vm":
        _build_vm_template(defn, cat, force, allow_noncompliant, no_push, fmt, output, signer)
        return
    engine = Engine.connect()
    result = build_container(
        defn,
        cat,
        engine,
        SystemClock(),
        force=force,
        allow_noncompliant=allow_noncompliant,
        push=not no_push,
        progress=progress,
    )
    scan = _scan_build(result, scan_profile) if scan_profile is not None else None
    report = result.report
    if scan is not None:
        import dataclasses

        report = dataclasses.replace(report, scan=scan.summary_json())
    if fmt == "json":
        doc = result.to_json()
        if scan is not None:
            doc["scan"] = scan.summary_json()
        emit(dump_json(doc), output)
    else:
        render_report(report, fmt, output)
    _audit_build(
        result.reference,
        result.digest,
        result.compliant,
        {
            "definition": str(definition),
            "base": {"name": result.base_name, "digest": result.base_digest},
            "baseline": result.report.baseline.to_json(),
            "reused": result.reused,
            "pushed": result.pushed,
        },
    )
    state = "compliant" if result.compliant else "NOT compliant"
    where = f"{result.reference}@{result.digest}" if result.digest else result.reference
    progress(
        f"{'reused' if result.reused else 'built'} {where}: {state}"
        + ("" if result.pushed or no_push else " (not pushed)")
    )
    if signer is not None and result.digest is not None:
        _attest_build(result, defn, definition, signer)
        if scan is not None:
            _attest_scan(result, scan, signer)
    elif signer is not None:
        progress("nothing attested: the image was not pushed")
    if not result.compliant:
        raise click.exceptions.Exit(1)
    if scan_profile is not None and scan is None:
        raise click.exceptions.Exit(4)  # asked for a scan and got none (said above)


def _scan_build(result: Any, profile: str) -> Any:
    """The OpenSCAP scan of the image just built (by its local image id). A failed scan is
    said and returns None: the build is still recorded and attested, the exit code is 4."""
    from builder.docker_engine import Engine
    from builder.openscap import DEFAULT_PROFILE, scan_image
    from harden.errors import HardenError

    try:
        scan = scan_image(
            Engine.connect(),
            result.image_id,
            profile or DEFAULT_PROFILE["container"],
            progress=progress,
        )
    except HardenError as e:
        progress(e.diagnostics())
        progress(f"error: the OpenSCAP scan of {result.image_id[:19]} failed: no scan attestation")
        return None
    progress(f"OpenSCAP {scan.profile_short}: score {scan.score} ({scan.seconds:.1f} s)")
    return scan


def _attest_scan(result: Any, scan: Any, signer: Any) -> None:
    from harden.errors import HardenError
    from harden.publish import attach_scan_attestation

    try:
        attach_scan_attestation(
            result.reference, result.digest, scan.to_json(), signer, SystemClock()
        )
    except HardenError as e:
        progress(e.diagnostics())
        progress(f"error: the OpenSCAP scan of {result.digest} is not attested")
        raise click.exceptions.Exit(4) from e
    progress(f"attached the signed OpenSCAP scan ({scan.profile_short}) to {result.digest}")


def _audit_build(image: str, digest: str | None, compliant: bool, details: dict[str, Any]) -> None:
    """The build decision in the audit log (the history `harden evidence` shows)."""
    from harden.audit import AuditAction, AuditLog

    outcome = "compliant" if compliant else "non-compliant"
    AuditLog.default(SystemClock()).append(AuditAction.BUILD, image, digest, outcome, details)


def _attest_build(result: Any, defn: Any, definition: Path, signer: Any) -> None:
    """Sign and attach the three statements; a failure says the image is NOT promotable."""
    from harden.errors import HardenError
    from harden.publish import attach_build_attestations

    try:
        attached = attach_build_attestations(result, defn, definition, signer, SystemClock())
    except HardenError as e:
        progress(e.diagnostics())
        progress(
            f"error: {result.reference}@{result.digest} is pushed but has no attestations: "
            "it is NOT promotable; run `harden attest` or the build again"
        )
        raise click.exceptions.Exit(4) from e
    progress(f"attached {len(attached)} signed attestation(s) to {result.digest}")


def _build_vm_template(
    defn: Any,
    cat: Any,
    force: bool,
    allow_noncompliant: bool,
    no_push: bool,
    fmt: str,
    output: Path | None,
    signer: Any,
) -> None:
    """A vm definition: build and seal a qcow2 template (builder/vm_build.py); with --key sign
    it (envelopes beside the file), with a destination push it as an OCI artifact."""
    from builder.vm_build import build_vm
    from harden.publish import publish_vm

    clock = SystemClock()
    result = build_vm(
        defn,
        cat,
        clock,
        force=force,
        allow_noncompliant=allow_noncompliant,
        progress=progress,
    )
    if fmt == "json":
        emit(dump_json(result.to_json()), output)
    else:
        render_report(result.report, fmt, output)
    destination = defn.doc.destination if result.written and not no_push else None
    pushed: str | None = None
    if result.written and (signer is not None or destination):
        pushed = publish_vm(result, defn, signer, destination, clock=clock, progress=progress)
    _audit_build(
        destination or str(result.path),
        pushed or result.sha256,
        result.compliant,
        {
            "definition": str(defn.path),
            "template": str(result.path),
            "template_sha256": result.sha256,
            "base": {"name": result.base_disk, "digest": result.base_sha256},
            "baseline": result.report.baseline.to_json(),
            "reused": result.reused,
            "pushed": pushed is not None,
            "written": result.written,
        },
    )
    state = "compliant" if result.compliant else "NOT compliant"
    what = "reused" if result.reused else "built" if result.written else "not written"
    progress(f"{what} {result.path} ({result.sha256}): {state}")
    if not result.compliant:
        raise click.exceptions.Exit(1)
