"""Revoke an image (`harden revoke`): a signed "do not use" attached as a referrer, audited, and
with ``cascade`` the same for every image built on it (transitively, through the definitions'
recorded base digests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harden.app.context import Context
from harden.attest.keys import Signer
from harden.audit import AuditAction
from harden.baseline.resolve import Catalogue
from harden.errors import UsageError
from harden.imagedef import ImageDefinition

if TYPE_CHECKING:
    from harden.inventory import Inventory

__all__ = ["Revocation", "Revoked", "revoke", "revoke_digest"]


@dataclass(frozen=True)
class Revoked:
    image: str  # registry/repository
    digest: str
    referrer: str  # the revocation referrer's digest
    cascade_from: str | None = None  # the revoked parent digest it was built on

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "cascade_from": self.cascade_from,
            "referrer": self.referrer,
        }


@dataclass(frozen=True)
class Revocation:
    revoked: tuple[Revoked, ...]  # the image first, then the cascade in breadth-first order


def revoke_digest(
    inventory: Inventory,
    ref_text: str,
    digest: str,
    signer: Signer,
    ctx: Context,
    *,
    reason: str,
    by: str,
    cascade_from: str | None = None,
) -> Revoked:
    """Record ``digest`` in the signed revocation list, then sign a revocation and attach it as
    a referrer in ``ref_text``'s repo."""
    from harden.attest import dsse, revlist
    from harden.attest.predicates import HARDEN_REVOCATION
    from harden.attest.statements import Subject, revocation, serialize
    from harden.attest.store import attach
    from harden.errors import RegistryError
    from harden.oci.types import parse_reference

    ref = parse_reference(ref_text)
    client = inventory.client(ref.registry)
    subject = client.head_manifest(ref.repository, digest)
    if subject is None:
        raise RegistryError(f"{ref.registry}/{ref.repository}@{digest} is not in the registry")
    now = ctx.clock.now()
    statement = revocation(
        Subject(f"{ref.registry}/{ref.repository}", digest),
        reason=reason,
        revoked_at=now,
        revoked_by=by,
        cascade_from=cascade_from,
    )
    envelope = dsse.sign(serialize(statement), signer)
    image = f"{ref.registry}/{ref.repository}"
    # the signed revocation list first (by digest, every repository): it is what the gate
    # trusts; the referrer is for humans and tools reading the repository
    entry = revlist.Entry(digest, "revoked", now, reason, by, image, cascade_from)
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
    ctx.audit.append(AuditAction.REVOKE, image, digest, "revoked", details)
    return Revoked(image, digest, referrer.digest, cascade_from)


def revoke(
    ref: str,
    signer: Signer,
    catalogue: Catalogue,
    ctx: Context,
    *,
    reason: str,
    by: str,
    cascade: Sequence[ImageDefinition] | None = None,
) -> Revocation:
    """Revoke ``ref`` (tag or digest); with ``cascade`` (the definitions to search) also every
    image built on it, transitively. One REVOKE audit entry per revoked digest."""
    from harden.app.status import make_inventory, tracked
    from harden.lifecycle import cascade as find_children

    if not reason.strip():
        raise UsageError("give a reason", hint="--reason TEXT: a CVE, a bad build, ...")
    inventory = make_inventory(catalogue, [], ctx, jobs=8)
    parsed, digest = inventory.resolve_digest(ref)
    done = [revoke_digest(inventory, ref, digest, signer, ctx, reason=reason, by=by)]
    ctx.progress(f"revoked {parsed.registry}/{parsed.repository}@{digest}")
    if cascade is None:
        return Revocation(tuple(done))
    images = inventory.facts(tracked(cascade, ctx))
    for img in images:
        for problem in img.unreachable:
            ctx.progress(f"warning: {img.name}: {problem}: its children cannot be found")
    for child, parent in find_children(digest, images):
        assert child.destination is not None and child.digest is not None
        done.append(
            revoke_digest(
                inventory,
                child.destination,
                child.digest,
                signer,
                ctx,
                reason=f"{reason} (built on revoked {parent})",
                by=by,
                cascade_from=parent,
            )
        )
        ctx.progress(f"revoked {child.name} ({child.digest}): built on {parent}")
    return Revocation(tuple(done))
