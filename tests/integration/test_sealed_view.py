"""The file view of a sealed template without booting or mounting it (real qemu-img, debugfs).

A small whole-disk ext4 made with ``mkfs.ext4 -d`` from a tree with a setuid-root file, a file
owned by 12:34, a symlink to /etc/shadow and a name with a newline, converted to qcow2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harden.builder.disk_image import DiskImageError
from harden.builder.qemu import qemu_user
from harden.builder.sealed_view import extracted_tree
from needs import unavailable

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("qemu-img", "mkfs.ext4", "debugfs"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install qemu-utils e2fsprogs)")
    if os.geteuid() != 0:
        unavailable("making a file system with foreign owners needs root")
    d = tmp_path_factory.mktemp("sealed-view")
    src = d / "src"
    (src / "etc").mkdir(parents=True)
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    os.chown(src / "etc" / "passwd", 12, 34)
    (src / "usr" / "bin" / "su").write_bytes(b"\x7fELF not really")
    (src / "usr" / "bin" / "su").chmod(0o4755)
    (src / "etc" / "evil").symlink_to("/etc/shadow")
    (src / "etc" / "new\nline").write_text("x")
    raw = d / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(src), str(raw)],
        check=True,
        capture_output=True,
    )
    out = d / "template.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True
    )
    raw.unlink()
    return out


def test_tree_and_declared_owners_without_boot_or_mount(template: Path) -> None:
    with extracted_tree(template) as tree:
        root = tree.root
        assert (root / "etc" / "passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"
        passwd = tree.meta("etc/passwd")
        assert passwd is not None and (passwd.uid, passwd.gid, passwd.mode) == (12, 34, 0o100644)
        su = tree.meta("/usr/bin/su")
        assert su is not None and su.mode == 0o104755 and su.uid == 0  # setuid root, as declared
        evil = root / "etc" / "evil"
        assert evil.is_symlink() and os.readlink(evil) == "/etc/shadow"  # copied, not followed
        # debugfs cannot list a name with a newline unambiguously: reported, never dropped silently
        assert b"etc/new\nline" not in tree.files
        assert any("new" in p for p in tree.problems)
        user = qemu_user()
        if user is not None:  # debugfs ran unprivileged: it owns what it wrote
            assert os.lstat(root / "etc" / "passwd").st_uid == user.uid
        mounts = Path("/proc/self/mounts").read_text()
        assert str(template) not in mounts and "sealed-view" not in mounts
    assert not root.exists()  # removed afterwards


def test_non_ext4_disk_refused(tmp_path: Path) -> None:
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    with pytest.raises(DiskImageError) as e, extracted_tree(blank):
        pass
    assert "no ext2/3/4 file system" in e.value.message


def test_hostile_input_refused_before_extraction(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw"]
    subprocess.run([*cmd, str(evil), "16M"], check=True)
    with pytest.raises(DiskImageError) as e, extracted_tree(evil):
        pass
    assert "backing file (/etc/shadow)" in e.value.message
