"""Promotion: the registry gate between staging and production.

``promote`` resolves SRC to a digest, reads every attestation referring to that digest (bounded
and digest-checked, :mod:`harden.attest.store`), verifies them against the trusted keys, lets the
gate (:mod:`harden.gate`) decide, records the decision in the audit log, and only when allowed
(and not a dry run) copies the image by digest to DST: blobs mounted or streamed, the identical
manifest bytes with the referrers', the referrers index, the tag last
(:func:`harden.oci.model.copy_image`). While the gate reads and decides, the copy is prepared
(:func:`harden.oci.model.prepare_copy`): the destination asked, blobs mounted within one
registry, never a manifest or a tag (see :func:`_prepared`).

No printing and no clock of its own: progress goes through a callback, time comes from the
injected clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from harden.attest import revlist
from harden.attest.keys import PublicKey
from harden.attest.store import fetch_envelopes
from harden.audit import AuditAction, AuditLog
from harden.clock import Clock
from harden.errors import HardenError, UsageError
from harden.gate import (
    AllOf,
    Decision,
    Evidence,
    ScanScoreAtLeast,
    decide,
    default_gate,
    gather_evidence,
)
from harden.oci.client import RegistryClient
from harden.oci.model import (
    Descriptor,
    PreparedCopy,
    Reference,
    check_not_reserved,
    copy_image,
    list_referrers,
    prepare_copy,
    resolve,
)

log = logging.getLogger(__name__)

__all__ = ["SCHEMA_VERSION", "PromoteResult", "promote"]

SCHEMA_VERSION = 1


def _noop(_: str) -> None:
    return None


@dataclass(frozen=True)
class PromoteResult:
    src: str
    dst: str
    digest: str
    decision: Decision
    attestations: int  # referrers that carry an envelope
    verified: int  # envelopes that verified against a trusted key
    rejected: list[str] = field(default_factory=list)  # envelopes that did not (and why)
    copied: bool = False
    dry_run: bool = False

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    def to_json(self) -> dict[str, Any]:
        decision = self.decision.to_json()
        decision.pop("schema_version", None)
        return {
            "schema_version": SCHEMA_VERSION,
            "src": self.src,
            "dst": self.dst,
            "digest": self.digest,
            "allowed": self.allowed,
            "copied": self.copied,
            "dry_run": self.dry_run,
            "attestations": self.attestations,
            "verified": self.verified,
            "rejected": list(self.rejected),
            "decision": decision,
        }


def _check_refs(src: Reference, dst: Reference) -> None:
    if src.tag is None and src.digest is None:
        raise UsageError(f"SRC {src} names neither a tag nor a digest", hint="add :TAG or @DIGEST")
    if dst.tag is None:
        raise UsageError(
            f"DST {dst} needs a tag to promote to",
            hint="e.g. 127.0.0.1:5000/prod/app:1.0 (the digest never changes)",
        )
    if dst.digest is not None and src.digest is not None and dst.digest != src.digest:
        raise UsageError(f"DST pins {dst.digest} but SRC is {src.digest}")
    check_not_reserved(dst.tag)


def _prepared(preparing: Future[PreparedCopy] | None) -> PreparedCopy | None:
    """The copy prepared while the gate decided, or None (a dry run, or the preparation failed:
    the copy then does everything itself, and reports a registry problem if it persists).

    Why preparing before the decision is safe: it reads the source, asks the destination, and
    writes nothing but blobs (mounted within one registry, never streamed to another); no
    manifest and no tag (the referrers tag-schema index is a tag) is written before the gate
    allowed and the decision is in the audit log, so a denied image cannot be pulled from the
    destination by tag or by digest. A preparation that fails never turns into a decision."""
    if preparing is None:
        return None
    try:
        return preparing.result()
    except HardenError as e:
        log.debug("preparing the copy failed (the copy does it all): %s", e.message)
        return None


def promote(
    src_client: RegistryClient,
    src: Reference,
    dst_client: RegistryClient,
    dst: Reference,
    trusted: Sequence[PublicKey],
    clock: Clock,
    audit: AuditLog,
    *,
    max_age: dt.timedelta | None = None,
    baselines: Sequence[str] = (),
    gate: AllOf | None = None,
    min_scan_score: float | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = _noop,
) -> PromoteResult:
    """Decide (always audited) and, when allowed and not ``dry_run``, copy SRC to DST by digest.

    A denial is a result (``allowed`` False), not an exception; registry and key problems raise.
    ``min_scan_score`` adds :class:`~harden.gate.ScanScoreAtLeast` to the gate.
    """
    _check_refs(src, dst)
    if not trusted:
        raise UsageError("no trusted public key", hint="pass --key PATH.pub (repeatable)")
    gate = gate or default_gate(max_age, baselines)
    if min_scan_score is not None:  # a signed OpenSCAP scan with at least this score
        gate = AllOf([*gate.policies, ScanScoreAtLeast(min_scan_score)], name=gate.name)
    manifest = resolve(src_client, src)
    digest = manifest.digest
    if dst.digest is not None and dst.digest != digest:
        raise UsageError(f"DST pins {dst.digest} but {src} is {digest}")
    progress(f"{src} is {digest}")
    # the copy is prepared meanwhile (see _prepared for why this is safe before the decision);
    # it is waited for only after the decision and its audit entry, never past this function
    preparer = None if dry_run else ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
    try:
        listing: Future[list[Descriptor]] = Future()
        preparing = (
            None
            if preparer is None
            else preparer.submit(
                prepare_copy,
                src_client,
                src.repository,
                manifest,
                dst_client,
                dst.repository,
                listing.result,
            )
        )
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="revocation-list") as pool:
            # the signed revocation list does not depend on the attestations: read it meanwhile
            pending_list = pool.submit(revlist.fetch_for, src_client, trusted)
            try:
                listed = list_referrers(src_client, src.repository, digest)
            except BaseException as e:  # the preparation waits for the listing: never forever
                listing.set_exception(e)
                raise
            listing.set_result(listed)
            fetched = fetch_envelopes(src_client, src.repository, digest, listed=listed)
            progress(f"{len(fetched.referrers)} attestation(s) refer to {digest[:19]}")
            revocation_list = pending_list.result()
        gathered = gather_evidence(fetched.envelopes, trusted, digest, clock.now())
        evidence = Evidence(
            subject_digest=gathered.subject_digest,
            statements=gathered.statements,
            rejected=[*fetched.problems, *gathered.rejected],
            revocations=gathered.revocations,
            now=gathered.now,
            revocation_list=revocation_list,
        )
        decision = decide(gate, evidence)
        result = PromoteResult(
            src=str(src),
            dst=str(dst),
            digest=digest,
            decision=decision,
            attestations=len(fetched.referrers),
            verified=len(gathered.statements) + len(gathered.revocations),
            rejected=list(evidence.rejected),
            dry_run=dry_run,
        )
        details = {
            "src": str(src),
            "dst": str(dst),
            "dry_run": dry_run,
            "policies": decision.policies,
            "reasons": decision.reasons,
            "rejected": result.rejected,
            "trusted_keys": sorted(k.keyid for k in trusted),
        }
        if not decision.allowed:
            audit.append(AuditAction.DENY, str(src), digest, "denied", details)
            return result
        outcome = "allowed (dry run)" if dry_run else "allowed"
        audit.append(AuditAction.PROMOTE, str(src), digest, outcome, details)
        if dry_run:
            return result
        plan = _prepared(preparing)
    finally:
        if preparer is not None:
            preparer.shutdown(wait=True)
    try:
        copy_image(
            src_client,
            src.repository,
            digest,
            dst_client,
            dst.repository,
            tag=dst.tag,
            progress=progress,
            prepared=plan,
        )
    except HardenError as e:
        audit.append(
            AuditAction.PROMOTE,
            str(src),
            digest,
            "copy failed",
            {"src": str(src), "dst": str(dst), "error": e.message},
        )
        raise
    audit.append(AuditAction.PROMOTE, str(dst), digest, "copied", {"src": str(src)})
    return dataclasses.replace(result, copied=True)
