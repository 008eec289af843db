"""Run the harden command line the way a user does: a new process, exit code, stdout, stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-c", "from harden.cli import main; main()"]


def run(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``harden ARGS`` from the checkout (so the tree under test is what runs)."""
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def demo_definition() -> dict[str, Any]:
    """images/debian12.yaml as data, its ``tests`` paths made absolute so that a copy written
    elsewhere (with another destination) still finds the suites next to the original."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "images" / "debian12.yaml").read_text())
    doc["tests"] = [
        t if str(t).startswith("harden:") else str((ROOT / "images" / str(t)).resolve())
        for t in doc.get("tests", [])
    ]
    return doc
