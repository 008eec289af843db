"""Run a testinfra suite against a target in its own pytest process (see harden.testsuite)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import harden
from harden.errors import InputError
from harden.results import RuleResult
from harden.testsuite import Suite, SuiteError, read_records, to_result


def run_suite(
    suite: Suite,
    ref: str,
    *,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    overall_timeout: float = 1800.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[RuleResult, ...]:
    """Run ``suite`` against ``ref`` in a pytest process; one result per test."""
    suite.check()
    with tempfile.TemporaryDirectory(prefix="harden-suite.") as tmp:
        results = Path(tmp, "results.jsonl")
        ini = Path(tmp, "pytest.ini")  # the suite's own config only: not the caller's project's
        ini.write_text("[pytest]\n")
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harden.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ini),
            "-q",
            "--no-header",
            "--continue-on-collection-errors",  # a broken file is an error result, the rest runs
            "-rN",
            "--rootdir",
            str(suite.root or _common_root(suite.paths)),
            "--harden-target",
            ref,
            "--harden-results",
            str(results),
            "--harden-test-timeout",
            str(suite.test_timeout),
        ]
        if known_hosts:
            cmd += ["--harden-known-hosts", str(known_hosts)]
        if identity:
            cmd += ["--harden-identity", str(identity)]
        if suite.keyword:
            cmd += ["-k", suite.keyword]
        if suite.markers:
            cmd += ["-m", suite.markers]
        cmd += [str(p.resolve()) for p in suite.paths]
        # the same harden (and builder/verifiers) as this process, whatever is installed
        tree = str(Path(harden.__file__).resolve().parents[1])
        path = os.pathsep.join(x for x in (tree, os.environ.get("PYTHONPATH", "")) if x)
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if progress:
            progress(f"running test suite {' '.join(p.name for p in suite.paths)} on {ref}")
        try:
            proc = subprocess.run(
                cmd, capture_output=True, timeout=overall_timeout, env=env, cwd=tmp, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise SuiteError(
                f"the test suite did not finish within {overall_timeout:.0f}s",
                hint="a test hangs outside a test function (fixture, import); see --harden-test-timeout",
            ) from e
        records = read_records(results)
        # pytest exit codes: 0 all passed, 1 some failed, 5 nothing collected; 2-4 are its errors
        if proc.returncode not in (0, 1, 5) and not records:
            said = proc.stdout + b"\n" + proc.stderr
            tail = [ln for ln in said.decode("utf-8", "replace").splitlines() if ln.strip()][-5:]
            raise SuiteError(
                f"the test suite could not run (pytest exit {proc.returncode}): "
                + " | ".join(tail),
                hint="run it by hand: pytest --harden-target REF PATH",
            )
        if proc.returncode == 5 and not records:
            raise InputError(
                f"no tests collected from {', '.join(map(str, suite.paths))}",
                hint="check the paths and the -k / -m selection",
            )
        return tuple(to_result(r) for r in records)


def _common_root(paths: Sequence[Path]) -> Path:
    parents = [p if p.is_dir() else p.parent for p in paths]
    return Path(os.path.commonpath([str(p) for p in parents]))


def run_suites(
    suites: Sequence[Suite],
    ref: str,
    *,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[RuleResult, ...]:
    """Every suite's results, in order; a node id run by two suites counts once (the first)."""
    seen: set[str] = set()
    out: list[RuleResult] = []
    for suite in suites:
        for r in run_suite(
            suite, ref, known_hosts=known_hosts, identity=identity, progress=progress
        ):
            if r.rule_id not in seen:
                seen.add(r.rule_id)
                out.append(r)
    return tuple(out)
