"""Exec-free verification against hostile images built here (real engine, real registry).

Every image is a real one: the debian:12 base file system (``docker export``), changed by the
test, made into an image with ``docker import`` and pushed to the local registry. harden reads
the layers itself; none of the image's own programs decides a result.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import harden_cli
import pytest
import requests
from needs import unavailable

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
RUN = uuid.uuid4().hex[:10]
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent"}
# the four rules that were `command` checks until they were read from files too
ONCE_COMMANDS = (
    "apt.no-allow-unauthenticated",
    "apt.no-trusted-sources",
    "fs.no-unowned-files",
    "fs.no-ungrouped-files",
)
Edit = Callable[[tarfile.TarFile], None]


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    try:
        c = docker.from_env()
        c.ping()
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
        c.images.get(BASE)
    except (docker.errors.DockerException, requests.RequestException) as e:
        unavailable(f"engine, registry or base image missing ({e}); run scripts/services.sh")
    return c


@pytest.fixture(scope="module")
def base_tar(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The debian:12 base file system as one tar (docker export of a created container)."""
    out = tmp_path_factory.mktemp("base") / "rootfs.tar"
    c = client.containers.create(BASE, ["true"], network_mode="none")
    try:
        with out.open("wb") as f:
            for chunk in c.export():
                f.write(chunk)
    finally:
        c.remove(force=True)
    return out


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A fresh HARDEN_HOME (empty layer cache: every verify here is cold)."""
    return {"HARDEN_HOME": str(tmp_path / "home")}


@pytest.fixture(scope="module")
def images(client: docker.DockerClient) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for ref in made:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, check=False)


def add(
    tar: tarfile.TarFile,
    path: str | bytes,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    link: str | None = None,
) -> None:
    name = os.fsdecode(path) if isinstance(path, bytes) else path
    info = tarfile.TarInfo(name.lstrip("/"))
    info.mode, info.uid, info.gid = mode, uid, gid
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
        return
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build(
    base: Path | None,
    tmp_path: Path,
    name: str,
    images: list[str],
    *,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    extra: Edit | None = None,
    changes: tuple[str, ...] = (),
    push: bool = True,
) -> str:
    """``docker import`` of the base tar with some members replaced, dropped or added."""
    replace = replace or {}
    out = tmp_path / f"{name}.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        if base is not None:
            with tarfile.open(base) as src:
                for m in src:
                    key = "/" + m.name.lstrip("./")
                    if key in drop:
                        continue
                    if key in replace:
                        m.size = len(replace[key])
                        dst.addfile(m, io.BytesIO(replace[key]))
                        continue
                    dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        if extra is not None:
            extra(dst)
    ref = f"{REGISTRY}/harden-test/{RUN}/{name}:1"
    cmd = ["docker", "import"]
    for c in changes:
        cmd += ["--change", c]
    r = subprocess.run([*cmd, str(out), ref], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    images.append(ref)
    out.unlink()
    if push:
        r = subprocess.run(["docker", "push", ref], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
    return ref


def member(base: Path, path: str) -> bytes:
    with tarfile.open(base) as tar:
        for m in tar:
            if "/" + m.name.lstrip("./") == path:
                f = tar.extractfile(m)
                assert f is not None
                return f.read()
    raise AssertionError(path)


def verify(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    r = harden_cli.run("verify", *args, "--format", "json", env=env)
    report = json.loads(r.stdout) if r.stdout.strip() else {}
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, report, r.stderr


_MAXRSS_PROBE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, timeout=600)\n"
    "sys.stdout.write(r.stdout.decode())\n"
    "sys.stderr.write(r.stderr.decode())\n"
    "sys.stderr.write('MAXRSS_KB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


def verify_measured(
    home: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``harden verify ARGS`` in a child process, and that process's peak RSS in KB."""
    r = subprocess.run(
        [sys.executable, "-c", _MAXRSS_PROBE, *harden_cli.COMMAND, "verify", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **home},
        cwd=harden_cli.ROOT,
        check=False,
    )
    return r, int(r.stderr.rsplit("MAXRSS_KB=", 1)[1].split()[0])


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["rule_id"]: x for x in report["results"]}


def _status_entry(package: str) -> bytes:
    return (
        f"\nPackage: {package}\nStatus: install ok installed\nPriority: optional\n"
        f"Section: admin\nInstalled-Size: 10\nMaintainer: x <x@example.org>\n"
        f"Architecture: amd64\nVersion: 1.0-1\nDescription: planted by the test\n"
    ).encode()


# ---------------------------------------------------------------- lying programs


def test_lying_shell_cannot_hide_an_installed_package(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str]
) -> None:
    status = member(base_tar, "/var/lib/dpkg/status") + _status_entry("openssh-server")
    liar = b'#!/bin/dash\n/bin/dash "$@" | grep -v openssh-server\n'
    ref = build(
        base_tar,
        tmp_path,
        "lying-sh",
        images,
        replace={"/var/lib/dpkg/status": status},
        drop=("/bin/sh", "/usr/bin/sh"),
        extra=lambda t: add(t, "bin/sh", liar, mode=0o755),
    )
    for target in (ref, f"docker-image://{ref}"):
        rc, report, err = verify(target, env=home)
        assert rc == 1, err
        rule = by_id(report)["pkg.openssh-server-absent"]
        assert rule["status"] == "failed", rule
        assert "installed: openssh-server" in rule["evidence"]
        assert rule["executed"] is False  # read from /var/lib/dpkg/status, not from a program
        # the default baseline needs no execution at all: nothing ran in the image
        assert not any(x["executed"] for x in report["results"])


def test_lying_dpkg_query_cannot_pass_verify_or_build(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str]
) -> None:
    status = member(base_tar, "/var/lib/dpkg/status") + _status_entry("sudo")
    real = member(base_tar, "/usr/bin/dpkg-query")
    liar = (
        b'#!/bin/sh\nfor a in "$@"; do [ "$a" = sudo ] && exit 1; done\n'
        b'/usr/bin/dpkg-query.real "$@" | grep -v sudo\n'
    )

    def extra(t: tarfile.TarFile) -> None:
        add(t, "usr/bin/dpkg-query", liar, mode=0o755)
        add(t, "usr/bin/dpkg-query.real", real, mode=0o755)

    ref = build(
        base_tar,
        tmp_path,
        "lying-dpkg",
        images,
        replace={"/var/lib/dpkg/status": status},
        drop=("/usr/bin/dpkg-query",),
        extra=extra,
    )
    rc, report, err = verify(ref, env=home)
    assert rc == 1, err
    assert by_id(report)["pkg.sudo-absent"]["status"] == "failed"
    assert "installed: sudo" in by_id(report)["pkg.sudo-absent"]["evidence"]

    # harden build on that base: the lie hides sudo from the remediation, not from the verify
    dest = f"{REGISTRY}/harden-test/{RUN}/lying-dpkg-golden:1"
    d = tmp_path / "def.yaml"
    d.write_text(
        json.dumps(
            {
                "name": f"lying-dpkg-{RUN}",
                "base": ref,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": dest,
                "max_age": "30d",
                # the fake sudo 1.0-1 entry is not a real package to upgrade: this test is about
                # the verification, not the updates step
                "archive": {"apply": False},
            }
        )
    )
    r = harden_cli.run("build", str(d), "--force", "--format", "json", env=home)
    assert r.returncode == 1, r.stderr[-3000:]
    built = json.loads(r.stdout)
    images.append(f"harden/lying-dpkg-{RUN}:latest")
    images.append(dest)
    assert built["pushed"] is False and built["compliant"] is False
    tags = requests.get(
        f"http://{REGISTRY}/v2/harden-test/{RUN}/lying-dpkg-golden/tags/list", timeout=10
    )
    assert tags.status_code == 404 or not (tags.json().get("tags") or [])


# ---------------------------------------------------------------- names, sizes, counts


def test_setuid_files_with_a_newline_in_the_name_are_reported_exactly(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str]
) -> None:
    dash = member(base_tar, "/usr/bin/dash")

    def extra(t: tarfile.TarFile) -> None:
        add(t, b"usr/bin/passwd\netc", dash, mode=0o4755)
        add(t, b"usr/sbin/passwd\netc", dash, mode=0o4755)

    ref = build(base_tar, tmp_path, "newline-suid", images, extra=extra)
    rc, report, err = verify(ref, env=home)
    assert rc == 1, err
    rule = by_id(report)["fs.suid-sgid-allowlist"]
    assert rule["status"] == "failed"
    assert rule["evidence"] == [
        "setuid/setgid not on the allow-list: /usr/bin/passwd\\netc",
        "setuid/setgid not on the allow-list: /usr/sbin/passwd\\netc",
    ]


def test_a_setuid_file_on_another_file_system_of_a_running_target_is_seen(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str], client: Any
) -> None:
    """A partitioned VM keeps /var, /home, ... on file systems of their own: the walk of a
    running target must enter every local file system, not stop at the one "/" is on."""
    ref = build(base_tar, tmp_path, "other-fs", images, push=False)
    box = client.containers.run(
        ref,
        ["sleep", "300"],
        network_mode="none",
        detach=True,
        name=f"harden-test-{RUN}-otherfs",
        tmpfs={"/srv/data": "rw,exec,suid,mode=0755"},
    )
    try:
        planted = box.exec_run(
            ["sh", "-c", "cp /usr/bin/dash /srv/data/rootsh && chmod 4755 /srv/data/rootsh"]
        )
        assert planted.exit_code == 0, planted.output
        mounts = box.exec_run(["cat", "/proc/self/mounts"]).output.decode()
        assert any(line.split()[1] == "/srv/data" for line in mounts.splitlines()), mounts
        rc, live, err = verify(f"docker://{box.name}", env=home)
    finally:
        box.remove(force=True)
    assert rc == 1, err
    rule = by_id(live)["fs.suid-sgid-allowlist"]
    assert rule["status"] == "failed"
    assert "setuid/setgid not on the allow-list: /srv/data/rootsh" in rule["evidence"]


def test_offending_accounts_after_ten_thousand_entries_are_seen(
    base_tar: Path,
    tmp_path: Path,
    images: list[str],
    home: dict[str, str],
    client: docker.DockerClient,
) -> None:
    passwd = member(base_tar, "/etc/passwd")
    shadow = member(base_tar, "/etc/shadow")
    for i in range(10_000):
        passwd += f"user{i}:x:{20000 + i}:100::/nonexistent:/usr/sbin/nologin\n".encode()
        shadow += f"user{i}:*:19000:0:99999:7:::\n".encode()
    passwd += b"toor:x:0:0::/root:/usr/sbin/nologin\nnopass:x:40000:100::/:/usr/sbin/nologin\n"
    shadow += b"toor:*:19000:0:99999:7:::\nnopass::19000:0:99999:7:::\n"
    ref = build(
        base_tar,
        tmp_path,
        "many-accounts",
        images,
        replace={"/etc/passwd": passwd, "/etc/shadow": shadow},
    )
    rc, report, err = verify(ref, env=home)
    assert rc == 1, err
    rules = by_id(report)
    assert rules["accounts.uid0-only-root"]["status"] == "failed"
    assert "toor" in rules["accounts.uid0-only-root"]["evidence"][0]
    assert rules["accounts.no-empty-passwords"]["status"] == "failed"
    assert "nopass has an empty password" in rules["accounts.no-empty-passwords"]["evidence"]

    # the shell path (a running container) sees them too: no cut after line 5000
    name = f"harden-itest-accounts-{RUN}"
    c = client.containers.run(ref, ["sleep", "120"], network_mode="none", detach=True, name=name)
    try:
        rc, report, err = verify(f"docker://{name}", env=home)
    finally:
        c.remove(force=True)
    rules = by_id(report)
    assert rules["accounts.uid0-only-root"]["status"] == "failed", rules["accounts.uid0-only-root"]
    assert rules["accounts.no-empty-passwords"]["status"] == "failed"


def test_a_200_mb_line_is_an_error_and_memory_stays_bounded(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str]
) -> None:
    def extra(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("etc/login.defs")
        info.mode, info.size = 0o644, 200 << 20

        class Repeat(io.RawIOBase):
            left = 200 << 20

            def readable(self) -> bool:
                return True

            def readinto(self, b: memoryview) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = b"A" * n
                self.left -= n
                return n

        t.addfile(info, io.BufferedReader(Repeat()))

    ref = build(base_tar, tmp_path, "huge-line", images, drop=("/etc/login.defs",), extra=extra)
    r, maxrss_kb = verify_measured(home, ref, "--format", "json")
    assert r.returncode == 1, r.stderr[-3000:]
    assert maxrss_kb < 150 * 1024, f"harden used {maxrss_kb} KB"
    rules = by_id(json.loads(r.stdout))
    from harden.baseline.resolve import Catalogue, resolve

    baseline = resolve(Catalogue.from_search_path(), "debian-container")
    login = [r.id for r in baseline.rules if str(getattr(r.spec, "path", "")) == "/etc/login.defs"]
    assert len(login) >= 3
    for k in login:
        assert rules[k]["status"] == "error", rules[k]
        assert "more than the limit" in rules[k]["evidence"][0]


def test_a_running_container_that_prints_forever_is_refused_with_bounded_memory(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str], client: Any
) -> None:
    """A hostile container answers the fact script's dpkg-query with endless output: harden
    stops reading at its output limit and exits 4 with one line, within bounded memory. (The
    engine's exec API cannot kill the writer: it runs on inside that container, in its limits.)"""
    endless = b"#!/bin/sh\nwhile :; do echo 'ii \tpackage-that-never-ends'; done\n"

    def extra(t: tarfile.TarFile) -> None:
        add(t, "usr/bin/dpkg-query", endless, mode=0o755)

    ref = build(
        base_tar,
        tmp_path,
        "endless",
        images,
        drop=("/usr/bin/dpkg-query",),
        extra=extra,
        push=False,
    )
    box = client.containers.run(
        ref, ["sleep", "300"], network_mode="none", detach=True, name=f"harden-test-{RUN}-endless"
    )
    try:
        r, maxrss_kb = verify_measured(home, f"docker://{box.name}")
    finally:
        box.remove(force=True)
    assert r.returncode == 4, r.stderr[-3000:]
    assert "printed more than 64 MiB: refused" in r.stderr and "Traceback" not in r.stderr
    assert maxrss_kb < 300 * 1024, f"harden used {maxrss_kb} KB"  # 64 MiB read, then refused


# ---------------------------------------------------------------- the caller's baseline


def test_a_label_naming_a_weaker_baseline_is_a_finding_not_a_downgrade(
    base_tar: Path, tmp_path: Path, images: list[str], home: dict[str, str]
) -> None:
    ref = build(
        base_tar,
        tmp_path,
        "weak-label",
        images,
        changes=('LABEL "dev.harden.baseline.id"="debian-common"',),
    )
    rc, report, err = verify(ref, env=home)
    assert rc == 1, err
    assert report["baseline"]["id"] == "debian-container"
    label = by_id(report)["image.baseline-label"]
    assert label["status"] == "failed"
    assert "debian-common" in label["evidence"][0]
    # asked for explicitly, the weaker baseline is used, and the label agrees
    rc, report, _ = verify(ref, "--baseline", "debian-common", env=home)
    assert report["baseline"]["id"] == "debian-common"
    assert "image.baseline-label" not in by_id(report)


# ---------------------------------------------------------------- registry references


def test_registry_reference_with_the_engine_unreachable(
    tmp_path: Path, home: dict[str, str], client: docker.DockerClient
) -> None:
    """The default container baseline is read entirely from the layers: with DOCKER_HOST naming
    a socket that does not exist, every rule still has a result and none is an error."""
    env = {**home, **NO_ENGINE}
    rc, report, err = verify(BASE, env=env)
    assert rc == 1, err  # the debian base is not compliant; every rule was evaluated
    assert report["baseline"]["id"] == "debian-container"
    assert report["summary"]["error"] == 0, [x for x in report["results"] if x["status"] == "error"]
    assert not any(x["executed"] for x in report["results"])
    rules = by_id(report)
    assert {rules[r]["status"] for r in ONCE_COMMANDS} == {"passed"}
    head = requests.head(
        f"http://{REGISTRY}/v2/library/debian/manifests/12",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=10,
    )
    assert report["digest"] == head.headers["Docker-Content-Digest"]


def test_a_golden_image_verifies_compliant_with_the_engine_unreachable(
    tmp_path: Path, images: list[str], home: dict[str, str], client: docker.DockerClient
) -> None:
    """``harden build`` (with the engine) pushes a golden image; ``harden verify`` of its
    registry reference with no engine reachable says compliant, exit 0."""
    name = f"harden-test/{RUN}/golden"
    doc = {
        "name": "golden",
        "base": BASE,
        "target": "container",
        "baseline": {"id": "debian-container"},
        "destination": f"{REGISTRY}/{name}:1",
        "max_age": "30d",
    }
    d = tmp_path / "golden.yaml"
    d.write_text(json.dumps(doc))
    r = harden_cli.run("build", str(d), "--force", "--format", "json", env=home)
    assert r.returncode == 0, r.stderr
    images.append(f"{REGISTRY}/{name}:1")
    built = json.loads(r.stdout)
    rc, report, err = verify(f"{REGISTRY}/{name}:1", env={**home, **NO_ENGINE})
    assert rc == 0, err
    assert report["compliant"] is True
    assert report["digest"] == built["digest"]
    assert report["summary"]["error"] == 0 and report["summary"]["failed"] == 0
    assert not any(x["executed"] for x in report["results"])


def test_apt_and_ownership_rules_read_from_files_not_programs(
    base_tar: Path,
    tmp_path: Path,
    images: list[str],
    home: dict[str, str],
    client: docker.DockerClient,
) -> None:
    """What the four former command checks look for, planted where apt-config or find would
    have to be trusted to see it (nested apt.conf scopes, a Binary:: scope, trusted=true, an
    unowned file with a newline in its name); read with no engine reachable."""

    def extra(t: tarfile.TarFile) -> None:
        add(t, "etc/apt/apt.conf.d/50evil", b'APT { Get { AllowUnauthenticated "yes"; }; };\n')
        add(
            t, "etc/apt/apt.conf.d/60evil.conf", b'Binary::apt::Acquire::AllowWeakRepositories "1";'
        )
        add(t, "etc/apt/apt.conf.d/70ignored.bak", b'Acquire::AllowInsecureRepositories "1";')
        add(t, "etc/apt/sources.list.d/x.list", b"deb [arch=amd64 trusted=true] http://m/ a b\n")
        add(t, "srv/orphan\nfile", b"x", uid=4242, gid=4343)

    ref = build(base_tar, tmp_path, "apt-owners", images, extra=extra)
    rc, report, err = verify(ref, env={**home, **NO_ENGINE})
    assert rc == 1, err
    rules = by_id(report)
    assert all(rules[r]["status"] == "failed" and not rules[r]["executed"] for r in ONCE_COMMANDS)
    apt = rules["apt.no-allow-unauthenticated"]["evidence"]
    assert any("APT::Get::AllowUnauthenticated" in e and "50evil" in e for e in apt), apt
    assert any("Binary::apt::Acquire::AllowWeakRepositories" in e for e in apt), apt
    assert not any("70ignored" in e for e in apt), apt  # apt does not read a .bak part
    assert rules["apt.no-trusted-sources"]["evidence"] == [
        "/etc/apt/sources.list.d/x.list:1: trusted=true"
    ]
    assert rules["fs.no-unowned-files"]["evidence"] == [
        "no account has the owner uid of /srv/orphan\\nfile"
    ]
    assert rules["fs.no-ungrouped-files"]["evidence"] == [
        "no group has the gid of /srv/orphan\\nfile"
    ]

    # a running container's fact script (find -nouser/-nogroup, the apt files by cat) agrees
    box = client.containers.run(
        ref, ["sleep", "300"], network_mode="none", detach=True, name=f"harden-test-{RUN}-apt"
    )
    try:
        rc, live, err = verify(f"docker://{box.name}", env=home)
    finally:
        box.remove(force=True)
    assert rc == 1, err
    seen = by_id(live)
    for r in ONCE_COMMANDS:
        assert (seen[r]["status"], seen[r]["evidence"]) == ("failed", rules[r]["evidence"]), r


@pytest.mark.parametrize(
    ("ref", "code", "words"),
    [
        (f"{REGISTRY}/harden-test/{RUN}/never-pushed:1", 4, "manifest unknown"),
        ("127.0.0.1:5999/library/debian:12", 4, "Connection refused"),
        (f"{REGISTRY}/Library/Debian:12", 3, "not a valid repository name"),
        ("debian:12", 3, "docker-image://"),
    ],
)
def test_registry_failures_are_the_registrys_own(
    ref: str, code: int, words: str, home: dict[str, str], client: docker.DockerClient
) -> None:
    rc, _, err = verify(ref, env=home)
    assert rc == code, err
    assert words in err and "error:" in err


def test_unauthorized_is_the_registrys_answer(tls_registry: Any, home: dict[str, str]) -> None:
    host = tls_registry.host
    env = {
        **home,
        "HARDEN_REGISTRY_CA": tls_registry.ca_bundle,
        "DOCKER_CONFIG": str(home["HARDEN_HOME"]),
    }
    rc, _, err = verify(f"{host}/library/debian:12", env=env)
    assert rc == 4, err
    assert "401" in err and "UNAUTHORIZED" in err.upper()


def test_scratch_image_without_a_shell(
    tmp_path: Path, images: list[str], home: dict[str, str], client: docker.DockerClient
) -> None:
    static = Path("/usr/bin/tini-static")
    if not static.exists():
        unavailable("no static binary (/usr/bin/tini-static from Debian's tini) on this host")

    def extra(t: tarfile.TarFile) -> None:
        add(t, "etc/passwd", b"root:x:0:0:root:/root:/usr/sbin/nologin\n")
        add(t, "etc/group", b"root:x:0:\n")
        add(t, "etc/os-release", b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Distroless"\n')
        add(t, "hello", static.read_bytes(), mode=0o755)

    ref = build(None, tmp_path, "scratch", images, extra=extra, changes=('ENTRYPOINT ["/hello"]',))
    rc, report, err = verify(ref, env={**home, **NO_ENGINE})
    assert rc == 1, err  # USER is root: not compliant, but every rule was read
    assert report["summary"]["error"] == 0
    rules = by_id(report)
    assert rules["accounts.uid0-only-root"]["status"] == "passed"
    assert rules["pkg.openssh-server-absent"]["status"] == "passed"
    assert rules["image.non-root-user"]["status"] == "failed"
    assert {rules[r]["status"] for r in ONCE_COMMANDS} == {"passed"}
    assert not any(x["executed"] for x in report["results"])


def test_a_committed_top_layer_read_from_overlay2_equals_the_export(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    """The build reads its new top layer from the engine's overlay2 directory (whiteouts and
    opaque directories included); the result is the same file system as `docker save` gives."""
    from harden.builder.docker_engine import Engine
    from harden.verifiers.fsview import FILE
    from harden.verifiers.image_layers import LayerCache, open_local_image

    c = client.containers.create(
        BASE,
        [
            "/bin/sh",
            "-c",
            "rm /etc/motd && rm -rf /var/lib/apt/lists && mkdir /var/lib/apt/lists && "
            "echo new > /var/lib/apt/lists/x && echo hi > /etc/new && chmod 4755 /etc/new && "
            "ln /etc/new /etc/new-hardlink && ln -s ../etc/new /usr/new-link",
        ],
        network_mode="none",
    )
    try:
        c.start()
        assert c.wait(timeout=120)["StatusCode"] == 0
        image = c.commit()
    finally:
        c.remove(force=True)
    try:
        engine = Engine.connect()
        warm = LayerCache(tmp_path / "warm")
        open_local_image(engine, BASE, cache=warm)  # the base's layers are cached
        fast = open_local_image(engine, str(image.id), cache=warm)
        full = open_local_image(engine, str(image.id), cache=LayerCache(tmp_path / "cold"))
        assert fast.meta["layers_exported"] == 0 and full.meta["layers_exported"] >= 1

        def snap(img: Any) -> dict[bytes, Any]:
            fs = img.fs
            return {
                n.path: (
                    n.type,
                    n.mode,
                    n.uid,
                    n.gid,
                    n.link,
                    fs.read(n, 1 << 24) if n.type == FILE else None,
                )
                for n in fs.walk()
            }

        a, b = snap(fast), snap(full)
        assert a == b
        assert b"/etc/motd" not in a and b"/etc/new" in a
        assert [p for p in a if p.startswith(b"/var/lib/apt/lists/")] == [b"/var/lib/apt/lists/x"]
        assert a[b"/etc/new"][1] == 0o4755 and a[b"/etc/new-hardlink"][5] == b"hi\n"
    finally:
        client.images.remove(str(image.id), force=True)
