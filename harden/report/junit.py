"""The JUnit XML format (the Jenkins / GitLab dialect): one testsuite, one testcase per rule."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harden.report.formats import (
    RenderOptions,
    clean_line,
    clean_xml,
    evidence_text,
    first_evidence,
    truncate,
    waiver_note,
)
from harden.results import Status, VerifyReport, rfc3339

_MESSAGE_CHARS = 500


class JUnitFormatter:
    def render(self, report: VerifyReport, options: RenderOptions) -> str:
        summary = report.summary()
        skipped = summary[Status.WAIVED.value] + summary[Status.NOT_APPLICABLE.value]
        seconds = max(0.0, (report.finished_at - report.started_at).total_seconds())
        classname = "harden." + clean_xml(report.baseline.id)
        counts = {
            "tests": str(summary["total"]),
            "failures": str(summary[Status.FAILED.value]),
            "errors": str(summary[Status.ERROR.value]),
            "skipped": str(skipped),
            "time": f"{seconds:.3f}",
        }
        root = ET.Element("testsuites", {"name": "harden", **counts})
        suite = ET.SubElement(
            root,
            "testsuite",
            {
                "name": clean_xml(f"{classname} {report.image}"),
                **counts,
                "timestamp": rfc3339(report.started_at),
            },
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("image", report.image),
            ("digest", report.digest or ""),
            ("baseline", f"{report.baseline.id}@{report.baseline.version}"),
            ("baseline.digest", report.baseline.digest),
            ("target", report.target),
            ("platform", report.platform),
            ("compliant", "true" if report.compliant else "false"),
        ):
            ET.SubElement(props, "property", {"name": name, "value": clean_xml(value)})
        if report.scan is not None:
            for key in (
                "profile",
                "score",
                "xccdf_score",
                "content",
                "content_version",
                "arf_digest",
            ):
                ET.SubElement(
                    props,
                    "property",
                    {"name": f"openscap.{key}", "value": clean_xml(str(report.scan.get(key)))},
                )

        for r in report.results:
            case = ET.SubElement(
                suite,
                "testcase",
                {"classname": classname, "name": clean_xml(r.rule_id), "time": "0"},
            )
            title = clean_line(r.title)
            match r.status:
                case Status.PASSED:
                    pass
                case Status.FAILED:
                    el = ET.SubElement(
                        case,
                        "failure",
                        {
                            "message": truncate(first_evidence(r) or title, _MESSAGE_CHARS),
                            "type": clean_xml(r.severity),
                        },
                    )
                    el.text = clean_xml(evidence_text(r) or r.reason)
                case Status.ERROR:
                    el = ET.SubElement(
                        case,
                        "error",
                        {"message": truncate(clean_line(r.reason) or title, _MESSAGE_CHARS)},
                    )
                    el.text = clean_xml("\n".join(filter(None, [r.reason, evidence_text(r)])))
                case Status.WAIVED:
                    ET.SubElement(
                        case,
                        "skipped",
                        {"message": truncate("waived: " + waiver_note(r), _MESSAGE_CHARS)},
                    )
                case Status.NOT_APPLICABLE:
                    ET.SubElement(
                        case,
                        "skipped",
                        {
                            "message": truncate(
                                "not applicable: " + clean_line(r.reason), _MESSAGE_CHARS
                            )
                        },
                    )
        ET.indent(root)
        body = ET.tostring(root, encoding="unicode")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
