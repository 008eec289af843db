"""Contained execution, offline package installs and label hygiene, against the real engine.

Every image here is made in the test: ``debian:12`` exported, its ``/bin/sh`` replaced by a
wrapper around dash, and imported under a unique name, so the test's containers are found by
``ancestor=`` and never confused with the containers of parallel runs.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import tarfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker_run
import harden_cli
import pytest
from needs import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:10]
VENDOR = f"acme-{RUN}"  # a label value only this run's images carry
PROBE_LOG = "/var/log/harden-probe"
PACKAGE = "libpam-pwquality"  # small, not in debian:12, has a maintainer script run by /bin/sh
HARDEN_LABELS = {
    "org.opencontainers.image.created",
    "org.opencontainers.image.base.name",
    "org.opencontainers.image.base.digest",
    "dev.harden.baseline.id",
    "dev.harden.baseline.version",
    "dev.harden.baseline.digest",
    "dev.harden.definition",
    "dev.harden.build-key",
}

# /bin/sh of the hostile base: during a package install (harden's install step or a dpkg
# maintainer script) it tries the registry on 127.0.0.1:5000 and writes down what it got
SH_WRAPPER = textwrap.dedent(f"""\
    #!/bin/dash
    if [ -n "${{HARDEN_DEBS:-}}${{DPKG_MAINTSCRIPT_NAME:-}}" ]; then
        [ -e /etc/harden-test-slow ] && /bin/sleep 120
        {{
        echo "probe ${{DPKG_MAINTSCRIPT_NAME:-install-step}}"
        echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
        /bin/bash -c 'if exec 3<>/dev/tcp/127.0.0.1/5000; then
            printf "GET /v2/_catalog HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n" >&3
            echo "connected: $(head -c 400 <&3 | tr -d "\\r\\n")"
        else echo "no connection"; fi'
        }} >> {PROBE_LOG} 2>&1
    fi
    exec /bin/dash "$@"
    """)


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    try:
        c = docker.from_env()
        c.ping()
    except docker.errors.DockerException as e:
        unavailable(f"no Docker Engine ({e}); run scripts/services.sh")
    return c


def _hostile_tar(client: docker.DockerClient, out: Path) -> None:
    """debian:12's file system with /bin/sh (usr/bin/sh) replaced by SH_WRAPPER."""
    c = client.containers.create("debian:12", ["true"], network_mode="none")
    try:
        stream = io.BufferedReader(_Chunks(c.export()), buffer_size=1 << 20)
        with tarfile.open(fileobj=stream, mode="r|") as src, tarfile.open(out, "w") as dst:
            for member in src:
                if member.name in ("usr/bin/sh", "bin/sh"):
                    data = SH_WRAPPER.encode()
                    info = tarfile.TarInfo(member.name)
                    info.mode, info.size = 0o755, len(data)
                    dst.addfile(info, io.BytesIO(data))
                elif member.isfile():
                    dst.addfile(member, src.extractfile(member))
                else:
                    dst.addfile(member)
    finally:
        c.remove(force=True)


class _Chunks(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


@pytest.fixture(scope="module")
def hostile_base(
    client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A base imported in the test, with hostile harden labels and a probing /bin/sh."""
    tar = tmp_path_factory.mktemp("hostile") / "rootfs.tar"
    _hostile_tar(client, tar)
    ref = f"contain-itest-{RUN}/base:1"
    client.api.import_image_from_file(
        str(tar),
        repository=ref.split(":")[0],
        tag="1",
        changes=[
            'CMD ["bash"]',
            f'LABEL org.example.vendor="{VENDOR}"',
            'LABEL dev.harden.compliant="true"',
            'LABEL dev.harden.baseline.id="debian-common"',
            'LABEL dev.harden.temporary="false"',
        ],
    )
    tar.unlink()
    yield ref
    for image in client.images.list(filters={"label": f"org.example.vendor={VENDOR}"}):
        for _ in range(3):
            try:
                client.images.remove(image.id, force=True)
                break
            except docker.errors.APIError:
                time.sleep(1)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HARDEN_HOME for the module: the apt lists and .deb cache are shared by its builds."""
    return tmp_path_factory.mktemp("home")


def _containers(client: docker.DockerClient, image: str) -> list[str]:
    return [c.id for c in client.containers.list(all=True, filters={"ancestor": image})]


def _baseline(tmp_path: Path, rules: str, id_: str = "contain-test") -> Path:
    bdir = tmp_path / "bl"
    bdir.mkdir(exist_ok=True)
    (bdir / f"{id_}.yaml").write_text(
        textwrap.dedent("""\
        id: {id}
        version: 1.0.0
        title: a baseline written by the containment tests
        extends: [debian-container]
        platforms: [{{family: debian}}]
        targets: [container]
        rules:
        """).format(id=id_)
        + textwrap.indent(textwrap.dedent(rules), "  ")
    )
    return bdir


def _definition(tmp_path: Path, name: str, base: str, baseline: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    doc = {
        "name": name,
        "base": base,
        "target": "container",
        "baseline": {"id": baseline},
        "max_age": "30d",
        "labels": {"org.example.team": "qa"},
        # these tests are about the package-install step; the updates step (issue 13) has its own
        "archive": {"apply": False},
    }
    p.write_text(json.dumps(doc))
    return p


PACKAGE_RULE = f"""\
- id: custom.pwquality-present
  title: {PACKAGE} is installed
  controls: {{iso27017: [CLD.9.5.2]}}
  package_present: {{packages: [{PACKAGE}]}}
"""


# ---------------------------------------------------------------- the probe proves itself


def test_the_probe_reaches_the_registry_with_host_network(
    client: docker.DockerClient, hostile_base: str
) -> None:
    """Control: with the host network (what the package phase used to get) the probe reads the
    registry catalogue, so its 'no connection' below is a real observation."""
    out = docker_run.output(
        client,
        hostile_base,
        ["/bin/sh", "-c", f"cat {PROBE_LOG}"],
        environment={"HARDEN_DEBS": "/nonexistent"},
        network_mode="host",
    )
    assert re.search(r"connected: HTTP/1\.[01] 200", out) and "repositories" in out, out


# ---------------------------------------------------------------- package installs, no network


@pytest.fixture(scope="module")
def golden(
    client: docker.DockerClient,
    hostile_base: str,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("golden")
    bdir = _baseline(d, PACKAGE_RULE)
    defn = _definition(d, f"contain-golden-{RUN}", hostile_base, "contain-test")
    r = harden_cli.run(
        "build",
        str(defn),
        "--baselines",
        str(bdir),
        "--no-push",
        "--format",
        "json",
        env={"HARDEN_HOME": str(home)},
    )
    assert r.returncode in (0, 1), r.stderr
    assert _containers(client, hostile_base) == []
    return {"result": json.loads(r.stdout), "stderr": r.stderr}


def test_package_install_runs_base_code_without_network(
    client: docker.DockerClient, golden: dict[str, Any]
) -> None:
    image = golden["result"]["image_id"]
    probe = docker_run.output(client, image, ["cat", PROBE_LOG], entrypoint=[], user="root")
    # the install step and the package's maintainer scripts ran the hostile /bin/sh ...
    assert "probe install-step" in probe, probe
    assert re.search(r"^probe (preinst|postinst|config|triggered)", probe, re.M), probe
    # ... with no interface but loopback, and never reached the registry
    for line in probe.splitlines():
        if line.startswith("interfaces:"):
            assert line.split()[1:] == ["lo"], probe
    assert "connected" not in probe and "repositories" not in probe, probe
    assert "no connection" in probe
    status = docker_run.output(
        client, image, ["dpkg-query", "-W", "-f", "${Status}", PACKAGE], entrypoint=[]
    )
    assert status == "install ok installed"
    assert golden["result"]["summary"]["error"] == 0
    # the build says what it installed, fetched by the host's apt
    assert "package installs: " in golden["stderr"] and PACKAGE in golden["stderr"]
    assert "fetched and verified on the host" in golden["stderr"]
    # no trace of the local package folder in the image
    ls = docker_run.output(client, image, ["ls", "-A", "/run"], entrypoint=[])
    assert "harden-debs" not in ls


def test_golden_image_carries_only_the_documented_harden_labels(
    client: docker.DockerClient, golden: dict[str, Any], hostile_base: str
) -> None:
    labels = client.images.get(golden["result"]["image_id"]).attrs["Config"]["Labels"]
    harden_keys = {k for k in labels if k.startswith(("dev.harden.", "org.opencontainers.image."))}
    assert harden_keys == HARDEN_LABELS, labels
    assert "dev.harden.temporary" not in labels
    assert labels["dev.harden.baseline.id"] == "contain-test"  # not the base's debian-common
    assert labels["org.example.vendor"] == VENDOR  # the base's own labels stay
    assert labels["org.example.team"] == "qa"  # and the definition's
    # a container started from the golden image is not "temporary" for a clean-up by label
    c = client.containers.create(golden["result"]["image_id"], ["true"], network_mode="none")
    try:
        assert "dev.harden.temporary" not in (c.labels or {})
    finally:
        c.remove(force=True)
    # the build left no temporary image behind (the intermediate of the install step)
    ours = client.images.list(filters={"label": f"org.example.vendor={VENDOR}"})
    assert ours and all(
        (i.attrs["Config"].get("Labels") or {}).get("dev.harden.temporary") != "true" for i in ours
    )


# ---------------------------------------------------------------- hostile command checks


def _verify(tmp_path: Path, image: str, rule: str, **env: str) -> subprocess.CompletedProcess[str]:
    bdir = _baseline(tmp_path, rule, "contain-check")
    return harden_cli.run(
        "verify",
        f"docker-image://{image}",  # an image of the local engine
        "--baselines",
        str(bdir),
        "--baseline",
        "contain-check",
        "--format",
        "json",
        env=env,
        timeout=300,
    )


def test_fork_bomb_in_a_command_check_is_bounded_and_reported(
    client: docker.DockerClient, hostile_base: str, tmp_path: Path
) -> None:
    rule = """\
    - id: custom.fork-bomb
      title: a check that forks without end
      controls: {iso27017: [CLD.9.5.2]}
      command:
        check: "bomb() { bomb | bomb & }; bomb; sleep 600"
        remediation: "true"
    """
    seen: list[dict[str, Any]] = []
    env = {"HARDEN_CHECK_TIMEOUT": "25", "HARDEN_CONTAINER_PIDS": "200"}
    bdir = _baseline(tmp_path, rule, "contain-check")
    p = subprocess.Popen(
        [
            *harden_cli.COMMAND,
            "verify",
            f"docker-image://{hostile_base}",  # an image of the local engine
            "--baselines",
            str(bdir),
            "--baseline",
            "contain-check",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    try:
        while p.poll() is None:
            for cid in _containers(client, hostile_base):
                try:
                    c = client.containers.get(cid)
                    stats = c.stats(stream=False)
                except (docker.errors.DockerException, ValueError):
                    continue  # it ended between the listing and the stats
                seen.append({"host": c.attrs["HostConfig"], "pids": stats.get("pids_stats", {})})
            assert subprocess.run(["true"]).returncode == 0  # the host can still fork
            time.sleep(1)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    # the image is read from its layers; only the command check ran, and it is that rule's error
    assert p.returncode == 1, out[-2000:] + err
    (bomb,) = [r for r in json.loads(out)["results"] if r["rule_id"] == "custom.fork-bomb"]
    assert bomb["status"] == "error", bomb
    assert "did not finish in 25s and was killed" in bomb["reason"], bomb
    assert "Traceback" not in err
    assert seen, "the verify never ran a container"
    host = seen[-1]["host"]
    assert host["PidsLimit"] == 200 and host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["DAC_READ_SEARCH"]
    assert host["ReadonlyRootfs"] is True and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] > 0
    assert max(s["pids"].get("current", 0) for s in seen) <= 200
    assert _containers(client, hostile_base) == []


def test_memory_hog_in_a_command_check_is_killed_and_reported(
    client: docker.DockerClient, hostile_base: str, tmp_path: Path
) -> None:
    rule = """\
    - id: custom.memory-hog
      title: a check that wants 2 GB
      controls: {iso27017: [CLD.9.5.2]}
      command:
        check: "x=$(head -c 2000000000 /dev/zero | tr '\\\\0' a); echo ${#x}"
        remediation: "true"
    """
    r = _verify(tmp_path, hostile_base, rule, HARDEN_CONTAINER_MEMORY="128m")
    assert "Traceback" not in r.stderr
    if r.returncode == 4:  # the limit killed the fact collection itself
        assert "exceeded its memory limit (128 MiB)" in r.stderr, r.stderr
    else:
        assert r.returncode == 1, r.stderr
        by_id = {x["rule_id"]: x for x in json.loads(r.stdout)["results"]}
        hog = by_id["custom.memory-hog"]
        assert hog["status"] == "failed" and "137" in str(hog["evidence"]), hog  # SIGKILL
    assert _containers(client, hostile_base) == []


# ---------------------------------------------------------------- SIGTERM during a build


def test_sigterm_during_the_install_step_leaves_nothing_behind(
    client: docker.DockerClient, hostile_base: str, home: Path, tmp_path: Path
) -> None:
    # the same hostile base, whose /bin/sh sleeps during the install step
    c = client.containers.create(hostile_base, ["true"], network_mode="none")
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("etc/harden-test-slow")
            tar.addfile(info, io.BytesIO(b""))
        c.put_archive("/", buf.getvalue())
        slow = f"contain-itest-{RUN}/slow:1"
        c.commit(repository=slow.split(":")[0], tag="1")
    finally:
        c.remove(force=True)
    bdir = _baseline(tmp_path, PACKAGE_RULE)
    defn = _definition(tmp_path, f"contain-sigterm-{RUN}", slow, "contain-test")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    p = subprocess.Popen(
        [*harden_cli.COMMAND, "build", str(defn), "--baselines", str(bdir), "--force", "--no-push"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HARDEN_HOME": str(home), "TMPDIR": str(tmpdir)},
    )
    try:
        deadline = time.monotonic() + 300
        running = False
        while time.monotonic() < deadline and p.poll() is None and not running:
            running = any(
                client.containers.get(cid).status == "running" for cid in _containers(client, slow)
            )
            time.sleep(0.5)
        assert running, "the build never started its install step"
        assert list(tmpdir.iterdir()), "the fetched packages are in a temporary folder"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert _containers(client, slow) == []
    assert list(tmpdir.iterdir()) == []
