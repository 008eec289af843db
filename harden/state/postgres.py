"""The PostgreSQL adapter of harden's state (``HARDEN_DB=postgresql://...``), with psycopg 3.

The tables are the embedded ones (``entries`` and ``meta`` of the audit log, ``content`` of the
inventory cache, ``revocation_lists_seen`` for the revocation list's rollback protection), made
in the URL's database and schema (``?options=-csearch_path%3DNAME`` picks a schema) by the first
writer, under an advisory lock so that runners starting together do not race.

The audit chain stays linear under concurrent writers on different machines: an append holds
``pg_advisory_xact_lock`` for the log while it reads the head and inserts the next entry, so a
second writer reads the head only after the first one committed; ``seq`` is the primary key, so
even a writer that bypassed the lock could not fork the chain (its insert fails and is retried).
Checkpoints of the head are published under a session advisory lock, in chain order. UPDATE,
DELETE and TRUNCATE of entries are refused by triggers: they stop mistakes, not a database owner,
which is why the chain and the signed checkpoints are what detect tampering.

Every psycopg error becomes a :class:`harden.state.StateDatabaseError` (exit 4) naming the URL
without its password; nothing here prints a traceback for an unreachable database.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from harden.errors import InputError
from harden.state import DB_ENV, StateDatabaseError, redact
from harden.state.schema import GENESIS, INSERT_ENTRY, SELECT_ENTRIES, Row, select_entries

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # pragma: no cover - psycopg is a dependency; a broken install says so
    psycopg = None  # type: ignore[assignment]

__all__ = ["PgAuditStore", "PgDatabase", "database"]

_CONNECT_TIMEOUT_S = 10
_LOCK_TIMEOUT = "60s"  # waiting for another runner's append (or the schema) longer is an outage
_STATEMENT_TIMEOUT = "120s"
_APPEND_ATTEMPTS = 8
# advisory lock ids (the second key is the schema, so two installations in one database do not
# wait for each other)
_LOCK_SCHEMA = 0x48524431  # "HRD1"
_LOCK_AUDIT = 0x48524432
_LOCK_CHECKPOINT = 0x48524433

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS entries (
        seq BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        action TEXT NOT NULL,
        image TEXT NOT NULL,
        digest TEXT,
        outcome TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_at ON entries (at)",
    "CREATE INDEX IF NOT EXISTS entries_image ON entries (image)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE OR REPLACE FUNCTION harden_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER entries_no_update BEFORE UPDATE OR DELETE ON entries
       FOR EACH ROW EXECUTE FUNCTION harden_append_only()""",
    """CREATE OR REPLACE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
       FOR EACH STATEMENT EXECUTE FUNCTION harden_append_only()""",
    "CREATE TABLE IF NOT EXISTS content (digest TEXT PRIMARY KEY, data BYTEA NOT NULL)",
    """CREATE TABLE IF NOT EXISTS revocation_lists_seen (
        location TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        sha256 TEXT NOT NULL
    )""",
]
_INSERT_ENTRY = INSERT_ENTRY.replace("?", "%s")
_TABLES = ("entries", "meta", "content", "revocation_lists_seen")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class PgDatabase:
    """One PostgreSQL database (a URL): connections, error mapping, the schema."""

    def __init__(self, url: str) -> None:
        if psycopg is None:
            raise StateDatabaseError(
                f"{DB_ENV} names PostgreSQL but psycopg is not installed",
                hint="pip install 'psycopg[binary]' (a dependency of harden)",
            )
        self.url = url
        self.location = redact(url)
        self._ready = False

    def _unreachable(self, e: BaseException) -> StateDatabaseError:
        return StateDatabaseError(
            f"cannot reach the state database {self.location}: {_first_line(e)}",
            hint=f"check {DB_ENV} (host, port, user, password, database) and that PostgreSQL "
            "runs there; unset it to use the embedded state under $HARDEN_HOME",
        )

    def open(self, *, create: bool = False) -> psycopg.Connection[Any]:
        """A new autocommit connection (the caller closes it); errors as in :meth:`connect`."""
        with self.connect(create=create, keep=True) as conn:
            return conn

    @contextmanager
    def connect(
        self, *, create: bool = False, keep: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection (transactions are explicit), closed at the end unless
        ``keep``; ``create`` makes the tables first when they are missing."""
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "harden"}
        if "connect_timeout" not in self.url:
            kwargs["connect_timeout"] = _CONNECT_TIMEOUT_S
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except psycopg.ProgrammingError as e:  # the URL itself: a configuration error
            raise InputError(
                f"{DB_ENV}={self.location!r} is not a valid PostgreSQL URL: {_first_line(e)}",
                hint="e.g. postgresql://harden:PASSWORD@127.0.0.1:5432/harden",
            ) from e
        except psycopg.Error as e:
            raise self._unreachable(e) from e
        done = False
        try:
            conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
            conn.execute(f"SET statement_timeout = '{_STATEMENT_TIMEOUT}'")
            if create and not self._ready:
                self._create(conn)
            yield conn
            done = True
        except psycopg.OperationalError as e:
            raise self._unreachable(e) from e
        except psycopg.Error as e:
            raise StateDatabaseError(
                f"the state database {self.location} refused a request: {_first_line(e)}",
                hint="check that the role in HARDEN_DB may create tables in that database "
                "(or that an administrator created them) and may read and insert rows",
            ) from e
        finally:
            if not (done and keep):
                conn.close()

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        have = conn.execute(
            "SELECT " + ", ".join("to_regclass(%s) IS NOT NULL" for _ in _TABLES), _TABLES
        ).fetchone()
        if have is None or not all(have):
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                    (_LOCK_SCHEMA,),
                )
                for statement in _SCHEMA:
                    conn.execute(statement)
        self._ready = True

    # -- the revocation lists seen (rollback protection, shared by every runner) ----------------
    def seen_revocation_lists(self) -> dict[str, dict[str, Any]]:
        with self.connect() as conn:
            try:
                rows = conn.execute(
                    "SELECT location, version, sha256 FROM revocation_lists_seen"
                ).fetchall()
            except pg_errors.UndefinedTable:
                return {}
        return {str(loc): {"version": int(v), "sha256": str(h)} for loc, v, h in rows}

    def remember_revocation_list(self, location: str, version: int, sha256: str) -> None:
        """Record ``version`` as seen at ``location`` unless a higher one was seen already."""
        with self.connect(create=True) as conn:
            conn.execute(
                "INSERT INTO revocation_lists_seen (location, version, sha256)"
                " VALUES (%s, %s, %s) ON CONFLICT (location) DO UPDATE"
                " SET version = EXCLUDED.version, sha256 = EXCLUDED.sha256"
                " WHERE revocation_lists_seen.version < EXCLUDED.version",
                (location, version, sha256),
            )


_databases: dict[str, PgDatabase] = {}
_databases_lock = threading.Lock()


def database(url: str) -> PgDatabase:
    """The :class:`PgDatabase` of ``url`` (one per process: the schema is checked once)."""
    with _databases_lock:
        if url not in _databases:
            _databases[url] = PgDatabase(url)
        return _databases[url]


class PgAuditStore:
    """The audit log's rows in PostgreSQL (a ``harden.audit.AuditStore``)."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    @property
    def location(self) -> str:
        return self.db.location

    def exists(self) -> bool:
        with self.db.connect() as conn:
            row = conn.execute("SELECT to_regclass('entries') IS NOT NULL").fetchone()
        return bool(row and row[0])

    def append(self, make: Callable[[int, str], Row]) -> Row:
        with self.db.connect(create=True) as conn:
            for _ in range(_APPEND_ATTEMPTS):
                try:
                    with conn.transaction():
                        conn.execute(
                            "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                            (_LOCK_AUDIT,),
                        )
                        last = conn.execute(
                            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
                        ).fetchone()
                        row = make(*((int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)))
                        conn.execute(
                            _INSERT_ENTRY,
                            row,
                        )
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('head', %s)"
                            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                            (json.dumps({"seq": row[0], "hash": row[8]}),),
                        )
                    return row
                except (pg_errors.UniqueViolation, pg_errors.SerializationFailure):
                    continue  # a writer that did not take the lock got there first: re-read
        raise StateDatabaseError(
            f"could not append to the audit log in {self.location} after "
            f"{_APPEND_ATTEMPTS} attempts: other writers kept taking the same sequence number",
            hint="a writer outside harden is inserting entries; run `harden audit verify`",
        )

    def select(self, since: str | None, image: str | None) -> list[Row]:
        query, args = select_entries(since, image, "%s")
        with self.db.connect() as conn:
            try:
                return [tuple(r) for r in conn.execute(query, args).fetchall()]
            except pg_errors.UndefinedTable:
                return []

    def last(self) -> tuple[int, str] | None:
        with self.db.connect() as conn:
            try:
                row = conn.execute(
                    "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
            except pg_errors.UndefinedTable:
                return None
        return (int(row[0]), str(row[1])) if row else None

    def snapshot(self) -> tuple[list[Row], str | None]:
        with self.db.connect() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with conn.transaction():  # rows and recorded head from one snapshot
                    rows = conn.execute(SELECT_ENTRIES + " ORDER BY seq").fetchall()
                    meta = conn.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
            except pg_errors.UndefinedTable:
                return [], None
        return [tuple(r) for r in rows], (str(meta[0]) if meta else None)

    @contextmanager
    def serialized(self) -> Iterator[None]:
        with self.db.connect() as conn:
            key = (_LOCK_CHECKPOINT,)
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", key)
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", key)
