"""Command results are marked executed or become errors; a label is only compared."""

from __future__ import annotations

import datetime as dt

from harden.verifiers.static_verify import LABEL_RULE_ID, _mark, with_label_check

from harden.results import BaselineRef, RuleResult, Status, VerifyReport

T = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def result(rule_id: str, status: Status = Status.PASSED) -> RuleResult:
    return RuleResult(rule_id, status, "t", "high", "command", {"iso27017": ("CLD.9.5.2",)})


def report(*results: RuleResult) -> VerifyReport:
    return VerifyReport(
        "img", None, "container", "debian 12", BaselineRef("b", "1", "d"), results, T, T
    )


def test_command_results_are_marked_executed_or_errors() -> None:
    assert _mark(result("c"), {"c"}, None).executed is True
    assert _mark(result("s"), {"c"}, None).executed is False
    failed = _mark(result("c"), {"c"}, "the Docker Engine is not running")
    assert failed.status is Status.ERROR and "Docker Engine" in failed.reason
    na = result("c", Status.NOT_APPLICABLE)
    assert _mark(na, {"c"}, "no engine") == na


def test_a_label_naming_another_baseline_makes_the_report_non_compliant() -> None:
    ok = report(result("a"))
    assert with_label_check(ok, None, "debian-container") is ok
    assert with_label_check(ok, "debian-container", "debian-container") is ok
    out = with_label_check(ok, "debian-common", "debian-container")
    assert not out.compliant
    finding = out.results[-1]
    assert finding.rule_id == LABEL_RULE_ID and finding.status is Status.FAILED
    assert "debian-common" in finding.evidence[0]
