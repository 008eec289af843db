"""SARIF 2.1.0: rules with their control ids as tags; results for failed, error and waived rules."""

from __future__ import annotations

import hashlib
import json
import posixpath
import urllib.parse
from pathlib import PurePosixPath
from typing import Any

from harden import __version__
from harden.report.formats import (
    RenderOptions,
    clean,
    clean_line,
    evidence_text,
    parse_source,
    waiver_note,
)
from harden.results import RuleResult, Status, VerifyReport, rfc3339

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
# GitHub code scanning reads this rule property (a CVSS-like score) to rank security alerts.
_SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}
_MESSAGE_CHARS = 16 * 1024


def _level(severity: str) -> str:
    return _LEVEL.get(severity, "warning")


def location_uri(path: str) -> str:
    """A SARIF artifact URI: relative paths stay relative (code scanning wants them so), an
    absolute path is a file URI, a URI (oci://...) is kept."""
    if "://" in path:
        return path
    if path.startswith("/"):
        return "file://" + urllib.parse.quote(posixpath.normpath(path))
    return urllib.parse.quote(PurePosixPath(path.replace("\\", "/")).as_posix())


def _rule(r: RuleResult, options: RenderOptions) -> dict[str, Any]:
    title = clean_line(r.title) or r.rule_id
    tags = sorted({f"{fw}:{cid}" for fw, ids in r.controls.items() for cid in ids})
    help_text = clean(options.rule_help.get(r.rule_id, "")).strip() or title
    return {
        "id": r.rule_id,
        "name": r.rule_id,
        "shortDescription": {"text": title},
        "help": {"text": help_text},
        "defaultConfiguration": {"level": _level(r.severity)},
        "properties": {
            "tags": tags,
            "severity": r.severity,
            "kind": r.kind,
            "security-severity": _SECURITY_SEVERITY.get(r.severity, "5.5"),
        },
    }


def _location(r: RuleResult, report: VerifyReport, options: RenderOptions) -> dict[str, Any]:
    source = options.rule_sources.get(r.rule_id)
    if source:
        path, line = parse_source(source)
    else:
        path, line = f"baselines/{report.baseline.id}.yaml", None
    physical: dict[str, Any] = {"artifactLocation": {"uri": location_uri(path)}}
    if line is not None and line >= 1:
        physical["region"] = {"startLine": line}
    subject = clean_line(f"{report.image}@{report.digest}" if report.digest else report.image)
    return {
        "physicalLocation": physical,
        "logicalLocations": [
            {"name": clean_line(report.image), "fullyQualifiedName": subject, "kind": "resource"}
        ],
    }


def _message(r: RuleResult) -> str:
    title = clean_line(r.title) or r.rule_id
    match r.status:
        case Status.FAILED:
            body = evidence_text(r, _MESSAGE_CHARS) or clean(r.reason)
        case Status.ERROR:
            body = clean(r.reason) or evidence_text(r, _MESSAGE_CHARS)
        case Status.WAIVED:
            body = "waived: " + waiver_note(r)
        case Status.PASSED | Status.NOT_APPLICABLE:
            body = clean(r.reason)
    return f"{title}: {body}" if body else title


class SarifFormatter:
    def render(self, report: VerifyReport, options: RenderOptions) -> str:
        rules: list[dict[str, Any]] = []
        index: dict[str, int] = {}
        for r in report.results:
            if r.rule_id not in index:
                index[r.rule_id] = len(rules)
                rules.append(_rule(r, options))

        results: list[dict[str, Any]] = []
        for r in report.results:
            match r.status:
                case Status.FAILED:
                    level = _level(r.severity)  # critical/high error, medium warning, low note
                case Status.ERROR:
                    level = "warning"
                case Status.WAIVED:
                    level = _level(r.severity)
                case Status.PASSED | Status.NOT_APPLICABLE:
                    continue
            fingerprint = hashlib.sha256(f"{report.image}\0{r.rule_id}".encode()).hexdigest()
            result: dict[str, Any] = {
                "ruleId": r.rule_id,
                "ruleIndex": index[r.rule_id],
                "kind": "fail",
                "level": level,
                "message": {"text": _message(r)},
                "locations": [_location(r, report, options)],
                "partialFingerprints": {"hardenImageRule/v1": fingerprint},
                "properties": {"status": r.status.value},
            }
            if r.status == Status.WAIVED:
                suppression: dict[str, Any] = {
                    "kind": "external",
                    "status": "accepted",
                    "justification": waiver_note(r),
                }
                if r.waiver is not None:
                    suppression["properties"] = {
                        "owner": clean_line(r.waiver.owner),
                        "expires": r.waiver.expires.isoformat(),
                        "expired": r.waiver.expired,
                    }
                result["suppressions"] = [suppression]
            results.append(result)

        invocation = {
            "executionSuccessful": True,
            "startTimeUtc": rfc3339(report.started_at),
            "endTimeUtc": rfc3339(report.finished_at),
        }
        properties = {
            "image": clean_line(report.image),
            "digest": report.digest,
            "baseline": report.baseline.to_json(),
            "platform": report.platform,
            "target": report.target,
            "compliant": report.compliant,
            "summary": report.summary(),
            **({"openscap": dict(report.scan)} if report.scan is not None else {}),
        }
        return sarif_log(
            f"harden/{report.baseline.id}/", rules, results, properties, invocation=invocation
        )


def sarif_log(
    automation_id: str,
    rules: list[dict[str, Any]],
    results: list[dict[str, Any]],
    properties: dict[str, Any],
    *,
    invocation: dict[str, Any] | None = None,
) -> str:
    """One SARIF 2.1.0 log with harden's one run (verify reports and decision checks alike)."""
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "harden",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": rules,
            }
        },
        "automationDetails": {"id": automation_id},
    }
    if invocation is not None:
        run["invocations"] = [invocation]
    run["results"] = results
    run["properties"] = properties
    log = {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(log, indent=2, ensure_ascii=False)
