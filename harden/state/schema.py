"""The audit log's row shape and statements, shared by the SQLite and PostgreSQL stores (a module
of its own so that neither store imports the other's module)."""

from __future__ import annotations

from typing import Any

__all__ = ["GENESIS", "INSERT_ENTRY", "SELECT_ENTRIES", "Row", "select_entries"]

GENESIS = "0" * 64  # the prev_hash of the first entry

Row = tuple[Any, ...]  # seq, at, action, image, digest, outcome, details, prev_hash, hash
SELECT_ENTRIES = (
    "SELECT seq, at, action, image, digest, outcome, details, prev_hash, hash FROM entries"
)
INSERT_ENTRY = (  # ? placeholders (SQLite); the PostgreSQL store swaps them for %s
    "INSERT INTO entries (seq, at, action, image, digest, outcome, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def select_entries(since: str | None, image: str | None, mark: str) -> tuple[str, list[str]]:
    """The query for the entries at or after ``since`` about ``image`` (None: any), in chain
    order, with ``mark`` as the placeholder (``?`` SQLite, ``%s`` PostgreSQL), and its arguments."""
    where: list[str] = []
    args: list[str] = []
    if since is not None:
        where.append(f"at >= {mark}")
        args.append(since)
    if image is not None:
        where.append(f"image = {mark}")
        args.append(image)
    query = SELECT_ENTRIES + (" WHERE " + " AND ".join(where) if where else "")
    return query + " ORDER BY seq", args
