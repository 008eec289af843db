"""Exec-free verify of the demo golden image from the local registry: warm and cold layer cache,
side by side with today's container verify (one fact script in a running container), and the
peak memory of the `harden verify` process.

The golden image is the demo's definition (images/debian12.yaml) built and pushed to a bench
repository of the local registry, so the demo's own tags are not touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result, interleaved, median_time
from harden.baseline.kinds import Command
from harden.baseline.resolve import Catalogue, ResolvedBaseline, resolve
from harden.builder.container_build import build_container
from harden.builder.docker_engine import Engine, RunningContainerTarget
from harden.clock import SystemClock
from harden.imagedef import load_definition
from harden.verifiers.image_layers import LayerCache, open_registry_image
from harden.verifiers.runner import verify
from harden.verifiers.static_verify import verify_image

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = "127.0.0.1:5000/bench/execfree-golden:latest"


def _golden(engine: Engine, catalogue: Catalogue, d: Path) -> str:
    doc = (ROOT / "images" / "debian12.yaml").read_text()
    doc = doc.replace("127.0.0.1:5000/staging/debian12-hardened:latest", GOLDEN)
    # the bench measures verify, not the definition's test suites (their paths are relative to
    # images/, and they run in the build, not in the verify being timed)
    doc = doc.split("\ntests:", 1)[0] + "\n"
    path = d / "golden.yaml"
    path.write_text(doc)
    result = build_container(load_definition(path), catalogue, engine, SystemClock(), push=True)
    assert result.pushed, "the bench golden image was not pushed"
    return result.image_id


def _max_rss_mb(args: list[str], env: dict[str, str]) -> float:
    """Peak RSS of one `harden verify` child (a fresh interpreter reports its only child)."""
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    cmd = [sys.executable, "-c", "from harden.cli import main; main()", "verify", *args]
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
    )
    return int(out.stdout.split()[-1]) / 1024


def run() -> list[Result]:
    engine = Engine.connect()
    catalogue = Catalogue.from_search_path()
    full = resolve(catalogue, "debian-container")
    static: ResolvedBaseline = dataclasses.replace(
        full, rules=tuple(r for r in full.rules if not isinstance(r.spec, Command))
    )
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        image_id = _golden(engine, catalogue, d)
        warm = LayerCache(d / "warm")

        def exec_free(cache: LayerCache, baseline: ResolvedBaseline) -> None:
            img = open_registry_image(GOLDEN, cache=cache)
            report = verify_image(img, baseline, clock, image=GOLDEN, run_commands=None)
            assert report.summary()["error"] == 0, report.summary()

        cpu: list[float] = []

        def cold() -> None:
            c0 = time.process_time()
            exec_free(LayerCache(d / uuid.uuid4().hex), static)
            cpu.append(time.process_time() - c0)

        exec_free(warm, static)  # fills the warm cache
        c = engine.client.containers.run(
            image_id, ["sleep", "600"], network_mode="none", detach=True
        )
        try:
            target = RunningContainerTarget(engine, str(c.name))

            def container() -> None:
                verify(target, full, clock, image=GOLDEN, digest=None)

            container()
            t_warm, t_container = interleaved(lambda: exec_free(warm, static), container, repeat=5)
        finally:
            c.remove(force=True)
        t_cold = median_time(cold, repeat=3)

        def with_commands() -> None:
            img = open_registry_image(GOLDEN, cache=warm)
            pinned = GOLDEN.rsplit(":", 1)[0] + "@" + img.digest
            from harden.builder.docker_engine import ImageTarget

            engine.pull(pinned)
            verify_image(
                img, full, clock, image=GOLDEN, run_commands=ImageTarget(engine, pinned).run
            )

        t_commands = median_time(with_commands, repeat=3)
        home = {"HARDEN_HOME": str(d / "home"), "HARDEN_LAYER_CACHE": str(d / "rss-cache")}
        bl_dir = d / "bl"
        bl_dir.mkdir()
        (bl_dir / "static.yaml").write_text(
            json.dumps(
                {
                    "id": "bench-static",
                    "version": "1.0.0",
                    "title": "debian-container without command rules",
                    "extends": ["debian-container"],
                    "platforms": [{"family": "debian", "versions": ["12", "13"]}],
                    "targets": ["container"],
                    "exclude_rules": sorted(
                        r.id for r in full.rules if isinstance(r.spec, Command)
                    ),
                    "rules": [],
                }
            )
        )
        args = [GOLDEN, "--baselines", str(bl_dir), "--baseline", "bench-static"]
        rss_cold = _max_rss_mb(args, home)
        rss_warm = _max_rss_mb(args, home)
    n = len(static.rules)
    return [
        Result(
            name=f"exec-free verify, registry, warm layer cache ({n} file-level rules)",
            harden_s=t_warm,
            baseline_name=f"container verify ({len(full.rules)} rules, one docker exec)",
            baseline_s=t_container,
            target="<= container verify, < 150 MB",
            met=t_warm <= t_container and rss_warm < 150,
            note=f"peak RSS {rss_warm:.0f} MB (whole CLI process)",
        ),
        Result(
            name=f"exec-free verify, registry, cold layer cache ({n} rules)",
            harden_s=t_cold,
            baseline_name="",
            baseline_s=0.0,
            target="< 1.5 s, < 150 MB",
            met=t_cold < 1.5 and rss_cold < 150,
            note=f"peak RSS {rss_cold:.0f} MB (whole CLI process); CPU "
            f"{statistics.median(cpu):.2f} s (wall time depends on the machine's load)",
        ),
        Result(
            name=f"verify {full.id} ({len(full.rules)} rules): exec-free + command checks in a container",
            harden_s=t_commands,
            baseline_name="",
            baseline_s=0.0,
            target=f"- ({sum(isinstance(r.spec, Command) for r in full.rules)} command rules)",
            met=True,
        ),
    ]
