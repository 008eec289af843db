"""SARIF as code scanning reads it: each result at its rule's own definition (file and line),
level from severity, help from the rationale; schema-valid and within GitHub's documented limits."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from harden.baseline.resolve import Catalogue, resolve
from harden.cli.output import rule_locations
from harden.report import Format, render
from harden.results import BaselineRef, RuleResult, Status, VerifyReport

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "sarif-schema-2.1.0.json").read_text())
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _line_of(path: Path, rule_id: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(rf"\s*-\s+id:\s*{re.escape(rule_id)}\s*$", line):
            return n
    raise AssertionError(f"{rule_id} not in {path}")


@pytest.fixture
def sarif(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    monkeypatch.chdir(ROOT)  # as in CI: the checkout root is the working directory
    cat = Catalogue.from_search_path(())
    resolved = {r.id: r for r in resolve(cat, "debian-container").rules}
    common = next(r for r in resolved.values() if "debian-common.yaml" in r.source)
    own = next(r for r in resolved.values() if "debian-container.yaml" in r.source)
    results = tuple(
        RuleResult(r.id, Status.FAILED, r.title, sev, r.kind.value, {}, evidence=("found",))
        for r, sev in ((common, "low"), (own, "critical"))
    )
    report = VerifyReport(
        image="127.0.0.1:5000/app:1",
        digest="sha256:" + "a" * 64,
        target="container",
        platform="debian 12",
        baseline=BaselineRef("debian-container", "1.0.0", "sha256:" + "b" * 64),
        results=results,
        started_at=T0,
        finished_at=T0,
    )
    sources, rationale = rule_locations(report, cat)
    doc = json.loads(render(report, Format.SARIF, rule_sources=sources, rule_help=rationale))
    return doc, {"common": common, "own": own}


def test_each_result_points_at_its_rules_own_file_and_line(
    sarif: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    doc, rules = sarif
    by_rule = {r["ruleId"]: r for r in doc["runs"][0]["results"]}
    for name, file in (("common", "debian-common.yaml"), ("own", "debian-container.yaml")):
        rule = rules[name]
        loc = by_rule[rule.id]["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] == f"baselines/{file}"
        assert loc["region"]["startLine"] == _line_of(ROOT / "baselines" / file, rule.id)


def test_level_from_severity_and_help_from_rationale(
    sarif: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    doc, rules = sarif
    by_rule = {r["ruleId"]: r for r in doc["runs"][0]["results"]}
    assert by_rule[rules["common"].id]["level"] == "note"  # low
    assert by_rule[rules["own"].id]["level"] == "error"  # critical
    driver_rules = {r["id"]: r for r in doc["runs"][0]["tool"]["driver"]["rules"]}
    assert driver_rules[rules["common"].id]["help"]["text"] == rules["common"].rationale.strip()


def test_valid_sarif_and_within_github_code_scanning_limits(
    sarif: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    doc, _ = sarif
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls(SCHEMA).validate(doc)
    # GitHub code scanning (docs: "SARIF support for code scanning"): one run per tool, results
    # need ruleId, message.text and a location with a relative URI; at most 25,000 rules and
    # results per run, 20 tags per rule, security-severity a number as a string.
    run = doc["runs"][0]
    assert len(run["results"]) <= 25_000 and len(run["tool"]["driver"]["rules"]) <= 25_000
    for result in run["results"]:
        assert result["ruleId"] and result["message"]["text"]
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert not uri.startswith(("/", "file:")), uri
        assert result["partialFingerprints"]
    for rule in run["tool"]["driver"]["rules"]:
        assert len(rule["properties"]["tags"]) <= 20
        assert 0.0 <= float(rule["properties"]["security-severity"]) <= 10.0
        assert rule["help"]["text"]
