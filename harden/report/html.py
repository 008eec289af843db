"""A self-contained HTML report (inline CSS, no scripts, no external assets).

Rendered from templates/report/report.html.j2 with autoescape on and StrictUndefined; every string
from the target is cleaned (ANSI and controls stripped) before it reaches the template, and the
template escapes it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import jinja2

from harden.paths import templates_dir
from harden.report.formats import (
    STATUS_ORDER,
    RenderOptions,
    clean,
    clean_line,
    evidence_text,
    ordered,
    short_reason,
    waiver_note,
)
from harden.results import RuleResult, Status, VerifyReport, rfc3339

TEMPLATE = "report.html.j2"
_STATUS_LABEL = {
    Status.FAILED: "failed",
    Status.ERROR: "error",
    Status.WAIVED: "waived",
    Status.PASSED: "passed",
    Status.NOT_APPLICABLE: "n/a",
}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "report")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _anchor(rule_id: str) -> str:
    return "rule-" + "".join(
        c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in rule_id
    )


def _rule_view(r: RuleResult) -> dict[str, Any]:
    return {
        "id": clean_line(r.rule_id),
        "anchor": _anchor(r.rule_id),
        "status": r.status.value,
        "label": _STATUS_LABEL[r.status],
        "title": clean_line(r.title),
        "severity": clean_line(r.severity),
        "kind": clean_line(r.kind),
        "summary": short_reason(r),
        "reason": clean(r.reason).strip(),
        "evidence": evidence_text(r),
        "controls": [f"{fw}:{cid}" for fw, ids in sorted(r.controls.items()) for cid in ids],
    }


def _controls_view(report: VerifyReport) -> list[dict[str, Any]]:
    """framework -> control id -> the rules mapped to it, with their statuses."""
    tree: dict[str, dict[str, list[RuleResult]]] = defaultdict(lambda: defaultdict(list))
    for r in report.results:
        for fw, ids in r.controls.items():
            for cid in ids:
                tree[fw][cid].append(r)
    out = []
    for fw in sorted(tree):
        controls = []
        for cid in sorted(tree[fw]):
            rules = ordered(tree[fw][cid])
            worst = rules[0].status
            controls.append(
                {
                    "id": clean_line(cid),
                    "status": worst.value,
                    "label": _STATUS_LABEL[worst],
                    "rules": [
                        {
                            "id": clean_line(r.rule_id),
                            "status": r.status.value,
                            "label": _STATUS_LABEL[r.status],
                        }
                        for r in rules
                    ],
                }
            )
        out.append({"framework": clean_line(fw), "controls": controls})
    return out


def _scan_view(report: VerifyReport) -> dict[str, Any] | None:
    scan = report.scan
    if scan is None:
        return None
    fam = scan.get("families", {})
    return {
        "profile": clean_line(str(scan.get("profile", ""))),
        "score": scan.get("score"),
        "xccdf_score": scan.get("xccdf_score"),
        "scanner": clean_line(str(scan.get("scanner", ""))),
        "content": clean_line(f"{scan.get('content', '')} {scan.get('content_version', '')}"),
        "arf_digest": clean_line(str(scan.get("arf_digest", ""))),
        "families": [
            {"name": clean_line(str(k)), "passed": v.get("passed"), "judged": v.get("judged")}
            for k, v in sorted(fam.items())
        ],
        "failed": [clean_line(str(r)) for r in scan.get("failed_rules", [])],
    }


class HtmlFormatter:
    def render(self, report: VerifyReport, options: RenderOptions) -> str:
        summary = report.summary()
        rules = [_rule_view(r) for r in ordered(report.results)]
        waivers = [
            {
                "id": clean_line(r.rule_id),
                "status": r.status.value,
                "reason": clean_line(r.waiver.reason),
                "owner": clean_line(r.waiver.owner),
                "expires": r.waiver.expires.isoformat(),
                "expired": r.waiver.expired,
                "note": waiver_note(r),
            }
            for r in ordered(report.results)
            if r.waiver is not None
        ]
        counts = [
            {"status": s.value, "label": _STATUS_LABEL[s], "count": summary[s.value]}
            for s in STATUS_ORDER
        ]
        failing = [
            {"id": clean_line(r.rule_id), "anchor": _anchor(r.rule_id)}
            for r in ordered(report.results)
            if r.status in (Status.FAILED, Status.ERROR)
        ]
        context = {
            "compliant": report.compliant,
            "image": clean_line(report.image),
            "digest": clean_line(report.digest or ""),
            "target": clean_line(report.target),
            "platform": clean_line(report.platform),
            "baseline": {
                "id": clean_line(report.baseline.id),
                "version": clean_line(report.baseline.version),
                "digest": clean_line(report.baseline.digest),
            },
            "started_at": rfc3339(report.started_at),
            "finished_at": rfc3339(report.finished_at),
            "total": summary["total"],
            "counts": counts,
            "failing": failing,
            "rules": rules,
            "waivers": waivers,
            "frameworks": _controls_view(report),
            "scan": _scan_view(report),
        }
        return _environment().get_template(TEMPLATE).render(**context)
