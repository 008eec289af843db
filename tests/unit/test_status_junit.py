"""harden status --format junit: one testcase per image, valid against the JUnit XSD."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema

from harden.cli.status_cmd import junit_xml
from harden.lifecycle import ImageFacts, ImageStatus, State

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
XSD = Path(__file__).parent / "fixtures" / "junit.xsd"


def status(name: str, state: State, reasons: tuple[str, ...]) -> ImageStatus:
    f = ImageFacts(name=name, definition="", destination="", max_age=dt.timedelta(days=30))
    return ImageStatus(f, state, reasons, T0)


def test_status_junit_fails_what_needs_a_rebuild_and_errors_the_unknown(tmp_path: Path) -> None:
    xml = junit_xml(
        [
            status("fresh-one", State.FRESH, ()),
            status("old-one", State.STALE, ("older than max_age 30d", "<script>x</script>")),
            status("lost-one", State.UNKNOWN, ("registry 127.0.0.1:5999 unreachable",)),
        ],
        "2026-03-01T00:00:00Z",
    )
    out = tmp_path / "status.xml"
    out.write_text(xml, encoding="utf-8")
    xmlschema.XMLSchema(str(XSD)).validate(str(out))
    suite = ET.fromstring(xml).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["fresh-one (fresh)"].find("failure") is None
    failure = cases["old-one (stale)"].find("failure")
    assert failure is not None and "older than max_age 30d" in (failure.text or "")
    assert "<script>" in (failure.text or "")  # escaped text, not markup
    assert cases["lost-one (unknown)"].find("error") is not None
