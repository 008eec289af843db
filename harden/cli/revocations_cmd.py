"""`harden revocations init|refresh|show REGISTRY`: the signed revocation list of a registry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from harden.cli.common import (
    context,
    dump_json,
    duration,
    emit,
    load_signer_from_uri,
    load_trusted,
    plain_table,
    progress,
    trusted_keys_option,
)
from harden.errors import ExitCode


@click.group()
def revocations() -> None:
    """The signed, expiring, versioned revocation list the promotion gate requires.

    One per registry (REGISTRY/harden/revocations:current, or $HARDEN_REVOCATIONS): every
    `harden revoke` and every failed `harden attest` is recorded there by digest, for every
    repository. `harden promote` denies when the list is missing, expired, not signed by a
    trusted key or older than a version seen before. Re-sign it (refresh) within --valid-for,
    e.g. from the same cron job as `harden rebuild --stale`.
    """


_valid_for = click.option(
    "--valid-for",
    default="7d",
    show_default=True,
    callback=duration,
    help="How long this version stays valid (12h, 7d, 4w).",
)


@revocations.command("init")
@click.argument("registry")
@click.option("--key", "key_uri", required=True, help="Signing key (file:PATH).")
@_valid_for
def init_cmd(registry: str, key_uri: str, valid_for: dt.timedelta) -> None:
    """Create the (empty) revocation list of REGISTRY (host[:port]); refuses when one exists."""
    from harden.app.revocations import init

    init(registry, load_signer_from_uri(key_uri), context(), valid_for=valid_for)


@revocations.command("refresh")
@click.argument("registry")
@click.option("--key", "key_uri", required=True, help="Signing key (file:PATH).")
@_valid_for
def refresh_cmd(registry: str, key_uri: str, valid_for: dt.timedelta) -> None:
    """Re-sign the current entries of REGISTRY's list as its next version."""
    from harden.app.revocations import refresh

    refresh(registry, load_signer_from_uri(key_uri), context(), valid_for=valid_for)


@revocations.command("show")
@click.argument("registry")
@trusted_keys_option("Trusted public key (PEM); repeatable.", required=True)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def show_cmd(registry: str, keys: tuple[Path, ...], fmt: str) -> None:
    """Print REGISTRY's revocation list; exit 1 when the gate would not accept it."""
    from harden.app.revocations import show
    from harden.results import rfc3339

    shown = show(registry, load_trusted(keys), context())
    view = shown.view
    entries = [e.model_dump(mode="json", exclude_none=True) for e in view.entries]
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "location": view.location,
            "version": view.version,
            "issued_at": rfc3339(view.issued_at) if view.issued_at else None,
            "expires_at": rfc3339(view.expires_at) if view.expires_at else None,
            "problems": list(shown.problems),
            "entries": entries,
        }
        emit(dump_json(doc), None)
    else:
        rows = [
            [e["digest"], e["kind"], e["at"], e.get("repository", ""), e["reason"]] for e in entries
        ]
        emit(plain_table(["DIGEST", "KIND", "AT", "REPOSITORY", "REASON"], rows), None)
    for p in shown.problems:
        progress(f"NOT ACCEPTED: {p}")
    if not shown.accepted:
        raise click.exceptions.Exit(int(ExitCode.POLICY))
