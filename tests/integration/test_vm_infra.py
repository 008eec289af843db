"""The VM infrastructure for real: base template, qemu lifecycle, pinned SSH, sealing, clones.

One VM (module fixture ``vm_running``) serves the SSH, reboot and sealing tests, in file order;
then one clone of the sealed template, and one VM that cannot find its root file system. The SSH
tests that need no VM run against sshd in a container. Under TCG the module takes 2-4 minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vm_fixtures import RunningVm, SshdServer, VmTemplate, sshd_server, vm_running, vm_template

from harden.builder.qemu import HOST_KEYS_BEGIN, Vm, VmImage, hygiene_script, seal
from harden.builder.ssh_target import HostKeyRejected, SshTarget, fingerprint, parse_public_key
from harden.errors import ExitCode, TargetError

__all__ = ["sshd_server", "vm_running", "vm_template"]  # fixtures used here


def _other_key() -> str:
    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _fingerprints(lines: list[str]) -> set[str]:
    return {fingerprint(parse_public_key(line)) for line in lines}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- sshd in a container: no VM needed ----------------------------------------------------------
@pytest.mark.integration
def test_sshd_run_returns_exit_status_stdout_stderr(sshd_server: SshdServer) -> None:
    with sshd_server.target() as t:
        tricky = 'it\'s $HOME `x` "q"'
        r = t.run("printf '%s' " + shlex.quote(tricky))
        assert r.ok
        assert r.stdout.decode() == tricky
        r = t.run("echo out; echo err >&2; exit 3")
        assert (r.exit_status, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
        assert t.run("kill -9 $$").exit_status == 255  # killed by a signal: no exit-status
        big = t.run("head -c 300000 /dev/zero | tr '\\0' x")
        assert len(big.stdout) == 300000


@pytest.mark.integration
def test_sshd_put_file(sshd_server: SshdServer) -> None:
    with sshd_server.target() as t:
        t.put_file(b"secret\x00bytes\n", "/tmp/harden-put-test", 0o600)
        r = t.run("stat -c %a /tmp/harden-put-test; od -c /tmp/harden-put-test | head -1")
        assert r.text().splitlines()[0] == "600"
        assert "\\0" in r.text()


@pytest.mark.integration
def test_sshd_upload_writes_a_new_private_folder(sshd_server: SshdServer) -> None:
    """The updates step's upload: files by name into a new folder of the login user's home."""
    name = f"harden-upload-{os.getpid()}"
    with sshd_server.target() as t:
        where = t.upload({"a.deb": b"\x00a" * 70000, "b.deb": b"b\n"}, name)
        assert where.startswith("/") and where.endswith("/" + name)
        r = t.run(f"stat -c %a {where}; cat {where}/b.deb; wc -c < {where}/a.deb")
        assert r.text().split() == ["700", "b", "140000"]
        # the folder must be new (a leftover is never reused), and names are plain file names
        with pytest.raises(TargetError) as e:
            t.upload({"c.deb": b"c"}, name)
        assert e.value.exit_code == ExitCode.ENVIRONMENT and "cannot upload" in e.value.message
        with pytest.raises(TargetError):
            t.upload({"../escape": b"x"}, name + "-2")
        assert t.run(f"ls -A {where}-2").text().split() == []
        t.run(f"rm -rf {where} {where}-2")


@pytest.mark.integration
def test_sshd_unknown_host_key_refused_with_fingerprint(sshd_server: SshdServer) -> None:
    t = sshd_server.target(pinned_host_keys=[])
    with pytest.raises(HostKeyRejected) as e:
        t.run("true")
    expected = fingerprint(parse_public_key(sshd_server.host_key_line))
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert f"[127.0.0.1]:{sshd_server.port}" in e.value.message
    assert expected in e.value.message
    assert e.value.hint and "pin" in e.value.hint


@pytest.mark.integration
def test_sshd_mismatching_host_key_refused(sshd_server: SshdServer) -> None:
    other = _other_key()
    t = sshd_server.target(pinned_host_keys=[other])
    with pytest.raises(HostKeyRejected) as e:
        t.run("true")
    assert "does not match" in e.value.message
    assert fingerprint(parse_public_key(sshd_server.host_key_line)) in e.value.message
    assert fingerprint(parse_public_key(other)) in e.value.message


@pytest.mark.integration
def test_sshd_known_hosts_and_accept_new(sshd_server: SshdServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("", encoding="utf-8")
    with pytest.raises(HostKeyRejected):
        sshd_server.target(pinned_host_keys=[], known_hosts=known).run("true")
    first = sshd_server.target(pinned_host_keys=[], known_hosts=known, accept_new=True)
    assert first.run("true").ok
    first.close()
    assert f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 " in known.read_text(encoding="utf-8")
    with sshd_server.target(pinned_host_keys=[], known_hosts=known) as again:
        assert again.run("true").ok
    # accept-new never overrides a known key that differs
    known.write_text(f"[127.0.0.1]:{sshd_server.port} {_other_key()}\n", encoding="utf-8")
    with pytest.raises(HostKeyRejected):
        sshd_server.target(pinned_host_keys=[], known_hosts=known, accept_new=True).run("true")


@pytest.mark.integration
def test_sshd_connection_drop_is_target_error(sshd_server: SshdServer) -> None:
    with sshd_server.target() as t:
        with pytest.raises(TargetError) as e:
            t.run("kill -9 $PPID; sleep 5")
        assert "dropped" in e.value.message
        assert t.run("echo back").text() == "back\n"  # reconnects on next use


@pytest.mark.integration
def test_sshd_wrong_client_key_is_target_error(sshd_server: SshdServer, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(TargetError) as e:
        sshd_server.target(key_path=key).run("true")
    assert not isinstance(e.value, HostKeyRejected)
    assert "authentication failed" in e.value.message
    assert key.read_text() not in (e.value.message + (e.value.hint or ""))


# -- the base template ------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.vm
def test_base_template_is_cached_and_complete(vm_template: VmTemplate) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "scripts" / "vm-base.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert time.monotonic() - started < 10
    assert Path(proc.stdout.strip()) == vm_template.manifest_path
    folder = vm_template.manifest_path.parent
    assert (folder.parent / "current").resolve() == folder.resolve()
    for name in ("base.qcow2", "vmlinuz", "initrd.img", "id_ed25519", "id_ed25519.pub"):
        assert (folder / name).is_file(), name
    for name in ("id_ed25519", "id_ed25519.pub"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    m = vm_template.manifest
    assert m["base"] == str(folder / "base.qcow2")
    assert len(m["base_sha256"]) == 64
    assert m["created"].endswith("Z")


# -- one VM: boot, pinned SSH, reboot, seal -----------------------------------------------------
@pytest.mark.integration
@pytest.mark.vm
def test_vm_boots_and_runs_with_the_console_host_key(vm_running: RunningVm) -> None:
    r = vm_running.target.run("hostname; id -u; cat /etc/machine-id; cat /proc/cmdline")
    assert r.ok, r.stderr
    hostname, uid, machine_id, cmdline = r.text().splitlines()
    assert (hostname, uid) == ("harden-base", "0")
    assert len(machine_id) == 32
    assert "root=/dev/vda" in cmdline
    vm_running.facts["machine_id"] = machine_id
    offered = vm_running.target.host_key
    assert offered is not None
    assert fingerprint(offered) in _fingerprints(vm_running.host_keys)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output", "json", str(vm_running.vm.overlay)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["backing-filename"] == str(vm_running.template.image.disk.resolve())
    user = vm_running.template.manifest.get("ssh_user") or "root"  # the base's build account
    assert vm_running.target.describe() == f"ssh://{user}@127.0.0.1:{vm_running.vm.ssh_port}"


@pytest.mark.integration
@pytest.mark.vm
def test_vm_guest_has_no_network_beyond_the_forward(vm_running: RunningVm) -> None:
    # restrict=on: the guest cannot reach the host's loopback services through the slirp gateway
    r = vm_running.target.run(
        "timeout 5 bash -c 'echo > /dev/tcp/10.0.2.2/5000' 2>/dev/null && echo open || echo closed"
    )
    assert r.text().strip() == "closed"


@pytest.mark.integration
@pytest.mark.vm
def test_vm_mismatching_pin_refused(vm_running: RunningVm, vm_template: VmTemplate) -> None:
    t = SshTarget(
        "127.0.0.1",
        vm_running.vm.ssh_port or 0,
        "root",
        key_path=vm_template.build_key,
        pinned_host_keys=[_other_key()],
    )
    with pytest.raises(HostKeyRejected) as e:
        t.run("true")
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert "does not match" in e.value.message
    assert "SHA256:" in e.value.message


@pytest.mark.integration
@pytest.mark.vm
def test_vm_unknown_key_refused(vm_running: RunningVm, vm_template: VmTemplate) -> None:
    t = SshTarget("127.0.0.1", vm_running.vm.ssh_port or 0, "root", key_path=vm_template.build_key)
    with pytest.raises(HostKeyRejected) as e:
        t.run("true")
    assert "not known" in e.value.message
    offered = e.value.message.split("SHA256:", 1)[1].split()[0]
    assert f"SHA256:{offered}" in _fingerprints(vm_running.host_keys)


@pytest.mark.integration
@pytest.mark.vm
def test_vm_reboot_keeps_host_keys(vm_running: RunningVm, vm_template: VmTemplate) -> None:
    vm = vm_running.vm
    boot_id = vm_running.target.run("cat /proc/sys/kernel/random/boot_id").text()
    vm.reboot()
    assert vm.console_log.read_text(errors="replace").count(HOST_KEYS_BEGIN) == 2
    assert sorted(vm.host_keys()) == sorted(vm_running.host_keys)
    vm_running.target = vm.connect(_user(vm_template), vm_template.build_key)
    assert vm_running.target.run("cat /proc/sys/kernel/random/boot_id").text() != boot_id


def _user(template: VmTemplate) -> str:
    """The base's SSH user (its build account; root cannot log in)."""
    return str(template.manifest.get("ssh_user") or "root")


@dataclass(frozen=True)
class Sealed:
    path: Path
    sha256: str
    host_keys: list[str]
    machine_id: str
    qemu_pid: int


@pytest.fixture(scope="module")
def sealed(vm_running: RunningVm, tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    vm = vm_running.vm
    machine_id = vm_running.target.run("cat /etc/machine-id").text().strip()
    r = vm_running.target.run(hygiene_script())
    assert r.ok, r.stderr
    left = vm_running.target.run(
        "ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l; wc -c < /etc/machine-id; "
        "ls /var/lib/apt/lists | wc -l; ls -A /tmp | wc -l"
    )
    assert left.text().split() == ["0", "0", "0", "0"]
    assert vm.pid is not None
    pid = vm.pid
    vm.shutdown(timeout=60)
    assert not _pid_alive(pid)
    out = tmp_path_factory.mktemp("sealed") / "template.qcow2"
    digest = seal(vm.overlay, out)
    return Sealed(out, digest, vm_running.host_keys, machine_id, pid)


@pytest.mark.integration
@pytest.mark.vm
def test_seal_after_hygiene_is_standalone(sealed: Sealed, vm_template: VmTemplate) -> None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output", "json", str(sealed.path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert _sha256(sealed.path) == sealed.sha256
    assert [p.name for p in sealed.path.parent.iterdir()] == ["template.qcow2"]  # no temp left
    # the template was never written
    assert _sha256(vm_template.image.disk) == vm_template.manifest["base_sha256"]


@pytest.mark.integration
@pytest.mark.vm
def test_clone_of_sealed_gets_new_identity_and_ctrl_c_kills_it(
    sealed: Sealed, vm_template: VmTemplate, tmp_path: Path
) -> None:
    image = VmImage(
        disk=sealed.path,
        kernel=vm_template.image.kernel,
        initrd=vm_template.image.initrd,
        append=vm_template.image.append,
    )
    progress: list[str] = []
    pid = 0
    vm = Vm(image, tmp_path / "clone", boot_timeout=240, on_progress=progress.append)
    with pytest.raises(KeyboardInterrupt), vm:  # Ctrl-C raised inside the with-block
        assert vm.pid is not None
        pid = vm.pid
        keys = vm.host_keys()
        assert _fingerprints(keys).isdisjoint(_fingerprints(sealed.host_keys))
        t = vm.connect(_user(vm_template), vm_template.build_key)
        machine_id = t.run("cat /etc/machine-id").text().strip()
        assert len(machine_id) == 32
        assert machine_id != sealed.machine_id
        raise KeyboardInterrupt
    assert pid and not _pid_alive(pid)
    assert not vm.overlay.exists()
    assert any("booting" in p for p in progress)
    assert sealed.path.is_file()


@pytest.mark.integration
@pytest.mark.vm
def test_bogus_kernel_is_target_error(vm_template: VmTemplate, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not a kernel\n" * 1000)
    image = VmImage(
        disk=vm_template.image.disk,
        kernel=kernel,
        initrd=vm_template.image.initrd,
        append=vm_template.image.append,
    )
    started = time.monotonic()
    vm = Vm(image, tmp_path / "vm", boot_timeout=30)
    with pytest.raises(TargetError) as e, vm:
        vm.connect(_user(vm_template), vm_template.build_key)
    assert time.monotonic() - started < 30
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert "kernel" in e.value.message
    assert vm.pid is None or not _pid_alive(vm.pid)
    assert not vm.overlay.exists()


@pytest.mark.integration
@pytest.mark.vm
def test_vm_that_cannot_boot_times_out_with_console_tail(
    vm_template: VmTemplate, tmp_path: Path
) -> None:
    image = VmImage(
        disk=vm_template.image.disk,
        kernel=vm_template.image.kernel,
        initrd=vm_template.image.initrd,
        append="root=/dev/vdz console=ttyS0",
    )
    timeout = 25.0
    started = time.monotonic()
    vm = Vm(image, tmp_path / "vm", boot_timeout=timeout)
    with pytest.raises(TargetError) as e, vm:
        assert vm.pid is not None
        pid = vm.pid
        vm.connect(_user(vm_template), vm_template.build_key)
    elapsed = time.monotonic() - started
    assert timeout <= elapsed < timeout + 15
    assert f"within {timeout:g} s" in e.value.message
    assert e.value.hint and "Linux version" in vm.console_log.read_text(errors="replace")
    assert "Begin: " in e.value.hint  # the console tail: initramfs waits for the root device
    assert not _pid_alive(pid)  # the context ended qemu by its PID
