"""Where harden's local state lives: the embedded default or one shared PostgreSQL database.

- Embedded (``$HARDEN_DB`` unset): SQLite files and JSON under ``$HARDEN_HOME`` (default
  ``~/.local/state/harden``): ``audit.db`` (the audit log), ``inventory.db`` (the content cache)
  and ``revocation-lists.json`` (the newest revocation list version seen, per location).
- ``HARDEN_DB=postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (libpq URI; ``postgres://`` too):
  the same tables in that database, shared by every CI runner that names it, so an ephemeral
  runner loses nothing, the audit log stays one hash chain under concurrent writers (each append
  holds a transaction-scoped advisory lock while it reads the head and inserts the next entry),
  and the rollback protection of the revocation list is shared too. The adapter is
  :mod:`harden.state.postgres` (psycopg 3, imported only when the variable is set).

An invalid ``HARDEN_DB`` is a configuration error (exit 3); a database that cannot be reached is
an environment problem (exit 4). Messages name the URL without its password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from harden.errors import EnvironmentProblem, InputError

__all__ = ["DB_ENV", "StateDatabaseError", "database_url", "redact"]

DB_ENV = "HARDEN_DB"
_SCHEMES = ("postgresql", "postgres")
_EXAMPLE = "postgresql://harden:PASSWORD@127.0.0.1:5432/harden"


class StateDatabaseError(EnvironmentProblem):
    """The shared state database cannot be reached or refused a request (exit 4)."""


def redact(url: str) -> str:
    """``url`` without its password (for messages and reports)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The PostgreSQL URL ``$HARDEN_DB`` names, checked; None for the embedded default."""
    env = os.environ if environ is None else environ
    text = env.get(DB_ENV, "").strip()
    if not text:
        return None
    shown = redact(text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in _SCHEMES:
        raise InputError(
            f"{DB_ENV}={shown!r} is not a PostgreSQL URL",
            hint=f"write {DB_ENV}={_EXAMPLE}, or unset it for the embedded SQLite state "
            "under $HARDEN_HOME",
        )
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as e:
        raise InputError(
            f"{DB_ENV}={shown!r} is not a valid URL: {e}", hint=f"e.g. {_EXAMPLE}"
        ) from e
    if not parts.path.strip("/"):
        raise InputError(
            f"{DB_ENV}={shown!r} names no database", hint=f"add /DATABASE, e.g. {_EXAMPLE}"
        )
    return text
