"""The HTML report in a real browser: headless Debian chromium screenshots and dumps the DOM."""

from __future__ import annotations

import datetime as dt
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from harden.report import Format, render
from harden.results import BaselineRef, RuleResult, Status, VerifyReport, WaiverInfo

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
HOSTILE = (
    "PermitRootLogin yes \x1b[31m<script>document.title='pwned'</script>"
    "<img src=x onerror=alert(1)>\x1b[0m"
)


def _report() -> VerifyReport:
    def rule(rid: str, status: Status, **kw: object) -> RuleResult:
        return RuleResult(
            rule_id=rid,
            status=status,
            title=f"title of {rid}",
            severity="high",
            kind="file_line",
            controls={"cis_debian12": ("5.1.20",), "iso27017": ("CLD.9.5.2",)},
            **kw,  # type: ignore[arg-type]
        )

    waiver = WaiverInfo("needed by the build", "platform-team", dt.date(2025, 12, 31), False)
    results = (
        rule("ssh.permit-root-login", Status.FAILED, evidence=(HOSTILE, "line 2")),
        rule("svc.cron", Status.ERROR, reason="systemctl not found"),
        rule("fs.tmp-noexec", Status.WAIVED, waiver=waiver),
        rule("kernel.aslr", Status.NOT_APPLICABLE, reason="container"),
        *(rule(f"pkg.p{i:02d}", Status.PASSED, evidence=("ok",)) for i in range(30)),
    )
    return VerifyReport(
        image="golden/debian:12",
        digest="sha256:" + "a" * 64,
        target="container",
        platform="debian 12",
        baseline=BaselineRef("cis-debian12", "1.0.0", "sha256:" + "b" * 64),
        results=results,
        started_at=T0,
        finished_at=T0 + dt.timedelta(seconds=3),
    )


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "Debian chromium is not installed (apt-get install -y chromium)"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG with zlib by hand: (width, height, RGB of every pixel)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [r[i : i + 3] for r in rows for i in range(0, stride, bpp)]


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(_report(), Format.HTML), encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    shot.unlink(missing_ok=True)

    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert len(data) > 10_000
    width, height, pixels = _png_pixels(data)
    assert (width, height) == (1200, 900)
    colours = set(pixels)
    assert len(colours) > 50, "the screenshot is (nearly) a single colour"
    # the NOT-compliant header bar (#b42318) fills the top of the page
    top = pixels[10 * width : 11 * width]
    assert top.count(bytes((0xB4, 0x23, 0x18))) > width // 2

    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "NOT compliant" in html
    assert "34 rules: 1 failed, 1 error, 1 waived, 30 passed, 1 n/a" in html
    assert "platform-team" in html and "2025-12-31" in html
    assert "iso27017:CLD.9.5.2" in html
    # the evidence is text: no <script> or <img> element came from it, the title is untouched
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in html
    assert "<title>harden: golden/debian:12 NOT compliant</title>" in html
    assert "\x1b" not in html
