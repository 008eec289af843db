"""A team's testinfra suites as verifiers: run them on a target, read back one result per test.

A suite runs in its own pytest process (:mod:`verifiers.suites`, with :mod:`harden.pytest_plugin`):
the target is opened once for the whole suite, a test that hangs is cut off by the per-test
timeout (then the whole run by an overall deadline), and nothing a test does can disturb harden.
Each test (pytest node id) becomes a :class:`~harden.results.RuleResult` of kind ``testinfra``:
passed, failed (with its failure text as evidence), skipped (``not_applicable`` with the reason,
never counted as passed) or error, with the controls its ``controls`` marker names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden.errors import ExitCode, HardenError, InputError
from harden.results import RuleResult, Status, VerifyReport

KIND = "testinfra"
MAX_EVIDENCE_LINES = 40
_STATUS = {
    "passed": Status.PASSED,
    "failed": Status.FAILED,
    "skipped": Status.NOT_APPLICABLE,
    "error": Status.ERROR,
}


@dataclass(frozen=True)
class Suite:
    """Test files or directories (absolute), with optional ``-k`` and ``-m`` selections.

    Node ids are relative to ``root`` (the image definition's folder, or the common folder)."""

    paths: tuple[Path, ...]
    root: Path | None = None
    keyword: str | None = None
    markers: str | None = None
    test_timeout: float = 120.0

    def check(self) -> None:
        for p in self.paths:
            if not p.exists():
                raise InputError(
                    f"test suite path {p} does not exist",
                    hint="paths in an image definition's 'tests' are relative to the definition",
                )


class SuiteError(HardenError):
    exit_code = ExitCode.ENVIRONMENT


def read_records(path: Path) -> list[dict[str, Any]]:
    """The plugin's JSON lines; a line that is not a result is ignored (the file is ours)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("outcome") in _STATUS:
                out.append(rec)
    return out


def to_result(rec: dict[str, Any]) -> RuleResult:
    status = _STATUS[str(rec["outcome"])]
    text = str(rec.get("text") or "")
    lines = tuple(ln for ln in text.splitlines() if ln.strip())[-MAX_EVIDENCE_LINES:]
    message = str(rec.get("message") or "").strip()
    first = message.splitlines()[0] if message else ""
    reason = ""
    if status is Status.NOT_APPLICABLE:
        reason = f"skipped: {text.strip()}"
    elif status is Status.ERROR:
        reason = first or (lines[-1] if lines else "error")
    elif status is Status.FAILED:
        reason = first
    controls = {str(k): tuple(str(x) for x in v) for k, v in (rec.get("controls") or {}).items()}
    nodeid = str(rec["nodeid"])
    return RuleResult(
        rule_id=nodeid,
        status=status,
        title=str(rec.get("title") or nodeid.rpartition("::")[2]),
        severity="high",
        kind=KIND,
        controls=controls,
        evidence=lines if status in (Status.FAILED, Status.ERROR) else (),
        reason=reason,
        duration=float(rec.get("duration") or 0.0),
        executed=True,  # a test runs code in the target
    )


def with_results(report: VerifyReport, tests: Sequence[RuleResult]) -> VerifyReport:
    """``report`` with the suites' results beside the baseline's (a failed test: non-compliant)."""
    return dataclasses.replace(report, results=(*report.results, *tests))
