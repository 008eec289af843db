"""Signed checkpoints of the audit log's head, anchored in a registry.

The audit log's hash chain detects an edited, deleted or reordered entry, but not a forged entry
appended with a valid chain, nor a tail cut off together with its recorded head: both leave a
chain that verifies. A checkpoint is a DSSE-signed in-toto statement (predicate
:data:`PREDICATE_TYPE`) of ``count`` (the sequence number of the last entry), ``head`` (its
hash) and ``at``, stored as an OCI artifact at ``$HARDEN_AUDIT_ANCHOR`` (a tag, e.g.
``registry.example.com/harden/audit:ci``), each also tagged ``seq-<count>``.

Configured with ``HARDEN_AUDIT_ANCHOR`` and ``HARDEN_AUDIT_KEY`` (a signer URI; its password from
``HARDEN_KEY_PASSWORD``), every entry harden appends publishes a checkpoint
(:func:`anchor_hook`). :func:`check` compares the log with the latest checkpoint that verifies
against the trusted keys: fewer entries than the checkpoint is a cut tail, a different hash at
its position a rewritten chain, and entries after it were appended without the audit key.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from harden.attest import dsse
from harden.attest.keys import PublicKey, Signer
from harden.attest.statements import STATEMENT_TYPE, serialize
from harden.attest.store import push_signed_artifact, read_signed_artifact
from harden.errors import HardenError, InputError, RegistryError, UsageError
from harden.oci.client import RegistryClient
from harden.oci.model import CREATED_ANNOTATION, Reference, parse_reference
from harden.results import rfc3339


class ChainedLog(Protocol):
    """What a checkpoint is checked against: :class:`harden.audit.AuditLog` (which imports this
    module for its append hook, so this one names only the shape it needs)."""

    def verify(self) -> list[str]: ...

    def chain(self) -> list[tuple[int, str]]: ...


__all__ = [
    "ANCHOR_ENV",
    "KEY_ENV",
    "PREDICATE_TYPE",
    "Checkpoint",
    "anchor_from_env",
    "anchor_hook",
    "check",
    "fetch",
    "publish",
    "verify_log",
]

ANCHOR_ENV = "HARDEN_AUDIT_ANCHOR"
KEY_ENV = "HARDEN_AUDIT_KEY"
PREDICATE_TYPE = "https://harden.dev/attestation/audit-checkpoint/v1"
ARTIFACT_TYPE = "application/vnd.dev.harden.audit-checkpoint.v1+dsse"
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    location: str
    count: int
    head: str
    at: dt.datetime
    keyid: str


def anchor_from_env() -> Reference | None:
    text = os.environ.get(ANCHOR_ENV, "").strip()
    if not text:
        return None
    ref = parse_reference(text)
    if ref.tag is None or ref.digest is not None:
        raise InputError(
            f"{ANCHOR_ENV}={text!r} must name a tag (registry/repository:tag)",
            hint="e.g. 127.0.0.1:5000/harden/audit:ci",
        )
    return ref


def publish(
    client: RegistryClient,
    location: Reference,
    signer: Signer,
    count: int,
    head: str,
    now: dt.datetime,
) -> None:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"audit-log:{location}", "digest": {"sha256": head}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"count": count, "head": head, "at": rfc3339(now), "log": str(location)},
    }
    envelope = dsse.sign(serialize(statement), signer)
    push_signed_artifact(
        client,
        location.repository,
        [f"seq-{count}", location.tag or "latest"],
        ARTIFACT_TYPE,
        envelope,
        {CREATED_ANNOTATION: rfc3339(now)},
    )


def fetch(
    client: RegistryClient, location: Reference, trusted: Sequence[PublicKey]
) -> Checkpoint | str:
    """The latest checkpoint, verified; or why there is none that can be trusted."""
    where = str(location)
    try:
        envelope = read_signed_artifact(
            client, location.repository, location.tag or "latest", _MAX_BYTES
        )
        if envelope is None:
            return f"no audit checkpoint at {where}"
        verified = dsse.verify(envelope, trusted)
        st = verified.statement
        if st.predicateType != PREDICATE_TYPE:
            return f"the audit checkpoint at {where} has predicate type {st.predicateType}"
        p = st.predicate
        count, head, log = p.get("count"), p.get("head"), p.get("log")
        if not isinstance(count, int) or count < 1 or not isinstance(head, str):
            return f"the audit checkpoint at {where} is malformed"
        if log != where:
            return f"the audit checkpoint at {where} was made for another log ({log})"
        from harden.attest.predicates import _utc_timestamp

        at = _utc_timestamp(p.get("at"))
    except RegistryError:
        raise
    except (HardenError, ValueError) as e:
        return f"the audit checkpoint at {where} cannot be trusted: {getattr(e, 'message', e)}"
    return Checkpoint(where, count, head, at, verified.keyid)


def check(entries: Sequence[tuple[int, str]], cp: Checkpoint | str) -> list[str]:
    """Problems of a log (its ``(seq, hash)`` in chain order) against the latest checkpoint."""
    if isinstance(cp, str):
        return [cp] if entries or not cp.startswith("no audit checkpoint") else []
    last = entries[-1][0] if entries else 0
    if last < cp.count:
        return [
            f"the log ends at entry {last}, the checkpoint signed at {rfc3339(cp.at)} says "
            f"{cp.count}: its tail was cut (or this is not the anchored log)"
        ]
    by_seq = dict(entries)
    if by_seq.get(cp.count) != cp.head:
        return [
            f"entry {cp.count} does not have the hash the checkpoint signed at {rfc3339(cp.at)} "
            "records: the chain was rewritten"
        ]
    if last > cp.count:
        return [
            f"{last - cp.count} entr(y/ies) after the latest signed checkpoint (entry {cp.count}) "
            "are not anchored: appended outside a harden run that holds the audit key"
        ]
    return []


def anchor_hook(clock_now: Callable[[], dt.datetime]) -> Callable[[int, str], None] | None:
    """With HARDEN_AUDIT_ANCHOR and HARDEN_AUDIT_KEY set: a function that publishes a signed
    checkpoint of ``(seq, hash)``; None when anchoring is not configured."""
    location = anchor_from_env()
    key_uri = os.environ.get(KEY_ENV, "").strip()
    if location is None:
        return None
    if not key_uri:
        raise InputError(
            f"{ANCHOR_ENV} is set but {KEY_ENV} is not",
            hint=f"set {KEY_ENV}=file:PATH (the key that signs audit checkpoints)",
        )
    state: dict[str, Any] = {}

    def publish_head(seq: int, head: str) -> None:
        from harden.attest.keys import load_signer

        if "signer" not in state:
            password = os.environ.get("HARDEN_KEY_PASSWORD")
            state["signer"] = load_signer(key_uri, password.encode() if password else None)
        if "client" not in state:  # one client (one connection) for every checkpoint
            state["client"] = RegistryClient.for_reference(location)
        publish(state["client"], location, state["signer"], seq, head, clock_now())

    return publish_head


def verify_log(log: ChainedLog, trusted: Sequence[PublicKey]) -> list[str]:
    """The chain's own problems, plus (when HARDEN_AUDIT_ANCHOR is set) the log checked against
    the latest checkpoint that verifies with ``trusted``."""
    problems = log.verify()
    location = anchor_from_env()
    if location is None:
        return problems
    if not trusted:
        raise UsageError(
            f"{ANCHOR_ENV} is set: pass --key PUB to check the log against its checkpoints"
        )
    cp = fetch(RegistryClient.for_reference(location), location, trusted)
    return problems + check(log.chain(), cp)
