"""The file view of a sealed template without booting or mounting it (real qemu-img, debugfs).

A small whole-disk ext4 made with ``mkfs.ext4 -d`` from a tree with a setuid-root file, a file
owned by 12:34, a symlink to /etc/shadow and a name with a newline, converted to qcow2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import harden_cli
import pytest
from needs import unavailable
from vm_fixtures import VmTemplate

from harden.builder.disk_image import DiskImageError
from harden.builder.qemu import qemu_user
from harden.builder.sealed_view import extracted_tree

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


# ---------------------------------------------------------------- harden verify FILE.qcow2 --no-boot


def _qcow2_from(src: Path, out: Path, size: int = 64 << 20) -> Path:
    raw = out.with_suffix(".raw")
    with raw.open("wb") as f:
        f.truncate(size)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(src), str(raw)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True
    )
    raw.unlink()
    return out


def _no_boot(path: Path, home: Path, *extra: str) -> tuple[int, dict[str, Any], str, float]:
    """``harden verify PATH --no-boot`` in a fresh interpreter; its peak RSS (MB) from a probe
    whose only child it is."""
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr); sys.stdout.write(r.stdout)\n"
        "sys.stderr.write('@@rss %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    cmd = [*harden_cli.COMMAND, "verify", str(path), "--no-boot", "--format", "json", *extra]
    r = subprocess.run(
        [sys.executable, "-c", probe, *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "HARDEN_HOME": str(home)},
        cwd=harden_cli.ROOT,
        timeout=900,
    )
    err, _, rss = r.stderr.rpartition("@@rss ")
    assert "Traceback" not in err, err
    report = json.loads(r.stdout) if r.stdout.strip() else {}
    return r.returncode, report, err, int(rss) / 1024


def _leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("harden-sealed-view-*")}


def test_base_template_file_level_rules_without_booting(
    vm_template: VmTemplate, tmp_path: Path
) -> None:
    """The cached VM base template against debian-vm, read from its qcow2: every file-level rule
    judged (with evidence), every rule that needs a running system an error that says so."""
    disk = vm_template.image.disk
    before = _leftovers()
    rc, report, err, rss = _no_boot(disk, tmp_path / "home")
    assert rc == 1, err  # the base template is not hardened
    assert report["target"] == "vm" and report["baseline"]["id"] == "debian-vm"
    h = hashlib.sha256()
    with disk.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert report["digest"] == "sha256:" + h.hexdigest()
    shown = json.loads(
        harden_cli.run("baseline", "show", "debian-vm", "--resolved", "--format", "json").stdout
    )
    running = {
        r["id"]
        for r in shown["rules"]
        if r["kind"]
        in {"command", "sysctl", "kernel_module_disabled", "mount_option", "audit_rules"}
    }
    results = {x["rule_id"]: x for x in report["results"]}
    errors = {k for k, x in results.items() if x["status"] == "error"}
    assert errors <= running and errors, errors - running
    assert all(results[k]["reason"].startswith("needs a running system") for k in errors)
    assert not any(
        x["status"] == "passed" for k, x in results.items() if k in running
    )  # never a pass
    file_level = [x for k, x in results.items() if k not in running]
    assert sum(x["status"] in ("passed", "failed") for x in file_level) > 100
    # read from the disk: owners, modes, packages, configuration
    assert results["fs.etc-shadow-perms"]["status"] == "passed"
    assert results["accounts.uid0-only-root"]["status"] == "passed"
    assert results["fs.no-unowned-files"]["status"] == "passed"
    assert results["pkg.telnet-absent"]["status"] == "passed"
    assert results["ssh.max-auth-tries"]["status"] == "failed"  # the base leaves sshd's default
    # the base is a GPT disk with ANSSI-BP28 partitions: /var (the dpkg database) and /usr are
    # file systems of their own, read at their fstab mount points
    assert results["auditd.installed"]["status"] == "passed"  # /var/lib/dpkg/status, on /var
    assert results["fs.var-log-dir-perms"]["status"] == "passed"  # /var/log, on its own fs
    assert rss < 150, rss
    mounts = Path("/proc/self/mounts").read_text()
    assert str(disk) not in mounts and "harden-sealed-view" not in mounts
    assert _leftovers() == before


def test_hostile_file_system_fails_closed(tmp_path: Path) -> None:
    """A symlink loop for /etc/passwd, a setuid-root file whose name holds a newline (debugfs
    cannot list it unambiguously) and a world-writable root: never a pass."""
    if os.geteuid() != 0:
        unavailable("making a file system with foreign owners needs root")
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (src / "etc" / "passwd").symlink_to("passwd2")
    (src / "etc" / "passwd2").symlink_to("passwd")
    (src / "etc" / "group").write_text("root:x:0:\n")
    evil = src / "usr" / "bin" / "passwd\netc"
    shutil.copy("/bin/dash", evil)
    evil.chmod(0o4755)
    src.chmod(0o777)
    disk = _qcow2_from(src, tmp_path / "hostile.qcow2")
    before = _leftovers()
    rc, report, err, rss = _no_boot(disk, tmp_path / "home")
    assert rc == 1, err
    results = {x["rule_id"]: x for x in report["results"]}
    for rule in ("fs.suid-sgid-allowlist", "fs.world-writable", "fs.no-unowned-files"):
        assert results[rule]["status"] == "error", results[rule]
        assert "passed a limit" in results[rule]["reason"], results[rule]
        shown = " ".join(results[rule]["evidence"])
        assert "declares no owner and mode for /usr/bin/passwd\\netc" in shown, shown
    # the looping /etc/passwd does not resolve: no account table, so no pass
    assert results["accounts.uid0-only-root"]["status"] == "failed"
    assert rss < 150, rss
    assert _leftovers() == before


def test_a_file_larger_than_the_disk_is_refused(tmp_path: Path) -> None:
    """A sparse file far larger than the disk: copying it out is bounded by the disk's virtual
    size, so the read stops with an error (exit 3), leaving nothing behind."""
    if os.geteuid() != 0:
        unavailable("making the test file system needs root")
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    with (src / "huge").open("wb") as f:
        f.truncate(16 << 30)
        f.write(b"end")
    disk = _qcow2_from(src, tmp_path / "huge.qcow2")
    before = _leftovers()
    rc, _, err, rss = _no_boot(disk, tmp_path / "home")
    assert rc == 3, err
    assert "larger than the disk" in err and "hint:" in err
    assert rss < 150, rss
    assert _leftovers() == before
