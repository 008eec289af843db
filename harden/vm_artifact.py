"""A sealed VM template as an OCI 1.1 artifact, and its attestations beside the file.

The artifact (``artifactType`` :data:`ARTIFACT_TYPE`) has the empty config and one layer per
file: the qcow2 template (:data:`QCOW2_MEDIA_TYPE`), then the kernel and initrd it boots with
(:data:`KERNEL_MEDIA_TYPE`, :data:`INITRD_MEDIA_TYPE`) when the template has them. Each layer
carries ``org.opencontainers.image.title`` (its file name); the manifest carries the build's
facts as annotations (created, base name and digest, baseline id, version and digest), the same
names the inventory reads from a container image's labels. So status, promote and revoke treat a
VM template like a container image: the manifest digest is the subject of its attestations.

The manifest bytes are computed before anything is pushed (:func:`artifact_for`), so its digest
can be a subject of the statements signed for the build. :func:`push_untagged` uploads the blobs
streamed from the files (bounded memory) and PUTs the manifest by digest; the tag is written
last (:func:`tag`), after the attestations are attached.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harden import labels
from harden.baseline.resolve import ResolvedBaseline
from harden.files import sha256_file, write_atomic
from harden.oci.client import RegistryClient
from harden.oci.model import (
    CREATED_ANNOTATION,
    EMPTY_DATA,
    EMPTY_DIGEST,
    EMPTY_MEDIA_TYPE,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
    compute_digest,
)
from harden.results import rfc3339

__all__ = [
    "ARTIFACT_TYPE",
    "ATTESTATIONS_SUFFIX",
    "INITRD_MEDIA_TYPE",
    "KERNEL_MEDIA_TYPE",
    "QCOW2_MEDIA_TYPE",
    "VmArtifact",
    "artifact_for",
    "attestations_path",
    "push_untagged",
    "tag",
    "write_attestations",
]

ARTIFACT_TYPE = "application/vnd.harden.vm-template.v1"
QCOW2_MEDIA_TYPE = "application/vnd.harden.qcow2"
KERNEL_MEDIA_TYPE = "application/vnd.harden.vm.kernel"
INITRD_MEDIA_TYPE = "application/vnd.harden.vm.initrd"
TITLE_ANNOTATION = labels.TITLE
BASE_NAME_ANNOTATION = labels.BASE_NAME
BASE_DIGEST_ANNOTATION = labels.BASE_DIGEST
BASELINE_ID_ANNOTATION = labels.BASELINE_ID
BASELINE_VERSION_ANNOTATION = labels.BASELINE_VERSION
BASELINE_DIGEST_ANNOTATION = labels.BASELINE_DIGEST
ATTESTATIONS_SUFFIX = ".attestations.json"
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class VmArtifact:
    manifest: bytes  # the exact bytes that get pushed (canonical JSON)
    digest: str  # of ``manifest``
    files: tuple[tuple[Descriptor, Path], ...]  # each layer and the file it is read from

    def descriptor(self) -> Descriptor:
        return Descriptor(OCI_MANIFEST, self.digest, len(self.manifest), ARTIFACT_TYPE)


def _layer(path: Path, media_type: str, digest: str | None = None) -> tuple[Descriptor, Path]:
    desc = Descriptor(
        media_type,
        digest or sha256_file(path),
        path.stat().st_size,
        annotations={TITLE_ANNOTATION: path.name},
    )
    return desc, path


def artifact_for(
    template: Path,
    template_sha256: str,
    *,
    kernel: Path | None,
    initrd: Path | None,
    created: dt.datetime,
    base_name: str,
    base_digest: str,
    baseline: ResolvedBaseline,
    labels: Mapping[str, str],
) -> VmArtifact:
    """The artifact manifest for a sealed template (nothing is pushed; the files are hashed)."""
    files = [_layer(template, QCOW2_MEDIA_TYPE, template_sha256)]
    if kernel is not None:
        files.append(_layer(kernel, KERNEL_MEDIA_TYPE))
    if initrd is not None:
        files.append(_layer(initrd, INITRD_MEDIA_TYPE))
    annotations = {
        **dict(labels),
        CREATED_ANNOTATION: rfc3339(created),
        BASE_NAME_ANNOTATION: base_name,
        BASE_DIGEST_ANNOTATION: base_digest,
        BASELINE_ID_ANNOTATION: baseline.id,
        BASELINE_VERSION_ANNOTATION: baseline.version,
        BASELINE_DIGEST_ANNOTATION: baseline.digest,
    }
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY_DATA)},
        "layers": [d.to_json() for d, _ in files],
        "annotations": annotations,
    }
    data = canonical_json(doc)
    return VmArtifact(data, compute_digest(data), tuple(files))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(_READ_CHUNK), b"")


def push_untagged(client: RegistryClient, repository: str, artifact: VmArtifact) -> Descriptor:
    """Upload the blobs (streamed; those present are skipped) and PUT the manifest by digest."""
    if not client.blob_exists(repository, EMPTY_DIGEST):
        client.upload_blob(repository, EMPTY_DATA, EMPTY_DIGEST)
    for desc, path in artifact.files:
        if not client.blob_exists(repository, desc.digest):
            client.upload_blob(repository, _chunks(path), desc.digest)
    client.put_manifest(repository, artifact.digest, artifact.manifest, OCI_MANIFEST)
    return artifact.descriptor()


def tag(client: RegistryClient, repository: str, tag_name: str, artifact: VmArtifact) -> None:
    """Point ``tag_name`` at the artifact (the last step of a push)."""
    client.put_manifest(repository, tag_name, artifact.manifest, OCI_MANIFEST)


def attestations_path(template: Path) -> Path:
    """``<name>.qcow2`` -> ``<name>.qcow2.attestations.json`` beside it."""
    return template.with_name(template.name + ATTESTATIONS_SUFFIX)


def write_attestations(template: Path, envelopes: Sequence[bytes]) -> Path:
    """The DSSE envelopes as a JSON list beside the template, written atomically."""
    path = attestations_path(template)
    docs = [json.loads(e) for e in envelopes]
    write_atomic(path, (json.dumps(docs, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path
