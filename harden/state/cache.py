"""The inventory's content cache, embedded or shared (``$HARDEN_DB``)."""

from __future__ import annotations

from pathlib import Path

from harden.inventory import ContentCache
from harden.state import database_url

__all__ = ["open_cache"]


def open_cache(home: Path) -> ContentCache:
    """``home/inventory.db``, or the ``content`` table of ``$HARDEN_DB`` (shared by every CI
    runner) when that names a PostgreSQL database."""
    url = database_url()
    if url is not None:
        from harden.state.pg_cache import PgContentCache
        from harden.state.postgres import database

        return PgContentCache(database(url))
    return ContentCache(home / "inventory.db")
