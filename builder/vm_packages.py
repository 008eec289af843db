"""The package database and boot files of a VM template, read from its disk, never through code
that runs inside it (:func:`harden.builder.sealed_view.extracted_tree`: the file systems copied
out with debugfs, symlinks resolved inside the template's root).

Used three times by a VM build: the base's package database decides which security and stable
updates the build installs; the sealed template's database is its SBOM; the sealed template's
newest ``/boot/vmlinuz-*`` and ``initrd.img-*`` are the kernel its clones boot with (a kernel
security update installed by the build is the kernel the template runs, not the base's).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from harden.builder.packages import OS_RELEASE, STATUS, NoPackageDatabase
from harden.builder.sealed_view import extracted_tree
from harden.debian.dpkg import MAX_STATUS_BYTES, Package, parse_status
from harden.debian.release import Release, parse_os_release
from harden.debian.version import compare
from harden.verifiers.fsview import DIR, FILE, DirFs, read_path, resolve

MAX_OS_RELEASE = 64 << 10
MAX_BOOT_FILE = 512 << 20  # a kernel or initramfs; Debian's are 10-80 MB
KERNEL_PREFIX = b"vmlinuz-"
INITRD_PREFIX = b"initrd.img-"


@dataclass(frozen=True)
class DiskPackages:
    status: bytes  # /var/lib/dpkg/status as read
    os_release: bytes
    packages: tuple[Package, ...]
    release: Release
    kernel: Path | None = None  # copies of the newest kernel and its initramfs (boot_files_to)
    initrd: Path | None = None
    kernel_version: str | None = None  # the "6.1.0-41-cloud-amd64" of vmlinuz-<version>


def read_disk(path: Path, *, boot_files_to: Path | None = None) -> DiskPackages:
    """The package database and release of the template ``path``; with ``boot_files_to`` (a
    directory) also copies of its newest kernel that has an initramfs, as ``vmlinuz`` and
    ``initrd.img`` there (None when the template has none: it boots from the base's)."""
    with extracted_tree(path) as tree:
        view = DirFs(tree.root, declared=tree.declared)
        status = read_path(view, STATUS.encode(), MAX_STATUS_BYTES)
        if status is None:
            raise NoPackageDatabase(f"{path} has no {STATUS}: no package inventory")
        os_release = b""
        for candidate in OS_RELEASE:
            os_release = read_path(view, candidate.encode(), MAX_OS_RELEASE) or b""
            if os_release:
                break
        packages = parse_status(status, origin=f"{path}:{STATUS}")
        release = parse_os_release(os_release)
        if boot_files_to is None:
            return DiskPackages(status, os_release, packages, release)
        version = newest_kernel(view)
        if version is None:
            return DiskPackages(status, os_release, packages, release)
        out: list[Path] = []
        for prefix, name in ((KERNEL_PREFIX, "vmlinuz"), (INITRD_PREFIX, "initrd.img")):
            node = resolve(view, b"/boot/" + prefix + version.encode())
            assert node is not None and node.type == FILE  # newest_kernel checked both
            target = boot_files_to / name
            with target.open("wb") as f:
                f.write(view.read(node, MAX_BOOT_FILE))
            out.append(target)
        return DiskPackages(status, os_release, packages, release, out[0], out[1], version)


def newest_kernel(view: DirFs) -> str | None:
    """The highest ``<version>`` (Debian version order) with both ``/boot/vmlinuz-<version>``
    and ``/boot/initrd.img-<version>`` regular files (links resolved inside the root)."""
    boot = resolve(view, b"/boot")
    if boot is None or boot.type != DIR:
        return None
    names = set(view.listdir(boot.path))
    versions = []
    for name in names:
        if (
            not name.startswith(KERNEL_PREFIX)
            or INITRD_PREFIX + name[len(KERNEL_PREFIX) :] not in names
        ):
            continue
        both = [
            resolve(view, boot.path + b"/" + n)
            for n in (name, INITRD_PREFIX + name[len(KERNEL_PREFIX) :])
        ]
        if all(n is not None and n.type == FILE for n in both):
            versions.append(name[len(KERNEL_PREFIX) :].decode("utf-8", "replace"))
    return max(versions, key=cmp_to_key(compare), default=None)
