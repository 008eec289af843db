"""`harden verify base.qcow2 --no-boot`: the cached VM base template read from its qcow2 without
booting or mounting it (qemu-img convert + debugfs, then the exec-free facts), the whole CLI
process timed, with its peak memory (target: file-level results in seconds, < 150 MB)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path("/var/cache/harden/vm/current/base.qcow2")
REPEAT = 3


def _once(home: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `harden verify --no-boot` (a fresh probe process
    whose only child is the CLI, so its children's ru_maxrss is the CLI's or debugfs's)."""
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    cmd = [sys.executable, "-c", "from harden.cli import main; main()", "verify", str(TEMPLATE)]
    cmd += ["--no-boot", "--format", "json"]
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "HARDEN_HOME": home},
        cwd=ROOT,
        check=True,
    )
    return time.perf_counter() - t0, int(out.stdout.split()[-1]) / 1024


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="harden-bench-sealed-") as home:
        runs = sorted(_once(home) for _ in range(REPEAT))
    seconds = runs[len(runs) // 2][0]
    rss = max(r[1] for r in runs)
    size = TEMPLATE.stat().st_size >> 20
    return [
        Result(
            name=f"verify a VM template without booting it (--no-boot, {size} MiB qcow2)",
            harden_s=seconds,
            baseline_name="",
            baseline_s=0.0,
            target="< 30 s, < 150 MB",
            met=seconds < 30 and rss < 150,
            note=f"peak RSS {rss:.0f} MB; file-level rules judged, the rest 'needs a running "
            "system'; wall time depends on the machine's load",
        )
    ]
