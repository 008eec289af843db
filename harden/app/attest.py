"""Attest a registry image (`harden attest`) and check its attestations (`harden attestation
list|verify`).

:func:`attest` resolves REF to its digest, verifies exactly that digest now, signs test-result and
compliance (and SLSA provenance with a definition) and attaches them as referrers; the image is
never rewritten. :func:`verify_attestations` checks every referrer of a digest with the trusted
keys through the one verification (:mod:`harden.attest.verification`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harden import labels
from harden.app.context import Context
from harden.attest.keys import PublicKey, Signer
from harden.audit import AuditAction
from harden.baseline.resolve import Catalogue
from harden.imagedef import ImageDefinition
from harden.results import VerifyReport, compliance_word

if TYPE_CHECKING:
    from harden.attest.statements import BuildInfo
    from harden.attest.verification import CheckedAttestations
    from harden.oci.types import Descriptor
    from harden.verifiers.refs import Opened

__all__ = [
    "DEFAULT_VALIDITY",
    "AttestationsOf",
    "Attested",
    "attest",
    "list_attestations",
    "verify_attestations",
]

DEFAULT_VALIDITY = dt.timedelta(days=30)

ImageOpener = Callable[[str], AbstractContextManager["Opened"]]  # pinned ref -> an opened Target


@dataclass(frozen=True)
class AttachedStatement:
    referrer: str  # the referrer manifest's digest
    predicate_type: str


@dataclass(frozen=True)
class Attested:
    image: str  # as the user named it
    digest: str
    pinned: str  # registry/repository@digest: what was verified and attested
    report: VerifyReport
    attached: tuple[AttachedStatement, ...]
    provenance: bool  # SLSA provenance was signed too

    @property
    def compliant(self) -> bool:
        return self.report.compliant


def attest(
    ref: str,
    signer: Signer,
    catalogue: Catalogue,
    ctx: Context,
    *,
    definition: ImageDefinition | None = None,
    baseline_id: str | None = None,
    validity: dt.timedelta | None = None,
    open_image: ImageOpener | None = None,
) -> Attested:
    """Verify the registry image ``ref`` now, sign the result, attach it; audit ATTEST.

    A FAILED verification is attested too (the signed statement says so) and recorded in the
    registry's signed revocation list as ``failed``, so dropping it from the referrers index
    cannot hide it from the gate. ``validity`` defaults
    to the definition's max_age, else 30 days. ``open_image`` opens the pinned reference as a
    image (default: the registry opener of :mod:`harden.app.verify`: read from its layers)."""
    from harden.app.publish import attach_signed, build_info, sign_for_report
    from harden.app.verify import OPENERS
    from harden.baseline.resolve import resolve as resolve_baseline
    from harden.oci.model import resolve
    from harden.oci.types import parse_reference
    from harden.verifiers.refs import DEFAULT_BASELINE
    from harden.verifiers.runner import verify
    from harden.verifiers.static_verify import verify_image, with_label_check

    if validity is None:
        validity = definition.max_age if definition is not None else DEFAULT_VALIDITY
    reference = parse_reference(ref)
    client = ctx.client(reference)
    manifest = resolve(client, reference)
    digest = manifest.digest
    repository_name = f"{reference.registry}/{reference.repository}"
    pinned = f"{repository_name}@{digest}"
    ctx.progress(f"verifying {pinned}")
    with (open_image or OPENERS["registry"])(pinned) as opened:
        # the caller chooses the baseline; a label on the image is only compared
        if definition is not None:
            baseline = definition.resolve_baseline(catalogue)
        else:
            baseline = resolve_baseline(catalogue, baseline_id or DEFAULT_BASELINE[opened.kind])
        if opened.image is not None:  # read from its layers: nothing in the image runs
            image_labels = opened.image.labels
            report = verify_image(
                opened.image, baseline, ctx.clock, image=pinned, run_commands=opened.commands
            )
        else:
            assert opened.target is not None
            image_labels = (opened.target.image_config() or {}).get("Labels") or {}
            report = verify(opened.target, baseline, ctx.clock, image=pinned, digest=digest)
        report = with_label_check(report, opened.recorded_baseline, baseline.id)
    build: BuildInfo | None = None
    if definition is not None:
        from harden.attest.statements import BUILD_TYPE_CONTAINER

        base_name = str(image_labels.get(labels.BASE_NAME) or definition.doc.base or "")
        base_digest = str(image_labels.get(labels.BASE_DIGEST) or "")
        if base_name and base_digest.startswith("sha256:"):
            build = build_info(
                build_type=BUILD_TYPE_CONTAINER,
                definition={
                    "name": definition.name,
                    "path": str(definition.path),
                    "sha256": definition.sha256,
                },
                base_name=base_name,
                base_digest=base_digest,
                baseline=baseline,
                started=report.started_at,
                finished=report.finished_at,
            )
        else:
            ctx.progress(
                "no provenance: the image carries no org.opencontainers.image.base.* labels"
            )
    else:
        ctx.progress("no provenance signed (pass --definition for SLSA provenance)")
    signed = sign_for_report(
        report,
        repository_name,
        digest,
        signer,
        verified_at=report.finished_at,
        validity=validity,
        waivers=baseline.waivers,
        build=build,
    )
    attached = attach_signed(client, reference.repository, manifest.descriptor(), signed, ctx.clock)
    details: dict[str, object] = {
        "referrers": [d.digest for d in attached],
        "baseline": baseline.id,
    }
    if not report.compliant:  # a failure must not be hidden by dropping it from the index
        from harden.attest.revlist import record_failed_verification

        details["revocation_list_version"] = record_failed_verification(
            client, signer, digest, reference.repository, report
        )
    ctx.audit.append(AuditAction.ATTEST, ref, digest, compliance_word(report.compliant), details)
    ctx.progress(f"attached {len(attached)} attestation(s) to {pinned}")
    return Attested(
        ref,
        digest,
        pinned,
        report,
        tuple(
            AttachedStatement(d.digest, s.predicate_type)
            for d, s in zip(attached, signed, strict=True)
        ),
        build is not None,
    )


@dataclass(frozen=True)
class AttestationsOf:
    image: str
    digest: str
    referrers: tuple[Descriptor, ...]  # unverified: what the registry lists


def list_attestations(ref: str, ctx: Context) -> AttestationsOf:
    """The attestation referrers of ``ref``'s digest (nothing verified)."""
    from harden.attest.store import list_attestations as listed
    from harden.oci.model import resolve
    from harden.oci.types import parse_reference

    reference = parse_reference(ref)
    client = ctx.client(reference)
    digest = resolve(client, reference).digest
    return AttestationsOf(ref, digest, tuple(listed(client, reference.repository, digest)))


def verify_attestations(
    ref: str, trusted: Sequence[PublicKey], ctx: Context
) -> CheckedAttestations:
    """Every attestation of ``ref``'s digest checked with ``trusted`` keys (typed problems)."""
    from harden.attest.store import fetch_envelopes
    from harden.attest.verification import check_attestations
    from harden.oci.model import resolve
    from harden.oci.types import parse_reference

    reference = parse_reference(ref)
    client = ctx.client(reference)
    digest = resolve(client, reference).digest
    fetched = fetch_envelopes(client, reference.repository, digest)
    return check_attestations(fetched, trusted, digest)
