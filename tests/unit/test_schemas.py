"""docs/baseline.schema.json is what the model generates now, and the baselines validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from harden.baseline.model import json_schema
from harden.baseline.resolve import load_doc
from harden.schemas import BASELINE_SCHEMA_NAME, main, render_baseline_schema, write_schemas
from harden.yamlio import load_file, loads

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / BASELINE_SCHEMA_NAME
SHIPPED = REPO / "baselines"

EXAMPLE = """\
id: example
version: 1.2.0
title: example baseline
extends: []
platforms: [{family: debian, versions: ["12", "13"]}]
targets: [container, vm]
parameters:
  umask: {type: string, default: "027", description: default umask}
rules:
  - id: pkg.telnet
    title: telnet is not installed
    severity: high
    controls: {iso27017: [CLD.9.5.2], cis_debian12: ["2.3.4"]}
    package_absent: {packages: [telnet]}
  - id: login.umask
    title: default umask
    controls: {iso27017: [CLD.9.5.2]}
    applies_to: {targets: [vm], when: [{file_exists: /etc/login.defs}]}
    config_line: {path: /etc/login.defs, key: UMASK, value: "${umask}", match: last}
waivers:
  - {rule: pkg.telnet, reason: legacy, owner: ops, expires: 2027-01-01}
"""


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def errors(data: Any) -> list[str]:
    return [e.message for e in validator().iter_errors(data)]


def test_committed_schema_matches_the_model() -> None:
    assert COMMITTED.read_text() == render_baseline_schema(), (
        "docs/baseline.schema.json is stale: run `python -m harden.schemas docs`"
    )
    assert json.loads(COMMITTED.read_text()) == json_schema()


def test_render_is_deterministic_with_sorted_keys_and_a_newline() -> None:
    text = render_baseline_schema()
    assert text == render_baseline_schema()
    assert text.endswith("}\n")
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert json.loads(text)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_main_writes_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    assert main([str(out)]) == 0
    assert (out / BASELINE_SCHEMA_NAME).read_text() == COMMITTED.read_text()
    assert [p.name for p in out.iterdir()] == [BASELINE_SCHEMA_NAME]  # no temp file left
    assert write_schemas(out) == [out / BASELINE_SCHEMA_NAME]


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["--help"]])
def test_main_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: python -m harden.schemas DIR" in capsys.readouterr().err


def test_baselines_validate_against_the_schema(tmp_path: Path) -> None:
    files = sorted(SHIPPED.glob("*.yaml")) + sorted(SHIPPED.glob("*.yml"))
    if not files:  # no shipped baselines yet: check a small example instead
        example = tmp_path / "example.yaml"
        example.write_text(EXAMPLE)
        files = [example]
    for path in files:
        data = load_file(path).data
        assert errors(data) == [], path
        load_doc(path)  # the model accepts what the schema accepts


def test_the_example_validates() -> None:
    data = load_file_text(EXAMPLE)
    assert errors(data) == []


def load_file_text(text: str) -> Any:
    return loads(text, "example.yaml").data


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.pop("targets"), "'targets' is a required property"),
        (lambda d: d.update(colour="blue"), "Additional properties"),
        (lambda d: d["rules"][0].pop("title"), "'title' is a required property"),
        (
            lambda d: d["rules"][0]["package_absent"].update(packages=["telnet; rm -rf /"]),
            "telnet; rm",
        ),
        (lambda d: d["waivers"][0].update(expires="2026-13-45"), "is not a 'date'"),
        (lambda d: d["rules"][0].update(severity="urgent"), "'urgent' is not one of"),
    ],
)
def test_the_schema_rejects_bad_documents(change: Any, needle: str) -> None:
    data = load_file_text(EXAMPLE)
    change(data)
    found = errors(data)
    assert found, "the schema accepted a bad document"
    assert any(needle in m for m in found), found
