"""Build and publish one golden image (container or VM template): `harden build` and each image
of `harden rebuild` call :func:`build`.

A container: remediate, commit, verify, push when compliant (builder/container_build.py), then
with a signer sign provenance, test-result and compliance and attach them as referrers. A VM
template: boot, remediate, seal, verify a clone (builder/vm_build.py), then sign (envelopes
beside the qcow2) and push it as an OCI artifact. Either way one BUILD audit entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harden.app.context import Context
from harden.audit import AuditAction
from harden.baseline.resolve import Catalogue
from harden.errors import HardenError, UsageError
from harden.imagedef import ImageDefinition
from harden.results import VerifyReport, compliance_word

if TYPE_CHECKING:
    from harden.attest.keys import Signer
    from harden.builder.container_build import BuildResult
    from harden.builder.docker_engine import Engine
    from harden.builder.vm_build import VmBuildResult
    from harden.oci.client import RegistryClient
    from harden.oci.types import Descriptor
    from harden.scan.model import ScanResult

__all__ = ["Built", "build"]


@dataclass(frozen=True)
class Built:
    """What :func:`build` did. Exactly one of ``container`` and ``vm`` is set."""

    definition: ImageDefinition
    container: BuildResult | None = None
    vm: VmBuildResult | None = None
    pushed_digest: str | None = None  # the manifest digest at the destination, once pushed
    attached: tuple[Descriptor, ...] = ()
    # signing or attaching failed after the push: the image is NOT promotable
    attestation_error: HardenError | None = None
    scan: ScanResult | None = None  # the OpenSCAP second opinion (build --scan)
    scan_error: HardenError | None = None  # asked for a scan and got none (or it is not attested)

    @property
    def report(self) -> VerifyReport:
        if self.container is not None:
            report = self.container.report
            if self.scan is not None:
                report = dataclasses.replace(report, scan=self.scan.summary_json())
            return report
        assert self.vm is not None
        return self.vm.report

    @property
    def compliant(self) -> bool:
        return self.report.compliant

    @property
    def where(self) -> str:
        """``destination@digest`` once pushed, else the local reference or template path."""
        if self.container is not None:
            c = self.container
            return f"{c.reference}@{c.digest}" if c.digest else c.reference
        assert self.vm is not None
        return str(self.vm.path)

    def to_json(self) -> dict[str, Any]:
        if self.container is not None:
            doc = self.container.to_json()
            if self.scan is not None:
                doc["scan"] = self.scan.summary_json()
            return doc
        assert self.vm is not None
        return self.vm.to_json()


def build(
    defn: ImageDefinition,
    catalogue: Catalogue,
    ctx: Context,
    *,
    signer: Signer | None = None,
    force: bool = False,
    allow_noncompliant: bool = False,
    push: bool = True,
    engine: Callable[[], Engine] | None = None,
    scan_profile: str | None = None,
    keep_on_error: bool = False,
) -> Built:
    """Build, verify, (push,) (sign and attach) the image ``defn`` describes; audit BUILD.

    A non-compliant image is a result (``compliant`` False), not an exception. A failure to
    attach attestations after the push is returned as ``attestation_error`` (the image is
    pushed but not promotable); engine, registry and input problems raise HardenError.

    With ``scan_profile`` (``""``: the default profile) the built image is also scanned with
    OpenSCAP and, with a signer, the scan is attached as a signed openscap-scan attestation; a
    failed scan is ``scan_error`` (the build is still recorded and attested).

    ``keep_on_error``: a failed remediation step's state is kept to inspect (the error says
    where and how to enter it)."""
    if scan_profile is not None:
        _check_scan(defn, scan_profile)
    if defn.doc.target.value == "vm":
        return _build_vm(
            defn, catalogue, ctx, signer, force, allow_noncompliant, push, keep_on_error
        )
    from harden.builder.container_build import build_container
    from harden.builder.docker_engine import Engine

    result = build_container(
        defn,
        catalogue,
        (engine or Engine.connect)(),
        ctx.clock,
        force=force,
        allow_noncompliant=allow_noncompliant,
        push=push,
        progress=ctx.progress,
        keep_on_error=keep_on_error,
    )
    _audit_build(
        ctx,
        result.reference,
        result.digest,
        result.compliant,
        {
            "definition": str(defn.path),
            "base": {"name": result.base_name, "digest": result.base_digest},
            "baseline": result.report.baseline.to_json(),
            "reused": result.reused,
            "pushed": result.pushed,
        },
    )
    scan, scan_error = (
        _scan(result, scan_profile, ctx, (engine or Engine.connect)())
        if scan_profile is not None
        else (None, None)
    )
    built = Built(
        defn,
        container=result,
        pushed_digest=result.digest if result.pushed else None,
        scan=scan,
        scan_error=scan_error,
    )
    ctx.progress(
        f"{'reused' if result.reused else 'built'} {built.where}: {_state(result.compliant)}"
        + ("" if result.pushed or not push else " (not pushed)")
    )
    if signer is None:
        return built
    if result.digest is None:
        ctx.progress("nothing attested: the image was not pushed")
        return built
    from harden.app.publish import attach_build_attestations
    from harden.oci.types import parse_reference

    client = ctx.registry(parse_reference(result.reference).registry)
    try:
        attached = attach_build_attestations(result, defn, signer, ctx.clock, client)
    except HardenError as e:
        return dataclasses.replace(built, attestation_error=e)
    try:
        attached += _attach_inventory(result, signer, ctx, client, engine)
    except HardenError as e:
        return dataclasses.replace(built, attestation_error=e)
    ctx.progress(f"attached {len(attached)} signed attestation(s) to {result.digest}")
    built = dataclasses.replace(built, attached=tuple(attached))
    if scan is not None:
        from harden.app.publish import attach_scan_attestation

        try:
            attach_scan_attestation(
                result.reference, result.digest, scan.to_json(), signer, ctx.clock, client
            )
        except HardenError as e:
            ctx.progress(e.diagnostics())
            return dataclasses.replace(built, scan_error=e)
        ctx.progress(f"attached the signed OpenSCAP scan ({scan.profile_short}) to {result.digest}")
    return built


def _attach_inventory(
    result: BuildResult,
    signer: Signer,
    ctx: Context,
    client: RegistryClient,
    engine: Callable[[], Engine] | None,
) -> list[Descriptor]:
    """The pushed image's package inventory (its dpkg database, read without running it) as a
    signed CycloneDX attestation; with security updates installed, the OpenVEX of what they
    fixed."""
    from harden.app.publish import attach_inventory, fixed_cves
    from harden.builder.docker_engine import Engine
    from harden.builder.packages import NoPackageDatabase, image_packages

    assert result.digest is not None
    try:
        packages, release = image_packages((engine or Engine.connect)(), result.image_id)
    except NoPackageDatabase as e:
        ctx.progress(f"no package inventory attached: {e.message}")
        return []
    ctx.progress(f"package inventory: {len(packages)} packages ({release.purl_distro})")
    out = attach_inventory(
        result.reference,
        result.digest,
        packages,
        release,
        result.fixes,
        signer,
        ctx.clock,
        client,
    )
    cves = fixed_cves(result.fixes)
    if cves:
        ctx.progress(f"VEX: {len(cves)} CVE(s) fixed by the applied updates: {', '.join(cves)}")
    return out


def _check_scan(defn: ImageDefinition, profile: str) -> None:
    """A bad profile, a vm definition or a missing scanner fails before the build."""
    from harden.builder.openscap import check_profile, oscap_version

    if profile:
        check_profile(profile)
    if defn.doc.target.value == "vm":
        raise UsageError(
            "--scan is not available for vm definitions yet",
            hint="build the template, then scan its extracted root",
        )
    oscap_version()


def _scan(
    result: BuildResult, profile: str, ctx: Context, engine: Engine
) -> tuple[ScanResult | None, HardenError | None]:
    """The OpenSCAP scan of the image just built (by its local image id)."""
    from harden.builder.openscap import DEFAULT_PROFILE, scan_image

    try:
        scan = scan_image(
            engine, result.image_id, profile or DEFAULT_PROFILE["container"], progress=ctx.progress
        )
    except HardenError as e:
        ctx.progress(e.diagnostics())
        ctx.progress(
            f"error: the OpenSCAP scan of {result.image_id[:19]} failed: no scan attestation"
        )
        return None, e
    ctx.progress(f"OpenSCAP {scan.profile_short}: score {scan.score} ({scan.seconds:.1f} s)")
    return scan, None


def _build_vm(
    defn: ImageDefinition,
    catalogue: Catalogue,
    ctx: Context,
    signer: Signer | None,
    force: bool,
    allow_noncompliant: bool,
    push: bool,
    keep_on_error: bool = False,
) -> Built:
    """A vm definition: build and seal a qcow2 template (builder/vm_build.py); with a signer sign
    it (envelopes beside the file), with a destination push it as an OCI artifact."""
    from harden.app.publish import publish_vm
    from harden.builder.vm_build import build_vm
    from harden.oci.types import parse_reference

    result = build_vm(
        defn,
        catalogue,
        ctx.clock,
        force=force,
        allow_noncompliant=allow_noncompliant,
        progress=ctx.progress,
        keep_on_error=keep_on_error,
    )
    destination = defn.doc.destination if result.written and push else None
    pushed: str | None = None
    if result.written and (signer is not None or destination):
        client = ctx.registry(parse_reference(destination).registry) if destination else None
        pushed = publish_vm(
            result,
            defn,
            signer,
            destination,
            clock=ctx.clock,
            progress=ctx.progress,
            client=client,
        )
    _audit_build(
        ctx,
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
    what = "reused" if result.reused else "built" if result.written else "not written"
    ctx.progress(f"{what} {result.path} ({result.sha256}): {_state(result.compliant)}")
    return Built(defn, vm=result, pushed_digest=pushed)


def _state(compliant: bool) -> str:
    return "compliant" if compliant else "NOT compliant"


def _audit_build(
    ctx: Context, image: str, digest: str | None, compliant: bool, details: dict[str, Any]
) -> None:
    """The build decision in the audit log (the history `harden evidence` shows)."""
    ctx.audit.append(AuditAction.BUILD, image, digest, compliance_word(compliant), details)
