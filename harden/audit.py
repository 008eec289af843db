"""The audit log: append-only, hash-chained, in SQLite under $HARDEN_HOME/audit.db (embedded
default) or in the PostgreSQL database ``$HARDEN_DB`` names (many CI runners, one chain).

Every decision harden takes (build, verify, attest, promote, deny, revoke, rebuild) is appended
as one entry. Each entry's ``hash`` is the SHA-256 of the canonical JSON of its fields plus the
previous entry's hash, so changing, deleting, inserting or reordering entries breaks the chain
and :meth:`AuditLog.verify` names where.

A hash chain without a secret shows tampering, it cannot prevent it: someone who can write the
file can rewrite the whole chain. Anchor the head (``AuditLog.head()``, ``harden audit show
--format json``) somewhere else - a ticket, an attestation, a CI log - and compare it with
``verify(expected_head=...)`` to detect that too, and a truncated tail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from harden.clock import Clock
from harden.errors import EnvironmentProblem, HardenError, InputError
from harden.state.schema import GENESIS as GENESIS  # re-exported: the first prev_hash
from harden.state.schema import INSERT_ENTRY, SELECT_ENTRIES, Row, select_entries

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    image TEXT NOT NULL,
    digest TEXT,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_at ON entries (at);
CREATE INDEX IF NOT EXISTS entries_image ON entries (image);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AuditAction(StrEnum):
    BUILD = "build"
    VERIFY = "verify"
    ATTEST = "attest"
    PROMOTE = "promote"
    DENY = "deny"
    REVOKE = "revoke"
    REBUILD = "rebuild"


class AuditLogError(EnvironmentProblem):
    """The audit log file cannot be opened, read or written."""


class AuditLogCorrupt(InputError):
    """An entry of the audit log cannot even be read back."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: dt.datetime
    action: str
    image: str
    digest: str | None
    outcome: str
    details: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": format_time(self.at),
            "action": self.action,
            "image": self.image,
            "digest": self.digest,
            "outcome": self.outcome,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def format_time(t: dt.datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=dt.UTC)


def canonical_details(details: Mapping[str, Any]) -> str:
    try:
        return json.dumps(
            dict(details),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"audit details must be plain JSON data: {e}") from e


def entry_hash(
    *,
    seq: int,
    at: str,
    action: str,
    image: str,
    digest: str | None,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON of the entry's fields (details as canonical JSON text)."""
    doc = {
        "seq": seq,
        "at": at,
        "action": action,
        "image": image,
        "digest": digest,
        "outcome": outcome,
        "details": json.loads(details),
        "prev_hash": prev_hash,
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_corrupt(e: sqlite3.DatabaseError) -> bool:
    """A file that is not (or no longer) a harden audit database, as opposed to a locked,
    read-only or failing one (OperationalError for those, except a missing table)."""
    if not isinstance(e, sqlite3.OperationalError):
        return True
    text = str(e).lower()
    return "no such table" in text or "no such column" in text or "malformed" in text


class AuditStore(Protocol):
    """Where the entries live: one SQLite file (:class:`SqliteAuditStore`, the embedded default)
    or a PostgreSQL database shared by many CI runners (:mod:`harden.state.postgres`). The
    chain itself (hashes, checks) is :class:`AuditLog`'s; a store only keeps rows."""

    @property
    def location(self) -> str:
        """Where the log is, for messages (a path, or a URL without its password)."""
        ...

    def exists(self) -> bool: ...

    def append(self, make: Callable[[int, str], Row]) -> Row:
        """In one transaction that no other writer interleaves with: read the head, build the
        next row with ``make(next_seq, prev_hash)``, insert it and record it as the head."""
        ...

    def select(self, since: str | None, image: str | None) -> list[Row]: ...

    def last(self) -> tuple[int, str] | None: ...

    def snapshot(self) -> tuple[list[Row], str | None]:
        """Every row in chain order and the recorded head, read in one snapshot."""
        ...

    def serialized(self) -> AbstractContextManager[None]:
        """Held while a checkpoint of the head is published, so that concurrent writers publish
        heads in chain order (the last checkpoint is never older than an earlier one)."""
        ...


class SqliteAuditStore:
    """The embedded store: one SQLite file, writers serialised by ``BEGIN IMMEDIATE``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def location(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    @contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise AuditLogError(
                f"no audit log at {self.path}",
                hint="it is created by the first build, verify or promote; "
                "set HARDEN_HOME to use another folder",
            )
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not self.path.exists():
                    fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
            conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise AuditLogError(
                f"cannot open the audit log {self.path}: {e}",
                hint="check the permissions of $HARDEN_HOME",
            ) from e
        try:
            if create:
                conn.executescript(_SCHEMA)
            yield conn
        except sqlite3.DatabaseError as e:
            if _is_corrupt(e):  # bad content, not a broken environment: exit 3
                raise AuditLogCorrupt(
                    f"the audit log {self.path} is not a harden audit log or is damaged: {e}",
                    hint="restore it from a backup (or move it away to start a new log)",
                ) from e
            raise AuditLogError(
                f"the audit log {self.path} failed: {e}",
                hint="run `harden audit verify`; restore the file from a backup if it is damaged",
            ) from e
        finally:
            conn.close()

    def append(self, make: Callable[[int, str], Row]) -> Row:
        with self._connect(create=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute(
                    "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                row = make(*((last[0] + 1, last[1]) if last else (1, GENESIS)))
                conn.execute(INSERT_ENTRY, row)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)",
                    (json.dumps({"seq": row[0], "hash": row[8]}),),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return row

    def select(self, since: str | None, image: str | None) -> list[Row]:
        if not self.path.exists():
            return []
        query, args = select_entries(since, image, "?")
        with self._connect(create=False) as conn:
            return [tuple(r) for r in conn.execute(query, args).fetchall()]

    def last(self) -> tuple[int, str] | None:
        if not self.path.exists():
            return None
        with self._connect(create=False) as conn:
            row = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def snapshot(self) -> tuple[list[Row], str | None]:
        if not self.path.exists():
            return [], None
        with self._connect(create=False) as conn:
            rows = conn.execute(SELECT_ENTRIES + " ORDER BY rowid").fetchall()
            meta = conn.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
        return [tuple(r) for r in rows], (str(meta[0]) if meta else None)

    def serialized(self) -> AbstractContextManager[None]:
        return nullcontext()


class AuditLog:
    """An append-only, hash-chained log in a :class:`AuditStore` (SQLite file or PostgreSQL)."""

    def __init__(
        self,
        store: Path | AuditStore,
        clock: Clock,
        on_append: Callable[[int, str], None] | None = None,
        refuse_writes: HardenError | None = None,
    ) -> None:
        """``store``: a SQLite file path or a store. ``on_append(seq, hash)`` runs after each
        committed entry (e.g. to publish a signed checkpoint of the head:
        :mod:`harden.attest.checkpoint`), with the head then current, in chain order across
        concurrent writers."""
        self._store: AuditStore = SqliteAuditStore(store) if isinstance(store, Path) else store
        self._clock = clock
        self._on_append = on_append
        self._refuse_writes = refuse_writes  # raised before an entry is written (reads work)

    @classmethod
    def default(cls, clock: Clock) -> AuditLog:
        """The log in ``$HARDEN_DB`` (PostgreSQL) when set, else under $HARDEN_HOME; anchored by
        signed checkpoints in a registry when HARDEN_AUDIT_ANCHOR and HARDEN_AUDIT_KEY are set."""
        from harden.paths import harden_home
        from harden.state import database_url

        hook = None
        refuse: HardenError | None = None
        if os.environ.get("HARDEN_AUDIT_ANCHOR"):
            from harden.attest.checkpoint import anchor_hook

            try:
                hook = anchor_hook(clock.now)
            except HardenError as e:  # e.g. no HARDEN_AUDIT_KEY: an auditor reads without it,
                refuse = e  # but nothing is appended that no checkpoint would anchor
        url = database_url()
        if url is not None:
            from harden.state.postgres import PgAuditStore, database

            return cls(PgAuditStore(database(url)), clock, hook, refuse)
        return cls(harden_home() / "audit.db", clock, hook, refuse)

    @property
    def store(self) -> AuditStore:
        return self._store

    @property
    def location(self) -> str:
        """Where the log is (a file path, or the database URL without its password)."""
        return self._store.location

    @property
    def path(self) -> Path:
        """The SQLite file of an embedded log (a PostgreSQL log has none: use ``location``)."""
        if isinstance(self._store, SqliteAuditStore):
            return self._store.path
        raise AttributeError(f"the audit log in {self.location} is not a file")

    def exists(self) -> bool:
        return self._store.exists()

    # -- writing ---------------------------------------------------------------------------------

    def append(
        self,
        action: AuditAction | str,
        image: str,
        digest: str | None,
        outcome: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry, chained to the current head, in one transaction."""
        if self._refuse_writes is not None:
            raise self._refuse_writes
        action = AuditAction(action).value
        details_text = canonical_details(details or {})
        at = format_time(self._clock.now())

        def make(seq: int, prev: str) -> Row:
            h = entry_hash(
                seq=seq,
                at=at,
                action=action,
                image=image,
                digest=digest,
                outcome=outcome,
                details=details_text,
                prev_hash=prev,
            )
            return (seq, at, action, image, digest, outcome, details_text, prev, h)

        seq, *_, prev, digest_ = self._store.append(make)
        if self._on_append is not None:
            with self._store.serialized():  # publish the head now current, in chain order
                last = self._store.last()
                self._on_append(*(last or (seq, digest_)))
        return AuditEntry(
            seq=seq,
            at=parse_time(at),
            action=action,
            image=image,
            digest=digest,
            outcome=outcome,
            details=json.loads(details_text),
            prev_hash=prev,
            hash=digest_,
        )

    # -- reading ---------------------------------------------------------------------------------

    def entries(
        self, since: dt.datetime | None = None, image: str | None = None
    ) -> list[AuditEntry]:
        """Entries in chain order, optionally from ``since`` on and for one image."""
        rows = self._store.select(format_time(since) if since is not None else None, image)
        return [_entry(row) for row in rows]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry; (0, GENESIS) for an empty log. Anchor it elsewhere."""
        return self._store.last() or (0, GENESIS)

    def chain(self) -> list[tuple[int, str]]:
        """``(seq, hash)`` of every entry in chain order (what a checkpoint is checked against)."""
        rows, _ = self._store.snapshot()
        return [(int(r[0]), str(r[8])) for r in rows]

    # -- checking --------------------------------------------------------------------------------

    def verify(self, expected_head: tuple[int, str] | None = None) -> list[str]:
        """Every problem in the chain, in words; [] when intact.

        Finds changed entries (hash mismatch), deleted or inserted ones (seq gaps, prev_hash
        mismatch), reordered ones (seq out of order, hash mismatch), a truncated tail (the
        recorded head is missing) and, with ``expected_head``, a chain rewritten from scratch.
        """
        if not self._store.exists():
            return [f"no audit log at {self.location}"] if expected_head else []
        problems: list[str] = []
        rows, meta_value = self._store.snapshot()
        meta = None if meta_value is None else (meta_value,)
        expected_seq = 1
        prev_hash = GENESIS
        hashes: set[str] = set()
        for row in rows:
            seq, at, action, image, digest, outcome, details, stored_prev, stored_hash = row
            where = f"entry {seq}"
            if seq != expected_seq:
                if seq > expected_seq:
                    problems.append(
                        f"{where}: sequence gap, entries {expected_seq}..{seq - 1} are missing"
                    )
                else:
                    problems.append(
                        f"{where}: out of order (expected seq {expected_seq}):"
                        " inserted or reordered"
                    )
            if stored_prev != prev_hash:
                problems.append(
                    f"{where}: prev_hash does not match the hash of the entry before it"
                    " (an entry was deleted, inserted or reordered)"
                )
            try:
                computed = entry_hash(
                    seq=seq,
                    at=at,
                    action=action,
                    image=image,
                    digest=digest,
                    outcome=outcome,
                    details=details,
                    prev_hash=stored_prev,
                )
            except (ValueError, TypeError):
                problems.append(f"{where}: details are not valid JSON (the entry was changed)")
            else:
                if computed != stored_hash:
                    problems.append(
                        f"{where}: hash mismatch, its content was changed after it was written"
                    )
            if action not in {a.value for a in AuditAction}:
                problems.append(f"{where}: unknown action {action!r}")
            hashes.add(stored_hash)
            prev_hash = stored_hash
            expected_seq = seq + 1
        if meta is not None:
            try:
                recorded = json.loads(meta[0])
                rseq, rhash = int(recorded["seq"]), str(recorded["hash"])
            except (ValueError, KeyError, TypeError):
                problems.append("the recorded head of the log is unreadable")
            else:
                if rhash not in hashes:
                    problems.append(
                        f"the recorded head (entry {rseq}) is not in the log: entries were"
                        " deleted from the end or the chain was rewritten"
                    )
                elif rows and (rseq, rhash) != (rows[-1][0], rows[-1][8]):
                    problems.append(
                        f"entries after the recorded head (entry {rseq}) were added outside harden"
                    )
        elif rows:
            problems.append("the recorded head of the log is missing")
        if expected_head is not None:
            eseq, ehash = expected_head
            if ehash not in hashes:
                problems.append(
                    f"the anchored head (entry {eseq}, {ehash[:12]}...) is not in the log:"
                    " entries were removed or the chain was rewritten"
                )
        return problems


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, at, action, image, digest, outcome, details, prev_hash, hash_ = row
    try:
        parsed = json.loads(details)
        when = parse_time(at)
    except (ValueError, TypeError) as e:
        raise AuditLogCorrupt(
            f"audit log entry {seq} cannot be read: {e}",
            hint="run `harden audit verify`; the log was changed outside harden",
        ) from e
    return AuditEntry(
        seq=int(seq),
        at=when,
        action=str(action),
        image=str(image),
        digest=digest,
        outcome=str(outcome),
        details=parsed if isinstance(parsed, dict) else {"value": parsed},
        prev_hash=str(prev_hash),
        hash=str(hash_),
    )
