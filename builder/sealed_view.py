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

Only a whole-disk ext2/3/4 file system (what scripts/vm-base.sh and harden build make) is read;
a partitioned disk is refused with a hint.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
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
MAX_ENTRIES = 2_000_000
MAX_DEPTH = 128


@dataclass(frozen=True)
class FileMeta:
    """What the image declares for one file (not what the extracted copy has on disk)."""

    mode: int  # full st_mode (type and permission bits, setuid included)
    uid: int
    gid: int


@dataclass(frozen=True)
class ExtractedTree:
    root: Path  # the image's "/" as a directory
    files: Mapping[bytes, FileMeta]  # b"etc/passwd" -> what the image declares
    problems: tuple[str, ...] = ()

    def meta(self, relpath: bytes | str) -> FileMeta | None:
        """Owner and mode the image declares for ``relpath`` (relative to the image's root)."""
        key = relpath.encode() if isinstance(relpath, str) else relpath
        return self.files.get(key.strip(b"/"))


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


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise TargetError(f"{tool} is not installed", hint=f"apt-get install {package}")


def _give(path: Path, user: QemuUser | None, mode: int) -> None:
    if user is not None:
        os.chown(path, user.uid, user.gid)
    path.chmod(mode)


@contextlib.contextmanager
def extracted_tree(path: Path, *, max_size: int | None = None) -> Iterator[ExtractedTree]:
    """Yield the file tree of the sealed template ``path`` (see the module docstring)."""
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
            if f.read(2) != b"\x53\xef":
                raise DiskImageError(
                    f"{disk.path}: no ext2/3/4 file system at the start of the disk",
                    hint="harden reads whole-disk ext4 templates (as scripts/vm-base.sh makes); "
                    "boot the template to verify a partitioned disk",
                )
        _give(raw, user, 0o400)
        out = work / "root"
        out.mkdir(mode=0o700)
        _give(out, user, 0o700)
        as_user = (user.uid, user.gid, user.groups) if user else None
        try:
            children.run(
                [DEBUGFS, "-R", f"rdump / {out}", str(raw)],
                timeout=RDUMP_TIMEOUT,
                max_output=16 << 20,
                file_limit=disk.virtual_size,  # no extracted file can be larger than the disk
                user=as_user,
            )
            files, problems = _metadata(raw, work, as_user)
        except children.ChildFailed as e:
            err = e.stderr.decode("utf-8", "replace").strip()[-1000:]
            raise DiskImageError(
                f"{disk.path}: debugfs could not read the file system: {err or e}",
                hint="the file system is damaged; e2fsck on a copy shows the details",
            ) from e
        raw.unlink()  # the tree is all the caller gets; free the space now
        yield ExtractedTree(out, files, tuple(problems))


def _metadata(
    raw: Path, work: Path, user: tuple[int, int, tuple[int, ...]] | None
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
