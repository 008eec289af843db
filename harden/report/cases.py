"""JUnit XML and SARIF for decisions that are a list of named checks (the promotion gate's
policies, the freshness of each golden image): one testcase (SARIF result) per check, its reasons
as the failure."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harden.report.formats import clean_xml, truncate


@dataclass(frozen=True)
class Case:
    name: str
    failures: tuple[str, ...] = ()  # reasons the check failed; empty: passed
    error: str | None = None  # the check could not be decided (e.g. a registry was unreachable)
    failure_type: str = "failed"
    location: str | None = None  # SARIF: the file (or URI) the check is about
    subject: str | None = None  # SARIF: what was judged (an image reference)


def cases_junit(
    suites_name: str,
    suite_name: str,
    classname: str,
    cases: Sequence[Case],
    *,
    properties: Mapping[str, str] | None = None,
    system_out: Sequence[str] = (),
) -> str:
    failures = sum(1 for c in cases if c.failures and c.error is None)
    errors = sum(1 for c in cases if c.error is not None)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", {"name": clean_xml(suites_name), **counts})
    suite = ET.SubElement(root, "testsuite", {"name": clean_xml(suite_name), **counts})
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", {"name": key, "value": clean_xml(value)})
    for c in cases:
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": clean_xml(c.name)})
        if c.error is not None:
            err = ET.SubElement(case, "error", {"message": truncate(clean_xml(c.error), 500)})
            err.text = clean_xml(c.error)
        elif c.failures:
            text = "\n".join(clean_xml(r) for r in c.failures)
            failure = ET.SubElement(
                case,
                "failure",
                {"message": truncate(text.split("\n")[0], 500), "type": c.failure_type},
            )
            failure.text = text
    if system_out:
        out = ET.SubElement(suite, "system-out")
        out.text = "\n".join(clean_xml(line) for line in system_out)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def cases_sarif(
    automation_id: str,
    cases: Sequence[Case],
    *,
    rule_help: Mapping[str, str],
    properties: Mapping[str, Any] | None = None,
) -> str:
    """SARIF 2.1.0: a rule per failure type (a state, a gate policy) with ``rule_help`` as its
    help; a result per failed check (level error) or undecided one (level warning); passed checks
    are not results. Each result is located at ``Case.location`` (GitHub code scanning needs a
    location) and names ``Case.subject`` as a logical location."""
    from harden.report.sarif import location_uri, sarif_log

    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    for c in cases:
        if c.error is None and not c.failures:
            continue
        rule_id = "unknown" if c.error is not None else c.failure_type
        if rule_id not in index:
            index[rule_id] = len(rules)
            text = clean_xml(rule_help.get(rule_id, rule_id))
            rules.append(
                {
                    "id": rule_id,
                    "name": rule_id,
                    "shortDescription": {"text": text.split("\n")[0]},
                    "help": {"text": text},
                    "defaultConfiguration": {"level": "warning" if c.error else "error"},
                }
            )
        message = c.error if c.error is not None else "; ".join(c.failures)
        result: dict[str, Any] = {
            "ruleId": rule_id,
            "ruleIndex": index[rule_id],
            "kind": "fail",
            "level": "warning" if c.error is not None else "error",
            "message": {"text": truncate(clean_xml(f"{c.name}: {message}"), 16 * 1024)},
            "partialFingerprints": {
                "hardenCheck/v1": hashlib.sha256(f"{c.name}\0{rule_id}".encode()).hexdigest()
            },
        }
        location: dict[str, Any] = {}
        if c.location:
            location["physicalLocation"] = {"artifactLocation": {"uri": location_uri(c.location)}}
        if c.subject:
            location["logicalLocations"] = [
                {"name": clean_xml(c.subject), "fullyQualifiedName": clean_xml(c.subject)}
            ]
        if location:
            result["locations"] = [location]
        results.append(result)
    return sarif_log(automation_id, rules, results, dict(properties or {}))
