"""Unit tests for builder.qemu and builder.ssh_target: no qemu, no network."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harden.builder.qemu import (
    HOST_KEYS_BEGIN,
    HOST_KEYS_END,
    QemuFds,
    Vm,
    VmImage,
    detect_accel,
    hygiene_script,
    parse_console_host_keys,
    qemu_user,
    seal,
)
from harden.builder.ssh_target import (
    HostKeyRejected,
    SshTarget,
    fingerprint,
    known_hosts_name,
    parse_public_key,
    parse_ssh_url,
    wait_ready,
)

from harden.errors import ExitCode, TargetError, UsageError
from harden.target import CommandResult, TargetKind

PVM_MODULES = """kvm_pvm 118784 0 - Live 0x0000000000000000
kvm 1138688 1 kvm_pvm, Live 0x0000000000000000
irqbypass 16384 1 kvm, Live 0x0000000000000000
"""
INTEL_MODULES = """kvm_intel 380928 0 - Live 0x0000000000000000
kvm 1138688 1 kvm_intel, Live 0x0000000000000000
"""
AMD_MODULES = "kvm_amd 155648 0 - Live 0x0\nkvm 1138688 1 kvm_amd, Live 0x0\n"

ED25519 = (
    Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
    + " root@vm"
)


@pytest.fixture
def dev_kvm(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    os.chmod(path, 0o666)
    return path


# -- accelerator ----------------------------------------------------------------------------------
def test_kvm_pvm_means_tcg_even_with_dev_kvm(tmp_path: Path, dev_kvm: Path) -> None:
    accel, reason = detect_accel(PVM_MODULES, sys_module=tmp_path / "none", dev_kvm=dev_kvm, env={})
    assert accel == "tcg"
    assert "kvm_pvm" in reason


def test_kvm_intel_with_usable_dev_kvm_means_kvm(tmp_path: Path, dev_kvm: Path) -> None:
    accel, reason = detect_accel(
        INTEL_MODULES, sys_module=tmp_path / "none", dev_kvm=dev_kvm, env={}
    )
    assert (accel, "kvm_intel" in reason) == ("kvm", True)
    assert detect_accel(AMD_MODULES, sys_module=tmp_path / "none", dev_kvm=dev_kvm, env={})[0] == (
        "kvm"
    )


def test_kvm_intel_plus_pvm_is_tcg(tmp_path: Path, dev_kvm: Path) -> None:
    accel, _ = detect_accel(
        INTEL_MODULES + PVM_MODULES, sys_module=tmp_path / "none", dev_kvm=dev_kvm, env={}
    )
    assert accel == "tcg"


def test_no_vendor_module_or_no_dev_kvm_is_tcg(tmp_path: Path, dev_kvm: Path) -> None:
    assert detect_accel("", sys_module=tmp_path / "none", dev_kvm=dev_kvm, env={})[0] == "tcg"
    accel, reason = detect_accel(
        INTEL_MODULES, sys_module=tmp_path / "none", dev_kvm=tmp_path / "missing", env={}
    )
    assert accel == "tcg"
    assert "not usable" in reason


def test_builtin_module_seen_in_sys_module(tmp_path: Path, dev_kvm: Path) -> None:
    sys_module = tmp_path / "module"
    (sys_module / "kvm_amd").mkdir(parents=True)
    assert detect_accel("", sys_module=sys_module, dev_kvm=dev_kvm, env={})[0] == "kvm"
    (sys_module / "kvm_pvm").mkdir()
    assert detect_accel("", sys_module=sys_module, dev_kvm=dev_kvm, env={})[0] == "tcg"


def test_env_override(tmp_path: Path) -> None:
    assert detect_accel(PVM_MODULES, env={"HARDEN_QEMU_ACCEL": "kvm"})[0] == "kvm"
    assert detect_accel(INTEL_MODULES, env={"HARDEN_QEMU_ACCEL": "TCG"})[0] == "tcg"


# -- ssh urls ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ssh://root@10.0.0.5:2222", ("root", "10.0.0.5", 2222)),
        ("ssh://admin@vm.example", ("admin", "vm.example", 22)),
        ("ssh://127.0.0.1:2022", ("root", "127.0.0.1", 2022)),
        ("ssh://ops@[::1]:22", ("ops", "::1", 22)),
    ],
)
def test_parse_ssh_url(url: str, expected: tuple[str, str, int]) -> None:
    assert parse_ssh_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://root@host",
        "root@host:22",
        "ssh://",
        "ssh://root@host:99999",
        "ssh://root@host/path",
        "ssh://root:pw@host",
    ],
)
def test_parse_ssh_url_rejects(url: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_ssh_url(url)
    assert e.value.exit_code == ExitCode.USAGE
    assert e.value.hint


def test_known_hosts_name() -> None:
    assert known_hosts_name("h", 22) == "h"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


# -- console host keys -------------------------------------------------------------------------
CONSOLE = f"""[    1.234] Run /init as init process
{HOST_KEYS_BEGIN}
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@harden-base
[    9.100] random: crng init done
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld root@harden-base\r
{HOST_KEYS_END}
[   12.000] systemd[1]: Reached target multi-user.target.
"""


def test_console_host_keys_parsed_and_noise_ignored() -> None:
    blocks = parse_console_host_keys(CONSOLE)
    assert blocks == [
        [
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld",
        ]
    ]


def test_console_host_keys_prefixed_lines_and_latest_boot_last() -> None:
    second = (
        f"[ 3.0] harden-ssh-hostkeys[99]: {HOST_KEYS_BEGIN}\n"
        "[ 3.0] harden-ssh-hostkeys[99]: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew host\n"
        f"[ 3.0] harden-ssh-hostkeys[99]: {HOST_KEYS_END}\n"
    )
    blocks = parse_console_host_keys(CONSOLE + second)
    assert len(blocks) == 2
    assert blocks[-1] == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew"]


def test_console_incomplete_block_is_not_a_block() -> None:
    text = f"{HOST_KEYS_BEGIN}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld root@x\n"
    assert parse_console_host_keys(text) == []
    assert parse_console_host_keys("no markers here\n") == []


# -- qemu command line ------------------------------------------------------------------------
FDS = QemuFds(disk=11, overlay=12, console=13, qmp=14, kernel=15, initrd=16)


def _vm(tmp_path: Path, kernel: bool = True) -> Vm:
    image = VmImage(
        disk=tmp_path / "base.qcow2",
        kernel=tmp_path / "vmlinuz" if kernel else None,
        initrd=tmp_path / "initrd.img" if kernel else None,
    )
    return Vm(image, tmp_path / "vm", accel=("tcg", "test"))


def _blockdevs(cmd: list[str]) -> dict[str, dict[str, object]]:
    nodes = [json.loads(cmd[i + 1]) for i, a in enumerate(cmd) if a == "-blockdev"]
    return {str(n["node-name"]): n for n in nodes}


def test_command_line_is_loopback_only_and_restricted(tmp_path: Path) -> None:
    cmd = _vm(tmp_path).command(2222, FDS)
    netdev = cmd[cmd.index("-netdev") + 1]
    assert netdev.startswith("user,")
    assert "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    joined = " ".join(cmd)
    for forbidden in ("tap", "bridge", "vhost", "0.0.0.0", "-daemonize", "-pidfile", "-runas"):
        assert forbidden not in joined
    assert cmd.count("-netdev") == 1
    assert cmd[cmd.index("-serial") + 1] == "chardev:console"
    assert "file,id=console,path=/dev/fdset/3" in cmd
    assert "fd=13,set=3,opaque=console" in cmd
    assert "socket,id=qmp,fd=14" in cmd  # QMP over an inherited socketpair: no socket path
    assert "virtio-rng-pci" in cmd
    assert "-no-user-config" in cmd
    sandbox = cmd[cmd.index("-sandbox") + 1].split(",")
    assert sandbox[0] == "on"
    assert {"spawn=deny", "elevateprivileges=deny"} <= set(sandbox)


def test_command_line_opens_no_path_and_no_backing_by_name(tmp_path: Path) -> None:
    cmd = _vm(tmp_path).command(2222, FDS)
    assert "-drive" not in cmd
    nodes = _blockdevs(cmd)
    assert set(nodes) == {"template", "overlay"}
    template, overlay = nodes["template"], nodes["overlay"]
    assert template["driver"] == "qcow2"
    assert template["backing"] is None  # the template's own backing name is never followed
    assert template["read-only"] is True
    assert template["file"] == {"driver": "file", "filename": "/dev/fdset/1", "read-only": True}
    assert overlay["backing"] == "template"  # explicit, not the name in the overlay's header
    assert overlay["file"] == {"driver": "file", "filename": "/dev/fdset/2"}
    assert "fd=11,set=1,opaque=template" in cmd
    assert "fd=12,set=2,opaque=overlay" in cmd
    devices = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device" and "blk" in cmd[i + 1]]
    assert devices == ["virtio-blk-pci,drive=overlay"]
    assert str(tmp_path) not in " ".join(cmd)  # every file comes as a descriptor


def test_command_line_raw_template(tmp_path: Path) -> None:
    nodes = _blockdevs(_vm(tmp_path).command(2222, FDS, "raw"))
    assert nodes["template"]["driver"] == "raw"
    assert "backing" not in nodes["template"]


def test_command_line_tcg_args_and_kernel(tmp_path: Path) -> None:
    cmd = _vm(tmp_path).command(2222, FDS)
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi,tb-size=256"
    assert cmd[cmd.index("-cpu") + 1] == "max"
    assert cmd[cmd.index("-append") + 1] == "root=/dev/vda rw console=ttyS0"
    assert cmd[cmd.index("-kernel") + 1] == "/dev/fd/15"
    assert cmd[cmd.index("-initrd") + 1] == "/dev/fd/16"
    no_kernel = dataclasses.replace(FDS, kernel=None, initrd=None)
    kvm = Vm(VmImage(disk=tmp_path / "d.qcow2"), tmp_path, accel=("kvm", "t")).command(1, no_kernel)
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    assert "-kernel" not in kvm
    assert "-initrd" not in kvm


def test_start_with_missing_image_is_target_error(tmp_path: Path) -> None:
    vm = _vm(tmp_path)
    with pytest.raises(TargetError) as e:
        vm.start()
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert "base.qcow2" in e.value.message
    assert not (tmp_path / "vm" / "overlay.qcow2").exists()


def test_qemu_never_runs_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harden.builder.qemu.os.geteuid", lambda: 0)
    with pytest.raises(TargetError) as e:
        qemu_user({"HARDEN_QEMU_USER": "root"})
    assert "never runs qemu as root" in e.value.message
    with pytest.raises(TargetError) as e:
        qemu_user({"HARDEN_QEMU_USER": "no-such-user-harden-test"})
    assert "does not exist" in e.value.message
    assert "useradd --system" in (e.value.hint or "")
    monkeypatch.setattr("harden.builder.qemu.os.geteuid", lambda: 1000)
    assert qemu_user({}) is None  # not root: qemu runs as harden's own user


def test_hygiene_script_covers_identity_and_caches() -> None:
    script = hygiene_script()
    for needle in (
        "/etc/ssh/ssh_host_*",
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "journalctl --vacuum",
        "apt-get clean",
        "/var/lib/apt/lists",
        "/tmp",
        "/var/tmp",
    ):
        assert needle in script


def test_seal_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "sealed.qcow2"
    with pytest.raises(TargetError):
        seal(tmp_path / "does-not-exist.qcow2", out)
    assert list(tmp_path.iterdir()) == []


# -- ssh target without a server ----------------------------------------------------------------
def test_parse_public_key_and_fingerprint() -> None:
    key = parse_public_key(ED25519)
    assert key.get_name() == "ssh-ed25519"
    assert fingerprint(key).startswith("SHA256:")
    with pytest.raises(TargetError):
        parse_public_key("ssh-ed25519")
    with pytest.raises(TargetError):
        parse_public_key("ssh-ed25519 !!!notbase64")


def test_ssh_target_shape() -> None:
    t = SshTarget("127.0.0.1", 2222, "root", key_path=None)
    assert t.kind is TargetKind.VM
    assert t.describe() == "ssh://root@127.0.0.1:2222"
    assert t.image_config() is None


def test_unreachable_host_is_target_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        t = SshTarget("127.0.0.1", port, "root", key_path=None, connect_timeout=2)
        with pytest.raises(TargetError) as e:
            t.run("true")
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert str(port) in e.value.message


class _FakeTarget(SshTarget):
    def __init__(self, outcomes: list[object]) -> None:
        super().__init__("127.0.0.1", 1, "root", key_path=None)
        self.outcomes = outcomes

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, int)
        return CommandResult(outcome, b"", b"")


def test_wait_ready_retries_until_a_command_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("harden.builder.ssh_target.time.sleep", sleeps.append)
    outcomes: list[object] = [TargetError("banner"), 1, 0]
    target = wait_ready(lambda: _FakeTarget(outcomes), timeout=30, interval=0.1)
    assert outcomes == []
    assert target.describe() == "ssh://root@127.0.0.1:1"
    assert len(sleeps) == 2
    assert all(s >= 0.4 for s in sleeps)  # never faster than every 0.5 s


def test_wait_ready_host_key_rejection_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harden.builder.ssh_target.time.sleep", lambda s: None)
    outcomes: list[object] = [HostKeyRejected("bad key"), 0]
    with pytest.raises(HostKeyRejected):
        wait_ready(lambda: _FakeTarget(outcomes), timeout=30)
    assert outcomes == [0]


def test_wait_ready_times_out_with_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("harden.builder.ssh_target.time.monotonic", lambda: clock[0])

    def sleep(s: float) -> None:
        clock[0] += s

    monkeypatch.setattr("harden.builder.ssh_target.time.sleep", sleep)
    with pytest.raises(TargetError) as e:
        wait_ready(lambda: _FakeTarget([TargetError("refused")] * 100), timeout=3)
    assert "within 3 s" in e.value.message
    assert "refused" in e.value.message


def test_boot_files_need_to_be_readable_by_the_qemu_user(tmp_path: Path) -> None:
    """A hostile manifest naming a private host file as initrd must not get it into the guest."""
    from harden.builder.qemu import QemuUser, _boot_file_fd

    nobody = QemuUser("harden-test", 65000, 65000, (65000,))
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret\n")
    secret.chmod(0o600)
    with pytest.raises(TargetError) as e:
        _boot_file_fd(secret, nobody)
    assert "not readable by harden-test" in e.value.message
    secret.chmod(0o644)
    fd = _boot_file_fd(secret, nobody)
    os.close(fd)


def test_boot_timeout_default_and_env() -> None:
    from harden.builder.qemu import default_boot_timeout

    assert default_boot_timeout({}) == 120.0
    assert default_boot_timeout({"HARDEN_VM_BOOT_TIMEOUT": "600"}) == 600.0
    for bad in ("soon", "0", "-5"):
        with pytest.raises(TargetError):
            default_boot_timeout({"HARDEN_VM_BOOT_TIMEOUT": bad})
