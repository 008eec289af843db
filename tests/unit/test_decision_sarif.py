"""harden status / harden promote --format sarif: valid SARIF 2.1.0, a result per failed check,
located where GitHub code scanning can show it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema

from harden.cli.promote_cmd import sarif as promote_sarif
from harden.cli.status_cmd import sarif as status_sarif
from harden.gate import Decision
from harden.lifecycle import ImageFacts, ImageStatus, State
from harden.promote import PromoteResult

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SCHEMA = Path(__file__).parent / "fixtures" / "sarif-schema-2.1.0.json"
DIGEST = "sha256:" + "ab" * 32


def validate(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text)
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(doc)
    return doc


def status(name: str, state: State, reasons: tuple[str, ...]) -> ImageStatus:
    f = ImageFacts(
        name=name,
        definition=f"images/{name}.yaml",
        destination=f"127.0.0.1:5000/golden/{name}:latest",
        max_age=dt.timedelta(days=30),
    )
    return ImageStatus(f, state, reasons, T0)


def test_status_sarif_has_a_result_per_image_that_needs_work_at_its_definition() -> None:
    doc = validate(
        status_sarif(
            [
                status("fresh-one", State.FRESH, ()),
                status("old-one", State.STALE, ("older than max_age 30d",)),
                status("gone-one", State.REVOKED, ("revoked: CVE-2026-1",)),
                status("lost-one", State.UNKNOWN, ("registry 127.0.0.1:5999 unreachable",)),
            ],
            "2026-03-01T00:00:00Z",
        )
    )
    run = doc["runs"][0]
    results = {r["message"]["text"].split(":")[0]: r for r in run["results"]}
    assert set(results) == {"old-one (stale)", "gone-one (revoked)", "lost-one (unknown)"}
    stale = results["old-one (stale)"]
    assert stale["level"] == "error" and stale["ruleId"] == "stale"
    assert "older than max_age 30d" in stale["message"]["text"]
    where = stale["locations"][0]
    assert where["physicalLocation"]["artifactLocation"]["uri"] == "images/old-one.yaml"
    assert where["logicalLocations"][0]["name"] == "127.0.0.1:5000/golden/old-one:latest"
    assert results["lost-one (unknown)"]["level"] == "warning"
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert set(rules) == {"stale", "revoked", "unknown"}
    assert "rebuild" in rules["stale"]["help"]["text"]
    for r in run["results"]:  # GitHub: every result has a location; ruleIndex points at its rule
        assert (
            r["locations"] and run["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
        )


def test_status_sarif_of_all_fresh_images_has_no_result() -> None:
    doc = validate(status_sarif([status("a", State.FRESH, ())], "2026-03-01T00:00:00Z"))
    assert doc["runs"][0]["results"] == []


def promote_result(allowed: bool, reasons: list[str]) -> PromoteResult:
    decision = Decision(
        allowed=allowed,
        reasons=reasons,
        subject_digest=DIGEST,
        policies=["SignedBy", "NotRevoked", "Fresh"],
        decided_at=T0,
    )
    return PromoteResult(
        src="127.0.0.1:5000/staging/app:1",
        dst="127.0.0.1:5000/prod/app:1",
        digest=DIGEST,
        decision=decision,
        attestations=2,
        verified=2,
    )


def test_promote_sarif_names_each_policy_that_denied() -> None:
    denied = promote_result(
        False, ["NotRevoked: revoked by the list v7", "Fresh: older than 30d", "odd reason"]
    )
    doc = validate(promote_sarif(denied))
    results = doc["runs"][0]["results"]
    assert sorted(r["ruleId"] for r in results) == ["Fresh", "NotRevoked", "gate"]
    revoked = next(r for r in results if r["ruleId"] == "NotRevoked")
    assert "revoked by the list v7" in revoked["message"]["text"]
    uri = revoked["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == f"oci://127.0.0.1:5000/staging/app:1@{DIGEST}"
    assert doc["runs"][0]["properties"]["allowed"] is False


def test_promote_sarif_of_an_allowed_promotion_has_no_result() -> None:
    doc = validate(promote_sarif(promote_result(True, [])))
    assert doc["runs"][0]["results"] == []
