"""`harden revoke REF --key URI --reason TEXT [--cascade] [DIR]`: a signed "do not use"."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.cli.common import baselines_option, dump_json, emit, plain_table, progress
from harden.cli.status_cmd import DEFAULT_DIR, cli_clock, load_definitions, make_inventory, tracked

if TYPE_CHECKING:
    from harden.attest.keys import Signer
    from harden.audit import AuditLog
    from harden.clock import Clock
    from harden.inventory import Inventory


def _default_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def revoke_digest(
    inventory: Inventory,
    ref_text: str,
    digest: str,
    signer: Signer,
    clock: Clock,
    audit: AuditLog,
    *,
    reason: str,
    by: str,
    cascade_from: str | None = None,
) -> dict[str, Any]:
    """Sign a revocation of ``digest`` and attach it as a referrer in ``ref_text``'s repo."""
    from harden.attest import dsse, revlist
    from harden.attest.predicates import HARDEN_REVOCATION
    from harden.attest.statements import Subject, revocation, serialize
    from harden.attest.store import attach
    from harden.errors import RegistryError
    from harden.oci.model import parse_reference

    ref = parse_reference(ref_text)
    client = inventory.client(ref.registry)
    subject = client.head_manifest(ref.repository, digest)
    if subject is None:
        raise RegistryError(f"{ref.registry}/{ref.repository}@{digest} is not in the registry")
    now = clock.now()
    repo_name = f"{ref.registry}/{ref.repository}"
    statement = revocation(
        Subject(f"{ref.registry}/{ref.repository}", digest),
        reason=reason,
        revoked_at=now,
        revoked_by=by,
        cascade_from=cascade_from,
    )
    envelope = dsse.sign(serialize(statement), signer)
    # the signed revocation list first (by digest, every repository): it is what the gate
    # trusts; the referrer is for humans and tools reading the repository
    entry = revlist.Entry(digest, "revoked", now, reason, by, repo_name, cascade_from)
    list_version = revlist.record(client, signer, entry, now)
    referrer = attach(client, ref.repository, subject, envelope, HARDEN_REVOCATION, now)
    details: dict[str, Any] = {
        "reason": reason,
        "by": by,
        "referrer": referrer.digest,
        "revocation_list_version": list_version,
    }
    if cascade_from:
        details["cascade_from"] = cascade_from
    audit.append("revoke", f"{ref.registry}/{ref.repository}", digest, "revoked", details)
    return {
        "image": f"{ref.registry}/{ref.repository}",
        "digest": digest,
        "cascade_from": cascade_from,
        "referrer": referrer.digest,
    }


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
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def revoke(
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
    from harden.audit import AuditLog
    from harden.cli.attest_cmd import load_signer_from_uri
    from harden.lifecycle import cascade as find_children

    if not reason.strip():
        raise click.BadParameter("give a reason", param_hint="--reason")
    signer = load_signer_from_uri(key_uri)  # a bad key fails before any work
    clock = cli_clock()
    audit = AuditLog.default(clock)
    who = by or _default_by()
    inventory = make_inventory(baseline_dirs, [], clock, jobs=8)
    parsed, digest = inventory.resolve_digest(ref)
    done = [revoke_digest(inventory, ref, digest, signer, clock, audit, reason=reason, by=who)]
    progress(f"revoked {parsed.registry}/{parsed.repository}@{digest}")
    if cascade:
        defs = tracked(load_definitions(directory))
        images = inventory.facts(defs)
        for img in images:
            for problem in img.unreachable:
                progress(f"warning: {img.name}: {problem}: its children cannot be found")
        for child, parent in find_children(digest, images):
            assert child.destination is not None and child.digest is not None
            done.append(
                revoke_digest(
                    inventory,
                    child.destination,
                    child.digest,
                    signer,
                    clock,
                    audit,
                    reason=f"{reason} (built on revoked {parent})",
                    by=who,
                    cascade_from=parent,
                )
            )
            progress(f"revoked {child.name} ({child.digest}): built on {parent}")
    if fmt == "json":
        emit(dump_json({"schema_version": 1, "revoked": done}), None)
    else:
        rows = [[d["image"], d["digest"], d["cascade_from"] or "-"] for d in done]
        emit(plain_table(["IMAGE", "DIGEST", "CASCADED FROM"], rows), None)
