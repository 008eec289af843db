"""apt's configuration as apt reads it, parsed by harden: nothing on the target runs.

:func:`insecure_options` follows apt's own reader (apt-pkg ``ReadConfigFile``): the parts in
``/etc/apt/apt.conf.d`` whose names apt accepts, in byte order, then ``/etc/apt/apt.conf``;
``//``, ``#`` and ``/* */`` comments, scopes in braces (``APT { Get { ... }; };``), ``#clear``
and ``#include``, case-insensitive option names, ``%xx`` escapes in quoted words, the last
assignment wins; a value is true the way apt's ``StringToBool`` says (``1``, ``yes``, ``true``,
``with``, ``on``, ``enable``). ``Binary::NAME::OPTION`` (an option only for one apt binary) counts
as the option. A file apt would refuse (a syntax error) or an ``#include`` of a file harden did
not read is reported, never skipped: the rule fails with that evidence.

:func:`trusted_sources` reads ``sources.list`` and every file in ``sources.list.d`` (one-line and
deb822 form) for the options that switch signature checking off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

APT_CONF = "/etc/apt/apt.conf"
APT_CONF_D = "/etc/apt/apt.conf.d"
SOURCES_LIST = "/etc/apt/sources.list"
SOURCES_D = "/etc/apt/sources.list.d"
INSECURE_OPTIONS = (
    "APT::Get::AllowUnauthenticated",
    "Acquire::AllowInsecureRepositories",
    "Acquire::AllowDowngradeToInsecureRepositories",
    "Acquire::AllowWeakRepositories",
)
TRUST_OPTIONS = ("trusted", "allow-insecure", "allow-weak", "allow-downgrade-to-insecure")
MAX_INCLUDE_DEPTH = 10
_PART_NAME = re.compile(r"^[A-Za-z0-9_\-:.]+$")
_BINARY = re.compile(r"^binary::[^:]+::", re.IGNORECASE)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SOURCE_OPTION = re.compile(
    r"(?:^|[\s\[])(" + "|".join(TRUST_OPTIONS) + r")\s*(?:=|:)\s*([^\s\]]*)", re.IGNORECASE
)


class AptConfError(ValueError):
    """apt would refuse this file (it stops with a syntax error)."""


def string_to_bool(value: str) -> bool | None:
    """apt's ``StringToBool``: True, False, or None (apt then uses the option's default)."""
    v = value.strip()
    try:
        n = int(v, 0)
    except ValueError:
        n = -1
    if n in (0, 1):
        return bool(n)
    low = v.lower()
    if low in {"no", "false", "without", "off", "disable"}:
        return False
    if low in {"yes", "true", "with", "on", "enable"}:
        return True
    return None


def conf_parts(names: Iterable[str]) -> list[str]:
    """The file names in apt.conf.d that apt reads (``GetListOfFilesInDir(dir, "conf", true,
    true)``), in apt's order: run-parts characters, no extension or ``.conf``."""
    out = []
    for n in names:
        if n.startswith(".") or n.endswith(".") or not _PART_NAME.match(n):
            continue
        if "." in n and n.rsplit(".", 1)[1] != "conf":
            continue
        out.append(n)
    return sorted(out, key=lambda n: n.encode("utf-8", "surrogateescape"))


# (kind, item, value, source): kind "set" or "clear"
Op = tuple[str, str, str, str]


def _strip_comments(line: str, in_block: bool) -> tuple[str, bool]:
    out: list[str] = []
    quoted = False
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out), True
            i, in_block = end + 2, False
            continue
        c = line[i]
        if c == '"':
            quoted = not quoted
        elif not quoted:
            if line.startswith("/*", i):
                in_block = True
                i += 2
                continue
            if line.startswith("//", i):
                break
            if c == "#" and not line.startswith(("#clear", "#include"), i):
                break
        out.append(c)
        i += 1
    return "".join(out), in_block


def _words(stmt: str) -> list[str]:
    words: list[str] = []
    cur: list[str] = []
    quoted = started = False
    for c in stmt:
        if c == '"':
            quoted, started = not quoted, True
            continue
        if c.isspace() and not quoted:
            if started:
                words.append("".join(cur))
                cur, started = [], False
            continue
        cur.append(c)
        started = True
    if quoted:
        raise AptConfError("unterminated quote")
    if started:
        words.append("".join(cur))
    return [_PERCENT.sub(lambda m: chr(int(m.group(1), 16)), w) for w in words]


def _terminator(buf: str) -> int:
    quoted = False
    for i, c in enumerate(buf):
        if c == '"':
            quoted = not quoted
        elif not quoted and c in ";{}":
            return i
    return -1


def parse(
    text: str, source: str, read: Callable[[str], str | None] | None = None, depth: int = 0
) -> list[Op]:
    """The assignments and clears of one apt.conf-syntax file, in order (``#include`` expanded
    through ``read``, which returns a file's text or None when harden did not read it)."""
    ops: list[Op] = []
    stack: list[str] = []
    parent = ""
    buf = ""
    in_block = False
    for lineno, raw in enumerate(text.split("\n"), 1):
        line, in_block = _strip_comments(raw, in_block)
        line = line.strip()
        if line:
            buf = f"{buf} {line}" if buf else line
        while (pos := _terminator(buf)) >= 0:
            term, stmt, buf = buf[pos], buf[:pos].strip(), buf[pos + 1 :].strip()
            where = f"{source}:{lineno}"
            if not stmt:
                if term == "{":
                    raise AptConfError(f"{where}: a block starts with no name")
                if term == "}":
                    parent = stack.pop() if stack else ""
                continue
            try:
                words = _words(stmt)
            except AptConfError as e:
                raise AptConfError(f"{where}: {e}") from None
            if len(words) > 2:
                raise AptConfError(f"{where}: extra junk after the value: {stmt[:80]!r}")
            tag, word = (words[0], words[1]) if len(words) == 2 else (words[0], None)
            if word is None and term != "{":
                tag, word = "", tag
            if term == "{":
                stack.append(parent)
                if tag:
                    parent = f"{parent}::{tag}" if parent else tag
                    tag = ""
            item = tag if not parent else (f"{parent}::{tag}" if term != "{" or tag else parent)
            if tag.startswith("#"):
                if parent:
                    raise AptConfError(f"{where}: directives can only be at the top level")
                directive = tag[1:]
                if directive == "clear":
                    ops.append(("clear", word or "", "", where))
                elif directive == "include":
                    ops += _include(word or "", where, read, depth)
                else:
                    raise AptConfError(f"{where}: unsupported directive #{directive}")
            elif not tag and word == "#clear":
                raise AptConfError(f"{where}: #clear needs an option tree as argument")
            elif word is not None:
                ops.append(("set", item, word, where))
            if term == "}":
                parent = stack.pop() if stack else ""
    if buf.strip():
        raise AptConfError(f"{source}: extra junk at the end of the file: {buf[:80]!r}")
    return ops


def _include(
    path: str, where: str, read: Callable[[str], str | None] | None, depth: int
) -> list[Op]:
    if depth >= MAX_INCLUDE_DEPTH:
        raise AptConfError(f"{where}: #include nested deeper than {MAX_INCLUDE_DEPTH}")
    text = read(path) if read is not None else None
    if text is None:
        raise AptConfError(f"{where}: #include {path}, a file harden does not read")
    return parse(text, path, read, depth + 1)


def effective(ops: Iterable[Op]) -> dict[str, tuple[str, str, str]]:
    """lower-case item -> (item, value, where it was set), after every set and clear."""
    conf: dict[str, tuple[str, str, str]] = {}
    for kind, item, value, where in ops:
        key = item.lower()
        if kind == "clear":
            for k in [k for k in conf if k == key or k.startswith(key + "::")]:
                del conf[k]
        else:
            conf[key] = (item, value, where)
    return conf


def insecure_options(files: Mapping[str, str]) -> tuple[list[str], int]:
    """Evidence lines for every insecure option apt would see as true (empty: none), and how
    many files were read. ``files``: path -> text of every file harden gathered."""
    names = [p.rsplit("/", 1)[1] for p in files if p.startswith(APT_CONF_D + "/")]
    order = [f"{APT_CONF_D}/{n}" for n in conf_parts(names)]
    if APT_CONF in files:
        order.append(APT_CONF)
    ops: list[Op] = []
    bad: list[str] = []
    for path in order:
        try:
            ops += parse(files[path], path, files.get)
        except AptConfError as e:
            bad.append(f"apt would refuse its configuration: {e}")
    wanted = {o.lower(): o for o in INSECURE_OPTIONS}
    for key, (item, value, where) in sorted(effective(ops).items()):
        option = wanted.get(_BINARY.sub("", key))
        if option is not None and string_to_bool(value):
            bad.append(f'{item} "{value}" ({where})')
    return bad, len(order)


def trusted_sources(files: Mapping[str, str]) -> list[str]:
    """Evidence lines for every source option that switches signature checking off."""
    bad: list[str] = []
    for path in sorted(files):
        for lineno, line in enumerate(files[path].split("\n"), 1):
            text = line.split("#", 1)[0]
            for m in _SOURCE_OPTION.finditer(text):
                if string_to_bool(m.group(2)):
                    bad.append(f"{path}:{lineno}: {m.group(1)}={m.group(2)}")
    return bad
