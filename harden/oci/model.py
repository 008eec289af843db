"""The OCI model layer: references, descriptors, manifests, referrers and copies.

Built on the raw :class:`harden.oci.client.RegistryClient`. Referrers follow OCI 1.1: a
manifest with ``subject`` + ``artifactType``, found through the referrers API where the registry
has it, else through the referrers tag schema (an image index tagged ``sha256-<hex>``). See
docs of the distribution spec and /work/shared/reference/attestation-formats.md 4.3, 4.6.

Manifests we write are canonical JSON (sorted keys, no insignificant whitespace, UTF-8), so
pushing the same content twice gives the same digest. Manifests we read are kept as the exact
bytes the registry served and checked against their digest.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harden.errors import ExitCode, HardenError, InputError, RegistryError

if TYPE_CHECKING:
    from harden.oci.client import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFEST_TYPES: tuple[str, ...] = (
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
CREATED_ANNOTATION = "org.opencontainers.image.created"

TAG_INDEX_ATTEMPTS = 8
_MAX_REFERRER_DEPTH = 3

_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:localhost|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]{1,5})?$"
)


# ---- digests (content checks shared by both layers) --------------------------------------------
class DigestMismatch(HardenError):
    """Content read from (or about to be written to) a registry does not match its digest.

    Bad content, not a broken environment: exit code 3 (``INVALID_INPUT``), like a forged
    attestation. Deliberately not a ``RegistryError``, so nobody retries it as a transient fault.
    """

    exit_code = ExitCode.INVALID_INPUT


def is_digest(text: str) -> bool:
    return bool(_DIGEST_RE.match(text))


def new_hasher(digest: str) -> Any:
    """A hashlib object for the algorithm of ``digest`` (sha256 or sha512)."""
    if not is_digest(digest):
        raise InputError(f"not a supported digest: {digest!r}", hint="use sha256:<64 hex>")
    return hashlib.new(digest.partition(":")[0])


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def check_hasher(hasher: Any, digest: str, what: str) -> None:
    actual = f"{digest.partition(':')[0]}:{hasher.hexdigest()}"
    if actual != digest:
        raise DigestMismatch(
            f"{what}: content has digest {actual}, expected {digest}",
            hint="the registry (or something between it and harden) served content that does "
            "not match its digest; do not trust it",
        )


def verify_digest(data: bytes, digest: str, what: str) -> None:
    hasher = new_hasher(digest)
    hasher.update(data)
    check_hasher(hasher, digest, what)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes harden writes for manifests it creates."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def referrers_tag(digest: str) -> str:
    """The referrers tag schema name: ``<alg>-<ref>``, alg cut to 32 and ref to 64 characters,
    any character not allowed in a tag replaced by ``-``."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise InputError(f"not a digest: {digest!r}")
    tag = f"{algorithm[:32]}-{encoded[:64]}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", tag)


_RESERVED_TAG_RE = re.compile(r"^(?:sha\d+-.*|[a-z0-9]{1,32}-[a-f0-9]{64})$")


def is_reserved_tag(tag: str) -> bool:
    """A tag the OCI referrers tag schema owns (``sha256-<hex>``, any ``<alg>-<64 hex>``, any
    ``sha*-``): writing an image there would replace a digest's referrers index."""
    return bool(_RESERVED_TAG_RE.match(tag))


def check_not_reserved(tag: str) -> None:
    if is_reserved_tag(tag):
        raise InputError(
            f"tag {tag!r} is reserved for the OCI referrers tag schema (the referrers index of a "
            "digest)",
            hint="promote to an ordinary tag such as 1.0 or latest",
        )


# ---- references --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        if not is_digest(digest):
            raise InputError(f"not a supported digest: {digest!r}")
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str | None) -> Reference:
        if tag is not None and not _TAG_RE.match(tag):
            raise InputError(f"not a valid tag: {tag!r}")
        return Reference(self.registry, self.repository, tag, self.digest)


def parse_reference(text: str) -> Reference:
    """``host[:port]/repo/path[:tag][@sha256:...]``. The registry host is required: harden
    never guesses docker.io."""
    hint = "write the full reference, e.g. 127.0.0.1:5000/staging/debian:12"
    if not text or text != text.strip() or len(text) > 1024:
        raise InputError(f"not an image reference: {text!r}", hint=hint)
    rest, at, digest = text.partition("@")
    if at and not is_digest(digest):
        raise InputError(
            f"image reference {text!r}: {digest!r} is not a sha256/sha512 digest", hint=hint
        )
    host, slash, path = rest.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise InputError(
            f"image reference {text!r} names no registry host",
            hint=f"harden never assumes docker.io; {hint}",
        )
    if not _HOST_RE.match(host):
        raise InputError(f"image reference {text!r}: {host!r} is not a registry host", hint=hint)
    repository, tag = path, None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, tag = path.rpartition(":")
        if not _TAG_RE.match(tag):
            raise InputError(f"image reference {text!r}: {tag!r} is not a valid tag", hint=hint)
    if not _REPO_RE.match(repository) or len(repository) > 255:
        raise InputError(
            f"image reference {text!r}: {repository!r} is not a valid repository name",
            hint="repository names are lower case: a-z 0-9 and . _ - separators, '/' paths",
        )
    return Reference(host, repository, tag, digest or None)


# ---- descriptors and manifests -------------------------------------------------------------------
class _DescriptorDoc(BaseModel):
    """A descriptor as found in a registry manifest (the trust boundary)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    mediaType: str = Field(min_length=1)
    digest: str
    size: int = Field(ge=0)
    artifactType: str | None = None
    annotations: dict[str, str] | None = None


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.annotations, MappingProxyType):
            object.__setattr__(self, "annotations", MappingProxyType(dict(self.annotations)))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    @classmethod
    def from_json(cls, doc: Any, what: str = "descriptor") -> Descriptor:
        try:
            parsed = _DescriptorDoc.model_validate(doc)
        except ValidationError as e:
            raise InputError(f"{what} is malformed: {e.errors()[0]['msg']}") from e
        if not is_digest(parsed.digest):
            raise InputError(f"{what} has an unsupported digest {parsed.digest!r}")
        return cls(
            media_type=parsed.mediaType,
            digest=parsed.digest,
            size=parsed.size,
            artifact_type=parsed.artifactType,
            annotations=parsed.annotations or {},
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest or index: the exact bytes, their media type and their (verified) digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"manifest {self.digest} is not JSON") from e
        if not isinstance(doc, dict):
            raise InputError(f"manifest {self.digest} is not a JSON object")
        return doc

    def descriptor(self) -> Descriptor:
        doc = self.json()
        artifact_type = doc.get("artifactType")
        annotations = doc.get("annotations")
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=len(self.data),
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            annotations=_str_map(annotations),
        )

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def artifact_type(self) -> str | None:
        value = self.json().get("artifactType")
        return value if isinstance(value, str) else None

    @property
    def annotations(self) -> Mapping[str, str]:
        return _str_map(self.json().get("annotations"))

    @property
    def config(self) -> Descriptor | None:
        config = self.json().get("config")
        return None if config is None else Descriptor.from_json(config, f"{self.digest} config")

    @property
    def layers(self) -> list[Descriptor]:
        return self._list("layers")

    @property
    def manifests(self) -> list[Descriptor]:
        """The children of an index (empty for an image manifest)."""
        return self._list("manifests")

    @property
    def subject(self) -> Descriptor | None:
        subject = self.json().get("subject")
        return None if subject is None else Descriptor.from_json(subject, f"{self.digest} subject")

    def _list(self, key: str) -> list[Descriptor]:
        items = self.json().get(key) or []
        if not isinstance(items, list):
            raise InputError(f"manifest {self.digest}: {key} is not a list")
        return [Descriptor.from_json(d, f"{self.digest} {key}[{i}]") for i, d in enumerate(items)]


def _str_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


# ---- referrers ---------------------------------------------------------------------------------
def referrer_manifest(
    subject: Descriptor,
    *,
    artifact_type: str,
    blob: Descriptor,
    annotations: Mapping[str, str],
) -> bytes:
    """The canonical bytes of an OCI 1.1 referrer manifest (empty config, one layer)."""
    if CREATED_ANNOTATION not in annotations:
        raise InputError(
            f"a referrer needs the {CREATED_ANNOTATION} annotation",
            hint="pass the creation time (RFC 3339, UTC) from the injected clock",
        )
    if not artifact_type:
        raise InputError("a referrer needs an artifactType (its config is the empty descriptor)")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY_DATA)},
        "layers": [{"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": dict(annotations),
    }
    return canonical_json(doc)


def push_referrer(
    client: RegistryClient,
    repository: str,
    subject: Descriptor,
    *,
    artifact_type: str,
    blob: bytes,
    blob_media_type: str,
    annotations: Mapping[str, str],
) -> Descriptor:
    """Push ``blob`` as a referrer of ``subject``; returns the referrer manifest's descriptor."""
    blob_desc = Descriptor(blob_media_type, compute_digest(blob), len(blob))
    data = referrer_manifest(
        subject, artifact_type=artifact_type, blob=blob_desc, annotations=annotations
    )
    for content, digest in ((EMPTY_DATA, EMPTY_DIGEST), (blob, blob_desc.digest)):
        if not client.blob_exists(repository, digest):
            client.upload_blob(repository, content, digest)
    digest = compute_digest(data)
    result = client.put_manifest(repository, digest, data, OCI_MANIFEST)
    referrer = Descriptor(
        media_type=OCI_MANIFEST,
        digest=digest,
        size=len(data),
        artifact_type=artifact_type,
        annotations=annotations,
    )
    if result.subject_header is None:
        add_to_referrers_index(client, repository, subject.digest, [referrer])
    return referrer


def add_to_referrers_index(
    client: RegistryClient,
    repository: str,
    subject_digest: str,
    referrers: Sequence[Descriptor],
    *,
    attempts: int = TAG_INDEX_ATTEMPTS,
) -> None:
    """Merge ``referrers`` into the ``sha256-<hex>`` index without losing concurrent entries.

    Read-modify-write with If-Match on the ETag the registry gave; then re-read after a short
    jittered pause and repeat until every entry of ours is present (bounded). distribution 2.8
    ignores If-Match, so the re-read is what catches a lost update there; a writer that reads
    and writes within our pause can still be overwritten, the re-read of *its* write repairs it.
    """
    from harden.oci.client import PreconditionFailed

    tag = referrers_tag(subject_digest)
    for attempt in range(attempts + 1):
        existing, etag = _read_referrers_index(client, repository, tag)
        present = {entry.get("digest") for entry in existing}
        missing = [r for r in referrers if r.digest not in present]
        if not missing:
            return
        if attempt == attempts:
            break
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [*existing, *(r.to_json() for r in missing)],
        }
        try:
            client.put_manifest(repository, tag, canonical_json(doc), OCI_INDEX, if_match=etag)
        except PreconditionFailed:
            client.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
            continue
        client.sleep(random.uniform(0.005, 0.03))  # let a racing writer land, then re-read
    raise RegistryError(
        f"could not record referrers of {subject_digest} in {repository}:{tag} after "
        f"{attempts} attempts",
        hint="many concurrent writers; run the command again",
    )


def _read_referrers_index(
    client: RegistryClient, repository: str, tag: str
) -> tuple[list[dict[str, Any]], str | None]:
    found = client.head_manifest_with_etag(repository, tag)
    if found is None:
        return [], None
    descriptor, etag = found
    manifest = client.get_manifest(repository, descriptor.digest)
    if not manifest.is_index:
        raise RegistryError(
            f"{repository}:{tag} exists but is not an image index ({manifest.media_type})",
            hint="that tag is reserved for the OCI referrers tag schema; remove what is there",
        )
    entries = manifest.json().get("manifests") or []
    if not isinstance(entries, list):
        raise InputError(f"{repository}:{tag}: manifests is not a list")
    return [e for e in entries if isinstance(e, dict)], etag


def list_referrers(
    client: RegistryClient,
    repository: str,
    subject_digest: str,
    artifact_type: str | None = None,
) -> list[Descriptor]:
    """Referrers of a manifest: the referrers API when the registry has it, else the tag
    schema index; empty when neither exists."""
    from harden.oci.client import RegistryNotFound

    index = client.referrers_api(repository, subject_digest, artifact_type)
    if index is None:
        try:
            index = client.get_manifest(repository, referrers_tag(subject_digest))
        except RegistryNotFound:
            return []
        if not index.is_index:
            raise RegistryError(
                f"{repository}:{referrers_tag(subject_digest)} is not an image index",
                hint="that tag is reserved for the OCI referrers tag schema",
            )
    from harden.oci.client import check_referrer_count

    entries = index.json().get("manifests")
    check_referrer_count(
        len(entries) if isinstance(entries, list) else 0, f"{repository}@{subject_digest}"
    )
    found = index.manifests
    if artifact_type is not None:
        found = [d for d in found if d.artifact_type == artifact_type]
    return found


def resolve(client: RegistryClient, ref: Reference) -> Manifest:
    """The manifest a reference names; by digest when it has one (verified), else by tag."""
    target = ref.digest or ref.tag
    if target is None:
        raise InputError(f"{ref} names neither a tag nor a digest", hint="add :TAG or @sha256:...")
    return client.get_manifest(ref.repository, target)


# ---- copy --------------------------------------------------------------------------------------
def copy_image(
    src: RegistryClient,
    src_repo: str,
    digest: str,
    dst: RegistryClient,
    dst_repo: str,
    *,
    tag: str | None,
    with_referrers: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Descriptor:
    """Copy a manifest (and its tree, and its referrers) by digest; tag it last.

    Blobs already at the destination are skipped, mounted from ``src_repo`` on the same
    registry, else streamed GET -> PUT in bounded chunks. Manifests are PUT as the identical
    bytes, so the digest never changes. The tag is written last: an interrupted copy never
    leaves it pointing at something incomplete, and running the copy again completes it.
    """
    if tag is not None and not _TAG_RE.match(tag):
        raise InputError(f"not a valid tag: {tag!r}")
    if tag is not None:
        check_not_reserved(tag)
    copier = _Copier(src, src_repo, dst, dst_repo, progress or (lambda _message: None))
    manifest = src.get_manifest(src_repo, digest)
    copier.manifest(manifest)
    if with_referrers:
        copier.referrers(manifest.digest, depth=1)
    if tag is not None:
        dst.put_manifest(dst_repo, tag, manifest.data, manifest.media_type)
        copier.note(f"tagged {dst_repo}:{tag} -> {manifest.digest}")
    return manifest.descriptor()


def _parallel(fn: Callable[[Descriptor], None], items: Sequence[Descriptor]) -> None:
    """Run ``fn`` over ``items`` one after the other.

    Deliberately sequential: distribution 2.8 answers MANIFEST_BLOB_UNKNOWN for a manifest
    whose blobs were mounted concurrently into a new repository (seen here).
    """
    for item in items:
        fn(item)


class _Copier:
    def __init__(
        self,
        src: RegistryClient,
        src_repo: str,
        dst: RegistryClient,
        dst_repo: str,
        note: Callable[[str], None],
    ) -> None:
        self.src, self.src_repo, self.dst, self.dst_repo, self.note = (
            src,
            src_repo,
            dst,
            dst_repo,
            note,
        )
        self.same_registry = src.base_url == dst.base_url
        self._dst_has_referrers_api: bool | None = None
        self._blobs_done: set[str] = set()  # attestations share blobs (the empty config)

    def manifest(self, manifest: Manifest) -> None:
        if self.dst.head_manifest(self.dst_repo, manifest.digest) is not None:
            self.note(f"manifest {manifest.digest} already present")
            return
        if manifest.is_index:
            for child in manifest.manifests:
                self.manifest(self.src.get_manifest(self.src_repo, child.digest))
        else:
            config = manifest.config
            _parallel(self.blob, [*([config] if config else []), *manifest.layers])
        self.dst.put_manifest(self.dst_repo, manifest.digest, manifest.data, manifest.media_type)
        self.note(f"manifest {manifest.digest} copied")

    def blob(self, blob: Descriptor) -> None:
        if blob.digest in self._blobs_done:
            return
        self._blobs_done.add(blob.digest)
        short = blob.digest[:19]
        # within one registry a mount is one request whether or not the blob is there already
        if self.same_registry and self.dst.mount_blob(self.dst_repo, blob.digest, self.src_repo):
            self.note(f"blob {short} mounted from {self.src_repo}")
            return
        if self.dst.blob_exists(self.dst_repo, blob.digest):
            self.note(f"blob {short} already present")
            return
        self.dst.upload_blob(
            self.dst_repo, self.src.open_blob(self.src_repo, blob.digest, blob.size), blob.digest
        )
        self.note(f"blob {short} copied ({blob.size} bytes)")

    def referrers(self, subject_digest: str, depth: int) -> None:
        found = list_referrers(self.src, self.src_repo, subject_digest)
        if not found:
            return
        # read (and verify) the referrer manifests on a small pool; they are cached by digest,
        # so the sequential writes below do not read them again
        manifests = self.src.map_concurrently(
            lambda r: self.src.get_manifest(self.src_repo, r.digest), found
        )
        for m in manifests:
            self.manifest(m)
        if not self.dst_has_referrers_api(subject_digest):
            add_to_referrers_index(self.dst, self.dst_repo, subject_digest, found)
        self.note(f"{len(found)} referrer(s) of {subject_digest[:19]} copied")
        if depth < _MAX_REFERRER_DEPTH:
            _parallel(lambda r: self.referrers(r.digest, depth + 1), found)

    def dst_has_referrers_api(self, subject_digest: str) -> bool:
        if self._dst_has_referrers_api is None:
            answer = self.dst.referrers_api(self.dst_repo, subject_digest)
            self._dst_has_referrers_api = answer is not None
        return self._dst_has_referrers_api
