"""Safe, bounded YAML loading that remembers where every value came from.

Input files are a trust boundary: a document is limited in size, nesting depth and alias
expansion, so an alias bomb or a very deep document fails fast with a clean error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harden.errors import InputError, Location

MAX_BYTES = 1 << 20  # 1 MiB per file
MAX_DEPTH = 32
MAX_NODES = 100_000  # after alias expansion

PathKey = tuple[str | int, ...]


@dataclass
class LineMap:
    """Maps a path into the loaded document to the 1-based line where it was written."""

    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """The line of the deepest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def location(self, path: PathKey = ()) -> Location:
        return Location(self.file, self.line_of(path))


@dataclass
class Loaded:
    data: Any
    lines: LineMap


class _Builder:
    def __init__(self, lines: LineMap, error: type[InputError]) -> None:
        self.lines = lines
        self.error = error
        self.count = 0

    def fail(self, message: str, node: Node) -> InputError:
        return self.error(message, location=Location(self.lines.file, node.start_mark.line + 1))

    def build(self, node: Node, path: PathKey, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(
                f"document too large after alias expansion (more than {MAX_NODES} values)", node
            )
        if depth > MAX_DEPTH:
            raise self.fail(f"document nested deeper than {MAX_DEPTH} levels", node)
        self.lines.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            return _scalar(node, self)
        if isinstance(node, SequenceNode | MappingNode) and node.tag not in _COLLECTION_TAGS:
            # a scalar's tag is checked by the constructor; a collection's would be ignored
            raise self.fail(f"unsupported YAML tag {node.tag!r}", node)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self.fail("YAML merge keys (<<) are not supported", key_node)
                if not isinstance(key_node, ScalarNode):
                    raise self.fail("mapping keys must be plain strings", key_node)
                key = str(_scalar(key_node, self))
                if key in result:
                    raise self.fail(f"duplicate key {key!r}", key_node)
                self.lines.lines[(*path, key)] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, (*path, key), depth + 1)
            return result
        raise self.fail("unsupported YAML node", node)  # pragma: no cover


_CONSTRUCTOR = yaml.SafeLoader(stream="")
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"})
# libyaml parses and composes some 20 times faster than pure Python, which keeps a 1 MiB file
# full of aliases well under a second; both produce the same nodes and marks
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NULL_TAG = "tag:yaml.org,2002:null"


def _scalar(node: ScalarNode, builder: _Builder) -> Any:
    if node.tag == _TIMESTAMP_TAG:
        # dates stay text here, including malformed ones (2026-13-45): the models parse them and
        # name the field in their error message
        return node.value
    try:
        value = _CONSTRUCTOR.construct_object(node, deep=False)
    except (yaml.YAMLError, ValueError, OverflowError) as e:
        raise builder.fail(f"invalid value {node.value!r}: {e}", node) from e
    if isinstance(value, dt.datetime | dt.date | bytes):
        # dates stay text here; the models parse them with their own error messages
        return node.value
    return value


def _check_depth(text: str) -> int | None:
    """Line of the first collection nested deeper than MAX_DEPTH (PyYAML's composer recurses)."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                return int(mark.line) + 1 if mark is not None else 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _compose(text: str, source: str, error: type[InputError]) -> Node | None:
    loader: yaml.SafeLoader | None = None
    try:
        deep = _check_depth(text)
        if deep is not None:
            raise error(
                f"document nested deeper than {MAX_DEPTH} levels", location=Location(source, deep)
            )
        # the reader rejects control characters (e.g. NUL) already while it is being constructed
        loader = _LOADER(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context_mark is not None and (mark is None or mark.index >= len(text)):
            # "unexpected end of stream" points past the last line; where the unclosed thing
            # started is the line to fix
            mark = e.context_mark
        line = min(mark.line + 1, max(len(text.splitlines()), 1)) if mark else None
        problem = e.problem or str(e)
        if e.context and e.context_mark is not None and mark is not e.context_mark:
            problem += f" ({e.context} at line {e.context_mark.line + 1})"
        raise error(f"invalid YAML: {problem}", location=Location(source, line)) from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise error(
            f"invalid YAML: control character {char} is not allowed",
            location=Location(source, line),
        ) from e
    except yaml.YAMLError as e:
        raise error(f"invalid YAML: {e}", location=Location(source)) from e
    finally:
        if loader is not None:
            loader.dispose()
    return node


def loads(text: str, source: str, error: type[InputError] = InputError) -> Loaded:
    """Parse one YAML document from ``text``; ``source`` names it in errors."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise error(f"file larger than {MAX_BYTES} bytes", location=Location(source))
    lines = LineMap(source)
    node = _compose(text, source, error)
    if node is None or (
        isinstance(node, ScalarNode) and node.value == "" and node.tag == _NULL_TAG
    ):  # nothing, or a lone "---"
        raise error("the file is empty", location=Location(source, 1))
    data = _Builder(lines, error).build(node, (), 0)
    return Loaded(data, lines)


def load_file(path: Path, error: type[InputError] = InputError) -> Loaded:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError as e:
        raise error("no such file", location=Location(str(path))) from e
    except OSError as e:
        raise error(f"cannot read: {e.strerror}", location=Location(str(path))) from e
    if len(raw) > MAX_BYTES:
        raise error(f"file larger than {MAX_BYTES} bytes", location=Location(str(path)))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text (byte {e.start})", location=Location(str(path))) from e
    return loads(text, str(path), error)


def walk_paths(data: Any, prefix: PathKey = ()) -> Iterator[PathKey]:
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from walk_paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_paths(v, (*prefix, i))
