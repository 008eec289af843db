"""The report formatters: table, JSON, JUnit, SARIF, HTML, and the stderr summary line."""

from __future__ import annotations

import datetime as dt
import html.parser
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmlschema
from hypothesis import given
from hypothesis import strategies as st

from harden.report import Format, render, summary_line
from harden.report.formats import clean, clean_line, clean_xml, ordered
from harden.results import BaselineRef, RuleResult, Status, VerifyReport, WaiverInfo

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden" / "report"
T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
DIGEST = "sha256:" + "a" * 64
EVIL = (
    "PermitRootLogin yes \x1b[31mred\x1b[0m\x1b[2J\x1b]0;pwned\x07\x9b1m <script>alert(1)</script>"
    " [bold red]markup[/bold red] & \"q\" 'a' \x00\x07\x08\x0c\x7f\x85 \ud800 \u202etxt.exe \ufffe"
)
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def result(
    rule_id: str,
    status: Status,
    *,
    severity: str = "medium",
    evidence: tuple[str, ...] = (),
    reason: str = "",
    waiver: WaiverInfo | None = None,
    controls: dict[str, tuple[str, ...]] | None = None,
) -> RuleResult:
    return RuleResult(
        rule_id=rule_id,
        status=status,
        title=f"title of {rule_id}",
        severity=severity,
        kind="file_line",
        controls=controls if controls is not None else {"cis_debian12": ("1.1",)},
        evidence=evidence,
        reason=reason,
        waiver=waiver,
    )


def report(results: tuple[RuleResult, ...], *, digest: str | None = DIGEST) -> VerifyReport:
    return VerifyReport(
        image="debian:12",
        digest=digest,
        target="container",
        platform="debian 12",
        baseline=BaselineRef("cis-debian12", "1.0.0", "sha256:" + "b" * 64),
        results=results,
        started_at=T0,
        finished_at=T0 + dt.timedelta(seconds=3),
    )


WAIVER = WaiverInfo(
    "build tools need exec /tmp", "platform-team@example.com", dt.date(2025, 12, 31), False
)


def sample(evidence: str = "PermitRootLogin yes") -> VerifyReport:
    return report(
        (
            result(
                "pkg.telnet-absent",
                Status.PASSED,
                evidence=("telnet: not installed",),
                controls={"cis_debian12": ("2.2.1",)},
            ),
            result(
                "ssh.permit-root-login",
                Status.FAILED,
                severity="high",
                evidence=(evidence, "in /etc/ssh/sshd_config line 32"),
                controls={"cis_debian12": ("5.1.20",), "iso27017": ("CLD.9.5.2",)},
            ),
            result(
                "kernel.aslr",
                Status.NOT_APPLICABLE,
                reason="containers share the host kernel",
                controls={},
            ),
            result(
                "fs.tmp-noexec",
                Status.WAIVED,
                severity="low",
                evidence=("/tmp: exec",),
                reason="waived",
                waiver=WAIVER,
                controls={"cis_debian12": ("1.1.2.4",)},
            ),
            result(
                "svc.cron",
                Status.ERROR,
                severity="critical",
                reason="systemctl not found",
                controls={"iso27017": ("CLD.9.5.2",)},
            ),
            result("pkg.rsh-absent", Status.FAILED, severity="low", evidence=("rsh-client 0.17",)),
        )
    )


def compliant_sample() -> VerifyReport:
    return report(
        (
            result("pkg.telnet-absent", Status.PASSED, evidence=("telnet: not installed",)),
            result("fs.tmp-noexec", Status.WAIVED, waiver=WAIVER),
            result("kernel.aslr", Status.NOT_APPLICABLE, reason="container"),
        )
    )


def big_report(n: int = 500) -> VerifyReport:
    statuses = list(Status)
    return report(
        tuple(
            result(
                f"rule.{i:04d}",
                statuses[i % len(statuses)],
                evidence=(f"line {i} " + "x" * 200, EVIL),
                reason="why" if statuses[i % len(statuses)] != Status.PASSED else "",
                waiver=WAIVER if statuses[i % len(statuses)] == Status.WAIVED else None,
                controls={"cis_debian12": (f"{i % 40}.1",), "iso27017": ("CLD.9.5.2",)},
            )
            for i in range(n)
        )
    )


def huge_evidence_report() -> VerifyReport:
    lines = tuple(f"/etc/file{i}: mode 0777 " + "y" * 90 for i in range(1000))  # ~115 KB
    one_line = "z" * 100_000
    return report(
        (
            result("fs.perms", Status.FAILED, evidence=lines),
            result("fs.oneline", Status.FAILED, evidence=(one_line,)),
            result("fs.error", Status.ERROR, reason="r" * 100_000),
        )
    )


# --- every format -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("make", [sample, compliant_sample, lambda: sample(EVIL), big_report])
def test_every_format_renders_encodable_text(fmt: Format, make: Any) -> None:
    text = render(make(), fmt)
    assert text.strip()
    text.encode("utf-8")  # no lone surrogates survive
    if fmt != Format.JSON:  # JSON keeps the evidence verbatim, escaped by json.dumps
        assert "\x1b" not in text
        assert not CONTROL_CHARS.search(text.replace("\n", ""))


@pytest.mark.parametrize("fmt", list(Format))
def test_large_reports_render_whole(fmt: Format) -> None:
    """500 results and one huge evidence render completely (their speed is bench work, not a
    clock in a test)."""
    assert render(big_report(500), fmt).strip()
    text = render(huge_evidence_report(), fmt)
    assert "fs.perms" in text and "fs.oneline" in text


_GOLDEN_EXT = {
    Format.TABLE: "txt",
    Format.JSON: "json",
    Format.JUNIT: "xml",
    Format.SARIF: "sarif",
    Format.HTML: "html",
}


@pytest.mark.parametrize("fmt", list(Format))
def test_golden(fmt: Format) -> None:
    """Regenerate with `make golden` (HARDEN_REGEN_GOLDEN=1)."""
    text = render(sample(), fmt, rule_sources={"ssh.permit-root-login": "baselines/ssh.yaml:12"})
    path = GOLDEN / f"sample.{_GOLDEN_EXT[fmt]}"
    if os.environ.get("HARDEN_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_format_enum_values() -> None:
    assert [f.value for f in Format] == ["table", "json", "junit", "sarif", "html"]
    assert render(sample(), "json") == render(sample(), Format.JSON)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        render(sample(), "yaml")  # type: ignore[arg-type]


# --- text hygiene -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\x1b[31mred\x1b[0mb", "aredb"),
        ("a\x1b[38;2;1;2;3mb", "ab"),
        ("title\x1b]0;pwned\x07 after", "title after"),
        ("link\x1b]8;;http://x\x1b\\text\x1b]8;;\x1b\\", "linktext"),
        ("8bit\x9b31mcsi", "8bitcsi"),
        ("dcs\x1bPq#0;2\x1b\\end", "dcsend"),
        ("cr\rlf\nbs\x08 nul\x00 del\x7f", "crlf\nbs nul del"),
        ("tab\there", "tab    here"),
        ("bidi\u202etxt\u2066x\u2069", "biditxtx"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("keyed \x1bc reset", "keyed  reset"),
        ("unicode ok: ünïcødé ✓ 日本", "unicode ok: ünïcødé ✓ 日本"),
    ],
)
def test_clean(raw: str, expected: str) -> None:
    assert clean(raw) == expected


@given(st.text())
def test_clean_leaves_no_control_characters(raw: str) -> None:
    out = clean(raw)
    assert not CONTROL_CHARS.search(out)
    assert "\x1b" not in out
    assert clean(out) == out
    out.encode("utf-8")
    assert "\n" not in clean_line(raw)
    xml = clean_xml(raw)
    ET.fromstring(ET.tostring(_element(xml)))  # always well-formed XML


def _element(text: str) -> ET.Element:
    el = ET.Element("e", {"a": text})
    el.text = text
    return el


def test_ordered_puts_failures_first() -> None:
    got = [(r.status, r.rule_id) for r in ordered(sample().results)]
    assert [s for s, _ in got] == [
        Status.FAILED,
        Status.FAILED,
        Status.ERROR,
        Status.WAIVED,
        Status.PASSED,
        Status.NOT_APPLICABLE,
    ]
    assert got[0][1] == "ssh.permit-root-login"  # high before low


# --- summary line -----------------------------------------------------------------------------


def test_summary_line_compliant() -> None:
    assert summary_line(compliant_sample()) == "compliant: 1 passed, 1 waived, 1 n/a"
    only_passed = report((result("a", Status.PASSED),))
    assert summary_line(only_passed) == "compliant: 1 passed"
    assert summary_line(report(())) == "compliant: no rules applied"


def test_summary_line_not_compliant() -> None:
    assert summary_line(sample()) == (
        "NOT compliant: 2 failed, 1 error (ssh.permit-root-login, pkg.rsh-absent, svc.cron); "
        "1 passed, 1 waived, 1 n/a"
    )


def test_summary_line_lists_at_most_five_ids() -> None:
    r = report(tuple(result(f"r{i}", Status.FAILED) for i in range(8)))
    assert summary_line(r) == "NOT compliant: 8 failed (r0, r1, r2, r3, r4, ... 3 more); 0 passed"


def test_summary_line_counts_expired_waivers() -> None:
    expired = WaiverInfo("old", "me", dt.date(2020, 1, 1), True)
    r = report((result("a", Status.FAILED, waiver=expired), result("b", Status.PASSED)))
    assert summary_line(r) == "NOT compliant: 1 failed (a); 1 passed, 1 expired waiver"


# --- table ------------------------------------------------------------------------------------


def test_plain_table() -> None:
    lines = render(sample(), Format.TABLE).splitlines()
    assert lines[0].split() == ["RULE", "STATUS", "SEVERITY", "EVIDENCE/REASON"]
    rows = [ln.split()[:3] for ln in lines[2:]]
    assert rows == [
        ["ssh.permit-root-login", "failed", "high"],
        ["pkg.rsh-absent", "failed", "low"],
        ["svc.cron", "error", "critical"],
        ["fs.tmp-noexec", "waived", "low"],
        ["pkg.telnet-absent", "passed", "medium"],
        ["kernel.aslr", "not_applicable", "medium"],
    ]
    text = "\n".join(lines)
    assert "PermitRootLogin yes" in text
    assert "in /etc/ssh" not in text  # only the first evidence line
    assert "systemctl not found" in text
    assert "containers share the host kernel" in text


def test_plain_table_shows_waiver_owner_and_expiry() -> None:
    text = render(sample(), Format.TABLE, width=200)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("fs.tmp-noexec")]
    assert line.endswith(
        "waived: build tools need exec /tmp (platform-team@example.com, expires 2025-12-31)"
    )


@pytest.mark.parametrize("width", [80, 100, 140])
def test_table_fits_width_and_truncates(width: int) -> None:
    r = sample("PermitRootLogin yes " + "x" * 500)
    for color in (False, True):
        text = render(r, Format.TABLE, color=color, width=width)
        visible = re.sub(r"\x1b\[[0-9;]*m", "", text)
        assert all(len(ln) <= width for ln in visible.splitlines()), color
        assert "…" in visible


def test_table_strips_ansi_from_evidence() -> None:
    plain = render(sample(EVIL), Format.TABLE, width=400)
    assert "\x1b" not in plain
    assert "PermitRootLogin yes red" in plain
    colored = render(sample(EVIL), Format.TABLE, color=True, width=400)
    assert "\x1b[2J" not in colored and "\x1b]" not in colored and "\x9b" not in colored
    assert "pwned" not in colored
    assert re.search(r"\x1b\[[0-9;]*mfailed", colored)  # rich styles the status
    assert "[bold red]markup[/bold red]" in colored  # markup in evidence stays literal


# --- JSON -------------------------------------------------------------------------------------


def _report_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    return schema


def test_json_is_to_json() -> None:
    r = sample(EVIL)
    assert render(r, Format.JSON) == json.dumps(r.to_json(), indent=2)


@pytest.mark.parametrize("make", [sample, compliant_sample, big_report, lambda: sample(EVIL)])
def test_json_validates_against_published_schema(make: Any) -> None:
    validator = jsonschema.Draft202012Validator(_report_schema())
    validator.check_schema(_report_schema())
    validator.validate(json.loads(render(make(), Format.JSON)))
    validator.validate(json.loads(render(report((), digest=None), Format.JSON)))


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.pop("compliant"),
        lambda d: d.__setitem__("schema_version", 2),
        lambda d: d["results"][0].__setitem__("status", "ok"),
        lambda d: d["results"][0].__setitem__("extra", 1),
        lambda d: d["results"][3].__setitem__("waiver", None),  # waived needs its waiver
        lambda d: d.__setitem__("started_at", "2025-03-01 12:00"),
        lambda d: d["summary"].__setitem__("failed", -1),
    ],
)
def test_json_schema_rejects_broken_reports(breakage: Any) -> None:
    doc = json.loads(render(sample(), Format.JSON))
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_report_schema()).validate(doc)


# --- JUnit ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def junit_xsd() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(FIXTURES / "junit.xsd"))


@pytest.mark.parametrize("make", [sample, compliant_sample, big_report, lambda: sample(EVIL)])
def test_junit_validates_against_xsd(junit_xsd: xmlschema.XMLSchema, make: Any) -> None:
    junit_xsd.validate(render(make(), Format.JUNIT))


def test_junit_xsd_is_not_a_rubber_stamp(junit_xsd: xmlschema.XMLSchema) -> None:
    bad = (
        render(sample(), Format.JUNIT)
        .replace("<failure ", "<failed ")
        .replace("</failure>", "</failed>")
    )
    assert not junit_xsd.is_valid(bad)


def test_junit_content() -> None:
    root = ET.fromstring(render(sample(), Format.JUNIT))
    (suite,) = root.findall("testsuite")
    expected = {"tests": "6", "failures": "2", "errors": "1", "skipped": "2"}
    assert {k: suite.get(k) for k in expected} == expected
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["image"] == "debian:12"
    assert props["digest"] == DIGEST
    assert props["baseline"] == "cis-debian12@1.0.0"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert {c.get("classname") for c in cases.values()} == {"harden.cis-debian12"}
    assert len(cases["pkg.telnet-absent"]) == 0
    failure = cases["ssh.permit-root-login"].find("failure")
    assert failure is not None
    assert failure.get("message") == "PermitRootLogin yes"
    assert failure.text == "PermitRootLogin yes\nin /etc/ssh/sshd_config line 32"
    error = cases["svc.cron"].find("error")
    assert error is not None and error.get("message") == "systemctl not found"
    waived = cases["fs.tmp-noexec"].find("skipped")
    assert waived is not None
    assert waived.get("message") == (
        "waived: build tools need exec /tmp (platform-team@example.com, expires 2025-12-31)"
    )
    na = cases["kernel.aslr"].find("skipped")
    assert (
        na is not None and na.get("message") == "not applicable: containers share the host kernel"
    )


def test_junit_escapes_and_strips_hostile_evidence() -> None:
    text = render(sample(EVIL), Format.JUNIT)
    assert "<script>" not in text and "&lt;script&gt;" in text
    failure = ET.fromstring(text).find(".//testcase[@name='ssh.permit-root-login']/failure")
    assert failure is not None and failure.text is not None
    assert "<script>alert(1)</script>" in failure.text  # escaped in XML, intact once parsed
    assert "\ufffe" not in failure.text and "\x00" not in failure.text


# --- SARIF ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((FIXTURES / "sarif-schema-2.1.0.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("make", [sample, compliant_sample, big_report, lambda: sample(EVIL)])
def test_sarif_validates_against_official_schema(
    sarif_validator: jsonschema.protocols.Validator, make: Any
) -> None:
    sarif_validator.validate(json.loads(render(make(), Format.SARIF)))


def test_sarif_schema_is_not_a_rubber_stamp(
    sarif_validator: jsonschema.protocols.Validator,
) -> None:
    doc = json.loads(render(sample(), Format.SARIF))
    doc["runs"][0]["results"][0]["level"] = "fatal"
    assert not sarif_validator.is_valid(doc)


def _sarif(r: VerifyReport, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(render(r, Format.SARIF, **kw))
    return doc


def test_sarif_rules_and_results() -> None:
    doc = _sarif(sample(), rule_help={"ssh.permit-root-login": "Root over SSH is unaccountable."})
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "harden" and driver["version"]
    rules = {r["id"]: r for r in driver["rules"]}
    assert len(rules) == 6
    ssh = rules["ssh.permit-root-login"]
    assert ssh["shortDescription"]["text"] == "title of ssh.permit-root-login"
    assert ssh["help"]["text"] == "Root over SSH is unaccountable."
    assert ssh["properties"]["tags"] == ["cis_debian12:5.1.20", "iso27017:CLD.9.5.2"]
    assert ssh["defaultConfiguration"]["level"] == "error"
    assert rules["pkg.rsh-absent"]["defaultConfiguration"]["level"] == "note"
    assert rules["svc.cron"]["help"]["text"] == "title of svc.cron"  # no rationale given

    results = {r["ruleId"]: r for r in run["results"]}
    assert set(results) == {"ssh.permit-root-login", "pkg.rsh-absent", "svc.cron", "fs.tmp-noexec"}
    for res in run["results"]:
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
    assert results["ssh.permit-root-login"]["level"] == "error"
    assert "PermitRootLogin yes" in results["ssh.permit-root-login"]["message"]["text"]
    assert results["svc.cron"]["level"] == "warning"
    assert "suppressions" not in results["ssh.permit-root-login"]
    (sup,) = results["fs.tmp-noexec"]["suppressions"]
    assert sup["kind"] == "external" and sup["status"] == "accepted"
    assert sup["justification"] == (
        "build tools need exec /tmp (platform-team@example.com, expires 2025-12-31)"
    )


def test_sarif_locations() -> None:
    sources = {
        "ssh.permit-root-login": "baselines/ssh hardening.yaml:42",
        "svc.cron": "/opt/baselines/svc.yaml:7",
    }
    results = {r["ruleId"]: r for r in _sarif(sample(), rule_sources=sources)["runs"][0]["results"]}
    (loc,) = results["ssh.permit-root-login"]["locations"]
    assert loc["physicalLocation"] == {
        "artifactLocation": {"uri": "baselines/ssh%20hardening.yaml"},
        "region": {"startLine": 42},
    }
    assert loc["logicalLocations"][0]["fullyQualifiedName"] == f"debian:12@{DIGEST}"
    cron = results["svc.cron"]["locations"][0]["physicalLocation"]
    assert cron["artifactLocation"]["uri"] == "file:///opt/baselines/svc.yaml"
    default = results["pkg.rsh-absent"]["locations"][0]["physicalLocation"]
    assert default == {"artifactLocation": {"uri": "baselines/cis-debian12.yaml"}}


def test_sarif_without_digest_names_the_image() -> None:
    r = report((result("a", Status.FAILED),), digest=None)
    (res,) = _sarif(r)["runs"][0]["results"]
    assert res["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "debian:12"


def test_sarif_compliant_report_has_no_failures() -> None:
    results = _sarif(compliant_sample())["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["fs.tmp-noexec"]
    assert results[0]["suppressions"]


# --- HTML -------------------------------------------------------------------------------------


class _Elements(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Elements:
    p = _Elements()
    p.feed(text)
    p.close()
    return p


def test_html_summary_rules_waivers_controls() -> None:
    text = render(sample(), Format.HTML)
    assert text.startswith("<!DOCTYPE html>")
    doc = _parse(text)
    body = " ".join(" ".join(doc.text).split())
    assert "NOT compliant" in body
    assert "6 rules: 2 failed, 1 error, 1 waived, 1 passed, 1 n/a" in body
    assert "PermitRootLogin yes" in body and "in /etc/ssh/sshd_config line 32" in body
    assert "platform-team@example.com" in body and "2025-12-31" in body
    assert "iso27017:CLD.9.5.2" in body
    # the per-control view: CLD.9.5.2 maps ssh (failed) and cron (error); worst first
    section = text[text.index('id="controls"') :]
    row = section[section.index("iso27017:CLD.9.5.2") :]
    row = row[: row.index("</tr>")]
    assert row.index("ssh.permit-root-login") < row.index("svc.cron")
    assert 'class="badge s-failed">failed' in row


def test_html_compliant() -> None:
    body = " ".join(_parse(render(compliant_sample(), Format.HTML)).text)
    assert "Compliant" in body and "NOT compliant" not in body


def test_html_is_self_contained() -> None:
    text = render(big_report(50), Format.HTML)
    doc = _parse(text)
    assert "script" not in doc.tags and "link" not in doc.tags and "img" not in doc.tags
    assert "iframe" not in doc.tags
    urls = [v for k, v in doc.attrs if k in ("src", "href") and v]
    assert all(u.startswith("#") for u in urls), urls
    assert "http://" not in text.split("</head>")[1] and "https://" not in text


def test_html_escapes_hostile_evidence() -> None:
    text = render(sample(EVIL), Format.HTML)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "\x1b" not in text and "pwned" not in text
    doc = _parse(text)
    assert "script" not in doc.tags
    assert any("<script>alert(1)</script>" in t for t in doc.text)  # shown as text


def test_html_cuts_huge_evidence_with_a_note() -> None:
    text = render(huge_evidence_report(), Format.HTML)
    assert "more characters cut; the JSON report has them all" in text
    assert len(text) < 1_000_000
