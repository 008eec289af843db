"""HARDEN_DB: which state backend, and URLs that never show their password."""

from __future__ import annotations

import pytest

from harden.errors import ExitCode, InputError
from harden.state import database_url, redact


def test_unset_or_blank_is_the_embedded_default() -> None:
    assert database_url({}) is None
    assert database_url({"HARDEN_DB": "  "}) is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://harden:pw@127.0.0.1:5432/harden",
        "postgres://harden@db.example.internal/harden?sslmode=require",
        "postgresql://harden@127.0.0.1/harden?options=-csearch_path%3Dci",
    ],
)
def test_postgresql_urls_are_accepted(url: str) -> None:
    assert database_url({"HARDEN_DB": url}) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sqlite:///tmp/x.db", "is not a PostgreSQL URL"),
        ("harden.db", "is not a PostgreSQL URL"),
        ("postgresql://u:secret@h:port/db", "is not a valid URL"),
        ("postgresql://u:secret@h:5432", "names no database"),
        ("postgresql://u:secret@h:5432/", "names no database"),
    ],
)
def test_invalid_urls_are_input_errors_without_the_password(url: str, why: str) -> None:
    with pytest.raises(InputError) as e:
        database_url({"HARDEN_DB": url})
    assert e.value.exit_code == ExitCode.INVALID_INPUT
    assert why in e.value.message and e.value.hint
    assert "secret" not in e.value.diagnostics()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://harden:s3cret@h:5432/db", "postgresql://harden:***@h:5432/db"),
        ("postgresql://harden@h/db", "postgresql://harden@h/db"),
        (
            "postgresql://h/db?password=s3cret&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("postgresql://harden:s3cret@[bad/db", "postgresql://harden:***@[bad/db"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
