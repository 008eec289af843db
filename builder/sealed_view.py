"""The file system of a sealed VM template, read without booting it and without mounting it.

:func:`extracted_tree` inspects the image (:func:`builder.disk_image.inspect_disk`: no backing or
data file, size limit, not corrupt), flattens it with ``qemu-img convert -O raw`` into a sparse
temporary file (at most the virtual size limit; only written blocks take space), and copies the
file tree out with ``debugfs -R 'rdump / DIR'`` (e2fsprogs reads the ext4 file system as a plain
file; the host kernel never parses it). It yields an :class:`ExtractedTree` and removes
everything afterwards (also on SIGTERM, SIGHUP, SIGINT).

Containment: the image is hostile, and ``rdump`` writes what the image names (a symlink and then
a file of the same name makes it write through the symlink; a crafted name may contain ``/``).
So debugfs never runs as root: it runs as the unprivileged qemu user (``harden-qemu``); on disk
every extracted file belongs to that user and loses its set-id bits. The owners and modes the
image declares (setuid-root included) come from debugfs's ``ls -p`` of every directory, by
inode, breadth first: :meth:`ExtractedTree.meta`, keyed by the path inside the image (bytes).
Entries debugfs cannot list unambiguously (a name with a newline) are in
:attr:`ExtractedTree.problems`: a reader reports them, never skips them silently.

Readers of the tree must treat it as hostile too: symlinks point anywhere (never follow them out
of :attr:`ExtractedTree.root`), names are any bytes.

A whole-disk ext2/3/4 file system is read as it is. A GPT-partitioned disk (what
scripts/vm-base.sh makes: one ext4 file system per ANSSI-BP28 partition) is read as the booted
system would see it: partition 1 is "/", and every ext2/3/4 line of its ``/etc/fstab`` naming
``/dev/vdaN`` is copied out at its mount point (shallowest first), the mounted file system's
owners and modes replacing what the root file system had below that point. Partition offsets
come from harden's own bounded read of the GPT; debugfs opens each file system as
``disk.raw?offset=N``. An fstab line harden cannot map, a mount point that is not a plain
directory of the tree, or a partition outside the disk is a problem (never silently skipped).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from harden.builder import children
from harden.builder.children import cleanup_on_signals
from harden.builder.disk_image import QEMU_IMG, DiskImageError, inspect_disk, json_filename
from harden.builder.qemu import QemuUser, qemu_user
from harden.errors import TargetError

DEBUGFS = "debugfs"
CONVERT_TIMEOUT = 600.0
RDUMP_TIMEOUT = 600.0
_EXT_MAGIC_OFFSET = 1024 + 56
_ENTRY_RE = re.compile(rb"^/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/$", re.DOTALL)
_COMMAND = b"debugfs: ls -p <"
ROOT_INODE = 2
_ROOT_DOT = re.compile(rb"^/2/([0-7]+)/(\d+)/(\d+)/\./", re.MULTILINE)
MAX_ENTRIES = 2_000_000
MAX_DEPTH = 128
SECTOR = 512
MAX_PARTITIONS = 128
FSTAB_LIMIT = 64 << 10
_EXT_FSTYPES = frozenset({"ext2", "ext3", "ext4"})
_VDA = re.compile(r"^/dev/vda(\d{1,3})$")


@dataclass(frozen=True)
class FileMeta:
    """What the image declares for one file (not what the extracted copy has on disk)."""

    mode: int  # full st_mode (type and permission bits, setuid included)
    uid: int
    gid: int


@dataclass(frozen=True)
class ExtractedTree:
    root: Path  # the image's "/" as a directory
    files: Mapping[bytes, FileMeta]  # b"etc/passwd" -> what the image declares (b"": the root)
    problems: tuple[str, ...] = ()
    digest: str | None = None  # sha256:<hex> of the inspected qcow2 file (with digest=True)

    def meta(self, relpath: bytes | str) -> FileMeta | None:
        """Owner and mode the image declares for ``relpath`` (relative to the image's root)."""
        key = relpath.encode() if isinstance(relpath, str) else relpath
        return self.files.get(key.strip(b"/"))

    def declared(self, path: bytes) -> tuple[int, int, int] | None:
        """``(st_mode, uid, gid)`` for :class:`verifiers.fsview.DirFs` (``declared=``)."""
        m = self.meta(path)
        return None if m is None else (m.mode, m.uid, m.gid)


def parse_ls_p(output: bytes) -> tuple[dict[int, list[tuple[int, FileMeta, bytes]]], list[str]]:
    """debugfs ``-f`` output of ``ls -p <INO>`` commands -> entries per directory inode.

    Each entry line is ``/INO/MODE/UID/GID/NAME/SIZE/``; a NAME may itself hold ``/``.
    """
    listing: dict[int, list[tuple[int, FileMeta, bytes]]] = {}
    problems: list[str] = []
    current: int | None = None
    for line in output.split(b"\n"):
        if line.startswith(_COMMAND):
            current = int(line[len(_COMMAND) :].rstrip(b">"))
            listing.setdefault(current, [])
            continue
        if not line or current is None:
            continue
        m = _ENTRY_RE.match(line)
        if m is None:
            problems.append(f"directory inode {current}: unparseable entry {line[:200]!r}")
            continue
        ino, mode, uid, gid, name = m.group(1, 2, 3, 4, 5)
        if name in (b".", b"..") or ino == b"0":
            continue
        listing[current].append((int(ino), FileMeta(int(mode, 8), int(uid), int(gid)), name))
    return listing, problems


def gpt_partitions(data: bytes, disk_size: int) -> dict[int, int]:
    """Partition number -> byte offset, from the GPT header and entries at the start of a raw
    disk (``data``: its first bytes). Empty when there is no GPT; bounded and checked against
    ``disk_size``, a malformed table is refused."""
    header = data[SECTOR : SECTOR + 92]
    if header[:8] != b"EFI PART":
        return {}
    first_lba = int.from_bytes(header[72:80], "little")
    count = int.from_bytes(header[80:84], "little")
    size = int.from_bytes(header[84:88], "little")
    end = first_lba * SECTOR + count * size
    if not (1 <= count <= MAX_PARTITIONS and 128 <= size <= 1024 and end <= len(data)):
        raise DiskImageError(
            f"unreadable GPT ({count} entries of {size} bytes at sector {first_lba}): refused",
            hint="harden reads GPT disks with at most 128 entries at the start of the disk",
        )
    out: dict[int, int] = {}
    for i in range(count):
        entry = data[first_lba * SECTOR + i * size : first_lba * SECTOR + (i + 1) * size]
        if entry[:16] == bytes(16):
            continue  # an unused entry
        start = int.from_bytes(entry[32:40], "little")
        last = int.from_bytes(entry[40:48], "little")
        if not (0 < start <= last and (last + 1) * SECTOR <= disk_size):
            raise DiskImageError(
                f"GPT partition {i + 1} (sectors {start}-{last}) lies outside the disk: refused"
            )
        out[i + 1] = start * SECTOR
    return out


def fstab_mounts(text: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(mount point, partition number) of every ext2/3/4 line naming ``/dev/vdaN`` except "/",
    shallowest first, and the problems of the lines harden cannot map."""
    mounts: list[tuple[str, int]] = []
    problems: list[str] = []
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 3 or fields[2] not in _EXT_FSTYPES:
            continue
        device, point = fields[0], fields[1].replace("\\040", " ")
        m = _VDA.match(device)
        parts = [p for p in point.split("/") if p]
        if m is None:
            problems.append(f"/etc/fstab: cannot map {device} (mounted at {point}) to a partition")
        elif not point.startswith("/") or any(p in (".", "..") for p in parts):
            problems.append(f"/etc/fstab: mount point {point!r} is not a plain absolute path")
        elif parts:
            mounts.append(("/".join(parts), int(m.group(1))))
    mounts.sort(key=lambda mp: mp[0].count("/"))
    return mounts, problems


def _read_small(path: Path, limit: int) -> bytes | None:
    """A regular file of the extracted (hostile) tree, never through a symlink, at most
    ``limit`` bytes; None when it is not there or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def _plain_dir(root: Path, relative: str) -> Path | None:
    """``root/relative`` when every component is a real directory (no symlink), else None."""
    here = root
    for part in relative.split("/"):
        here = here / part
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
    return here


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise TargetError(f"{tool} is not installed", hint=f"apt-get install {package}")


def _check_reachable(work: Path, user: QemuUser | None) -> None:
    """debugfs runs as the qemu user and opens files under ``work`` by path: every folder above
    it must let that user pass (a TMPDIR inside a private folder does not)."""
    if user is None:
        return
    for folder in work.parents:
        st = folder.stat()
        if st.st_uid == user.uid or st.st_mode & 0o001:
            continue
        if st.st_gid in (user.gid, *user.groups) and st.st_mode & 0o010:
            continue
        raise TargetError(
            f"{folder} (mode {st.st_mode & 0o7777:o}) does not let the {user.name} user reach "
            f"the temporary folder where harden reads the disk",
            hint="set TMPDIR to a folder every user can pass through, such as /tmp",
        )


def _give(path: Path, user: QemuUser | None, mode: int) -> None:
    if user is not None:
        os.chown(path, user.uid, user.gid)
    path.chmod(mode)


@contextlib.contextmanager
def extracted_tree(
    path: Path, *, max_size: int | None = None, digest: bool = False
) -> Iterator[ExtractedTree]:
    """Yield the file tree of the sealed template ``path`` (see the module docstring); with
    ``digest`` its :attr:`ExtractedTree.digest` is the sha256 of the very file inspected."""
    _need(QEMU_IMG, "qemu-utils")
    _need(DEBUGFS, "e2fsprogs")
    user = qemu_user()
    with (
        cleanup_on_signals(),
        inspect_disk(path, max_size=max_size) as disk,
        tempfile.TemporaryDirectory(prefix="harden-sealed-view-") as tmp,
    ):
        work = Path(tmp)
        work.chmod(0o711)  # the qemu user may pass through, not list
        _check_reachable(work, user)
        # the file's digest is computed while it is flattened and copied out (pread: no shared
        # offset); on a failure the thread's result is simply never used
        hashed: list[str] = []
        hasher = threading.Thread(target=lambda: hashed.append(disk.sha256()), daemon=True)
        if digest:
            hasher.start()
        raw = work / "disk.raw"
        source = json_filename(disk.spec())
        try:
            children.run(
                [QEMU_IMG, "convert", "-q", "-O", "raw", source, str(raw)],
                timeout=CONVERT_TIMEOUT,
                pass_fds=(disk.fd,),
                file_limit=disk.virtual_size + 1,  # sparse; bounded by the inspected size
            )
        except children.ChildFailed as e:
            err = e.stderr.decode("utf-8", "replace").strip()[-1000:]
            raise TargetError(
                f"cannot flatten {disk.path} to raw: {err or e}", hint="check free disk space"
            ) from e
        with raw.open("rb") as f:
            f.seek(_EXT_MAGIC_OFFSET)
            whole_disk = f.read(2) == b"\x53\xef"
            f.seek(0)
            head = f.read(SECTOR * 34)  # protective MBR, GPT header, 128 entries of 128 bytes
        partitions = {} if whole_disk else gpt_partitions(head, disk.virtual_size)
        if not whole_disk and not _is_ext(raw, partitions.get(1)):
            raise DiskImageError(
                f"{disk.path}: no ext2/3/4 file system on the disk or on its GPT partition 1",
                hint="harden reads whole-disk ext4 templates and GPT disks whose partition 1 is "
                "an ext4 root (as scripts/vm-base.sh makes); boot the template to verify others",
            )
        _give(raw, user, 0o400)
        out = work / "root"
        out.mkdir(mode=0o700)
        _give(out, user, 0o700)
        as_user = (user.uid, user.gid, user.groups) if user else None
        root_fs = f"{raw}?offset={partitions[1]}" if partitions else str(raw)
        try:
            files, problems = _copy_out(root_fs, out, work, as_user, disk.virtual_size)
            if partitions:
                fstab = _read_small(out / "etc" / "fstab", FSTAB_LIMIT)
                mounts, bad = fstab_mounts((fstab or b"").decode("utf-8", "replace"))
                problems += bad
                if fstab is None:
                    problems.append("/etc/fstab of partition 1 is missing or not a small file")
                for point, number in mounts:
                    target = _plain_dir(out, point)
                    if number not in partitions or target is None:
                        problems.append(
                            f"/etc/fstab: /dev/vda{number} at /{point}: "
                            + ("no such partition" if target else "not a plain directory")
                        )
                        continue
                    for key in [k for k in files if k.startswith(point.encode() + b"/")]:
                        del files[key]  # hidden by the mounted file system
                    _give(target, user, 0o700)
                    sub, bad = _copy_out(
                        f"{raw}?offset={partitions[number]}",
                        target,
                        work,
                        as_user,
                        disk.virtual_size,
                    )
                    problems += bad
                    prefix = point.encode()
                    for key, meta in sub.items():
                        files[prefix + b"/" + key if key else prefix] = meta
        except children.ChildFailed as e:
            if e.returncode == -signal.SIGXFSZ:
                raise DiskImageError(
                    f"{disk.path}: a file in its file system is larger than the disk "
                    f"({disk.virtual_size} bytes): refused",
                    hint="a sparse file beyond the disk's size is not a sealed template harden "
                    "reads; boot the template to verify it",
                ) from e
            err = e.stderr.decode("utf-8", "replace").strip()[-1000:]
            raise DiskImageError(
                f"{disk.path}: debugfs could not read the file system: {err or e}",
                hint="the file system is damaged; e2fsck on a copy shows the details",
            ) from e
        raw.unlink()  # the tree is all the caller gets; free the space now
        if digest:
            hasher.join()
            if not hashed:
                raise TargetError(f"cannot read {disk.path} to compute its digest")
        yield ExtractedTree(out, files, tuple(problems), hashed[0] if digest else None)


def _is_ext(raw: Path, offset: int | None) -> bool:
    if offset is None:
        return False
    with raw.open("rb") as f:
        f.seek(offset + _EXT_MAGIC_OFFSET)
        return f.read(2) == b"\x53\xef"


def _copy_out(
    fs: str,
    into: Path,
    work: Path,
    user: tuple[int, int, tuple[int, ...]] | None,
    size_limit: int,
) -> tuple[dict[bytes, FileMeta], list[str]]:
    """``rdump`` the file system ``fs`` (``disk.raw`` or ``disk.raw?offset=N``) into ``into`` as
    the unprivileged user, then list its declared owners and modes."""
    children.run(
        [DEBUGFS, "-R", f"rdump / {into}", fs],
        timeout=RDUMP_TIMEOUT,
        max_output=16 << 20,
        file_limit=size_limit,  # no extracted file can be larger than the disk
        user=user,
    )
    return _metadata(fs, work, user)


def _metadata(
    raw: Path | str, work: Path, user: tuple[int, int, tuple[int, ...]] | None
) -> tuple[dict[bytes, FileMeta], list[str]]:
    """Owner and mode of every entry, from ``ls -p`` by inode, one debugfs run per depth."""
    files: dict[bytes, FileMeta] = {}
    problems: list[str] = []
    level: dict[int, bytes] = {ROOT_INODE: b""}
    seen = {ROOT_INODE}
    commands = work / "commands"
    for _depth in range(MAX_DEPTH):
        if not level:
            return files, problems
        commands.write_bytes(b"".join(b"ls -p <%d>\n" % ino for ino in level))
        if user is not None:
            os.chown(commands, user[0], user[1])
        proc = children.run(
            [DEBUGFS, "-f", str(commands), str(raw)],
            timeout=RDUMP_TIMEOUT,
            max_output=256 << 20,
            user=user,
        )
        listing, bad = parse_ls_p(proc.stdout)
        problems += bad
        if not files:  # the root's own owner and mode: its "." entry
            m = _ROOT_DOT.search(proc.stdout)
            if m is not None:
                files[b""] = FileMeta(int(m.group(1), 8), int(m.group(2)), int(m.group(3)))
        following: dict[int, bytes] = {}
        for dir_ino, prefix in level.items():
            for ino, meta, name in listing.get(dir_ino, []):
                path = prefix + b"/" + name if prefix else name
                files[path] = meta
                if stat.S_ISDIR(meta.mode) and ino not in seen:
                    seen.add(ino)
                    following[ino] = path
        if len(files) > MAX_ENTRIES:
            problems.append(f"more than {MAX_ENTRIES} entries: listing stopped")
            return files, problems
        level = following
    problems.append(f"directories nested deeper than {MAX_DEPTH}: listing stopped")
    return files, problems
