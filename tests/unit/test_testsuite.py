"""Suite results as RuleResults; definitions' suites; the plugin's entry point."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from harden.errors import ImageDefinitionError, InputError
from harden.imagedef import load_definition
from harden.results import Status
from harden.testsuite import KIND, Suite, read_records, to_result

ROOT = Path(__file__).resolve().parents[2]


def rec(outcome: str, **kw: object) -> dict[str, object]:
    return {"nodeid": "t/test_a.py::test_x", "outcome": outcome, "duration": 0.5} | kw


def test_outcomes_map_to_sealed_statuses_and_skips_are_never_passed() -> None:
    assert to_result(rec("passed")).status is Status.PASSED
    failed = to_result(rec("failed", text="E   assert False\nAssertionError: boom"))
    assert failed.status is Status.FAILED
    assert failed.evidence[-1] == "AssertionError: boom"
    skipped = to_result(rec("skipped", text="needs nginx"))
    assert skipped.status is Status.NOT_APPLICABLE and skipped.reason == "skipped: needs nginx"
    error = to_result(rec("error", text="setup: ConnectionError"))
    assert error.status is Status.ERROR and error.reason == "setup: ConnectionError"
    assert {r.kind for r in (failed, skipped, error)} == {KIND}


def test_controls_title_and_duration_are_kept() -> None:
    r = to_result(rec("passed", controls={"iso27017": ["CLD.9.5.2"]}, title="CA present"))
    assert r.controls == {"iso27017": ("CLD.9.5.2",)}
    assert (r.title, r.duration, r.rule_id) == ("CA present", 0.5, "t/test_a.py::test_x")
    assert r.to_json()["duration"] == 0.5


def test_records_file_ignores_lines_that_are_not_results(tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(rec("passed")) + "\nnot json\n" + json.dumps({"outcome": "x"}) + "\n")
    assert [r["outcome"] for r in read_records(f)] == ["passed"]
    assert read_records(tmp_path / "absent") == []


def test_suite_path_that_does_not_exist_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Suite((tmp_path / "nope",)).check()


def test_definition_suites_resolve_against_the_definition(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "web.py").write_text("def test_x(host): pass\n")
    d = tmp_path / "img.yaml"
    d.write_text(
        "name: x\nbase: r/x:1\ntarget: container\nbaseline: {id: debian-container}\n"
        "tests:\n  - tests\n  - {path: web.py, k: 'not slow', markers: smoke, timeout: 5}\n"
    )
    a, b = load_definition(d).suites()
    assert a.paths == ((tmp_path / "tests").resolve(),) and a.root == tmp_path.resolve()
    assert (b.keyword, b.markers, b.test_timeout) == ("not slow", "smoke", 5.0)
    d.write_text(d.read_text().replace("web.py,", "missing.py,"))
    with pytest.raises(ImageDefinitionError, match=r"img\.yaml:7: .*missing\.py"):
        load_definition(d).suites()


def test_pytest_entry_point_names_the_plugin() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"harden": "harden.pytest_plugin"}
    import harden.pytest_plugin as plugin

    assert callable(plugin.pytest_addoption)
