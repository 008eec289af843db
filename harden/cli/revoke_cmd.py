"""`harden revoke REF --key URI --reason TEXT [--cascade] [DIR]`: a signed "do not use"."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

import click

from harden.cli.common import (
    DEFAULT_DIR,
    allow_unencrypted_option,
    baselines_option,
    catalogue,
    context,
    dump_json,
    emit,
    load_signer_from_uri,
    plain_table,
)


def _default_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command()
@click.argument("ref")
@click.argument("directory", required=False, default=DEFAULT_DIR, type=click.Path(path_type=Path))
@click.option("--key", "key_uri", required=True, help="Signing key (file:PATH).")
@click.option("--reason", required=True, help="Why (a CVE, a bad build, ...); goes in the record.")
@click.option(
    "--cascade",
    is_flag=True,
    help="Also revoke every image built on it (through the definitions in DIRECTORY, "
    "whose recorded base digest is a revoked digest), transitively.",
)
@click.option("--by", default=None, help="Who revokes (default: user@host).")
@baselines_option
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@allow_unencrypted_option
def revoke(
    allow_unencrypted: bool,
    ref: str,
    directory: Path,
    key_uri: str,
    reason: str,
    cascade: bool,
    by: str | None,
    baseline_dirs: tuple[Path, ...],
    fmt: str,
) -> None:
    """Revoke the image REF (tag or digest): attach a signed revocation to it and audit it.

    `harden promote` denies a revoked image, `harden status` shows it as revoked and
    `harden rebuild --stale` replaces it. Exit 0 revoked, 3 bad input, 4 registry or key.
    """
    from harden.app.revoke import revoke as run_revoke
    from harden.imagedef import load_definitions

    if not reason.strip():
        raise click.BadParameter("give a reason", param_hint="--reason")
    signer = load_signer_from_uri(
        key_uri, allow_unencrypted=allow_unencrypted
    )  # a bad key fails before any work
    ctx = context()
    done = run_revoke(
        ref,
        signer,
        catalogue(baseline_dirs),
        ctx,
        reason=reason,
        by=by or _default_by(),
        cascade=load_definitions(directory) if cascade else None,
    )
    if fmt == "json":
        emit(dump_json({"schema_version": 1, "revoked": [r.to_json() for r in done.revoked]}), None)
    else:
        rows = [[r.image, r.digest, r.cascade_from or "-"] for r in done.revoked]
        emit(plain_table(["IMAGE", "DIGEST", "CASCADED FROM"], rows), None)
