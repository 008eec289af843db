"""The OCI model layer: references, descriptors, manifests, referrers and copies.

Built on the raw :class:`harden.oci.client.RegistryClient`; the types both use live in
:mod:`harden.oci.types` (re-exported here). Referrers follow OCI 1.1: a
manifest with ``subject`` + ``artifactType``, found through the referrers API where the registry
has it, else through the referrers tag schema (an image index tagged ``sha256-<hex>``). See
docs of the distribution spec and /work/shared/reference/attestation-formats.md 4.3, 4.6.

Manifests we write are canonical JSON (sorted keys, no insignificant whitespace, UTF-8), so
pushing the same content twice gives the same digest. Manifests we read are kept as the exact
bytes the registry served and checked against their digest.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harden.errors import InputError, RegistryError
from harden.oci.types import (
    _TAG_RE,
    ALL_MANIFEST_TYPES,
    CREATED_ANNOTATION,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_DATA,
    EMPTY_DIGEST,
    EMPTY_MEDIA_TYPE,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    DigestMismatch,
    Manifest,
    Reference,
    canonical_json,
    check_hasher,
    check_not_reserved,
    compute_digest,
    is_digest,
    is_reserved_tag,
    new_hasher,
    parse_reference,
    referrers_tag,
    verify_digest,
)

if TYPE_CHECKING:
    from harden.oci.client import RegistryClient

__all__ = [
    "ALL_MANIFEST_TYPES",
    "CREATED_ANNOTATION",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "EMPTY_DATA",
    "EMPTY_DIGEST",
    "EMPTY_MEDIA_TYPE",
    "INDEX_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "TAG_INDEX_ATTEMPTS",
    "Descriptor",
    "DigestMismatch",
    "Manifest",
    "PreparedCopy",
    "Reference",
    "add_to_referrers_index",
    "canonical_json",
    "check_hasher",
    "check_not_reserved",
    "compute_digest",
    "copy_image",
    "is_digest",
    "is_reserved_tag",
    "list_referrers",
    "list_referrers_of_each",
    "new_hasher",
    "parse_reference",
    "prepare_copy",
    "push_referrer",
    "referrer_manifest",
    "referrers_tag",
    "resolve",
    "verify_digest",
]

TAG_INDEX_ATTEMPTS = 8
_PREPARE_WORKERS = 6  # reads and mounts at once while a gate decides
_MAX_REFERRER_DEPTH = 3


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
    written: Callable[[], None] | None = None,
) -> None:
    """Merge ``referrers`` into the ``sha256-<hex>`` index without losing concurrent entries.

    Read-modify-write with If-Match on the ETag the registry gave; then re-read after a short
    jittered pause and repeat until every entry of ours is present (bounded). distribution 2.8
    ignores If-Match, so the re-read is what catches a lost update there; a writer that reads
    and writes within our pause can still be overwritten, the re-read of *its* write repairs it.
    The pause is one to two times what our own read and write took (at least 2 ms, at most
    2 s): a writer whose read came before our write lands its own write within about that long,
    on a registry next door as on one across an ocean (a fixed pause is too long for the first
    and too short for the second).
    ``written`` is called once, as soon as the index holds every entry of ours (after the first
    write that was not refused, or at once when they were all there), before the re-check: the
    caller may tag meanwhile (what the re-check repairs is a racing writer's doing, not ours).
    """
    from harden.oci.client import PreconditionFailed

    tag = referrers_tag(subject_digest)
    for attempt in range(attempts + 1):
        began = time.monotonic()
        existing, etag = _read_referrers_index(client, repository, tag)
        present = {entry.get("digest") for entry in existing}
        missing = [r for r in referrers if r.digest not in present]
        if not missing:
            if written is not None:
                written()
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
        if written is not None:
            written()
            written = None
        # let a racing writer land, then re-read
        round_trip = time.monotonic() - began
        client.sleep(min(max(random.uniform(1.0, 2.0) * round_trip, 0.002), 2.0))
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
    from harden.oci.client import RegistryNotFound, check_referrer_count

    def by_tag(_: object) -> Manifest | None:
        try:
            index = client.get_manifest(repository, referrers_tag(subject_digest))
        except RegistryNotFound:
            return None
        if not index.is_index:
            raise RegistryError(
                f"{repository}:{referrers_tag(subject_digest)} is not an image index",
                hint="that tag is reserved for the OCI referrers tag schema",
            )
        return index

    # until the client knows whether the registry has the referrers API, the tag schema's
    # index is read at the same time (one round trip, not two, where it has not); that read
    # counts only when the API gives no answer, exactly as if it had been made afterwards
    fallback = client.submit(by_tag, None) if client.has_referrers_api is None else None
    try:
        index = client.referrers_api(repository, subject_digest, artifact_type)
    finally:
        if fallback is not None:  # never left running: its answer or error is used or dropped
            concurrent.futures.wait([fallback])
    if index is None:
        index = fallback.result() if fallback is not None else by_tag(None)
        if index is None:
            return []

    entries = index.json().get("manifests")
    check_referrer_count(
        len(entries) if isinstance(entries, list) else 0, f"{repository}@{subject_digest}"
    )
    found = index.manifests
    if artifact_type is not None:
        found = [d for d in found if d.artifact_type == artifact_type]
    return found


def list_referrers_of_each(
    client: RegistryClient, repository: str, descriptors: Sequence[Descriptor]
) -> list[list[Descriptor]]:
    """``[list_referrers(...) for each descriptor]``, in order. On a registry without the
    referrers API, one read of the repository's tags (when one page holds them) tells which
    ``sha256-<hex>`` indexes exist, so a descriptor without one costs no request."""
    todo = list(descriptors)
    have: set[str] | None = None
    if client.has_referrers_api is False and len(todo) > 1:
        tags = client.list_few_tags(repository)
        if tags is not None:
            have = set(tags)
            todo = [d for d in todo if referrers_tag(d.digest) in have]
    listed = client.map_concurrently(lambda d: list_referrers(client, repository, d.digest), todo)
    if have is None:
        return listed
    found = {d.digest: more for d, more in zip(todo, listed, strict=True)}
    return [found.get(d.digest, []) for d in descriptors]


def resolve(client: RegistryClient, ref: Reference) -> Manifest:
    """The manifest a reference names; by digest when it has one (verified), else by tag."""
    target = ref.digest or ref.tag
    if target is None:
        raise InputError(f"{ref} names neither a tag nor a digest", hint="add :TAG or @sha256:...")
    return client.get_manifest(ref.repository, target)


# ---- copy --------------------------------------------------------------------------------------
@dataclass
class PreparedCopy:
    """What a copy learned and did before it may write anything that names an image.

    Filled by :func:`prepare_copy` while a gate decides: the
    source's manifest, its referrers (and theirs), whether the destination has the manifest
    already, and the blobs confirmed there (mounted within one registry). Nothing else is
    written: a blob is content reachable only by its digest, named by no manifest and no tag,
    so a pull by tag or digest sees nothing of a denied image; and within one registry a mount
    transfers no data (whoever can read the blob can read it in the source already).
    :func:`copy_image` with ``prepared=`` then writes only what is still missing."""

    manifest: Manifest
    present: bool | None = None  # the manifest is at the destination (None: not asked)
    referrers: list[Descriptor] | None = None  # the manifest's referrers (None: not listed)
    nested: dict[str, list[Descriptor]] = field(default_factory=dict)  # referrer -> its own
    blobs: set[str] = field(default_factory=set)  # blob digests confirmed at the destination
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mounted(self, digest: str) -> None:
        with self._lock:
            self.blobs.add(digest)


def prepare_copy(
    src: RegistryClient,
    src_repo: str,
    manifest: Manifest,
    dst: RegistryClient,
    dst_repo: str,
    referrers: Callable[[], Sequence[Descriptor]] | None = None,
) -> PreparedCopy:
    """Prepare copying ``manifest`` (see :class:`PreparedCopy` for why this is safe before a
    decision): ask whether the destination has it; within one registry mount its blobs there
    (the first alone: it may create the repository, see :func:`_parallel`; the others
    together); once ``referrers()`` (blocking) gives its referrers, read their manifests, list
    their own referrers and mount their blobs too. Writes no manifest and no tag. Registry
    errors raise; only confirmed mounts count."""
    plan = PreparedCopy(manifest)
    same = src.base_url == dst.base_url

    def mount(blob: Descriptor) -> None:
        if blob.digest not in plan.blobs and dst.mount_blob(dst_repo, blob.digest, src_repo):
            plan.mounted(blob.digest)

    # threads of their own: the client's pool is busy with the gate's reads meanwhile (which
    # read the same referrer manifests: a read under way is waited for, not repeated)
    with ThreadPoolExecutor(_PREPARE_WORKERS, "prepare-copy") as pool:
        head = pool.submit(dst.head_manifest, dst_repo, manifest.digest)
        blobs = _own_blobs(manifest) if same and not manifest.is_index else []
        if blobs:
            mount(blobs[0])
        mounts = [pool.submit(mount, b) for b in blobs[1:]]
        try:
            if referrers is not None:
                found = list(referrers())
                # their own referrers are listed meanwhile (on a registry without the
                # referrers API: one read of the tag list, see list_referrers_of_each)
                nested = pool.submit(list_referrers_of_each, src, src_repo, found)
                manifests = list(pool.map(lambda r: src.get_manifest(src_repo, r.digest), found))
                plan.referrers = found
                if same and head.result() is None:
                    known = {b.digest for b in blobs}
                    for m in manifests:
                        for b in [] if m.is_index else _own_blobs(m):
                            if b.digest not in known:
                                known.add(b.digest)
                                mounts.append(pool.submit(mount, b))
                plan.nested = dict(zip([r.digest for r in found], nested.result(), strict=True))
        finally:
            concurrent.futures.wait(mounts)
        for done in mounts:
            done.result()
        plan.present = head.result() is not None
    return plan


def _own_blobs(manifest: Manifest) -> list[Descriptor]:
    config = manifest.config
    return [*([config] if config else []), *manifest.layers]


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
    prepared: PreparedCopy | None = None,
) -> Descriptor:
    """Copy a manifest (and its tree, and its referrers) by digest; tag it last.

    Blobs already at the destination are skipped, mounted from ``src_repo`` on the same
    registry, else streamed GET -> PUT in bounded chunks. Manifests are PUT as the identical
    bytes, so the digest never changes. A manifest that was not at the destination is written
    together with its referrers' manifests (a referrer may name a subject not yet there: the
    OCI distribution spec asks registries to accept it); the referrers tag-schema index after
    them, the tag last: an interrupted copy never leaves the tag pointing at something
    incomplete, and running the copy again completes it. (The tag is written while the index's
    lost-update re-check runs, once our write of it has landed: the re-check guards against
    another writer, and returns only after it.) ``prepared`` (from :func:`prepare_copy`) saves
    the reads and mounts done already.
    """
    if tag is not None and not _TAG_RE.match(tag):
        raise InputError(f"not a valid tag: {tag!r}")
    if tag is not None:
        check_not_reserved(tag)
    copier = _Copier(src, src_repo, dst, dst_repo, progress or (lambda _message: None))
    if prepared is not None and prepared.manifest.digest != digest:
        prepared = None
    if prepared is not None:
        manifest = prepared.manifest
        copier.prepared(prepared)
    else:
        manifest = src.get_manifest(src_repo, digest)
    found = prepared.referrers if prepared is not None else None
    # listing the referrers is a read of the source: it runs while the image is copied
    listing = (
        src.submit(lambda d: list_referrers(src, src_repo, d), manifest.digest)
        if with_referrers and found is None
        else None
    )
    present = prepared.present if prepared is not None else None
    if present is None:
        present = dst.head_manifest(dst_repo, manifest.digest) is not None
    if present:
        copier.note(f"manifest {manifest.digest} already present")
    else:
        copier.tree(manifest)
    # a subject that was not at the destination has no referrers there either: write them
    # without asking first (a PUT of the same bytes is harmless anyway)
    copier.ask_first = present
    if listing is not None:
        found = listing.result()
    tagging: list[concurrent.futures.Future[None]] = []

    def put_tag() -> None:
        assert tag is not None
        dst.put_manifest(dst_repo, tag, manifest.data, manifest.media_type)
        copier.note(f"tagged {dst_repo}:{tag} -> {manifest.digest}")

    if tag is not None:
        copier.indexed = lambda: tagging.append(dst.submit(lambda _: put_tag(), None))
    try:
        if with_referrers and found:
            copier.referrers(
                manifest.digest, depth=1, found=found, subject=None if present else manifest
            )
        elif not present:
            copier.put(manifest)
    finally:
        concurrent.futures.wait(tagging)
    if tagging:
        tagging[0].result()
    elif tag is not None:
        put_tag()
    return manifest.descriptor()


def _parallel(fn: Callable[[Descriptor], None], items: Sequence[Descriptor]) -> None:
    """Run ``fn`` over ``items`` one after the other.

    Deliberately sequential: distribution 2.8 answers MANIFEST_BLOB_UNKNOWN for a manifest
    whose blobs were mounted concurrently into a new repository (seen here). Mounts into a
    repository that exists (after its first blob) run on the client's pool; streamed copies
    between registries stay one at a time (memory and the destination's upload sessions).
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
        self.ask_first = True  # HEAD a referrer's manifest at the destination before copying it
        self._dst_has_referrers_api: bool | None = None
        self._blobs_done: set[str] = set()  # attestations share blobs (the empty config)
        self._nested: dict[str, list[Descriptor]] = {}  # listed already (prepared)
        self._lock = threading.Lock()
        # called once the subject's own referrers index is written, when nothing deeper is
        # left to copy (copy_image tags then, while the index is re-checked)
        self.indexed: Callable[[], None] | None = None

    def prepared(self, plan: PreparedCopy) -> None:
        self._blobs_done |= plan.blobs
        self._nested = dict(plan.nested)
        for digest in plan.blobs:
            self.note(f"blob {digest[:19]} mounted from {self.src_repo}")

    def manifest(self, manifest: Manifest, *, ask_first: bool = True) -> bool:
        """Copy one manifest and its tree; True when it was at the destination already."""
        if ask_first and self.dst.head_manifest(self.dst_repo, manifest.digest) is not None:
            self.note(f"manifest {manifest.digest} already present")
            return True
        self.tree(manifest)
        self.put(manifest)
        return False

    def tree(self, manifest: Manifest) -> None:
        """Everything ``manifest`` names (child manifests, blobs), not the manifest itself."""
        if manifest.is_index:
            for child in manifest.manifests:
                self.manifest(self.src.get_manifest(self.src_repo, child.digest))
            return
        blobs = _own_blobs(manifest)
        if self.same_registry and blobs:
            # mounts: the first alone (it creates the repository), the rest together
            self.blob(blobs[0])
            self.dst.map_concurrently(self.blob, blobs[1:])
        else:
            _parallel(self.blob, blobs)

    def put(self, manifest: Manifest) -> None:
        self.dst.put_manifest(self.dst_repo, manifest.digest, manifest.data, manifest.media_type)
        self.note(f"manifest {manifest.digest} copied")

    def blob(self, blob: Descriptor) -> None:
        with self._lock:
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

    def referrers(
        self,
        subject_digest: str,
        depth: int,
        found: Sequence[Descriptor] | None = None,
        subject: Manifest | None = None,
    ) -> None:
        """Copy the referrers of ``subject_digest`` (and theirs); ``subject``, when given, is
        written together with them (its tree is at the destination already)."""
        if found is None:
            found = list_referrers(self.src, self.src_repo, subject_digest)
        if not found:
            if subject is not None:
                self.put(subject)
            return
        # read (and verify) the referrer manifests on a small pool; they are cached by digest,
        # so the writes below do not read them again. The next level's listings are reads of
        # the source too: asked together now rather than one after the other later
        manifests = self.src.map_concurrently(
            lambda r: self.src.get_manifest(self.src_repo, r.digest), found
        )
        nested: list[list[Descriptor]]
        if depth >= _MAX_REFERRER_DEPTH:
            nested = [[] for _ in found]
        elif all(r.digest in self._nested for r in found):
            nested = [self._nested[r.digest] for r in found]
        else:
            nested = list_referrers_of_each(self.src, self.src_repo, found)
        self._copy_all(manifests, subject)
        last = depth == 1 and not any(nested)
        indexed, self.indexed = (self.indexed, None) if last else (None, self.indexed)
        if not self.dst_has_referrers_api(subject_digest):
            add_to_referrers_index(self.dst, self.dst_repo, subject_digest, found, written=indexed)
        elif indexed is not None:
            indexed()
        self.note(f"{len(found)} referrer(s) of {subject_digest[:19]} copied")
        for r, more in zip(found, nested, strict=True):
            if more:
                self.referrers(r.digest, depth + 1, more)

    def _copy_all(self, manifests: Sequence[Manifest], subject: Manifest | None = None) -> None:
        """Copy referrer manifests (and write ``subject``, whose tree is there already, with
        them). Blobs two of them share (the empty config) are copied first, one at a time (the
        subject's tree created the repository); then each manifest with its own blobs on the
        client's bounded pool: distribution 2.8 mishandles concurrent mounts only into a
        repository that does not exist yet (see :func:`_parallel`)."""
        ask_first = self.ask_first
        if any(m.is_index for m in manifests) or len(manifests) <= 1:
            if subject is not None:
                self.put(subject)
            for m in manifests:
                self.manifest(m, ask_first=ask_first)
            return
        seen: set[str] = set()
        shared: list[Descriptor] = []
        for m in manifests:
            blobs = {b.digest: b for b in _own_blobs(m)}
            for digest, b in blobs.items():
                if digest in seen and all(s.digest != digest for s in shared):
                    shared.append(b)
                seen.add(digest)
        _parallel(self.blob, shared)

        def copy(m: Manifest) -> None:
            self.manifest(m, ask_first=ask_first)

        if subject is None:
            self.dst.map_concurrently(copy, manifests)
            return
        # the subject is written by this thread while the pool copies the referrers
        pending = [self.dst.submit(copy, m) for m in manifests]
        try:
            self.put(subject)
        finally:
            concurrent.futures.wait(pending)
        for f in pending:  # the first error in order, once every copy has finished
            f.result()

    def dst_has_referrers_api(self, subject_digest: str) -> bool:
        if self._dst_has_referrers_api is None:
            answer = self.dst.referrers_api(self.dst_repo, subject_digest)
            self._dst_has_referrers_api = answer is not None
        return self._dst_has_referrers_api
