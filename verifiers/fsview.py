"""Read-only views of a file system that harden reads itself, without running anything in it.

:class:`FsView` is the small protocol the static fact gathering needs (``lstat``, ``read``,
``listdir``, ``walk``, ``resolve``). Two implementations:

- :class:`LayerFs`: a container image's layers (uncompressed tar files) applied in order with
  whiteouts (``.wh.NAME`` removes NAME, ``.wh..wh..opq`` hides everything below a directory from
  the lower layers) into an in-memory index of tar headers. File contents are read lazily from the
  layer that holds them (by offset), only for the few files a plan asks for, with a byte limit.
- :class:`DirFs`: a host directory (e.g. a VM disk extracted with ``debugfs rdump``); ``lstat``
  only, links are resolved inside the root and never followed out of it.

Paths are bytes, absolute, normalised (``b"/etc/passwd"``); any byte but NUL may be in a name.
Every limit is in bytes or entries; exceeding one raises :class:`LimitExceeded`, never truncates.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from harden.errors import InputError
from harden.verifiers import tarscan

MAX_ENTRIES = 2_000_000  # entries in the merged index (a large distro image has ~100k)
MAX_NAME_BYTES = 4096
MAX_LINK_DEPTH = 40
WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"

FILE, DIR, SYMLINK, CHAR, BLOCK, FIFO, SOCKET = (
    "file",
    "dir",
    "symlink",
    "char",
    "block",
    "fifo",
    "socket",
)
# what GNU stat %F prints for each type (verifiers.facts keeps the shell path's format)
STAT_TYPE = {
    FILE: "regular file",
    DIR: "directory",
    SYMLINK: "symbolic link",
    CHAR: "character special file",
    BLOCK: "block special file",
    FIFO: "fifo",
    SOCKET: "socket",
}


class LimitExceeded(InputError):
    """A read would pass a limit in bytes or entries: an error, never a silent cut."""


@dataclass(frozen=True, slots=True)
class Node:
    """One entry: what the tar header (or lstat) says. ``mode`` holds the 12 permission bits."""

    path: bytes
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    link: bytes | None = None  # symlink target
    layer: int = -1  # LayerFs: which layer holds the data
    offset: int = -1  # LayerFs: offset of the data in that layer's tar
    hardlink: bytes | None = None  # LayerFs: a hard link's target member (data lives there)


class FsView(Protocol):
    def lstat(self, path: bytes) -> Node | None:
        """The entry itself (a symlink is not followed); None when absent."""
        ...

    def listdir(self, path: bytes) -> list[bytes]:
        """Names in a directory (not followed if ``path`` is a link), sorted bytewise."""
        ...

    def read(self, node: Node, limit: int) -> bytes:
        """The content of a regular file; more than ``limit`` bytes raises LimitExceeded."""
        ...

    def walk(self) -> Iterator[Node]:
        """Every entry, parents before children."""
        ...


def norm(path: bytes) -> bytes:
    """Absolute, no ``.``/empty components; ``..`` is resolved lexically and stops at the root."""
    # the common case (a layer member "usr/bin/su" or "etc/"): without "//" and "/." there is
    # no empty, "." or ".." component once the trailing slashes are gone
    fast = (path if path[:1] == b"/" else b"/" + path).rstrip(b"/")
    if b"//" not in fast and b"/." not in fast:
        return fast or b"/"
    parts: list[bytes] = []
    for c in path.split(b"/"):
        if c in (b"", b"."):
            continue
        if c == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(c)
    return b"/" + b"/".join(parts)


def parent(path: bytes) -> bytes:
    head = path.rsplit(b"/", 1)[0]
    return head or b"/"


def resolve(view: FsView, path: bytes, *, follow_last: bool = True) -> Node | None:
    """Resolve ``path`` inside the view's root: symlinks (absolute ones are relative to the
    root, never the host), at most MAX_LINK_DEPTH of them. None when it does not exist."""
    todo = [c for c in path.split(b"/") if c]
    cur = b"/"
    node = view.lstat(b"/")
    depth = 0
    while todo:
        c = todo.pop(0)
        if c == b".":
            continue
        if c == b"..":
            cur = parent(cur)
            node = view.lstat(cur)
            continue
        nxt = norm(cur + b"/" + c)
        node = view.lstat(nxt)
        if node is None:
            return None
        if node.type == SYMLINK and (todo or follow_last):
            depth += 1
            if depth > MAX_LINK_DEPTH:
                return None  # a loop: like ELOOP, the path does not resolve
            target = node.link or b""
            todo = [x for x in target.split(b"/") if x] + todo
            cur = b"/" if target.startswith(b"/") else cur
            node = view.lstat(cur)
            continue
        if todo and node.type != DIR:
            return None
        cur = nxt
    return node


# ---------------------------------------------------------------- image layers


class LayerEntry(NamedTuple):
    """One member of a layer tar, as recorded in the layer index (a named tuple: a large layer
    has 100,000 of them, built on every cold read and every index load)."""

    path: bytes
    type: str  # a Node type, or "hardlink", "whiteout", "opaque"
    mode: int
    uid: int
    gid: int
    size: int
    link: bytes | None
    offset: int


def read_path(view: FsView, path: bytes, limit: int) -> bytes | None:
    """Content of the regular file at ``path`` (links resolved inside the root); None when it is
    not a regular file. More than ``limit`` bytes raises LimitExceeded."""
    node = resolve(view, path)
    if node is None or node.type != FILE:
        return None
    return view.read(node, limit)


_TAR_TYPES = {
    tarscan.REG: FILE,
    tarscan.DIR: DIR,
    tarscan.SYM: SYMLINK,
    tarscan.LINK: "hardlink",
    tarscan.CHR: CHAR,
    tarscan.BLK: BLOCK,
    tarscan.FIFO: FIFO,
}  # sockets cannot be in a tar; other member types are refused by tarscan


def index_layer(
    fileobj: BinaryIO | tarscan.Source, *, max_entries: int = MAX_ENTRIES
) -> list[LayerEntry]:
    """The members of one uncompressed layer tar (a seekable file, or a layer streaming into
    its cache file: only the headers are read, the data of every member is skipped). The tar is
    read by :mod:`verifiers.tarscan`, which refuses what Python's tarfile and the engine's
    reader could read differently."""
    entries: list[LayerEntry] = []
    append = entries.append
    try:
        for m in tarscan.scan(fileobj):
            if len(entries) >= max_entries:
                raise LimitExceeded(f"a layer has more than {max_entries} entries")
            raw, link = m.name, m.linkname or None
            if len(raw) > MAX_NAME_BYTES:
                raise LimitExceeded(f"a layer entry name is longer than {MAX_NAME_BYTES} bytes")
            if link is not None and len(link) > MAX_NAME_BYTES:
                raise LimitExceeded(f"a layer link target is longer than {MAX_NAME_BYTES} bytes")
            path = norm(raw)
            base = path.rsplit(b"/", 1)[-1]
            if base == OPAQUE:
                kind = "opaque"
                path = parent(path)
            elif base.startswith(WHITEOUT):
                kind = "whiteout"
                path = norm(parent(path) + b"/" + base[len(WHITEOUT) :])
            else:
                kind = _TAR_TYPES[m.type]
                if kind == "hardlink" and link is not None:
                    link = norm(link)
            size = m.size if kind == FILE else 0
            append(LayerEntry(path, kind, m.mode & 0o7777, m.uid, m.gid, size, link, m.offset_data))
    except tarscan.TarLimitError as e:
        raise LimitExceeded(f"a layer is not a readable tar archive: {e.message}") from e
    except tarscan.TarFormatError as e:
        raise InputError(f"a layer is not a readable tar archive: {e.message}") from e
    return entries


class LayerFs:
    """The merged file system of an image: layer indexes applied bottom to top."""

    def __init__(
        self, layers: Iterable[tuple[Path, list[LayerEntry]]], *, max_entries: int = MAX_ENTRIES
    ) -> None:
        self._files: list[Path] = []
        self._nodes: dict[bytes, Node] = {b"/": Node(b"/", DIR, 0o755, 0, 0, 0)}
        self._children: dict[bytes, set[bytes]] = {b"/": set()}
        self._max = max_entries
        for i, (tar_path, entries) in enumerate(layers):
            self._files.append(tar_path)
            self._apply(i, entries)

    # ---- building
    def _remove(self, path: bytes) -> None:
        node = self._nodes.pop(path, None)
        if node is None:
            return
        for child in list(self._children.pop(path, ())):
            self._remove(child)
        siblings = self._children.get(parent(path))
        if siblings is not None:
            siblings.discard(path)

    def _ensure_dir(self, path: bytes) -> None:
        if path in self._nodes and self._nodes[path].type == DIR:
            return
        if path != b"/":
            self._ensure_dir(parent(path))
        self._remove(path)
        self._put(Node(path, DIR, 0o755, 0, 0, 0))

    def _put(self, node: Node) -> None:
        if node.path not in self._nodes and len(self._nodes) >= self._max:
            raise LimitExceeded(f"the image has more than {self._max} file system entries")
        self._nodes[node.path] = node
        self._children.setdefault(parent(node.path), set()).add(node.path)
        if node.type == DIR:
            self._children.setdefault(node.path, set())

    def _apply(self, layer: int, entries: list[LayerEntry]) -> None:
        # deletions first: a whiteout or an opaque marker hides the LOWER layers only, whatever
        # its position in this layer's tar
        for e in entries:
            if e.type == "opaque":
                for child in list(self._children.get(e.path, ())):
                    self._remove(child)
            elif e.type == "whiteout":
                self._remove(e.path)
        nodes, children = self._nodes, self._children
        by_path: dict[bytes, Node] = {}
        for path, kind, mode, uid, gid, size, link, offset in entries:
            if kind == "opaque" or kind == "whiteout" or path == b"/":
                continue
            if kind == "hardlink":
                target = by_path.get(link or b"") or nodes.get(link or b"")
                if target is None or target.type != FILE:
                    continue  # a dangling hard link has no content to show
                node = Node(
                    path, FILE, mode, uid, gid, target.size, None, target.layer, target.offset
                )
            else:
                node = Node(path, kind, mode, uid, gid, size, link, layer, offset)
            # what _ensure_dir(parent) and _put do, with the parent computed once and the
            # common case (the parent is a directory already, the path is new) inline
            up = path.rpartition(b"/")[0] or b"/"
            above = nodes.get(up)
            if above is None or above.type != DIR:
                self._ensure_dir(up)
            old = nodes.get(path)
            if old is not None and not (old.type == DIR and node.type == DIR):
                self._remove(path)
                old = None
            if old is None and len(nodes) >= self._max:
                raise LimitExceeded(f"the image has more than {self._max} file system entries")
            nodes[path] = node
            siblings = children.get(up)
            if siblings is None:
                children[up] = {path}
            else:
                siblings.add(path)
            if node.type == DIR and path not in children:
                children[path] = set()
            by_path[path] = node

    # ---- FsView
    def lstat(self, path: bytes) -> Node | None:
        return self._nodes.get(path)

    def listdir(self, path: bytes) -> list[bytes]:
        kids = self._children.get(path)
        if kids is None:
            return []
        return sorted(k.rsplit(b"/", 1)[-1] for k in kids)

    def read(self, node: Node, limit: int) -> bytes:
        if node.type != FILE:
            raise ValueError("not a regular file")
        if node.size > limit:
            raise LimitExceeded(
                f"{display(node.path)} is {node.size} bytes, more than the limit of {limit}"
            )
        if node.size == 0:
            return b""
        with open(self._files[node.layer], "rb") as f:
            f.seek(node.offset)
            data = f.read(node.size)
        if len(data) != node.size:
            raise InputError(f"{display(node.path)}: the cached layer is truncated")
        return data

    def walk(self) -> Iterator[Node]:
        stack = [b"/"]
        while stack:
            path = stack.pop()
            node = self._nodes.get(path)
            if node is None:
                continue
            yield node
            if node.type == DIR:
                stack.extend(sorted(self._children.get(path, ()), reverse=True))

    def __len__(self) -> int:
        return len(self._nodes)


# ---------------------------------------------------------------- a host directory


_TYPES = {
    st.S_IFREG: FILE,
    st.S_IFDIR: DIR,
    st.S_IFLNK: SYMLINK,
    st.S_IFCHR: CHAR,
    st.S_IFBLK: BLOCK,
    st.S_IFIFO: FIFO,
    st.S_IFSOCK: SOCKET,
}


# path -> (st_mode, uid, gid) the file system declares, or None when it is not known
Declared = Callable[[bytes], tuple[int, int, int] | None]


class DirFs:
    """A directory on the host seen as a root file system: lstat only, links never followed
    on the host (they are resolved inside the root by :func:`resolve`).

    With ``declared`` (a sealed VM disk copied out by debugfs, whose copies all belong to one
    unprivileged user and lost their set-id bits) owners and permission bits come from what the
    disk's file system declares. An entry it declares nothing for is taken at its worst (mode
    07777, uid and gid -1: unowned, writable, set-id) and :meth:`walk` refuses it
    (:class:`LimitExceeded`), so it can fail a rule or make it an error, never pass one."""

    def __init__(
        self, root: Path, *, max_entries: int = MAX_ENTRIES, declared: Declared | None = None
    ) -> None:
        self.root = os.fsencode(root.resolve())
        self._max = max_entries
        self._declared = declared
        self._unknown: set[bytes] = set()

    def _host(self, path: bytes) -> bytes:
        return self.root + norm(path) if path != b"/" else self.root

    def lstat(self, path: bytes) -> Node | None:
        try:
            s = os.lstat(self._host(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        kind = _TYPES.get(st.S_IFMT(s.st_mode), FILE)
        link = os.readlink(self._host(path)) if kind == SYMLINK else None
        mode, uid, gid = st.S_IMODE(s.st_mode), s.st_uid, s.st_gid
        if self._declared is not None:
            declared = self._declared(norm(path))
            if declared is None:
                self._unknown.add(norm(path))
                mode, uid, gid = 0o7777, -1, -1
            else:
                mode, uid, gid = st.S_IMODE(declared[0]), declared[1], declared[2]
        return Node(norm(path), kind, mode, uid, gid, s.st_size, link)

    def listdir(self, path: bytes) -> list[bytes]:
        node = self.lstat(path)
        if node is None or node.type != DIR:
            return []
        return sorted(os.listdir(self._host(path)))

    def read(self, node: Node, limit: int) -> bytes:
        if node.type != FILE:
            raise ValueError("not a regular file")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self._host(node.path), flags)
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LimitExceeded(f"{display(node.path)} is larger than the limit of {limit} bytes")
        return data

    def walk(self) -> Iterator[Node]:
        stack = [b"/"]
        seen = 0
        while stack:
            path = stack.pop()
            node = self.lstat(path)
            if node is None:
                continue
            seen += 1
            if seen > self._max:
                raise LimitExceeded(f"more than {self._max} file system entries")
            if node.path in self._unknown:
                raise LimitExceeded(
                    f"the file system declares no owner and mode for {display(node.path)}"
                )
            yield node
            if node.type == DIR:
                base = b"" if path == b"/" else path
                stack.extend(base + b"/" + n for n in reversed(self.listdir(path)))


# ---------------------------------------------------------------- display


def display(path: bytes) -> str:
    """A path for reports: exact and unambiguous. Printable UTF-8 stays; a backslash, control
    characters and bytes that are not UTF-8 are escaped (``\\\\``, ``\\n``, ``\\xNN``), so
    ``/usr/bin/passwd\\netc`` can never be mistaken for ``/usr/bin/passwd``."""
    text = path.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for ch in text:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F or (0x80 <= o < 0xA0) or (not ch.isprintable() and ch != " "):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)
