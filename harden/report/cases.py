"""JUnit XML for decisions that are a list of named checks (the promotion gate's policies, the
freshness of each golden image): one testcase per check, its reasons as the failure."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harden.report.formats import clean_xml, truncate


@dataclass(frozen=True)
class Case:
    name: str
    failures: tuple[str, ...] = ()  # reasons the check failed; empty: passed
    error: str | None = None  # the check could not be decided (e.g. a registry was unreachable)
    failure_type: str = "failed"


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
