"""`harden status` over 500 golden images in the local registry: concurrent (8 threads) vs one
request at a time, side by side, warm cache (target: < 10 s); plus one cold-cache run.

Setup (cached: a rerun only checks that the last image is still there): 500 small synthetic
images in one bench repository sharing one config blob (with the labels a build records) and
one layer blob, their manifests differing by an annotation, each with a signed compliance
attestation attached as a referrer; and 500 image definitions pointing at them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import Result, interleaved
from harden.attest import dsse
from harden.attest.keys import KeyType, keygen, load_public_key, load_signer
from harden.attest.predicates import CYCLONEDX_BOM, HARDEN_COMPLIANCE
from harden.attest.statements import Subject, serialize
from harden.attest.statements import sbom as sbom_statement
from harden.attest.store import attach
from harden.baseline.resolve import Catalogue
from harden.clock import SystemClock
from harden.imagedef import load_definition
from harden.inventory import ContentCache, Inventory
from harden.lifecycle import assess
from harden.oci import RegistryClient
from harden.oci.model import OCI_MANIFEST, Descriptor, canonical_json, compute_digest
from harden.results import rfc3339

REGISTRY = "127.0.0.1:5000"
REPO = "bench/status"
COUNT = 500
REPEAT = 3
TARGET_S = 10.0
WORK = Path(os.environ.get("HARDEN_BENCH_DIR", Path(tempfile.gettempdir()) / "harden-bench-status"))
BASE = f"{REGISTRY}/library/debian:12"


def _compliance(subject: Subject, baseline: dict[str, str], now: dt.datetime) -> bytes:
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [subject.descriptor()],
        "predicateType": HARDEN_COMPLIANCE,
        "predicate": {
            "verifiedAt": rfc3339(now),
            "validUntil": rfc3339(now + dt.timedelta(days=365)),
            "compliant": True,
            "baseline": baseline,
            "target": "container",
            "platform": "debian 12",
            "waivers": [],
            "controls": {},
            "summary": {"passed": 1},
        },
    }
    return serialize(statement)


def _setup(work: Path = WORK, repo: str = REPO, sbom: bool = False) -> tuple[Path, Path]:
    """(definitions dir, public key); pushes everything once. With ``sbom`` every image also
    carries a signed CycloneDX SBOM (``SBOM_PACKAGES`` packages, one of them zzbench 1.0)."""
    WORK, REPO = work, repo
    defs, marker = WORK / "images", WORK / "setup.json"
    client = RegistryClient(REGISTRY)
    if marker.exists() and client.head_manifest(REPO, f"img-{COUNT - 1:03d}") is not None:
        return defs, WORK / "bench.pub"
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    key, pub = keygen(KeyType.ECDSA_P256, WORK / "bench", b"bench")
    signer = load_signer(f"file:{key}", b"bench")
    base_digest = client.get_manifest("library/debian", "12").digest
    defn0 = WORK / "probe.yaml"
    defn0.write_text(
        json.dumps(
            {
                "name": "probe",
                "base": BASE,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": f"{REGISTRY}/{REPO}:probe",
            }
        )
    )
    resolved = load_definition(defn0).resolve_baseline(Catalogue.from_search_path([]))
    baseline = {"id": resolved.id, "version": resolved.version, "digest": resolved.digest}
    now = dt.datetime.now(dt.UTC)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        info = tarfile.TarInfo("bench.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"bench"))
    layer = gzip.compress(tar_buf.getvalue(), mtime=0)
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Labels": {
                    "org.opencontainers.image.created": rfc3339(now),
                    "org.opencontainers.image.base.digest": base_digest,
                    "dev.harden.baseline.digest": resolved.digest,
                }
            },
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(tar_buf.getvalue())]},
        }
    )
    for blob in (config, layer):
        client.upload_blob(REPO, blob, compute_digest(blob))
    defs.mkdir()

    def push(i: int) -> None:
        own = RegistryClient(REGISTRY)
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": compute_digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": compute_digest(layer),
                        "size": len(layer),
                    }
                ],
                "annotations": {"dev.harden.bench.index": str(i)},
            }
        )
        tag = f"img-{i:03d}"
        own.put_manifest(REPO, tag, manifest, OCI_MANIFEST)
        digest = compute_digest(manifest)
        subject = Descriptor(OCI_MANIFEST, digest, len(manifest))
        payload = _compliance(Subject(f"{REGISTRY}/{REPO}", digest), baseline, now)
        attach(own, REPO, subject, dsse.sign(payload, signer), HARDEN_COMPLIANCE, now)
        if sbom:
            doc = _sbom_doc(f"{REGISTRY}/{REPO}", digest, now)
            st = serialize(sbom_statement(Subject(f"{REGISTRY}/{REPO}", digest), doc))
            attach(own, REPO, subject, dsse.sign(st, signer), CYCLONEDX_BOM, now)
        (defs / f"img-{i:03d}.yaml").write_text(
            json.dumps(
                {
                    "name": f"bench-{i:03d}",
                    "base": BASE,
                    "target": "container",
                    "baseline": {"id": "debian-container"},
                    "destination": f"{REGISTRY}/{REPO}:{tag}",
                    "max_age": "365d",
                }
            )
        )

    # the last tag is what the cache check looks for: push it last
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(push, range(COUNT - 1)))
    push(COUNT - 1)
    marker.write_text(json.dumps({"count": COUNT, "at": rfc3339(now)}))
    return defs, pub


def _status(
    defs_dir: Path,
    pub: Path,
    jobs: int,
    cache_path: Path,
    archive_cache: Path | None = None,
) -> int:
    """One `harden status` as the use case runs it; with ``archive_cache`` the pending security
    updates of every image's SBOM are checked too (every image then says outdated)."""
    from harden.debian.archive import ArchiveReader
    from harden.debian.check import SecurityCheck

    defs = [load_definition(p) for p in sorted(defs_dir.glob("*.yaml"))]
    clock = SystemClock()
    security = (
        SecurityCheck(ArchiveReader(archive_cache, clock)) if archive_cache is not None else None
    )
    inventory = Inventory(
        Catalogue.from_search_path([]),
        [load_public_key(pub)],
        clock,
        jobs=jobs,
        cache=ContentCache(cache_path),
        security=security,
    )
    statuses = [assess(f, clock, dt.timedelta(days=7)) for f in inventory.facts(defs)]
    want = "outdated (security: 1 package)" if security else "fresh"
    good = sum(s.label == want for s in statuses)
    if len(statuses) != COUNT or good != COUNT:
        bad = [(s.name, s.label, s.reasons[:1]) for s in statuses if s.label != want]
        raise RuntimeError(f"expected {COUNT} {want} images, got {good}: {bad[:3]}")
    return good


def run() -> list[Result]:
    defs, pub = _setup()
    cache = WORK / "inventory.db"
    cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    _status(defs, pub, 8, cache)  # cold: fills the cache
    cold = time.perf_counter() - t0
    concurrent, sequential = interleaved(
        lambda: _status(defs, pub, 8, cache), lambda: _status(defs, pub, 1, cache), REPEAT
    )
    return [
        *run_sbom(),
        Result(
            name=f"status {COUNT} images, 8 threads (warm cache)",
            harden_s=concurrent,
            baseline_name="one at a time",
            baseline_s=sequential,
            target=f"< {TARGET_S:.0f} s",
            met=concurrent < TARGET_S,
            note=f"cold cache, 8 threads: {cold:.2f} s",
        ),
        Result(
            name=f"status {COUNT} images, 8 threads (cold cache)",
            harden_s=cold,
            baseline_name="",
            baseline_s=0.0,
            target=f"< {TARGET_S:.0f} s",
            met=cold < TARGET_S,
        ),
    ]


# ---- the same 500 images, each with a signed SBOM, against one signed local archive ----------
SBOM_WORK = WORK.with_name(WORK.name + "-sbom")
SBOM_REPO = "bench/status-sbom"
SBOM_PACKAGES = 150


def _sbom_doc(name: str, digest: str, now: dt.datetime) -> dict[str, Any]:
    from harden.debian.dpkg import Package
    from harden.sbom import cyclonedx

    pkgs = [
        Package(f"libbench{i:03d}", f"1.{i}-1", "amd64", f"bench{i}", f"1.{i}-1")
        for i in range(SBOM_PACKAGES - 1)
    ]
    pkgs.append(Package("zzbench", "1.0", "all", "zzbench", "1.0"))
    return cyclonedx(
        sorted(pkgs),
        subject_name=name,
        subject_digest=digest,
        distro="debian-12",
        now=now,
        codename="bookworm",
    )


def _archive(root: Path) -> Path:
    """A signed archive (gpg test key, apt-ftparchive): bookworm-security has zzbench 1.1 and
    new versions of half the libbench packages' neighbours (names not installed); -updates is
    empty. Returns the keyring."""
    import subprocess

    gnupg, keyring = root / "gnupg", root / "bench-archive.gpg"
    if not keyring.exists():
        gnupg.mkdir(parents=True, mode=0o700)
        subprocess.run(
            [
                "gpg",
                "--batch",
                "--homedir",
                str(gnupg),
                "--passphrase",
                "",
                "--quick-gen-key",
                "harden bench archive <bench@test.invalid>",
                "ed25519",
                "sign",
                "never",
            ],
            check=True,
            capture_output=True,
        )
        keyring.write_bytes(
            subprocess.run(
                ["gpg", "--homedir", str(gnupg), "--export"], capture_output=True, check=True
            ).stdout
        )
    security = "Package: zzbench\nVersion: 1.1\nArchitecture: all\n\n" + "".join(
        f"Package: other{i:04d}\nVersion: 2.{i}\nArchitecture: amd64\n\n" for i in range(2000)
    )
    for suite, text in (("bookworm-security", security), ("bookworm-updates", "")):
        d = root / "www/dists" / suite
        idx = d / "main/binary-amd64"
        idx.mkdir(parents=True, exist_ok=True)
        import lzma

        (idx / "Packages.xz").write_bytes(lzma.compress(text.encode()))
        release = subprocess.run(
            ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Suite={suite}", "release", str(d)],
            capture_output=True,
            check=True,
        ).stdout
        (d / "Release").write_bytes(release)
        (d / "InRelease").unlink(missing_ok=True)
        subprocess.run(
            [
                "gpg",
                "--batch",
                "--homedir",
                str(gnupg),
                "--clearsign",
                "-o",
                str(d / "InRelease"),
                str(d / "Release"),
            ],
            check=True,
            capture_output=True,
        )
    return keyring


def run_sbom() -> list[Result]:
    import functools
    import http.server
    import threading

    defs, pub = _setup(SBOM_WORK, SBOM_REPO, sbom=True)
    keyring = _archive(SBOM_WORK / "archive")
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(SBOM_WORK / "archive/www")
    )
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for p in defs.glob("*.yaml"):  # the archive's port changes per run
            doc = json.loads(p.read_text())
            doc["archive"] = {"mirror": url, "keyring": str(keyring)}
            p.write_text(json.dumps(doc))
        cache, archive_cache = SBOM_WORK / "inventory.db", SBOM_WORK / "archive-cache"
        cache.unlink(missing_ok=True)
        shutil.rmtree(archive_cache, ignore_errors=True)
        t0 = time.perf_counter()
        _status(defs, pub, 8, cache, archive_cache)  # cold: registry and archive
        cold = time.perf_counter() - t0
        warm, without = interleaved(
            lambda: _status(defs, pub, 8, cache, archive_cache),
            lambda: _status(defs, pub, 8, cache),
            REPEAT,
        )
    finally:
        server.shutdown()
    return [
        Result(
            name=f"status {COUNT} images with SBOMs vs one signed archive (warm)",
            harden_s=warm,
            baseline_name="same, no archive check",
            baseline_s=without,
            target=f"< {TARGET_S:.0f} s",
            met=warm < TARGET_S,
            note=f"cold (registry + archive): {cold:.2f} s; {SBOM_PACKAGES} packages per image",
        )
    ]


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
