"""Sign and publish what was built: the statements of a verified image, their referrers, and a
VM template as an OCI artifact.

Used by the attest and build use cases (`harden attest`, `harden build --key`, `harden rebuild`):
no click, no printing (progress lines go to ``progress``), an injected clock, errors as
HardenError subclasses. It lives in the use-case layer because it takes builder's results.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harden.attest.keys import Signer
    from harden.attest.statements import BuildInfo, Subject
    from harden.attest.store import SignedStatement
    from harden.baseline.model import Waiver
    from harden.baseline.resolve import ResolvedBaseline
    from harden.builder.container_build import BuildResult
    from harden.builder.vm_build import VmBuildResult
    from harden.clock import Clock
    from harden.imagedef import ImageDefinition
    from harden.oci import Descriptor, RegistryClient
    from harden.results import VerifyReport


def _noop(_: str) -> None:
    return None


def builder_id() -> str:
    """The SLSA builder id: the CI workflow or runner when in CI, else the local host."""
    from harden.ci import detect

    return detect(os.environ).builder_id


def sign_for_report(
    report: VerifyReport,
    repository_name: str,
    digest: str,
    signer: Signer,
    *,
    verified_at: dt.datetime,
    validity: dt.timedelta,
    waivers: Mapping[str, Waiver],
    build: BuildInfo | None,
) -> list[SignedStatement]:
    from harden.attest.statements import Subject

    return sign_subjects(
        report,
        [Subject(repository_name, digest)],
        signer,
        verified_at=verified_at,
        validity=validity,
        waivers=waivers,
        build=build,
    )


def sign_subjects(
    report: VerifyReport,
    subjects: Sequence[Subject],
    signer: Signer,
    *,
    verified_at: dt.datetime,
    validity: dt.timedelta,
    waivers: Mapping[str, Waiver],
    build: BuildInfo | None,
) -> list[SignedStatement]:
    """The three statements (provenance only with ``build``) for ``subjects``, signed."""
    from harden.attest.store import sign_statements

    return sign_statements(
        report,
        subjects,
        signer,
        verified_at=verified_at,
        valid_until=verified_at + validity,
        waivers=waivers,
        build=build,
        baseline_uri=f"harden:baseline/{report.baseline.id}",
    )


def sign_build(
    report: VerifyReport,
    subjects: Sequence[Subject],
    signer: Signer,
    *,
    build_type: str,
    defn: ImageDefinition,
    base_name: str,
    base_digest: str,
    baseline: ResolvedBaseline,
    extra: Mapping[str, Any] | None = None,
) -> list[SignedStatement]:
    """After ``harden build --key``: provenance, test-result and compliance of what was built
    (validUntil = verified time + the definition's max_age)."""
    build = build_info(
        extra=extra,
        build_type=build_type,
        definition={"name": defn.name, "path": str(defn.path), "sha256": defn.sha256},
        base_name=base_name,
        base_digest=base_digest,
        baseline=baseline,
        started=report.started_at,
        finished=report.finished_at,
    )
    return sign_subjects(
        report,
        subjects,
        signer,
        verified_at=report.finished_at,
        validity=defn.max_age,
        waivers=baseline.waivers,
        build=build,
    )


def attach_signed(
    client: RegistryClient,
    repository: str,
    subject: Descriptor,
    signed: Sequence[SignedStatement],
    clock: Clock,
) -> list[Descriptor]:
    from harden.attest.store import attach_all

    return attach_all(client, repository, subject, signed, clock.now())


def build_info(
    *,
    build_type: str,
    definition: Mapping[str, str],
    base_name: str,
    base_digest: str,
    baseline: ResolvedBaseline,
    started: dt.datetime,
    finished: dt.datetime,
    extra: Mapping[str, Any] | None = None,
) -> BuildInfo:
    from harden import __version__
    from harden.attest.statements import BuildInfo
    from harden.ci import detect

    run = detect(os.environ)
    return BuildInfo(
        build_type=build_type,
        image_definition=definition,
        base_name=base_name,
        base_digest=base_digest,
        baseline_id=baseline.id,
        baseline_version=baseline.version,
        baseline_digest=baseline.digest,
        builder_id=run.builder_id,
        harden_version=__version__,
        started_on=started,
        finished_on=finished,
        extra_parameters=dict(extra or {}),
        invocation_id=run.invocation_id,
        internal_parameters={"ci": run.to_json()},
    )


def attach_build_attestations(
    result: BuildResult,
    defn: ImageDefinition,
    signer: Signer,
    clock: Clock,
    client: RegistryClient | None = None,
) -> list[Descriptor]:
    """After ``harden build --key``: sign provenance, test-result and compliance of the pushed
    image (validUntil = verified time + the definition's max_age) and attach them."""
    from harden.attest.statements import BUILD_TYPE_CONTAINER, Subject
    from harden.errors import RegistryError
    from harden.oci import RegistryClient, parse_reference

    reference = parse_reference(result.reference)
    client = client or RegistryClient.for_reference(reference)
    digest = result.digest
    subject = client.head_manifest(reference.repository, digest) if digest else None
    if digest is None or subject is None:
        raise RegistryError(f"{result.reference}@{digest} is not in the registry")
    signed = sign_build(
        result.report,
        [Subject(f"{reference.registry}/{reference.repository}", digest)],
        signer,
        build_type=BUILD_TYPE_CONTAINER,
        defn=defn,
        base_name=result.base_name,
        base_digest=result.base_digest,
        baseline=result.baseline,
        extra=applied_updates(result.updates, result.added),
    )
    return attach_signed(client, reference.repository, subject, signed, clock)


def applied_updates(updates: Sequence[Any], added: Sequence[Any] = ()) -> dict[str, Any]:
    """The provenance's record of the remediation step that applied Debian's security and
    stable updates (and the packages they newly needed, such as a new kernel ABI package)."""
    return {
        "appliedUpdates": [
            {
                "package": u.name,
                "from": u.installed,
                "to": u.candidate,
                "suite": u.suite,
                "source": u.source,
            }
            for u in updates
        ],
        "addedPackages": [
            {"package": c.name, "version": c.version, "suite": c.suite} for c in added
        ],
    }


def publish_vm(
    result: VmBuildResult,
    defn: ImageDefinition,
    signer: Signer | None,
    destination: str | None,
    *,
    clock: Clock,
    progress: Callable[[str], None] = _noop,
    client: RegistryClient | None = None,
) -> str | None:
    """Sign (subjects: the qcow2 file and, with a destination, the artifact manifest), write the
    envelopes beside the template, push the artifact untagged, attach, tag last.

    Returns the pushed manifest digest (None without a destination). A failed attach raises
    RegistryError (exit 4): the artifact is pushed, untagged, NOT promotable."""
    from harden import vm_artifact
    from harden.attest.statements import BUILD_TYPE_VM, Subject
    from harden.errors import HardenError, InputError, RegistryError
    from harden.oci import RegistryClient, parse_reference
    from harden.vm_manifest import manifest_path, read_manifest

    recorded = read_manifest(result.path)
    if recorded is None:
        raise InputError(
            f"{manifest_path(result.path)} is missing: {result.path} has no build record",
            hint="build the template again with `harden build --force`",
        )
    artifact = vm_artifact.artifact_for(
        result.path,
        result.sha256,
        kernel=recorded.kernel,
        initrd=recorded.initrd,
        created=recorded.created,
        base_name=result.base_disk,
        base_digest=result.base_sha256,
        baseline=result.baseline,
        labels=defn.doc.labels,
    )
    reference = parse_reference(destination) if destination else None
    signed: list[SignedStatement] = []
    if signer is not None:
        subjects = [Subject(result.path.name, result.sha256)]
        if reference is not None:
            subjects.append(
                Subject(f"{reference.registry}/{reference.repository}", artifact.digest)
            )
        signed = sign_build(
            result.report,
            subjects,
            signer,
            build_type=BUILD_TYPE_VM,
            defn=defn,
            base_name=result.base_disk,
            base_digest=result.base_sha256,
            baseline=result.baseline,
            extra=applied_updates(result.updates, result.added),
        )
        if result.inventory is not None:
            inv = result.inventory
            signed += sbom_statements(
                subjects, inv.packages, inv.release, result.fixes, signer, clock.now()
            )
            progress(f"package inventory: {len(inv.packages)} packages ({inv.release.purl_distro})")
            cves = fixed_cves(result.fixes)
            if cves:
                progress(f"VEX: {len(cves)} CVE(s) fixed by the applied updates: {', '.join(cves)}")
        where = vm_artifact.write_attestations(result.path, [s.envelope for s in signed])
        progress(f"wrote {len(signed)} signed attestation(s) to {where}")
    if reference is None:
        return None
    client = client or RegistryClient.for_reference(reference)
    progress(f"pushing {result.path.name} to {reference.registry}/{reference.repository}")
    subject = vm_artifact.push_untagged(client, reference.repository, artifact)
    pinned = f"{reference.registry}/{reference.repository}@{artifact.digest}"
    if signed:
        try:
            attached = attach_signed(client, reference.repository, subject, signed, clock)
        except HardenError as e:
            progress(e.diagnostics())
            raise RegistryError(
                f"{pinned} is pushed (untagged) but has no attestations: it is NOT promotable",
                hint="run the build again",
            ) from e
        progress(f"attached {len(attached)} signed attestation(s) to {artifact.digest}")
    vm_artifact.tag(client, reference.repository, reference.tag or "latest", artifact)
    progress(f"pushed {destination} -> {artifact.digest}")
    return artifact.digest


def attach_scan_attestation(
    reference: str,
    digest: str,
    scan: Mapping[str, Any],
    signer: Signer,
    clock: Clock,
    client: RegistryClient | None = None,
) -> Descriptor:
    """After ``harden build --scan --key``: sign the OpenSCAP scan of the pushed image
    (harden openscap-scan v1, ``scan`` = ``ScanResult.to_json()``) and attach it as a referrer."""
    from harden.attest import dsse
    from harden.attest.statements import Subject, openscap_scan, serialize
    from harden.attest.store import SignedStatement
    from harden.errors import RegistryError
    from harden.oci import RegistryClient, parse_reference

    ref = parse_reference(reference)
    client = client or RegistryClient.for_reference(ref)
    subject = client.head_manifest(ref.repository, digest)
    if subject is None:
        raise RegistryError(f"{reference}@{digest} is not in the registry")
    statement = openscap_scan(
        Subject(f"{ref.registry}/{ref.repository}", digest), scan, clock.now()
    )
    signed = SignedStatement(
        str(statement["predicateType"]), dsse.sign(serialize(statement), signer)
    )
    return attach_signed(client, ref.repository, subject, [signed], clock)[0]


def sbom_statements(
    subjects: Sequence[Subject],
    packages: Sequence[Any],
    release: Any,
    fixes: Sequence[Any],
    signer: Signer,
    now: dt.datetime,
) -> list[SignedStatement]:
    """The package inventory of ``subjects[-1]`` (the pushed image or artifact; a VM template's
    file when it is not pushed) as a signed CycloneDX 1.6 statement about every subject; with
    CVEs named by the installed security updates, also the signed OpenVEX of what they fixed."""
    from harden.attest import dsse
    from harden.attest.statements import sbom, serialize, vex
    from harden.attest.store import SignedStatement
    from harden.debian.fixes import openvex
    from harden.sbom import cyclonedx, purl

    described = subjects[-1]
    doc = cyclonedx(
        packages,
        subject_name=described.name,
        subject_digest=described.digest,
        distro=release.purl_distro,
        now=now,
        codename=release.codename or None,
    )
    statements = [sbom(subjects, doc)]
    if any(i.startswith("CVE-") for f in fixes for i in f.ids):
        purls = {p.name: purl(p, release.purl_distro).to_string() for p in packages}
        product = f"{described.name}@{described.digest}"
        statements.append(vex(subjects, openvex(fixes, product=product, purls=purls, now=now)))
    return [
        SignedStatement(str(st["predicateType"]), dsse.sign(serialize(st), signer))
        for st in statements
    ]


def fixed_cves(fixes: Sequence[Any]) -> list[str]:
    return sorted({i for f in fixes for i in f.ids if i.startswith("CVE-")})


def attach_inventory(
    reference: str,
    digest: str,
    packages: Sequence[Any],
    release: Any,
    fixes: Sequence[Any],
    signer: Signer,
    clock: Clock,
    client: RegistryClient | None = None,
) -> list[Descriptor]:
    """After ``harden build --key``: the SBOM (and VEX) of the pushed image, attached."""
    from harden.attest.statements import Subject
    from harden.errors import RegistryError
    from harden.oci import RegistryClient, parse_reference

    ref = parse_reference(reference)
    client = client or RegistryClient.for_reference(ref)
    subject = client.head_manifest(ref.repository, digest)
    if subject is None:
        raise RegistryError(f"{reference}@{digest} is not in the registry")
    signed = sbom_statements(
        [Subject(f"{ref.registry}/{ref.repository}", digest)],
        packages,
        release,
        fixes,
        signer,
        clock.now(),
    )
    return attach_signed(client, ref.repository, subject, signed, clock)
