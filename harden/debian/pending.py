"""Which installed packages have a newer version in the security or updates suites."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from harden.debian.archive import Candidate
from harden.debian.dpkg import Package
from harden.debian.version import compare


@dataclass(frozen=True, order=True)
class PendingUpdate:
    name: str
    installed: str
    candidate: str
    suite: str
    source: str

    @property
    def security(self) -> bool:
        return self.suite.endswith("-security")

    def describe(self) -> str:
        return f"{self.name} {self.installed} -> {self.candidate} ({self.suite})"


def pending_updates(
    installed: Iterable[Package], suites: Iterable[Mapping[str, Candidate]]
) -> tuple[PendingUpdate, ...]:
    """One entry per installed package with a newer candidate (the newest over all suites)."""
    tables = list(suites)
    out: list[PendingUpdate] = []
    for pkg in installed:
        best: Candidate | None = None
        for table in tables:
            cand = table.get(pkg.name)
            if cand is None or compare(cand.version, pkg.version) <= 0:
                continue
            if best is None or compare(cand.version, best.version) > 0:
                best = cand
        if best is not None:
            out.append(PendingUpdate(pkg.name, pkg.version, best.version, best.suite, best.source))
    return tuple(sorted(out))
