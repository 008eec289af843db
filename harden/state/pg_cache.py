"""The inventory's content cache in PostgreSQL (``$HARDEN_DB``): apart from
:mod:`harden.state.postgres` so that appending to the audit log never imports the inventory."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

from harden.errors import HardenError
from harden.inventory import ContentCache
from harden.state.postgres import PgDatabase

__all__ = ["PgContentCache"]


class PgContentCache(ContentCache):
    """The inventory's content-addressed cache in the ``content`` table: what one runner read
    from a registry by digest, every runner reuses. Like the SQLite cache, a row is checked
    against its digest when read and a database that fails means no cache, never a failure."""

    def __init__(self, db: PgDatabase) -> None:
        super().__init__(None)
        self._db = db
        self._pg: psycopg.Connection[Any] | None = None
        self._down = False

    def _connection(self) -> psycopg.Connection[Any] | None:
        if self._pg is None and not self._down:
            try:
                self._pg = self._db.open(create=True)
            except HardenError:
                self._down = True  # the registry answers everything this time
        return self._pg

    def _failed(self) -> None:
        if self._pg is not None:
            self._pg.close()
        self._pg, self._down = None, True

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                row = conn.execute(
                    "SELECT data FROM content WHERE digest = %s", (digest,)
                ).fetchone()
            except psycopg.Error:
                self._failed()
                return None
            data = bytes(row[0]) if row else None
            if data is None or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                self.misses += 1
                return None  # a row that does not match its digest is simply not used
            self.hits += 1
            return data

    def put(self, digest: str, data: bytes) -> None:
        with self._lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                conn.execute(
                    "INSERT INTO content (digest, data) VALUES (%s, %s)"
                    " ON CONFLICT (digest) DO UPDATE SET data = EXCLUDED.data",
                    (digest, data),
                )
            except psycopg.Error:
                self._failed()

    def close(self) -> None:
        with self._lock:
            if self._pg is not None:
                self._pg.close()
                self._pg = None
