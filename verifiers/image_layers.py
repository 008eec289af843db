"""A container image's layers on disk, read by harden itself: from a registry or the local engine.

Layers are kept uncompressed in a cache keyed by their diff id (the sha256 of the uncompressed
tar, which the image config lists in ``rootfs.diff_ids``), next to an index of their tar headers,
so a warm verification reads no layer at all, only the few files a plan needs (by offset).

- :func:`open_registry_image` reads a registry reference with harden's own OCI client: manifest
  (the digest reported is the manifest's own), config, then each layer blob by digest, checked
  against the blob digest while it streams and, uncompressed, against the config's diff id.
- :func:`open_local_image` reads an image of the local engine (``docker-image://`` or ``--local``):
  the engine's inspect data gives the config and diff ids; when a layer is not cached, the image
  is exported (``docker save``) and every layer checked against its diff id.

Nothing from the image runs. Sizes are bounded (layer count, compressed and uncompressed bytes).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from harden.errors import InputError, RegistryError
from harden.paths import harden_home
from harden.verifiers import tarscan
from harden.verifiers.fsview import LayerEntry, LayerFs, LimitExceeded, index_layer

MAX_LAYERS = 256
MAX_LAYER_BYTES = 8 << 30  # uncompressed, per layer
MAX_BLOB_BYTES = 4 << 30  # compressed, per layer
MAX_CONFIG_BYTES = 4 << 20
CHUNK = 1 << 20  # bytes read from a layer stream at a time
INDEX_VERSION = 2  # 2: written by the strict scanner (a tarfile-era index is rebuilt)
_DIFF_ID = re.compile(r"^sha256:[a-f0-9]{64}$")
_GZIP = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
_PLAIN = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")

Progress = Callable[[str], None]


def cache_dir() -> Path:
    """``$HARDEN_LAYER_CACHE`` or ``$HARDEN_HOME/cache/layers``."""
    env = os.environ.get("HARDEN_LAYER_CACHE")
    return Path(env) if env else harden_home() / "cache" / "layers"


@dataclass
class ImageFs:
    """An image read without running it: its file system, its config and where it came from."""

    fs: LayerFs
    config: dict[str, Any]  # the image config document (architecture, os, config, rootfs)
    digest: str  # the manifest digest (registry) or the image id (local engine)
    source: str  # "registry" or "local"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def container_config(self) -> dict[str, Any]:
        """The runtime config (User, Env, Healthcheck, Labels) in the engine's key spelling."""
        cfg = self.config.get("config") or self.config.get("Config") or {}
        return dict(cfg) if isinstance(cfg, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        labels = self.container_config.get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


# ---------------------------------------------------------------- the layer cache


class LayerCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir()

    """Uncompressed layer tars and their header indexes, by a digest harden checked itself:
    ``blob:<digest>`` for a registry layer (the digest of the compressed blob, checked while it
    streamed), ``diff:<digest>`` for a layer of the local engine (the sha256 of the tar, computed
    here). A config's claim about a diff id never names a cache entry, so a hostile image cannot
    plant content under another image's layer."""

    def _paths(self, key: str) -> tuple[Path, Path]:
        kind, _, digest = key.partition(":")
        if kind not in ("blob", "diff") or not _DIFF_ID.match(digest):
            raise InputError(f"not a layer cache key: {key!r}")
        name = f"{kind}-{digest.partition(':')[2]}"
        return self.root / f"{name}.tar", self.root / f"{name}.idx"

    def get(self, key: str) -> tuple[Path, list[LayerEntry]] | None:
        tar, idx = self._paths(key)
        if not (tar.is_file() and idx.is_file()):
            return None
        try:
            return tar, _load_index(idx.read_bytes())
        except (ValueError, KeyError, TypeError):
            return None  # a damaged index is rebuilt from the layer

    def put_stream(
        self, chunks: IO[bytes], blob: str | None = None
    ) -> tuple[str, Path, list[LayerEntry]]:
        """Write an uncompressed layer tar read from ``chunks`` to a temporary file and index
        it; the key is ``blob:<blob>`` (a registry blob whose digest the caller checks before
        :meth:`commit`) or, without ``blob``, ``diff:<sha256 of the tar>``."""
        return self.put_chunks(iter(functools.partial(chunks.read, CHUNK), b""), blob)

    def put_chunks(
        self, chunks: Iterator[bytes], blob: str | None = None
    ) -> tuple[str, Path, list[LayerEntry]]:
        """:meth:`put_stream` from an iterator of chunks. The index is built while the tar
        streams in (a header is read from the file right after its chunk was written), and
        the chunks go straight to the file, never copied into another buffer."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".layer-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w+b", buffering=0) as out:
                spool = _Spool(chunks, out, MAX_LAYER_BYTES, hashing=blob is None)
                entries = index_layer(spool)
                spool.drain()  # whatever follows the end of the archive is kept as it came
            key = f"blob:{blob}" if blob else f"diff:sha256:{spool.hasher.hexdigest()}"
            self._paths(key)  # a valid key
            return key, Path(tmp), entries
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def commit(
        self, key: str, tmp: Path, entries: list[LayerEntry]
    ) -> tuple[Path, list[LayerEntry]]:
        """Keep a layer written by :meth:`put_stream` (once its digest was checked)."""
        tar, idx = self._paths(key)
        try:
            _atomic_write(idx, _dump_index(entries))
            os.replace(tmp, tar)
            return tar, entries
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class _Spool(tarscan.Source):
    """A layer tar streaming into its cache file, read by the tar scanner as it arrives: a read
    past what was written pulls (writes, counts and hashes) more chunks first. At most
    ``limit`` bytes."""

    def __init__(self, chunks: Iterator[bytes], out: BinaryIO, limit: int, *, hashing: bool):
        self._chunks = chunks
        self._out = out
        self._fd = out.fileno()
        self._limit = limit
        self._hashing = hashing
        self.hasher = hashlib.sha256()
        self.written = 0
        self.eof = False
        self._last = b""  # the chunk written last, and where it starts in the tar
        self._last_at = 0

    def _pull(self) -> None:
        data = next(self._chunks, b"")
        if not data:
            self.eof = True
            return
        self.written += len(data)
        if self.written > self._limit:
            raise LimitExceeded(f"a layer is larger than {self._limit} bytes uncompressed")
        if self._hashing:
            self.hasher.update(data)
        view = memoryview(data)
        while view:  # a raw file may write less than it was given
            view = view[self._out.write(view) or 0 :]
        self._last, self._last_at = data, self.written - len(data)

    def read_at(self, offset: int, size: int) -> bytes:
        while self.written < offset + size and not self.eof:
            self._pull()
        start = offset - self._last_at
        if start >= 0 and start + size <= len(self._last):
            return self._last[start : start + size]  # most headers: still in memory
        return os.pread(self._fd, size, offset)

    def holds(self, end: int) -> bool:
        while self.written < end and not self.eof:
            self._pull()
        return self.written >= end

    def drain(self) -> None:
        while not self.eof:
            self._pull()


def _dump_index(entries: list[LayerEntry]) -> bytes:
    rows = [
        [
            e.path.decode("latin-1"),
            e.type,
            e.mode,
            e.uid,
            e.gid,
            e.size,
            e.link.decode("latin-1") if e.link is not None else None,
            e.offset,
        ]
        for e in entries
    ]
    return json.dumps({"v": INDEX_VERSION, "entries": rows}, separators=(",", ":")).encode()


def _load_index(data: bytes) -> list[LayerEntry]:
    doc = json.loads(data)
    if doc.get("v") != INDEX_VERSION:
        raise ValueError("index version")
    return [
        LayerEntry(
            p.encode("latin-1"), t, m, u, g, s, ln.encode("latin-1") if ln is not None else None, o
        )
        for p, t, m, u, g, s, ln, o in doc["entries"]
    ]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".idx-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _diff_ids(config: dict[str, Any]) -> list[str]:
    rootfs = config.get("rootfs") or config.get("RootFS") or {}
    ids = rootfs.get("diff_ids") or rootfs.get("Layers") or []
    if not isinstance(ids, list) or not all(isinstance(d, str) and _DIFF_ID.match(d) for d in ids):
        raise InputError("the image config has no valid rootfs.diff_ids")
    if len(ids) > MAX_LAYERS:
        raise LimitExceeded(f"the image has {len(ids)} layers, more than {MAX_LAYERS}")
    return ids


# ---------------------------------------------------------------- from a registry


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (a streamed, digest-checked blob)."""

    def __init__(self, chunks: Iterator[bytes], limit: int) -> None:
        self._it = chunks
        self._buf = b""
        self._count = 0
        self._limit = limit
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self.done:
            try:
                self._buf = next(self._it)
            except StopIteration:
                self.done = True
                break
            self._count += len(self._buf)
            if self._count > self._limit:
                raise LimitExceeded(f"a layer blob is larger than {self._limit} bytes")
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def finish(self) -> None:
        """Read to the end, so the digest check after the last chunk runs."""
        while self.read(1 << 20):
            pass


def open_registry_image(
    text: str, *, cache: LayerCache | None = None, progress: Progress | None = None
) -> ImageFs:
    """Read ``host/repo[:tag][@digest]`` from its registry. Every failure is the registry's
    own (RegistryError, exit 4), a malformed reference is InputError (exit 3)."""
    from harden.oci import RegistryClient
    from harden.oci.model import INDEX_TYPES, parse_reference

    ref = parse_reference(text)
    cache = cache or LayerCache()
    # a CA named in HARDEN_REGISTRY_CA means TLS, also on loopback
    client = RegistryClient.for_reference(ref, ca_bundle=os.environ.get("HARDEN_REGISTRY_CA"))
    client.max_retries = 1
    repo = ref.repository
    try:
        manifest = client.get_manifest(repo, ref.digest or ref.tag or "latest")
        digest = manifest.digest
        meta: dict[str, Any] = {}
        if manifest.media_type in INDEX_TYPES:
            chosen = _platform_manifest(json.loads(manifest.data))
            meta["platform_manifest"] = chosen
            manifest = client.get_manifest(repo, chosen)
        doc = json.loads(manifest.data)
        cfg_desc = doc.get("config") or {}
        layers = doc.get("layers") or []
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise LimitExceeded(f"the manifest of {text} lists too many layers")
        config = json.loads(client.get_blob(repo, str(cfg_desc.get("digest")), MAX_CONFIG_BYTES))
        if not isinstance(config, dict):
            raise InputError(f"the config of {text} is not a JSON object")
        diff_ids = _diff_ids(config)
        if len(diff_ids) != len(layers):
            raise InputError(
                f"{text}: the manifest lists {len(layers)} layers, the config {len(diff_ids)}"
            )
        read: list[tuple[Path, list[LayerEntry]]] = []
        fetched = 0
        for desc in layers:
            hit = cache.get(f"blob:{desc.get('digest')}")
            if hit is None:
                fetched += 1
                if progress:
                    progress(
                        f"fetching layer {str(desc.get('digest'))[:19]} ({desc.get('size')} bytes)"
                    )
                hit = _fetch_layer(client, repo, desc, cache)
            read.append(hit)
    except RegistryError as e:
        raise _with_cause(e) from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{text}: the registry served an image harden cannot read ({e})") from e
    meta["layers_fetched"] = fetched
    return ImageFs(LayerFs(read), config, digest, "registry", meta)


def _platform_manifest(index: dict[str, Any]) -> str:
    for m in index.get("manifests") or []:
        plat = m.get("platform") or {}
        if plat.get("os") == "linux" and plat.get("architecture") == "amd64":
            return str(m["digest"])
    raise InputError("the image index has no linux/amd64 manifest")


def _fetch_layer(
    client: Any, repo: str, desc: dict[str, Any], cache: LayerCache
) -> tuple[Path, list[LayerEntry]]:
    media = str(desc.get("mediaType") or "")
    digest = str(desc.get("digest"))
    size = desc.get("size")
    if not isinstance(size, int) or size < 0 or size > MAX_BLOB_BYTES:
        raise LimitExceeded(
            f"layer {digest} declares size {size!r}, over the limit of {MAX_BLOB_BYTES}"
        )
    blob = client.open_blob(repo, digest)
    reader = _ChunkReader(blob, size)
    buffered = io.BufferedReader(reader, 1 << 20)
    if media in _GZIP:
        stream: IO[bytes] = _gunzip(buffered)
    elif media in _PLAIN:
        stream = buffered
    else:
        raise InputError(f"layer {digest} has media type {media!r}, which harden cannot read")

    def decompressed() -> Generator[bytes, None, None]:
        try:
            try:
                while data := stream.read(CHUNK):
                    yield data
            except _GZIP_ERRORS as e:
                reader.finish()  # a blob that is not what its digest says is reported as such
                raise InputError(
                    f"layer {digest} is not a valid gzip stream ({type(e).__name__}: {e})",
                    hint="the registry holds a damaged or hostile layer; harden cannot read it",
                ) from e
            reader.finish()  # raises DigestMismatch if the blob was not what its digest says
        finally:
            close = getattr(blob, "close", None)
            if close is not None:
                close()  # the response, also when the layer is refused half-way

    with contextlib.closing(decompressed()) as chunks:
        key, tmp, entries = cache.put_chunks(chunks, blob=digest)
    return cache.commit(key, tmp, entries)


def _gzip_errors() -> tuple[type[BaseException], ...]:
    """What a damaged gzip stream raises: a bad header, a short stream (EOFError), a bad deflate
    block or checksum (zlib's or ISA-L's error)."""
    import gzip
    import zlib

    errors: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error)
    try:
        from isal import igzip_lib
    except ImportError:  # pragma: no cover - isal is a dependency
        return errors
    # the stub declares IsalError as an instance; it is the exception class
    return (*errors, cast(type[BaseException], igzip_lib.IsalError))


_GZIP_ERRORS = _gzip_errors()


def _gunzip(raw: IO[bytes]) -> IO[bytes]:
    """ISA-L's gzip when installed (about 2.5x faster than zlib), else the standard one."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return igzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value,no-untyped-call]


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _with_cause(e: RegistryError) -> RegistryError:
    """Add the low-level reason (connection refused, name unknown) the raw client leaves out."""
    cause = e.__cause__
    detail = ""
    while cause is not None and not detail:
        m = _ERRNO.search(str(cause))
        detail = m.group(1).strip() if m else ""
        cause = cause.__cause__ or cause.__context__
    if not detail or detail.lower() in e.message.lower():
        return e
    out = type(e)(f"{e.message}: {detail}", hint=e.hint)
    return out


# ---------------------------------------------------------------- from the local engine


def open_local_image(
    engine: Any, ref: str, *, cache: LayerCache | None = None, progress: Progress | None = None
) -> ImageFs:
    """Read an image of the local engine: inspect for the config, ``docker save`` for layers
    that are not cached yet (each checked against its diff id)."""
    cache = cache or LayerCache()
    attrs = engine.image(ref).attrs
    config = {
        "config": attrs.get("Config") or {},
        "rootfs": {"diff_ids": (attrs.get("RootFS") or {}).get("Layers") or []},
        "architecture": attrs.get("Architecture"),
        "os": attrs.get("Os"),
    }
    diff_ids = _diff_ids(config)
    image_id = str(attrs.get("Id"))
    hits = [cache.get(f"diff:{d}") for d in diff_ids]
    saved = 0
    if [h is None for h in hits] == [False] * (len(hits) - 1) + [True]:
        # only the top layer is new (a build's commit): read it from the engine's overlay2
        # directory when there is one, instead of exporting the whole image
        upper = ((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir")
        if attrs.get("GraphDriver", {}).get("Name") == "overlay2" and upper:
            with contextlib.suppress(OSError):
                hits[-1] = _overlay_layer(Path(upper), diff_ids[-1], cache)
    if any(h is None for h in hits):
        if progress:
            progress(f"exporting {ref} from the engine")
        found = _read_save(engine.save_image(image_id), cache, set(diff_ids))
        saved = len(found)
        hits = [cache.get(f"diff:{d}") for d in diff_ids]
        missing = [d for d, h in zip(diff_ids, hits, strict=True) if h is None]
        if missing:
            raise InputError(f"the export of {ref} lacks layer {missing[0]}")
    read = [h for h in hits if h is not None]
    return ImageFs(LayerFs(read), config, image_id, "local", {"layers_exported": saved})


def _overlay_layer(upper: Path, diff_id: str, cache: LayerCache) -> tuple[Path, list[LayerEntry]]:
    """One overlay2 layer directory as a layer tar (whiteouts: a 0/0 character device is
    ``.wh.NAME``, a directory with the opaque xattr gets ``.wh..wh..opq``), cached under the
    diff id the engine gives it. Nothing is followed: lstat only."""
    import stat as st

    cache.root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.root, prefix=".overlay-", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w+b") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                stack = [upper]
                while stack:
                    d = stack.pop()
                    for e in sorted(os.scandir(d), key=lambda x: x.name):
                        count += 1
                        if count > MAX_ENTRIES_OVERLAY:
                            raise LimitExceeded("the top layer has too many entries")
                        rel = os.path.relpath(e.path, upper)
                        s = e.stat(follow_symlinks=False)
                        if st.S_ISCHR(s.st_mode) and s.st_rdev == 0:
                            info = tarfile.TarInfo(
                                os.path.join(os.path.dirname(rel), ".wh." + e.name)
                            )
                            tar.addfile(info)
                            continue
                        tar.add(e.path, arcname=rel, recursive=False)
                        if e.is_dir(follow_symlinks=False):
                            if _opaque(e.path):
                                tar.addfile(tarfile.TarInfo(os.path.join(rel, ".wh..wh..opq")))
                            stack.append(Path(e.path))
            out.flush()
            out.seek(0)
            entries = index_layer(out)
        return cache.commit(f"diff:{diff_id}", Path(tmp), entries)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


MAX_ENTRIES_OVERLAY = 1_000_000


def _opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def _read_save(chunks: Iterator[bytes], cache: LayerCache, wanted: set[str]) -> list[str]:
    """Walk a ``docker save`` stream; cache every layer tar in it by its computed diff id."""
    reader = io.BufferedReader(_ChunkReader(chunks, 1 << 62), 1 << 20)
    stored: list[str] = []
    try:
        with tarfile.open(fileobj=reader, mode="r|") as outer:
            for member in outer:
                name = member.name
                is_layer = member.isreg() and (
                    name.endswith("/layer.tar") or name.startswith("blobs/sha256/")
                )
                if not is_layer or member.size < 1024:
                    continue
                f = outer.extractfile(member)
                if f is None:
                    continue
                try:
                    key, tmp, entries = cache.put_stream(f)
                except InputError:
                    if name.startswith("blobs/"):
                        continue  # an OCI layout also holds configs and manifests under blobs/
                    raise
                cache.commit(key, tmp, entries)
                diff_id = key.removeprefix("diff:")
                if diff_id in wanted:
                    stored.append(diff_id)
    except tarfile.TarError as e:
        raise InputError(f"the engine's image export is not a readable tar archive: {e}") from e
    return stored
