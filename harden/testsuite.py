"""A team's testinfra suites as verifiers: run them on a target, read back one result per test.

A suite runs in its own pytest process (``python -m pytest -p harden.pytest_plugin``): the
target is opened once for the whole suite, a test that hangs is cut off by the per-test timeout
(then the whole run by an overall deadline), and nothing a test does can disturb harden. Each
test (pytest node id) becomes a :class:`~harden.results.RuleResult` of kind ``testinfra``:
passed, failed (with its failure text as evidence), skipped (``not_applicable`` with the reason,
never counted as passed) or error, with the controls its ``controls`` marker names.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden.errors import ExitCode, HardenError, InputError, TargetError
from harden.results import RuleResult, Status

KIND = "testinfra"
MAX_EVIDENCE_LINES = 40
_STATUS = {
    "passed": Status.PASSED,
    "failed": Status.FAILED,
    "skipped": Status.NOT_APPLICABLE,
    "error": Status.ERROR,
}


@dataclass(frozen=True)
class Suite:
    """Test files or directories (absolute), with optional ``-k`` and ``-m`` selections.

    Node ids are relative to ``root`` (the image definition's folder, or the common folder)."""

    paths: tuple[Path, ...]
    root: Path | None = None
    keyword: str | None = None
    markers: str | None = None
    test_timeout: float = 120.0

    def check(self) -> None:
        for p in self.paths:
            if not p.exists():
                raise InputError(
                    f"test suite path {p} does not exist",
                    hint="paths in an image definition's 'tests' are relative to the definition",
                )


class SuiteError(HardenError):
    exit_code = ExitCode.ENVIRONMENT


@contextlib.contextmanager
def open_target(
    ref: str, *, known_hosts: Path | None = None, identity: Path | None = None
) -> Iterator[Any]:
    """A Target for ``ref`` kept open for a whole suite (one container, one SSH connection)."""
    if ref.startswith("ssh://"):
        from builder.ssh_target import SshTarget

        with SshTarget.from_url(ref, key_path=identity, known_hosts=known_hosts) as ssh:
            yield ssh
        return
    from builder.docker_engine import Engine, RunningContainerTarget

    engine = Engine.connect()
    if ref.startswith("docker://"):
        yield RunningContainerTarget(engine, ref.removeprefix("docker://"))
        return
    image = ref.removeprefix("docker-image://")
    keep_alive = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
    with engine.throwaway(image, keep_alive) as container:
        try:
            container.start()
        except Exception as e:  # docker.errors.APIError: the adapter's own words
            raise TargetError(f"cannot start a test container from {image}: {e}") from e
        yield RunningContainerTarget(engine, str(container.id))


def run_suite(
    suite: Suite,
    ref: str,
    *,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    overall_timeout: float = 1800.0,
    progress: Any = None,
) -> tuple[RuleResult, ...]:
    """Run ``suite`` against ``ref`` in a pytest process; one result per test."""
    suite.check()
    with tempfile.TemporaryDirectory(prefix="harden-suite.") as tmp:
        results = Path(tmp, "results.jsonl")
        cmd = [
            sys.executable, "-m", "pytest", "-p", "harden.pytest_plugin",
            "-p", "no:cacheprovider", "-q", "--no-header", "-rN",
            "--rootdir", str(suite.root or _common_root(suite.paths)),
            "--harden-target", ref, "--harden-results", str(results),
            "--harden-test-timeout", str(suite.test_timeout),
        ]
        if known_hosts:
            cmd += ["--harden-known-hosts", str(known_hosts)]
        if identity:
            cmd += ["--harden-identity", str(identity)]
        if suite.keyword:
            cmd += ["-k", suite.keyword]
        if suite.markers:
            cmd += ["-m", suite.markers]
        cmd += [str(p) for p in suite.paths]
        # the same harden (and builder/verifiers) as this process, whatever is installed
        tree = str(Path(__file__).resolve().parents[1])
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
        records = _read(results)
        # pytest exit codes: 0 all passed, 1 some failed, 5 nothing collected; 2-4 are its errors
        if proc.returncode not in (0, 1, 5) and not records:
            tail = proc.stdout.decode("utf-8", "replace").strip().splitlines()[-5:]
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


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("outcome") in _STATUS:
                out.append(rec)
    return out


def to_result(rec: dict[str, Any]) -> RuleResult:
    status = _STATUS[str(rec["outcome"])]
    text = str(rec.get("text") or "")
    lines = tuple(ln for ln in text.splitlines() if ln.strip())[-MAX_EVIDENCE_LINES:]
    reason = ""
    if status is Status.NOT_APPLICABLE:
        reason = f"skipped: {text.strip()}"
    elif status is Status.ERROR:
        reason = lines[-1] if lines else "error"
    controls = {str(k): tuple(str(x) for x in v) for k, v in (rec.get("controls") or {}).items()}
    nodeid = str(rec["nodeid"])
    return RuleResult(
        rule_id=nodeid,
        status=status,
        title=str(rec.get("title") or nodeid.rpartition("::")[2]),
        severity="high",
        kind=KIND,
        controls=controls,
        evidence=lines if status in (Status.FAILED, Status.ERROR) else (),
        reason=reason,
        duration=float(rec.get("duration") or 0.0),
    )
