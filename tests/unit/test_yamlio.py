"""The bounded YAML loader: values, line maps and its limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from harden.errors import BaselineError, InputError
from harden.yamlio import MAX_DEPTH, LineMap, load_file, loads, walk_paths

DOC = """\
id: t-x
title: "quoted"
targets:
  - container
  - vm
nested:
  inner:
    key: 1
  flow: {a: [1, 2], b: null}
expires: 2027-01-01
octal: 0644
"""


def test_values_are_plain_python() -> None:
    data = loads(DOC, "d.yaml").data
    assert data == {
        "id": "t-x",
        "title": "quoted",
        "targets": ["container", "vm"],
        "nested": {"inner": {"key": 1}, "flow": {"a": [1, 2], "b": None}},
        "expires": "2027-01-01",  # dates stay text for the models to parse
        "octal": 420,  # YAML 1.1: a leading 0 is octal, which is why modes are quoted
    }


def test_line_map_names_the_line_of_every_key_and_item() -> None:
    lines = loads(DOC, "d.yaml").lines
    assert lines.file == "d.yaml"
    assert lines.line_of(()) == 1
    assert lines.line_of(("title",)) == 2
    assert lines.line_of(("targets",)) == 3
    assert lines.line_of(("targets", 0)) == 4
    assert lines.line_of(("targets", 1)) == 5
    assert lines.line_of(("nested", "inner", "key")) == 8
    assert lines.line_of(("nested", "flow", "a", 1)) == 9
    assert lines.line_of(("expires",)) == 10


def test_line_of_falls_back_to_the_deepest_known_prefix() -> None:
    lines = loads(DOC, "d.yaml").lines
    assert lines.line_of(("nested", "inner", "missing", 3)) == 7
    assert lines.line_of(("nope",)) == 1
    assert str(lines.location(("targets", 1))) == "d.yaml:5"
    assert str(LineMap("x.yaml").location(("a",))) == "x.yaml"


def test_walk_paths_visits_every_value() -> None:
    data = loads(DOC, "d.yaml").data
    paths = set(walk_paths(data))
    assert ("nested", "flow", "a", 1) in paths
    assert () in paths
    assert len(paths) == 16


def test_load_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(DOC)
    loaded = load_file(path)
    assert loaded.lines.file == str(path)
    assert loaded.data["id"] == "t-x"


def test_the_error_class_is_the_callers(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=r"e\.yaml:1: the file is empty"):
        loads("", "e.yaml", BaselineError)
    with pytest.raises(InputError, match=r"e\.yaml:2: duplicate key 'a'"):
        loads("a: 1\na: 2\n", "e.yaml")


def test_aliases_are_expanded_and_counted() -> None:
    data = loads("a: &x [1, 2]\nb: *x\n", "a.yaml").data
    assert data == {"a": [1, 2], "b": [1, 2]}


def test_nesting_up_to_the_limit_loads_and_one_more_fails() -> None:
    # the top-level mapping is the first level
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    loads(f"a: {ok}\n", "d.yaml")
    too_deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    with pytest.raises(InputError, match=r"d\.yaml:1: document nested deeper than"):
        loads(f"a: {too_deep}\n", "d.yaml")


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("a: 1\nb: 'open\n", 2, "invalid YAML"),
        ("a: [1,\n", 1, "invalid YAML"),
        ("a: 1\nb: \x00\n", 2, "U+0000"),
        ("a: !!binary aGk=\nb: !!set {x}\n", 2, "unsupported YAML tag"),
        ("a: !!python/name:os.system x\n", 1, "invalid value"),
        ("[1]: x\n", 1, "mapping keys must be plain strings"),
        ("a: 1\n---\nb: 2\n", 2, "invalid YAML"),
    ],
)
def test_errors_name_the_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(InputError) as info:
        loads(text, "y.yaml")
    assert f"y.yaml:{line}:" in str(info.value)
    assert needle in str(info.value)
