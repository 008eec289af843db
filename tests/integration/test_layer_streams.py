"""Image layers read by harden's own tar scanner: real layers against Python's tarfile, and
hostile layer blobs pushed to the real registry refused by ``harden verify`` with an error and
a hint (exit 3), never a traceback and never a partial index.

The real layers are those of the base images the services provide (``docker save`` of
debian:12 and debian:13 from the engine, and debian:12 from the local registry, read through
the same streaming path a cold verify takes).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import harden_cli
import pytest
from needs import unavailable

from harden.errors import InputError
from harden.oci import RegistryClient
from harden.oci.model import OCI_MANIFEST, canonical_json, compute_digest
from harden.verifiers.fsview import index_layer
from harden.verifiers.image_layers import LayerCache, open_registry_image
from harden.verifiers.tarscan import scan

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASES = ("debian:12", "debian:13")
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
PLAIN = "application/vnd.oci.image.layer.v1.tar"

View = list[tuple[bytes, int, int, int, int, bytes, int]]


def tarfile_view(path: Path) -> View:
    """What tarfile reads: name, mode, uid, gid, data size, link target, data offset."""
    with tarfile.open(path, "r:", encoding="utf-8", errors="surrogateescape") as tar:
        return [
            (
                i.name.encode("utf-8", "surrogateescape").rstrip(b"/"),
                i.mode,
                i.uid,
                i.gid,
                i.size if i.isreg() else 0,
                i.linkname.encode("utf-8", "surrogateescape"),
                i.offset_data,
            )
            for i in tar
        ]


def scan_view(path: Path) -> View:
    with path.open("rb") as f:
        return [
            (m.name.rstrip(b"/"), m.mode, m.uid, m.gid, m.size, m.linkname, m.offset_data)
            for m in scan(f)
        ]


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    try:
        c = docker.from_env()
        c.ping()
        for base in BASES:
            c.images.get(base)
    except docker.errors.DockerException as e:
        unavailable(f"engine or base images missing ({e}); run scripts/services.sh")
    return c


@pytest.mark.parametrize("base", BASES)
def test_real_layers_read_as_tarfile_reads_them(
    engine: docker.DockerClient, base: str, tmp_path: Path
) -> None:
    """Every layer tar of a ``docker save`` (and the save archive itself) gives the scanner
    exactly what tarfile gives: names, modes, owners, sizes, link targets, data offsets."""
    saved = tmp_path / "image.tar"
    with saved.open("wb") as f:
        for chunk in engine.images.get(base).save(named=True):
            f.write(chunk)
    assert scan_view(saved) == tarfile_view(saved)
    layers = 0
    with tarfile.open(saved) as outer:
        for member in outer:
            if not member.isreg() or member.size < 1024:
                continue
            data = outer.extractfile(member)
            assert data is not None
            head = data.read(512)
            if head[257:262] != b"ustar":
                continue  # a config or a manifest
            layer = tmp_path / "layer.tar"
            layer.write_bytes(head + data.read())
            view = scan_view(layer)
            assert view == tarfile_view(layer), member.name
            assert len(view) > 1000  # a whole debian root file system
            layers += 1
    assert layers >= 1


def test_a_streamed_registry_layer_is_indexed_as_tarfile_reads_it(tmp_path: Path) -> None:
    """The cold path (download, decompress, write and index in one pass) keeps the whole layer
    tar and an index equal to a reading of that file by tarfile."""
    ref = f"{REGISTRY}/library/debian:12"
    cache = LayerCache(tmp_path / "cache")
    try:
        img = open_registry_image(ref, cache=cache)
    except InputError as e:  # pragma: no cover - the environment, not the code
        unavailable(f"{ref} is not in the local registry ({e}); run scripts/services.sh")
    assert img.meta["layers_fetched"] >= 1
    tars = sorted(cache.root.glob("blob-*.tar"))
    assert tars
    for tar in tars:
        hit = cache.get(f"blob:sha256:{tar.stem.removeprefix('blob-')}")
        assert hit is not None
        streamed = hit[1]
        with tar.open("rb") as f:
            assert index_layer(f) == streamed  # the index written while streaming
        assert scan_view(tar) == tarfile_view(tar)
    assert img.fs.lstat(b"/etc/os-release") is not None


# ---------------------------------------------------------------- hostile layer blobs


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


GOOD = _tar(
    [
        ("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/shadow", b"root:*:19000:0:99999:7:::\n"),
    ]
)
with tarfile.open(fileobj=io.BytesIO(GOOD)) as _t:
    _MEMBERS = _t.getmembers()
SECOND = _MEMBERS[1].offset  # the second member's header
END = _MEMBERS[-1].offset_data + 512  # the last member's (small) data, padded


def _bad_second_checksum() -> bytes:
    """A member whose header checksum is wrong behind a good one: tarfile ended the archive
    there (hiding every member after it), the engine refuses the layer."""
    tar = bytearray(GOOD)
    tar[SECOND + 100] ^= 1  # one bit of the mode field
    return bytes(tar)


HOSTILE: dict[str, tuple[bytes, str, str]] = {
    # name: (blob, media type, words in the error)
    "corrupt deflate": (
        gzip.compress(GOOD)[:20] + b"\xff" * 64 + gzip.compress(GOOD)[84:],
        GZIP,
        "is not a valid gzip stream",
    ),
    "truncated gzip": (gzip.compress(GOOD)[:-40], GZIP, "is not a valid gzip stream"),
    "gzip then garbage": (gzip.compress(GOOD) + b"garbage!", GZIP, "not a valid gzip stream"),
    "a tar said to be gzip": (GOOD, GZIP, "is not a valid gzip stream"),
    "bad checksum after the first header": (
        gzip.compress(_bad_second_checksum()),
        GZIP,
        "bad header checksum",
    ),
    "member hidden behind one end block": (
        GOOD[:END] + bytes(512) + _tar([("etc/hidden", b"x")]),
        PLAIN,
        "not a second one",
    ),
    "truncated tar": (GOOD[: SECOND + 300], PLAIN, "not a readable tar archive"),
    "empty layer file": (b"", PLAIN, "an empty file"),
}


@pytest.fixture
def push_layer(
    local_registry: RegistryClient, unique_repo: Callable[[str], str]
) -> Callable[[bytes, str], str]:
    """push(blob, media type) -> a reference to a one-layer image holding that blob."""

    def push(blob: bytes, media: str) -> str:
        repo = unique_repo("layer-" + uuid.uuid4().hex[:6])
        diff = GOOD  # what the config claims; harden keys its cache by checked digests only
        config = canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [compute_digest(diff)]},
            }
        )
        for data in (config, blob):
            local_registry.upload_blob(repo, data, compute_digest(data))
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": compute_digest(config),
                    "size": len(config),
                },
                "layers": [{"mediaType": media, "digest": compute_digest(blob), "size": len(blob)}],
            }
        )
        local_registry.put_manifest(repo, "v1", manifest, OCI_MANIFEST)
        return f"{REGISTRY}/{repo}:v1"

    return push


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_blobs_are_refused_with_an_error_and_a_hint(
    case: str, push_layer: Callable[[bytes, str], str], tmp_path: Path
) -> None:
    blob, media, words = HOSTILE[case]
    ref = push_layer(blob, media)
    home = tmp_path / "home"
    out = harden_cli.run(
        "verify", ref, "--baseline", "debian-container", env={"HARDEN_HOME": str(home)}
    )
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert "error: " in out.stderr and words in out.stderr, out.stderr
    assert not list((home / "cache" / "layers").glob("*.tar"))  # nothing cached
    assert not list((home / "cache" / "layers").glob(".*.tmp"))  # no temporary file left


def test_the_good_layer_of_those_tests_verifies(
    push_layer: Callable[[bytes, str], str], tmp_path: Path
) -> None:
    """The same image with an intact layer is read (the refusals above are the layer's)."""
    for blob, media in ((gzip.compress(GOOD), GZIP), (GOOD, PLAIN)):
        ref = push_layer(blob, media)
        out = harden_cli.run(
            "verify",
            ref,
            "--baseline",
            "debian-container",
            env={"HARDEN_HOME": str(tmp_path / uuid.uuid4().hex)},
        )
        assert out.returncode == 1, out.stderr  # read completely: non-compliant, not an error
        assert "Traceback" not in out.stderr and "error:" not in out.stderr
