"""Unpack a container file system (a ``docker export`` tar stream) into a private directory,
refusing whatever could reach outside it.

The tar comes from an image someone else built. Rules, checked per member before anything is
written:

- names are relative, normalised, without ``..`` (else the whole export is refused);
- no member is written through a symlink: every parent directory of a member (and of a hard
  link's target) must be a real directory inside the root, checked with ``lstat`` at write time;
- hard links point at an earlier member inside the root;
- device nodes and FIFOs are skipped (a scanner never needs them; counted in ``skipped``);
- symlinks are kept as symlinks (their targets are only ever read relative to the chroot by the
  scanner, never followed while unpacking);
- numeric owners and modes are kept (ownership and setuid bits are what a scan checks); the
  private directory itself is mode 0700, so nothing unpacked is reachable by other users;
- bounded: entries, total bytes.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast

from harden.errors import InputError

MAX_ENTRIES = 500_000
MAX_TOTAL_BYTES = 16 * 1024 * 1024 * 1024


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class UnsafeArchive(InputError):
    """The export contains a member harden will not unpack."""


@dataclass(frozen=True)
class Unpacked:
    root: Path
    entries: int
    bytes: int
    skipped: tuple[str, ...]  # device nodes, FIFOs (names)


def _clean_name(name: str) -> str:
    if name.startswith("/") or "\x00" in name:
        raise UnsafeArchive(f"export member {name[:200]!r} has an absolute path")
    norm = posixpath.normpath(name)
    if norm == ".":
        return ""
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise UnsafeArchive(f"export member {name[:200]!r} leaves the root")
    return norm


def _check_parents(root: Path, rel: str) -> None:
    """Every existing parent of ``rel`` under ``root`` is a real directory (no symlink)."""
    parts = rel.split("/")[:-1]
    cur = root
    for part in parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return  # created by tarfile as a plain directory
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(
                f"export member {rel[:200]!r} would be written through {part!r}, "
                "which is not a directory (a symlink or a file)"
            )


def unpack_export(stream: Readable, root: Path) -> Unpacked:
    """Unpack the tar ``stream`` into ``root`` (an existing, empty, private directory)."""
    entries = 0
    total = 0
    skipped: list[str] = []
    try:
        with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|*") as tf:
            for member in tf:
                entries += 1
                if entries > MAX_ENTRIES:
                    raise UnsafeArchive(f"export has more than {MAX_ENTRIES} entries")
                rel = _clean_name(member.name)
                if not rel:
                    continue
                if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                    skipped.append(rel)
                    continue
                if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                    skipped.append(rel)
                    continue
                total += max(0, member.size)
                if total > MAX_TOTAL_BYTES:
                    raise UnsafeArchive(f"export is larger than {MAX_TOTAL_BYTES} bytes")
                _check_parents(root, rel)
                if member.islnk():
                    target = _clean_name(member.linkname)
                    if not target:
                        raise UnsafeArchive(f"hard link {rel[:200]!r} points at the root")
                    _check_parents(root, target)
                    tpath = root / target
                    if not tpath.exists() and not tpath.is_symlink():
                        raise UnsafeArchive(f"hard link {rel[:200]!r} points at a missing member")
                    member.linkname = target
                member.name = rel
                dest = root / rel
                if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                    dest.unlink()  # a later layer replaces the entry, never writes through it
                tf.extract(member, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")
    except tarfile.TarError as e:
        raise UnsafeArchive(f"the export is not a readable tar stream ({e})") from e
    except OSError as e:  # e.g. a file member where the export already made a directory
        raise UnsafeArchive(f"cannot unpack the export ({e.strerror}: {e.filename})") from e
    return Unpacked(root, entries, total, tuple(skipped))


def resolve_in_root(root: Path, path: str, *, max_hops: int = 40) -> Path | None:
    """``path`` as seen from inside ``root``: symlinks followed with ``root`` as ``/``, never
    leaving it. None when it does not exist, loops or is not a regular file."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > max_hops:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    final = root.joinpath(*resolved)
    try:
        st = os.lstat(final)
    except OSError:
        return None
    return final if stat.S_ISREG(st.st_mode) else None


def read_os_release(root: Path, max_bytes: int = 64 * 1024) -> dict[str, str]:
    """``/etc/os-release`` (else ``/usr/lib/os-release``) of the root, parsed, bounded."""
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        path = resolve_in_root(root, candidate)
        if path is None:
            continue
        with path.open("rb") as f:
            text = f.read(max_bytes).decode("utf-8", "replace")
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().isidentifier():
                out[key.strip()] = value.strip().strip("\"'")
        return out
    return {}
