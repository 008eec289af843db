"""Read the XCCDF TestResult out of an ARF (Asset Reporting Format) file, safely.

The ARF is produced by a scanner that read a hostile file system; treat it as untrusted input:
parsed with defusedxml (no DTDs, no entity expansion, no external references), streamed with
``iterparse`` and bounded in bytes and in rule results. Only the one XCCDF 1.2 ``TestResult`` is
read; the embedded data stream and OVAL results are skipped element by element.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import IO
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from harden.errors import InputError
from harden.scan.model import RuleOutcome, ScanResult, XccdfResult

XCCDF12 = "{http://checklists.nist.gov/xccdf/1.2}"
MAX_ARF_BYTES = 256 * 1024 * 1024
MAX_RULE_RESULTS = 20_000
_SCANNER_CPE = re.compile(r"cpe:/a:[^:]*:openscap:([0-9][0-9A-Za-z.\-]*)")
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")
_SEVERITIES = frozenset({"unknown", "info", "low", "medium", "high"})


class ArfError(InputError):
    """An ARF file that is not what OpenSCAP writes (or too large)."""


def _attr_id(el: Element, name: str, what: str) -> str:
    value = el.get(name, "")
    if not _ID.fullmatch(value):
        raise ArfError(f"ARF: {what} {value[:80]!r} is not an XCCDF id")
    return value


def _text(el: Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _test_result(root: Element) -> ScanResult:
    benchmark_el = root.find(f"{XCCDF12}benchmark")
    profile_el = root.find(f"{XCCDF12}profile")
    if profile_el is None:
        raise ArfError("ARF: the TestResult names no profile")
    profile = _attr_id(profile_el, "idref", "profile")
    benchmark = _attr_id(benchmark_el, "id", "benchmark") if benchmark_el is not None else ""
    scanner = "OpenSCAP"
    m = _SCANNER_CPE.fullmatch(root.get("test-system", ""))
    if m:
        scanner = f"OpenSCAP {m.group(1)}"
    for fact in root.iter(f"{XCCDF12}fact"):
        if fact.get("name") == "urn:xccdf:fact:scanner:version" and re.fullmatch(
            r"[0-9][0-9A-Za-z.\-]{0,40}", _text(fact)
        ):
            scanner = f"OpenSCAP {_text(fact)}"
    rules: list[RuleOutcome] = []
    seen: set[str] = set()
    for rr in root.iter(f"{XCCDF12}rule-result"):
        rule_id = _attr_id(rr, "idref", "rule id")
        raw = _text(rr.find(f"{XCCDF12}result"))
        try:
            result = XccdfResult(raw)
        except ValueError as e:
            raise ArfError(f"ARF: rule {rule_id} has an unknown result {raw[:40]!r}") from e
        if rule_id in seen:
            raise ArfError(f"ARF: rule {rule_id} has two results")
        seen.add(rule_id)
        severity = rr.get("severity", "unknown")
        rules.append(
            RuleOutcome(rule_id, result, severity if severity in _SEVERITIES else "unknown")
        )
        if len(rules) > MAX_RULE_RESULTS:
            raise ArfError(f"ARF: more than {MAX_RULE_RESULTS} rule results")
    xccdf_score: float | None = None
    for sc in root.iter(f"{XCCDF12}score"):
        if sc.get("system", "urn:xccdf:scoring:default") == "urn:xccdf:scoring:default":
            try:
                xccdf_score = round(float(_text(sc)), 1)
            except ValueError as e:
                raise ArfError("ARF: the XCCDF score is not a number") from e
    version = root.get("version", "")
    return ScanResult(
        profile=profile,
        benchmark=benchmark,
        content="",
        content_version=version if re.fullmatch(r"[0-9A-Za-z.+~\-]{0,64}", version) else "",
        scanner=scanner,
        rules=tuple(rules),
        xccdf_score=xccdf_score,
        started_at=root.get("start-time", "")[:40],
        finished_at=root.get("end-time", "")[:40],
    )


def parse_arf_stream(stream: IO[bytes]) -> ScanResult:
    """The one XCCDF 1.2 TestResult of an ARF stream (ArfError when there is none or several)."""
    found: list[ScanResult] = []
    depth_in_result = 0
    try:
        for event, el in DET.iterparse(stream, events=("start", "end")):
            if el.tag != f"{XCCDF12}TestResult":
                if event == "end" and depth_in_result == 0:
                    el.clear()  # the data stream and OVAL results: never kept in memory
                continue
            if event == "start":
                depth_in_result += 1
                continue
            depth_in_result -= 1
            found.append(_test_result(el))
            el.clear()
            if len(found) > 1:
                raise ArfError("ARF: more than one XCCDF TestResult")
    except DefusedXmlException as e:
        raise ArfError(f"ARF: forbidden XML construct ({type(e).__name__})") from e
    except DET.ParseError as e:
        raise ArfError(f"ARF: not well-formed XML ({e})") from e
    if not found:
        raise ArfError("ARF: no XCCDF 1.2 TestResult in the file")
    return found[0]


class _Bounded:
    """A read-only stream that refuses to go past ``limit`` bytes and hashes what it reads."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.limit, self.read_bytes = raw, limit, 0
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        want = self.limit + 1 - self.read_bytes if n < 0 else n
        data = self.raw.read(max(0, min(want, self.limit + 1 - self.read_bytes)))
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise ArfError(f"ARF larger than {self.limit} bytes")
        self.sha256.update(data)
        return data


def parse_arf(path: Path, *, max_bytes: int = MAX_ARF_BYTES) -> ScanResult:
    """Parse ``path`` (bounded to ``max_bytes``); the result carries the file's sha256."""
    import dataclasses

    with path.open("rb") as f:
        bounded = _Bounded(f, max_bytes)
        result = parse_arf_stream(bounded)  # type: ignore[arg-type]
        while bounded.read(1 << 20):  # hash whatever follows the TestResult too
            pass
    return dataclasses.replace(result, arf_digest="sha256:" + bounded.sha256.hexdigest())
