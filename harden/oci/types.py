"""OCI types below both registry layers: media types, digests, references, descriptors, manifests.

The raw client (:mod:`harden.oci.client`) and the model layer (:mod:`harden.oci.model`) both
import these; this module imports neither (docker-py's ``types/`` under ``api/`` and ``models/``).
Manifests we read are kept as the exact bytes the registry served and checked against their
digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harden import labels
from harden.errors import ExitCode, HardenError, InputError

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
CREATED_ANNOTATION = labels.CREATED

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
