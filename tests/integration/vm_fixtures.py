"""Fixtures for tests that need a real VM or a real sshd. Import them into a conftest:

    from vm_fixtures import sshd_server, vm_running, vm_template  # noqa: F401

- ``vm_template`` (session): the cached base template from scripts/vm-base.sh (root; the first
  build takes about a minute, later runs are instant; ``HARDEN_CACHE`` picks another cache). Its
  build account (manifest ``ssh_user``) logs in with sudo; root has no SSH access.
- ``vm_running`` (module): one booted VM of that template and an SshTarget connected with the
  host key pinned from its serial console. One VM per module: boot as few as you can (TCG).
- ``sshd_server`` (session): sshd in a container (``--network host``, 127.0.0.1 only) with a host
  key and a client key made for the session; ready in well under a second. For SSH tests that do
  not need a VM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from needs import unavailable

from harden.builder.qemu import Vm, VmImage, free_port
from harden.builder.ssh_target import SshTarget, wait_ready

REPO = Path(__file__).resolve().parents[2]
VM_BASE_SCRIPT = REPO / "scripts" / "vm-base.sh"
SSHD_DOCKERFILE = """FROM debian:12
RUN apt-get update -q >/dev/null \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server \\
    >/dev/null \\
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \\
 && mkdir -p /run/sshd
"""


@dataclass(frozen=True)
class VmTemplate:
    image: VmImage
    build_key: Path
    manifest_path: Path
    manifest: dict[str, Any]


@dataclass
class RunningVm:
    vm: Vm
    target: SshTarget
    host_keys: list[str]
    template: VmTemplate
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SshdServer:
    host: str
    port: int
    user: str
    key_path: Path
    host_key_line: str
    container_id: str

    def target(self, **kwargs: Any) -> SshTarget:
        """An SshTarget for this server; the host key is pinned unless kwargs say otherwise."""
        kwargs.setdefault("key_path", self.key_path)
        kwargs.setdefault("pinned_host_keys", [self.host_key_line])
        return SshTarget(self.host, self.port, self.user, **kwargs)


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)}")


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text(encoding="utf-8").strip()


@pytest.fixture(scope="session")
def vm_template() -> VmTemplate:
    if os.geteuid() != 0:
        unavailable("building the VM template needs root (mmdebstrap --mode=root)")
    _need("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4")
    proc = subprocess.run(
        [str(VM_BASE_SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/vm-base.sh failed:\n{proc.stderr[-4000:]}")
    manifest_path = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return VmTemplate(
        image=VmImage.from_manifest(manifest_path),
        build_key=Path(manifest["build_key"]),
        manifest_path=manifest_path,
        manifest=manifest,
    )


@pytest.fixture(scope="module")
def vm_running(
    vm_template: VmTemplate, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningVm]:
    workdir = tmp_path_factory.mktemp("vm")
    with Vm(vm_template.image, workdir, boot_timeout=240) as vm:
        host_keys = vm.host_keys()
        user = str(vm_template.manifest.get("ssh_user") or "root")
        target = vm.connect(user, key_path=vm_template.build_key)
        yield RunningVm(vm, target, host_keys, vm_template)


def _sshd_image() -> str:
    tag = "harden-test-sshd:" + hashlib.sha256(SSHD_DOCKERFILE.encode()).hexdigest()[:12]
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    proc = subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", tag, "-"],
        input=SSHD_DOCKERFILE,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"docker build of the sshd test image failed:\n{proc.stderr[-3000:]}")
    return tag


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    _need("docker", "ssh-keygen")
    image = _sshd_image()
    keys = tmp_path_factory.mktemp("sshd")
    keys.chmod(0o755)
    host_pub = _keygen(keys / "ssh_host_ed25519_key", "sshd-test-host")
    client = tmp_path_factory.mktemp("sshd-client") / "id_ed25519"
    client_pub = _keygen(client, "sshd-test-client")
    (keys / "authorized_keys").write_text(client_pub + "\n", encoding="utf-8")
    (keys / "authorized_keys").chmod(0o600)
    port = free_port()
    proc = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--network",
            "host",
            "-v",
            f"{keys}:/etc/harden-sshd:ro",
            image,
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-p",
            str(port),
            "-o",
            "ListenAddress=127.0.0.1",
            "-h",
            "/etc/harden-sshd/ssh_host_ed25519_key",
            "-o",
            "AuthorizedKeysFile=/etc/harden-sshd/authorized_keys",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"docker run sshd failed: {proc.stderr}")
    container = proc.stdout.strip()
    server = SshdServer("127.0.0.1", port, "root", client, host_pub, container)
    try:
        deadline = time.monotonic() + 30
        ready = wait_ready(lambda: server.target(), timeout=deadline - time.monotonic())
        ready.close()
        yield server
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
