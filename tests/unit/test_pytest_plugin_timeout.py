"""The pytest11 plugin bounds tests only where asked: installing harden must not put a 120 s
limit on every other project's tests (it did: the option's default applied everywhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """\
import signal


def test_timer():
    print("ARMED", signal.getitimer(signal.ITIMER_REAL)[0] > 0)
"""


def _armed(tmp_path: Path, *args: str) -> bool:
    (tmp_path / "test_probe.py").write_text(PROBE)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's plugin
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ARMED" in out.stdout, out.stdout
    return "ARMED True" in out.stdout


def test_no_limit_on_a_plain_pytest_run(tmp_path: Path) -> None:
    assert not _armed(tmp_path)


def test_limit_when_asked(tmp_path: Path) -> None:
    assert _armed(tmp_path, "--harden-test-timeout", "50")
