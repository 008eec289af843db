"""The kernel a VM template boots with: its own newest /boot/vmlinuz-* that has an initramfs,
read inside the template's root (builder/vm_packages.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from harden.builder.vm_packages import newest_kernel
from harden.verifiers.fsview import DirFs


def _boot(root: Path, *names: str) -> None:
    (root / "boot").mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / "boot" / n).write_bytes(n.encode())


def test_the_newest_version_in_debian_order_wins(tmp_path: Path) -> None:
    _boot(
        tmp_path,
        "vmlinuz-6.1.0-9-cloud-amd64",
        "initrd.img-6.1.0-9-cloud-amd64",
        "vmlinuz-6.1.0-41-cloud-amd64",
        "initrd.img-6.1.0-41-cloud-amd64",
        "System.map-6.1.0-50-cloud-amd64",
    )
    # 41 > 9 as versions (a string comparison would pick 9)
    assert newest_kernel(DirFs(tmp_path)) == "6.1.0-41-cloud-amd64"


def test_a_kernel_without_its_initramfs_is_not_chosen(tmp_path: Path) -> None:
    _boot(
        tmp_path,
        "vmlinuz-6.1.0-41-cloud-amd64",
        "initrd.img-6.1.0-41-cloud-amd64",
        "vmlinuz-6.1.0-50-cloud-amd64",  # installed, initramfs not (yet) generated
    )
    assert newest_kernel(DirFs(tmp_path)) == "6.1.0-41-cloud-amd64"


def test_links_resolve_inside_the_root_never_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _boot(root, "vmlinuz-6.1.0-41-cloud-amd64", "initrd.img-6.1.0-41-cloud-amd64")
    # absolute links to files that exist on the host, outside the root: inside the template
    # they name <root><that path>, which does not exist, so 9.9.9 is no kernel
    for name in ("host-kernel", "host-initrd"):
        (tmp_path / name).write_bytes(b"host")
    os.symlink(tmp_path / "host-kernel", root / "boot" / "vmlinuz-9.9.9")
    os.symlink(tmp_path / "host-initrd", root / "boot" / "initrd.img-9.9.9")
    assert newest_kernel(DirFs(root)) == "6.1.0-41-cloud-amd64"


def test_no_boot_folder_means_the_base_kernel(tmp_path: Path) -> None:
    assert newest_kernel(DirFs(tmp_path)) is None


def test_a_private_temporary_folder_is_refused_for_the_qemu_user(tmp_path: Path) -> None:
    """debugfs runs as the qemu user and opens the flattened disk by path: a TMPDIR below a
    folder that user cannot pass (pytest's own, mode 0700) is a clear error, not debugfs's."""
    import pytest

    from harden.builder.qemu import QemuUser
    from harden.builder.sealed_view import _check_reachable
    from harden.errors import TargetError

    nobody = QemuUser("harden-test-nobody", 65534, 65534, ())
    private = tmp_path / "private"
    (private / "work").mkdir(parents=True)
    private.chmod(0o700)
    with pytest.raises(TargetError) as e:
        _check_reachable(private / "work", nobody)
    assert "does not let the harden-test-nobody user reach" in e.value.message
    assert e.value.hint and "TMPDIR" in e.value.hint
    _check_reachable(private / "work", None)  # not root: harden reads as itself
    passable = Path(tempfile.mkdtemp(prefix="harden-reach-", dir="/tmp"))
    try:
        passable.chmod(0o711)
        (passable / "work").mkdir()
        _check_reachable(passable / "work", nobody)  # /tmp, then 0711: no error
    finally:
        shutil.rmtree(passable)
