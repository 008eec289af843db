"""Gather the facts of a :class:`~verifiers.facts.FactPlan` from a file-system view, running
nothing: the same sections the shell script prints, so :mod:`verifiers.checks` works unchanged.

Harden parses the dpkg status database, the account files and the configuration files itself.
Every read is bounded in bytes (and the account tables in entries); a section whose source passes
a limit is recorded in ``Facts.limits`` with the evidence, and every rule that reads it becomes an
``error`` result: never a silent truncation, never a pass. Paths come from the view as bytes and
are written with :func:`verifiers.fsview.display` (exact, escaped), so a name with a newline can
never match an allow-list entry by being cut.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator

from harden.verifiers.facts import (
    MODPROBE_DIRS,
    SYSCTL_DIRS,
    SYSCTL_FILES,
    UNIT_DIRS,
    FactPlan,
    Facts,
)
from harden.verifiers.fsview import (
    DIR,
    FILE,
    STAT_TYPE,
    SYMLINK,
    FsView,
    LimitExceeded,
    Node,
    display,
    norm,
    parent,
    read_path,
    resolve,
)

MAX_FILE_BYTES = 1 << 20  # a configuration file
MAX_TABLE_BYTES = 32 << 20  # /etc/passwd, shadow, group, gshadow
MAX_TABLE_ENTRIES = 1_000_000
MAX_DPKG_BYTES = 64 << 20  # /var/lib/dpkg/status (a full desktop install is ~5 MB)
MAX_DPKG_FILES = 100_000  # /var/lib/dpkg/status.d entries (distroless)
MAX_GLOB_MATCHES = 100_000
_PRUNE = (b"/proc", b"/sys", b"/dev", b"/run")
_GLOB = re.compile(rb"[*?\[]")

_WANT = {"unknown": "u", "install": "i", "hold": "h", "deinstall": "r", "purge": "p"}
_STATE = {
    "not-installed": "n",
    "config-files": "c",
    "half-installed": "H",
    "unpacked": "U",
    "half-configured": "F",
    "triggers-awaited": "W",
    "triggers-pending": "t",
    "installed": "i",
}


class _Gather:
    def __init__(self, view: FsView) -> None:
        self.view = view
        self.sections: dict[str, str] = {}
        self.status: dict[str, int] = {}
        self.limits: dict[str, str] = {}

    def put(self, name: str, text: str) -> None:
        self.sections[name] = text
        self.status[name] = 0

    def over(self, name: str, why: str) -> None:
        self.sections[name] = ""
        self.status[name] = 0
        self.limits[name] = why

    # ---- reading
    def node(self, path: bytes) -> Node | None:
        """``path`` with every symlink resolved inside the root (test -e / -f semantics)."""
        return resolve(self.view, path)

    def lnode(self, path: bytes) -> Node | None:
        """The entry at ``path`` itself (test -L): the directories on the way are resolved."""
        path = norm(path)
        if path == b"/":
            return self.view.lstat(path)
        d = self.node(parent(path))
        if d is None or d.type != DIR:
            return None
        return self.view.lstat((b"" if d.path == b"/" else d.path) + b"/" + path.rsplit(b"/", 1)[1])

    def read_file(self, path: bytes, limit: int) -> bytes | None:
        """Content of the regular file at ``path`` (links followed); None when not a file."""
        return read_path(self.view, path, limit)

    def file_section(self, name: str, path: bytes, limit: int = MAX_FILE_BYTES) -> None:
        try:
            data = self.read_file(path, limit)
        except LimitExceeded as e:
            self.over(name, e.message)
            return
        if data is not None:
            self.put(name, _text(data))

    def glob(self, pattern: bytes) -> list[bytes]:
        """Like the shell's ``for f in PATTERN``: sorted bytewise, dot files only for a dot."""
        parts = [p for p in pattern.split(b"/") if p]
        paths = [b"/"]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: list[bytes] = []
            for base in paths:
                prefix = b"" if base == b"/" else base
                if not _GLOB.search(part):
                    nxt.append(prefix + b"/" + part)
                    continue
                d = self.node(base)
                if d is None or d.type != DIR:
                    continue
                names = self.view.listdir(d.path)
                for n in names:
                    if n.startswith(b".") and not part.startswith(b"."):
                        continue
                    if fnmatch.fnmatchcase(n, part):
                        nxt.append(prefix + b"/" + n)
                if len(nxt) > MAX_GLOB_MATCHES:
                    raise LimitExceeded(
                        f"{display(pattern)} matches more than {MAX_GLOB_MATCHES} paths"
                    )
            paths = (
                nxt
                if last
                else [p for p in nxt if (n2 := self.node(p)) is not None and n2.type == DIR]
            )
        return sorted(paths)

    def exists(self, path: bytes) -> bool:
        return self.node(path) is not None

    def regular_files_in(self, pattern_dir: bytes, suffix: bytes = b"") -> list[bytes]:
        """``for f in DIR/*SUFFIX; do [ -f "$f" ] ...``"""
        return [
            p
            for p in self.glob(pattern_dir + b"/*" + suffix)
            if (n := self.node(p)) is not None and n.type == FILE
        ]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def gather_static(view: FsView, plan: FactPlan) -> Facts:
    """Every section ``plan.script()`` would print, except ``command:`` and the live state of a
    running system (``systemctl``, ``/proc``), which a file system at rest does not have."""
    g = _Gather(view)
    if g.node(b"/etc/os-release") is not None:
        g.file_section("os-release", b"/etc/os-release")
    else:
        g.file_section("os-release", b"/usr/lib/os-release")
    _packages(g)
    g.put("systemd", "")  # no running systemd in an image at rest
    _stats(g, plan)
    for path in sorted(plan.files):
        g.file_section("file:" + path, _b(path))
        g.put("exists:" + path, "yes" if g.exists(_b(path)) else "")
    for d in sorted(plan.dropin_dirs):
        files = g.regular_files_in(_b(d))
        g.put("dir:" + d, "\n".join(display(f) for f in files))
        for f in files:
            g.file_section("file:" + display(f), f)
    for path in sorted(plan.exists):
        g.put("exists:" + path, "yes" if g.exists(_b(path)) else "")
    if plan.sysctl_keys:
        candidates = [_b(f) for f in SYSCTL_FILES]
        for d in SYSCTL_DIRS:
            candidates += g.regular_files_in(_b(d), b".conf")
        for f in candidates:
            g.file_section("sysctlfile:" + display(f), f)
    for unit in sorted(plan.units):
        g.put("unit:" + unit, _unit(g, _b(unit)))
    if plan.modprobe:
        for d in MODPROBE_DIRS:
            for f in g.regular_files_in(_b(d), b".conf"):
                g.file_section("modprobe:" + display(f), f)
    if plan.mounts:
        g.put("mounts", "")  # an image at rest mounts nothing; mount_option rules see that
        g.file_section("fstab", b"/etc/fstab")
    if plan.suid or plan.world_writable or plan.owners:
        _walk(g, plan.owners)
    if plan.accounts:
        for name in ("passwd", "group", "shadow", "gshadow"):
            _table(g, name)
    return Facts(g.sections, g.status, g.limits)


def _packages(g: _Gather) -> None:
    """``${db:Status-Abbrev}\\t${Package}`` lines from /var/lib/dpkg/status (+ status.d)."""
    texts: list[bytes] = []
    try:
        data = g.read_file(b"/var/lib/dpkg/status", MAX_DPKG_BYTES)
        if data is not None:
            texts.append(data)
        d = g.node(b"/var/lib/dpkg/status.d")
        if d is not None and d.type == DIR:
            names = g.view.listdir(d.path)
            if len(names) > MAX_DPKG_FILES:
                raise LimitExceeded(f"/var/lib/dpkg/status.d has more than {MAX_DPKG_FILES} files")
            total = sum(len(t) for t in texts)
            for n in names:
                extra = g.read_file(d.path + b"/" + n, MAX_DPKG_BYTES)
                if extra is not None:
                    total += len(extra)
                    if total > MAX_DPKG_BYTES:
                        raise LimitExceeded(
                            f"the dpkg database is larger than {MAX_DPKG_BYTES} bytes"
                        )
                    texts.append(extra)
    except LimitExceeded as e:
        g.over("packages", e.message)
        return
    lines = [line for t in texts for line in dpkg_status_lines(_text(t))]
    g.put("packages", "\n".join(lines))


def dpkg_status_lines(text: str) -> Iterator[str]:
    """One ``Status-Abbrev<TAB>Package`` line per stanza of a dpkg status file."""
    for stanza in re.split(r"\n[ \t]*\n", text):
        package = status = None
        for line in stanza.split("\n"):
            if line[:1] in (" ", "\t"):
                continue  # a continuation line (Description, Conffiles)
            key, sep, value = line.partition(":")
            if not sep:
                continue
            k = key.strip().lower()
            if k == "package":
                package = value.strip()
            elif k == "status":
                status = value.split()
        if not package or not status or len(status) != 3:
            continue
        want, flag, state = status
        abbrev = _WANT.get(want, "?") + _STATE.get(state, "?")
        abbrev += " " if flag == "ok" else "R"
        yield f"{abbrev}\t{package}"


def _stats(g: _Gather, plan: FactPlan) -> None:
    if not plan.stat_globs:
        return
    users, groups = _names(g)
    rows: list[str] = []
    for pattern in sorted(plan.stat_globs):
        matched: list[str] = []
        try:
            found = g.glob(_b(pattern))
        except LimitExceeded as e:
            g.over("match:" + pattern, e.message)
            continue
        for p in found:
            node = g.lnode(p)
            if node is None:
                continue
            shown = display(p)
            matched.append(shown)
            kind = STAT_TYPE[node.type]
            if node.type == FILE and node.size == 0:
                kind = "regular empty file"
            rows.append(
                f"{node.mode:o}\t{users.get(node.uid, 'UNKNOWN')}\t"
                f"{groups.get(node.gid, 'UNKNOWN')}\t{kind}\t{shown}"
            )
        g.put("match:" + pattern, "\n".join(matched))
    g.put("stats", "\n".join(rows))


def _names(g: _Gather) -> tuple[dict[int, str], dict[int, str]]:
    """uid -> name and gid -> name from the image's own passwd and group (first entry wins)."""
    out: list[dict[int, str]] = []
    for path in (b"/etc/passwd", b"/etc/group"):
        table: dict[int, str] = {}
        try:
            data = g.read_file(path, MAX_TABLE_BYTES) or b""
        except LimitExceeded:
            data = b""  # the account rules report the limit; names stay unknown here
        for line in _text(data).splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                table.setdefault(int(parts[2]), parts[0])
        out.append(table)
    return out[0], out[1]


def _unit(g: _Gather, unit: bytes) -> str:
    lines: list[str] = []
    for d in UNIT_DIRS:
        node = g.lnode(_b(d) + b"/" + unit)
        if node is not None and node.type == SYMLINK:
            lines.append(f"link {d} {display(node.link or b'')}")
        elif node is not None and g.node(node.path) is not None:
            lines.append(f"file {d}")
    for kind in (b".wants", b".requires"):
        for w in g.glob(b"/etc/systemd/system/*" + kind + b"/" + unit):
            n = g.lnode(w)
            if n is not None and n.type == SYMLINK:
                lines.append(f"wanted {display(w)}")
    return "\n".join(lines)


def _walk(g: _Gather, owners: bool = False) -> None:
    """The one walk for setuid/setgid files, world-writable files and directories, and (with
    ``owners``) entries whose uid has no account in /etc/passwd or gid no group in /etc/group."""
    suid: list[str] = []
    ww: list[str] = []
    unowned: list[str] = []
    ungrouped: list[str] = []
    users, groups = _names(g) if owners else ({}, {})
    try:
        nodes = list(_walked(g))
    except LimitExceeded as e:  # every rule that reads the walk is an error, never a pass
        for name in ("walk", "suid", "world-writable", "unowned", "ungrouped"):
            g.over(name, e.message)
        return
    for node in nodes:
        if owners:
            if node.uid not in users:
                unowned.append(display(node.path))
            if node.gid not in groups:
                ungrouped.append(display(node.path))
        if node.type == FILE:
            if node.mode & 0o6000:
                suid.append(display(node.path))
            if node.mode & 0o002:
                ww.append("file " + display(node.path))
        elif node.type == DIR and node.mode & 0o002 and not node.mode & 0o1000:
            ww.append("dir " + display(node.path))
    g.put("walk", "")
    g.put("suid", "\n".join(suid))
    g.put("world-writable", "\n".join(ww))
    if owners:
        g.put("unowned", "\n".join(unowned))
        g.put("ungrouped", "\n".join(ungrouped))


def _walked(g: _Gather) -> Iterator[Node]:
    for node in g.view.walk():
        if node.path in _PRUNE or node.path.startswith(tuple(p + b"/" for p in _PRUNE)):
            continue
        yield node


def _table(g: _Gather, name: str) -> None:
    path = b"/etc/" + _b(name)
    try:
        data = g.read_file(path, MAX_TABLE_BYTES)
    except LimitExceeded as e:
        g.over(name, e.message)
        return
    if data is None:
        g.put(name, "")
        return
    entries = data.count(b"\n") + 1
    if entries > MAX_TABLE_ENTRIES:
        g.over(name, f"/etc/{name} has {entries} lines, more than the limit of {MAX_TABLE_ENTRIES}")
        return
    g.put(name, _text(data))
