"""The audit log's row shape and statements, shared by the SQLite and PostgreSQL stores (a module
of its own so that neither store imports the other's module)."""

from __future__ import annotations

from typing import Any

__all__ = ["GENESIS", "INSERT_ENTRY", "SELECT_ENTRIES", "Row"]

GENESIS = "0" * 64  # the prev_hash of the first entry

Row = tuple[Any, ...]  # seq, at, action, image, digest, outcome, details, prev_hash, hash
SELECT_ENTRIES = (
    "SELECT seq, at, action, image, digest, outcome, details, prev_hash, hash FROM entries"
)
INSERT_ENTRY = (  # ? placeholders (SQLite); the PostgreSQL store swaps them for %s
    "INSERT INTO entries (seq, at, action, image, digest, outcome, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
