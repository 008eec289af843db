"""Pending security updates of many images against few archives: each archive suite is read once
per run (:class:`~harden.debian.archive.ArchiveReader`, cached by ``InRelease`` digest), each
package set compared once, each fix's CVE/DSA ids read once from the verified updated ``.deb``.
Thread-safe: the inventory asks from its worker threads.
"""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from harden.debian.archive import ArchiveError, ArchiveReader, Candidate
from harden.debian.dpkg import Package
from harden.debian.fixes import Fix, changelog_of, fixed_ids
from harden.debian.pending import PendingUpdate, pending_updates
from harden.debian.sources import Archive
from harden.errors import HardenError


@dataclass(frozen=True)
class Pending:
    updates: tuple[PendingUpdate, ...]
    fixes: tuple[Fix, ...]  # one per security update: the ids its changelog names


def unreachable(e: HardenError) -> bool:
    """An archive that could not be asked (versus one that answered and was refused)."""
    return "unreachable" in e.message or " HTTP " in e.message


class SecurityCheck:
    def __init__(self, reader: ArchiveReader, *, with_fixes: bool = True) -> None:
        self.reader = reader
        self.with_fixes = with_fixes
        self._lock = threading.Lock()
        self._tables: dict[Archive, Mapping[str, Candidate] | HardenError] = {}
        self._pending: dict[tuple[tuple[Archive, ...], tuple[Package, ...]], Pending] = {}
        self._fixes: dict[tuple[Archive, str, str, str], Fix] = {}
        self._names: dict[tuple[Archive, ...], frozenset[str]] = {}

    def _table(self, archive: Archive) -> Mapping[str, Candidate]:
        with self._lock:  # one read per archive and run; the others wait for it
            got = self._tables.get(archive)
            if got is None:
                try:
                    got = self.reader.candidates(archive)
                except HardenError as e:
                    got = e
                self._tables[archive] = got
        if isinstance(got, HardenError):
            raise got
        return got

    def candidate_names(self, archives: Sequence[Archive]) -> frozenset[str]:
        """Every package name the archives have a candidate for: only these can be pending
        (an installed package of another name is skipped before it is even read)."""
        tables = [self._table(a) for a in archives]
        key = tuple(archives)
        with self._lock:
            names = self._names.get(key)
        if names is None:
            names = frozenset().union(*(t.keys() for t in tables))
            with self._lock:
                self._names[key] = names
        return names

    def pending(self, archives: Sequence[Archive], installed: Sequence[Package]) -> Pending:
        """ArchiveError when an archive cannot be read or does not verify."""
        tables = [self._table(a) for a in archives]
        key = (tuple(archives), tuple(installed))
        with self._lock:
            done = self._pending.get(key)
        if done is not None:
            return done
        updates = pending_updates(installed, tables)
        fixes: list[Fix] = []
        if self.with_fixes:
            by_suite = dict(
                zip((a.suite for a in archives), zip(archives, tables, strict=True), strict=True)
            )
            for u in updates:
                if u.security and u.suite in by_suite:
                    archive, table = by_suite[u.suite]
                    fixes.append(self._fix(archive, table[u.name], u))
        result = Pending(updates, tuple(fixes))
        with self._lock:
            self._pending[key] = result
        return result

    def _fix(self, archive: Archive, cand: Candidate, update: PendingUpdate) -> Fix:
        key = (archive, update.name, update.installed, update.candidate)
        with self._lock:
            known = self._fixes.get(key)
        if known is not None:
            return known
        try:
            log = changelog_of(self.reader.deb(archive, cand), update.name, update.source)
            ids, published = (
                fixed_ids(log, update.installed, update.candidate) if log else ((), None)
            )
        except (ArchiveError, tarfile.TarError, OSError, EOFError, ValueError):
            ids, published = (), None  # the update is still pending; only its ids are unknown
        fix = Fix(update, ids, published)
        with self._lock:
            self._fixes[key] = fix
        return fix


ArchivesOf = Callable[[str], Sequence[Archive]]
