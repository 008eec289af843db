"""Rebuilds: which images, in which order (dependency waves), under a lock per image.

Planning is pure: an image needs a rebuild when :mod:`harden.lifecycle` says so (stale, outdated,
revoked, missing), and so does every image whose base is the destination of an image being
rebuilt (its base is about to change), transitively. Parents come before children: wave 0 has
the images with no parent in the plan, wave 1 their children, and so on.

Running (:func:`run_plan`) goes wave by wave, up to ``jobs`` builds at a time on threads. Each
image is built under an exclusive ``fcntl`` lock on ``<lock dir>/<name>.lock`` (the holder writes
its pid, host and start time into it, so a second run that waits in vain can say who holds it);
the kernel drops the lock when its process dies, so a killed run never blocks the next one.
After taking the lock the caller's ``recheck`` may say the image no longer needs a rebuild
(another run just did it). One failure does not stop the others; the children of a failed image
are skipped. Every start and outcome goes to the audit log with its reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from harden.audit import AuditAction, AuditLog
from harden.clock import Clock
from harden.errors import EnvironmentProblem, HardenError, UsageError
from harden.imagedef import ImageDefinition
from harden.inventory import normalize_reference
from harden.lifecycle import ImageStatus, State
from harden.results import rfc3339

__all__ = [
    "SCHEMA_VERSION",
    "BuildOutcome",
    "ImageLock",
    "LockTimeout",
    "Outcome",
    "Plan",
    "PlanFormat",
    "PlannedBuild",
    "dependency_parents",
    "plan_rebuild",
    "render_plan",
    "run_plan",
]

SCHEMA_VERSION = 1
PARENT_REBUILT = "parent rebuilt"


@dataclass(frozen=True)
class PlannedBuild:
    name: str
    definition: Path
    destination: str
    reason: str  # "outdated (base)", "stale", "missing", "parent rebuilt (X)", "requested"
    parents: tuple[str, ...] = ()  # parents in the same plan

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "definition": str(self.definition),
            "destination": self.destination,
            "reason": self.reason,
            "parents": list(self.parents),
            "command": f"harden build {self.definition}",
        }


@dataclass(frozen=True)
class Plan:
    waves: tuple[tuple[PlannedBuild, ...], ...]
    unknown: tuple[str, ...] = ()  # images whose state could not be known (not planned)

    @property
    def builds(self) -> list[PlannedBuild]:
        return [b for w in self.waves for b in w]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "waves": [[b.to_json() for b in w] for w in self.waves],
            "unknown": list(self.unknown),
        }


def dependency_parents(definitions: Sequence[ImageDefinition]) -> dict[str, tuple[str, ...]]:
    """name -> the names of the definitions whose destination is its base."""
    by_destination: dict[str, list[str]] = {}
    for d in definitions:
        if d.doc.destination:
            by_destination.setdefault(normalize_reference(d.doc.destination), []).append(d.name)
    out: dict[str, tuple[str, ...]] = {}
    for d in definitions:
        base = normalize_reference(d.doc.base) if d.doc.base else None
        parents = by_destination.get(base, []) if base else []
        out[d.name] = tuple(p for p in parents if p != d.name)
    return out


def plan_rebuild(
    definitions: Sequence[ImageDefinition],
    statuses: Sequence[ImageStatus],
    *,
    everything: bool = False,
) -> Plan:
    """The builds, in waves. ``everything``: every definition with a destination (container
    images and VM templates)."""
    defs = {d.name: d for d in definitions if d.doc.destination and (d.doc.base or d.doc.vm)}
    by_name = {s.name: s for s in statuses}
    parents = dependency_parents(list(defs.values()))
    reasons: dict[str, str] = {}
    unknown: list[str] = []
    for name in defs:
        s = by_name.get(name)
        if everything:
            reasons[name] = "requested"
        elif s is None or s.state is State.UNKNOWN:
            unknown.append(name)
        elif s.needs_rebuild:
            reasons[name] = s.label
    children: dict[str, list[str]] = {n: [] for n in defs}
    for child, ps in parents.items():
        for p in ps:
            children[p].append(child)
    queue = list(reasons)
    while queue:  # the descendants of a rebuilt image are rebuilt after it
        parent = queue.pop(0)
        for child in sorted(children.get(parent, [])):
            if child not in reasons:
                reasons[child] = f"{PARENT_REBUILT} ({parent})"
                queue.append(child)
                if child in unknown:
                    unknown.remove(child)
    waves: list[tuple[PlannedBuild, ...]] = []
    done: set[str] = set()
    remaining = set(reasons)
    while remaining:
        ready = sorted(
            n for n in remaining if all(p in done or p not in reasons for p in parents[n])
        )
        if not ready:
            raise UsageError(
                f"the image definitions form a cycle: {', '.join(sorted(remaining))}",
                hint="an image cannot be (indirectly) its own base",
            )
        waves.append(
            tuple(
                PlannedBuild(
                    name=n,
                    definition=defs[n].path,
                    destination=str(defs[n].doc.destination),
                    reason=reasons[n],
                    parents=tuple(p for p in parents[n] if p in reasons),
                )
                for n in ready
            )
        )
        done.update(ready)
        remaining.difference_update(ready)
    return Plan(tuple(waves), tuple(sorted(unknown)))


# ---- plan formats -------------------------------------------------------------------------------
class PlanFormat(StrEnum):
    JSON = "json"
    GITHUB_MATRIX = "github-matrix"
    GITLAB = "gitlab"


def render_plan(plan: Plan, fmt: PlanFormat, build_args: str = "") -> str:
    """The plan as JSON, as GitHub Actions outputs (``waves=N`` and ``waveK={"include":
    [...]}`` lines for ``$GITHUB_OUTPUT``) or as a GitLab child pipeline (one stage per wave,
    ``parallel:matrix`` over the definitions)."""
    extra = f" {build_args}" if build_args else ""
    match fmt:
        case PlanFormat.JSON:
            return json.dumps(plan.to_json(), indent=2)
        case PlanFormat.GITHUB_MATRIX:
            lines = [f"waves={len(plan.waves)}"]
            for i, wave in enumerate(plan.waves):
                include = [
                    {"name": b.name, "definition": str(b.definition), "reason": b.reason}
                    for b in wave
                ]
                lines.append(f"wave{i}=" + json.dumps({"include": include}, separators=(",", ":")))
            return "\n".join(lines)
        case PlanFormat.GITLAB:
            import yaml

            doc: dict[str, Any] = {"stages": [f"wave-{i}" for i in range(len(plan.waves))]}
            for i, wave in enumerate(plan.waves):
                doc[f"rebuild-wave-{i}"] = {
                    "stage": f"wave-{i}",
                    "parallel": {"matrix": [{"DEFINITION": [str(b.definition) for b in wave]}]},
                    "script": [f'harden build "$DEFINITION" --force{extra}'],
                }
            if not plan.waves:
                doc = {
                    "stages": ["noop"],
                    "nothing-to-rebuild": {"stage": "noop", "script": ["echo all images fresh"]},
                }
            return yaml.safe_dump(doc, sort_keys=False)
    raise AssertionError(fmt)  # pragma: no cover


# ---- locks --------------------------------------------------------------------------------------
class LockTimeout(EnvironmentProblem):
    """Another rebuild holds the image's lock."""


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ImageLock:
    """An exclusive advisory lock for one image: ``<lock_dir>/<name>.lock``."""

    def __init__(self, lock_dir: Path, name: str, clock: Clock) -> None:
        self.path = lock_dir / (_SAFE.sub("_", name) + ".lock")
        self.name = name
        self.clock = clock
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def acquire(
        self, timeout: float, *, poll: float = 0.2, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    h = self.holder()
                    who = (
                        f"pid {h.get('pid', '?')} on {h.get('host', '?')} since "
                        f"{h.get('since', '?')}"
                        if h
                        else "another process"
                    )
                    raise LockTimeout(
                        f"{self.name} is being rebuilt by {who} ({self.path})",
                        hint="wait for that run, or raise --lock-timeout",
                    ) from None
                sleep(poll)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": rfc3339(self.clock.now()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held(self, timeout: float) -> Iterator[ImageLock]:
        self.acquire(timeout)
        try:
            yield self
        finally:
            self.release()


# ---- running ------------------------------------------------------------------------------------
class Outcome(StrEnum):
    REBUILT = "rebuilt"
    FAILED = "failed"
    SKIPPED = "skipped"  # a parent failed, or another run already did it
    PLANNED = "planned"  # dry run


@dataclass(frozen=True)
class BuildOutcome:
    name: str
    outcome: Outcome
    reason: str
    digest: str | None = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "digest": self.digest,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


BuildOne = Callable[[PlannedBuild], str | None]  # returns the pushed digest; raises on failure
Recheck = Callable[[PlannedBuild], str | None]  # None: no longer needed (why, as text, else)


def _noop(_: str) -> None:
    return None


def run_plan(
    plan: Plan,
    build_one: BuildOne,
    *,
    jobs: int,
    lock_dir: Path,
    lock_timeout: float,
    audit: AuditLog,
    clock: Clock,
    recheck: Recheck | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = _noop,
) -> list[BuildOutcome]:
    """Run the builds wave by wave (see the module docstring); one outcome per planned build."""
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    outcomes: dict[str, BuildOutcome] = {}
    blocked: set[str] = set()  # failed, or skipped because a parent failed
    lock = threading.Lock()
    if dry_run:
        return [BuildOutcome(b.name, Outcome.PLANNED, b.reason) for b in plan.builds]

    def one(b: PlannedBuild) -> BuildOutcome:
        with lock:
            failed_parents = [p for p in b.parents if p in blocked]
        if failed_parents:
            with lock:
                blocked.add(b.name)
            out = BuildOutcome(
                b.name, Outcome.SKIPPED, b.reason, detail=f"parent {failed_parents[0]} failed"
            )
            audit.append(AuditAction.REBUILD, b.destination, None, "skipped", _details(b, out))
            return out
        t0 = time.monotonic()
        try:
            with ImageLock(lock_dir, b.name, clock).held(lock_timeout):
                reason = b.reason
                if recheck is not None:
                    still = recheck(b)
                    if still is None:
                        out = BuildOutcome(
                            b.name,
                            Outcome.SKIPPED,
                            b.reason,
                            detail="no longer needed (rebuilt by another run)",
                        )
                        audit.append(
                            AuditAction.REBUILD, b.destination, None, "skipped", _details(b, out)
                        )
                        return out
                    if not reason.startswith(PARENT_REBUILT):
                        reason = still
                audit.append(
                    AuditAction.REBUILD,
                    b.destination,
                    None,
                    "started",
                    {"reason": reason, "definition": str(b.definition)},
                )
                progress(f"[{b.name}] rebuilding: {reason}")
                digest = build_one(b)
        except HardenError as e:
            out = BuildOutcome(
                b.name, Outcome.FAILED, b.reason, detail=e.message, seconds=time.monotonic() - t0
            )
            progress(f"[{b.name}] FAILED: {e.message}")
            with lock:
                blocked.add(b.name)
            audit.append(AuditAction.REBUILD, b.destination, None, "failed", _details(b, out))
            return out
        out = BuildOutcome(
            b.name, Outcome.REBUILT, reason, digest=digest, seconds=time.monotonic() - t0
        )
        progress(f"[{b.name}] rebuilt {b.destination}@{digest}")
        audit.append(AuditAction.REBUILD, b.destination, digest, "rebuilt", _details(b, out))
        return out

    for wave in plan.waves:
        workers = max(1, min(jobs, len(wave)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rebuild") as pool:
            results = list(pool.map(one, wave))
        with lock:
            for r in results:
                outcomes[r.name] = r
    return [outcomes[b.name] for b in plan.builds]


def _details(b: PlannedBuild, out: BuildOutcome) -> dict[str, Any]:
    d: dict[str, Any] = {"reason": out.reason, "definition": str(b.definition)}
    if out.detail:
        d["detail"] = out.detail
    if out.seconds:
        d["seconds"] = round(out.seconds, 3)
    return d


def summary_rows(outcomes: Sequence[BuildOutcome]) -> list[list[str]]:
    return [
        [o.name, o.outcome.value, o.reason, (o.digest or "-")[:19], o.detail, f"{o.seconds:.1f}s"]
        for o in outcomes
    ]


def describe_waves(plan: Plan) -> Mapping[str, int]:
    return {b.name: i for i, w in enumerate(plan.waves) for b in w}
