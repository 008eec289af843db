"""Attestations in the registry: attach DSSE envelopes as OCI 1.1 referrers, list and fetch them.

Each envelope is its own referrer manifest whose ``subject`` is the image manifest (so the image
is never rewritten and a copy by digest carries them along), ``artifactType`` = layer
``mediaType`` = :data:`harden.attest.statements.ARTIFACT_TYPE_FOR_PREDICATE` of its predicate,
annotated with the creation time and the (unauthenticated, informational) predicate type.

Reading is bounded and checked: the referrer manifest is verified against its digest, the
envelope blob is refused above :data:`harden.attest.dsse.MAX_ENVELOPE_BYTES` before it is
downloaded (and a blob that lies about its size is cut at that bound), and verified against its
digest. Bad content of one referrer never hides the others: it is reported as a problem with a
label (its digest), for the gate to list. A registry that cannot be reached is an error (exit 4).

Also here: :func:`sign_statements`, the three statements harden signs for a verified image
(provenance, test-result, compliance), built from a report and signed with one signer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from harden.attest import dsse
from harden.attest.keys import Signer
from harden.attest.statements import (
    ARTIFACT_TYPE_FOR_PREDICATE,
    LEGACY_DSSE_MEDIA_TYPE,
    PREDICATE_TYPE_ANNOTATION,
    BuildInfo,
    Subject,
    compliance,
    controls_covered,
    provenance,
    serialize,
    test_result,
)
from harden.baseline.model import Waiver
from harden.errors import HardenError, InputError, RegistryError
from harden.oci.client import RegistryClient
from harden.oci.model import CREATED_ANNOTATION, Descriptor, list_referrers, push_referrer
from harden.results import VerifyReport, rfc3339

__all__ = [
    "GENERIC_ARTIFACT_TYPE",
    "AttestationProblem",
    "FetchedEnvelope",
    "FetchedEnvelopes",
    "ProblemKind",
    "SignedStatement",
    "attach",
    "attach_all",
    "fetch_envelopes",
    "is_attestation",
    "list_attestations",
    "sign_statements",
]

# artifactType for a predicate harden has no entry for (in-toto's generic DSSE label)
GENERIC_ARTIFACT_TYPE = "application/vnd.in-toto+dsse"


def artifact_type_for(predicate_type: str) -> str:
    return ARTIFACT_TYPE_FOR_PREDICATE.get(predicate_type, GENERIC_ARTIFACT_TYPE)


def is_attestation(descriptor: Descriptor) -> bool:
    """A referrer that carries a DSSE envelope (by its artifactType)."""
    kind = descriptor.artifact_type or ""
    return kind.endswith("+dsse") or kind == LEGACY_DSSE_MEDIA_TYPE


@dataclass(frozen=True)
class SignedStatement:
    predicate_type: str
    envelope: bytes


def attach(
    client: RegistryClient,
    repository: str,
    subject: Descriptor,
    envelope: bytes,
    predicate_type: str,
    created: dt.datetime,
) -> Descriptor:
    """Push one envelope as a referrer of ``subject``; returns the referrer's descriptor."""
    kind = artifact_type_for(predicate_type)
    return push_referrer(
        client,
        repository,
        subject,
        artifact_type=kind,
        blob=envelope,
        blob_media_type=kind,
        annotations={
            CREATED_ANNOTATION: rfc3339(created),
            PREDICATE_TYPE_ANNOTATION: predicate_type,
        },
    )


def attach_all(
    client: RegistryClient,
    repository: str,
    subject: Descriptor,
    signed: Sequence[SignedStatement],
    created: dt.datetime,
) -> list[Descriptor]:
    """Attach every envelope (in order); the first failure raises."""
    return [
        attach(client, repository, subject, s.envelope, s.predicate_type, created) for s in signed
    ]


def list_attestations(client: RegistryClient, repository: str, digest: str) -> list[Descriptor]:
    """The referrers of ``digest`` that carry DSSE envelopes."""
    return [d for d in list_referrers(client, repository, digest) if is_attestation(d)]


class ProblemKind(StrEnum):
    """Why an attestation referrer did not count."""

    UNREADABLE = "unreadable"  # could not be read: digest mismatch, oversized, not one layer
    UNVERIFIED = "unverified"  # no trusted signature, or a malformed envelope or statement
    OTHER_SUBJECT = "other-subject"  # signed by a trusted key, but for another image


@dataclass(frozen=True)
class AttestationProblem:
    """One attestation referrer that did not count, and why (typed, never a parsed string)."""

    referrer: str  # the referrer manifest's digest
    kind: ProblemKind
    message: str
    predicate_type: str | None = None  # known only once the signature verified

    def __str__(self) -> str:
        return f"referrer {self.referrer}: {self.message}"


@dataclass(frozen=True)
class FetchedEnvelope:
    referrer: str  # the referrer manifest's digest
    envelope: bytes

    @property
    def label(self) -> str:
        return f"referrer {self.referrer}"


@dataclass(frozen=True)
class FetchedEnvelopes:
    items: tuple[FetchedEnvelope, ...]
    unreadable: tuple[AttestationProblem, ...]
    referrers: tuple[Descriptor, ...]

    @property
    def envelopes(self) -> list[tuple[str, bytes]]:
        """``(label, envelope bytes)`` pairs, label = ``"referrer <digest>"`` (for the gate)."""
        return [(i.label, i.envelope) for i in self.items]

    @property
    def problems(self) -> list[str]:
        """The unreadable referrers as ``"referrer <digest>: why"`` lines (for messages)."""
        return [str(p) for p in self.unreadable]


def _layer(client: RegistryClient, repository: str, referrer: Descriptor) -> Descriptor:
    manifest = client.get_manifest(repository, referrer.digest)  # verified against its digest
    layers = manifest.layers
    if len(layers) != 1:
        raise InputError(f"has {len(layers)} layers, an attestation has exactly one")
    subject = manifest.subject
    if subject is None:
        raise InputError("has no subject")
    return layers[0]


def fetch_envelopes(
    client: RegistryClient,
    repository: str,
    digest: str,
    *,
    max_bytes: int = dsse.MAX_ENVELOPE_BYTES,
    listed: Sequence[Descriptor] | None = None,
) -> FetchedEnvelopes:
    """Every attestation envelope referring to ``digest``, read bounded and digest-checked.

    ``listed``: the referrers of ``digest`` as the caller listed them already (a promotion
    copies the same listing it decided on); else they are listed here.
    Bad content (a digest mismatch, an oversized or malformed referrer) becomes a problem
    labelled with the referrer's digest; an unreachable registry raises RegistryError.
    """
    if listed is None:
        referrers = list_attestations(client, repository, digest)
    else:
        referrers = [d for d in listed if is_attestation(d)]

    def read(referrer: Descriptor) -> FetchedEnvelope | AttestationProblem:
        try:
            layer = _layer(client, repository, referrer)
            if layer.size > max_bytes:
                raise InputError(
                    f"envelope is {layer.size} bytes, more than the limit of {max_bytes}"
                )
            return FetchedEnvelope(
                referrer.digest, client.get_blob(repository, layer.digest, max_bytes)
            )
        except RegistryError:
            raise
        except HardenError as e:  # DigestMismatch, InputError: bad content, not a broken registry
            return AttestationProblem(referrer.digest, ProblemKind.UNREADABLE, e.message)

    items: list[FetchedEnvelope] = []
    problems: list[AttestationProblem] = []
    for found in client.map_concurrently(read, referrers):  # in the order of ``referrers``
        if isinstance(found, FetchedEnvelope):
            items.append(found)
        else:
            problems.append(found)
    return FetchedEnvelopes(tuple(items), tuple(problems), tuple(referrers))


def sign_statements(
    report: VerifyReport,
    subject: Subject | Sequence[Subject],
    signer: Signer,
    *,
    verified_at: dt.datetime,
    valid_until: dt.datetime,
    waivers: Mapping[str, Waiver],
    build: BuildInfo | None,
    baseline_uri: str = "",
) -> list[SignedStatement]:
    """Provenance (when ``build`` is known), test-result and compliance, each signed.

    ``subject`` may be several (a VM template: the qcow2 file and its OCI artifact manifest)."""
    statements: list[dict[str, Any]] = []
    if build is not None:
        statements.append(provenance(subject, build))
    statements.append(test_result(subject, report, baseline_uri))
    statements.append(
        compliance(
            subject,
            report,
            verified_at=verified_at,
            valid_until=valid_until,
            waivers=waivers,
            controls=controls_covered(report),
        )
    )
    return [
        SignedStatement(str(s["predicateType"]), dsse.sign(serialize(s), signer))
        for s in statements
    ]


# ---- signed artifacts at a tag (the revocation list, audit checkpoints) -------------------------
def push_signed_artifact(
    client: RegistryClient,
    repository: str,
    tags: Sequence[str],
    artifact_type: str,
    envelope: bytes,
    annotations: Mapping[str, str],
) -> str:
    """Push one DSSE envelope as an OCI artifact (empty config, one layer) and tag it with each
    of ``tags`` in order; returns the manifest digest."""
    from harden.oci.model import (
        EMPTY_DATA,
        EMPTY_DIGEST,
        EMPTY_MEDIA_TYPE,
        OCI_MANIFEST,
        canonical_json,
        compute_digest,
    )

    blob = Descriptor(artifact_type, compute_digest(envelope), len(envelope))
    data = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": 2},
            "layers": [blob.to_json()],
            "annotations": dict(annotations),
        }
    )

    def ensure(item: tuple[bytes, str]) -> None:
        content, digest = item
        if not client.blob_exists(repository, digest):
            client.upload_blob(repository, content, digest)

    # the two blobs are independent: checked (and uploaded) together, then the manifest
    client.map_concurrently(ensure, [(EMPTY_DATA, EMPTY_DIGEST), (envelope, blob.digest)])
    digest = compute_digest(data)
    if not tags:
        client.put_manifest(repository, digest, data, OCI_MANIFEST)
    for tag in tags:  # a PUT by tag stores the manifest (by its digest) too
        client.put_manifest(repository, tag, data, OCI_MANIFEST)
    return digest


def read_signed_artifact(
    client: RegistryClient, repository: str, tag: str, max_bytes: int
) -> bytes | None:
    """The envelope of the artifact at ``tag`` (None when the tag does not exist); bad content
    raises InputError (or DigestMismatch), an unreachable registry RegistryError."""
    from harden.oci.client import RegistryNotFound

    try:
        manifest = client.get_manifest(repository, tag)
    except RegistryNotFound:
        return None
    layers = manifest.layers
    if manifest.is_index or len(layers) != 1:
        raise InputError(f"{repository}:{tag} is not a single-envelope artifact")
    if layers[0].size > max_bytes:
        raise InputError(f"{repository}:{tag} is larger than {max_bytes} bytes")
    return client.get_blob(repository, layers[0].digest, max_bytes)
