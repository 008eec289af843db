"""The revocation list: signed, expiring, versioned, by digest across every repository.

Why: revocations attached as referrers live in the image's own repository, whose referrers
index anyone with push access can rewrite; dropping the revocation (or a newer failing result)
from it would turn a "no" into a "yes". The list is a DSSE-signed in-toto statement
(predicate :data:`harden.attest.predicates.HARDEN_REVOCATION_LIST`) stored as an OCI artifact at
one well-known place per registry, ``<registry>/harden/revocations:current`` (or
``$HARDEN_REVOCATIONS``), each version also tagged ``v<N>``. Every version carries:

- ``version`` (+1 per change) and ``previous`` (sha256 of the previous version's statement),
- ``issuedAt`` / ``expiresAt`` (the freshness window: an old list cannot be replayed forever),
- ``entries``: ``revoked`` digests and ``failed`` verifications, with repository and reason.

The gate (:class:`harden.gate.RevocationListCurrent`) denies when the list is missing, not
signed by a trusted key, expired, or older than a version this machine saw before (the highest
version seen per location is kept in ``$HARDEN_HOME/revocation-lists.json``, or in the
``revocation_lists_seen`` table of ``$HARDEN_DB``, shared by every CI runner). Writers
(:func:`append`, :func:`refresh`) read, verify and extend the current version; they never
recreate a list that is gone (only :func:`init` creates one, and refuses when one exists), so
deleting the list cannot reset it to empty.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden.attest import dsse
from harden.attest.keys import PublicKey, Signer, signer_public_key
from harden.attest.predicates import HARDEN_REVOCATION_LIST, RevocationListV1
from harden.attest.statements import STATEMENT_TYPE, serialize
from harden.attest.store import push_signed_artifact, read_signed_artifact
from harden.errors import AttestationError, HardenError, InputError, RegistryError
from harden.gate import RevocationListView
from harden.oci.client import RegistryClient, RegistryNotFound
from harden.oci.model import (
    CREATED_ANNOTATION,
    Reference,
    parse_reference,
)
from harden.paths import harden_home
from harden.results import Status, VerifyReport, rfc3339

__all__ = [
    "ARTIFACT_TYPE",
    "DEFAULT_VALIDITY",
    "LOCATION_ENV",
    "Entry",
    "append",
    "fetch",
    "init",
    "location_for",
    "refresh",
]

LOCATION_ENV = "HARDEN_REVOCATIONS"
DEFAULT_REPOSITORY = "harden/revocations"
CURRENT_TAG = "current"
ARTIFACT_TYPE = "application/vnd.dev.harden.revocation-list.v1+dsse"
DEFAULT_VALIDITY = dt.timedelta(days=7)
MAX_LIST_BYTES = 16 << 20
_WRITE_ATTEMPTS = 6
_STATE_FILE = "revocation-lists.json"


@dataclass(frozen=True)
class Entry:
    """A new entry for the list (see RevocationListEntry for the meaning of ``kind``)."""

    digest: str
    kind: str  # "revoked" | "failed"
    at: dt.datetime
    reason: str
    by: str
    repository: str | None = None
    cascade_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "digest": self.digest,
            "kind": self.kind,
            "at": rfc3339(self.at),
            "reason": self.reason,
            "by": self.by,
        }
        if self.repository:
            doc["repository"] = self.repository
        if self.cascade_from:
            doc["cascadeFrom"] = self.cascade_from
        return doc


def location_for(registry: str) -> Reference:
    """Where the list for images in ``registry`` lives: ``$HARDEN_REVOCATIONS`` (a full
    reference, e.g. ``registry.example.com/security/revocations:current``) or
    ``<registry>/harden/revocations:current``."""
    configured = os.environ.get(LOCATION_ENV, "").strip()
    text = configured or f"{registry}/{DEFAULT_REPOSITORY}:{CURRENT_TAG}"
    ref = parse_reference(text)
    if ref.tag is None or ref.digest is not None:
        raise InputError(
            f"{LOCATION_ENV}={configured!r} must name a tag (registry/repository:tag)",
            hint=f"e.g. {registry}/{DEFAULT_REPOSITORY}:{CURRENT_TAG}",
        )
    return ref


# ---- what this machine has seen (rollback protection) ------------------------------------------
def _state_path() -> Path:
    return harden_home() / _STATE_FILE


def _load_seen() -> dict[str, dict[str, Any]]:
    from harden.state import database_url

    url = database_url()
    if url is not None:  # shared by every runner on $HARDEN_DB
        from harden.state.postgres import database

        return database(url).seen_revocation_lists()
    try:
        raw = _state_path().read_bytes()[: 4 << 20]
        doc = json.loads(raw)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(
            f"{_state_path()} is unreadable ({e})",
            hint="it records the newest revocation list version seen; restore or delete it",
        ) from e
    return doc if isinstance(doc, dict) else {}


def _remember(location: str, version: int, payload_sha256: str) -> None:
    from harden.state import database_url

    url = database_url()
    if url is not None:
        from harden.state.postgres import database

        database(url).remember_revocation_list(location, version, payload_sha256)
        return
    seen = _load_seen()
    old = seen.get(location) or {}
    if int(old.get("version", 0)) >= version:
        return
    seen[location] = {"version": version, "sha256": payload_sha256}
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".revlists-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(seen, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Current:
    view: RevocationListView
    payload: bytes
    predicate: RevocationListV1


def _read(
    client: RegistryClient, location: Reference, trusted: Sequence[PublicKey]
) -> _Current | str:
    """The current version, verified; or why it cannot be used (missing, unsigned, malformed)."""
    where = str(location)
    try:
        envelope = read_signed_artifact(
            client, location.repository, location.tag or CURRENT_TAG, MAX_LIST_BYTES
        )
        if envelope is None:
            return f"the revocation list {where} is missing"
        verified = dsse.verify(envelope, trusted)
        if verified.statement.predicateType != HARDEN_REVOCATION_LIST:
            raise AttestationError(f"predicate type is {verified.statement.predicateType}")
        predicate = verified.statement.revocation_list()
    except RegistryError:
        raise
    except HardenError as e:
        return f"the revocation list {where} cannot be trusted: {e.message}"
    view = RevocationListView(
        location=where,
        version=predicate.version,
        issued_at=predicate.issuedAt,
        expires_at=predicate.expiresAt,
        entries=tuple(predicate.entries),
        keyid=verified.keyid,
    )
    return _Current(view, verified.payload, predicate)


def _rollback_problem(where: str, current: _Current) -> str | None:
    seen = _load_seen().get(where)
    if not seen:
        return None
    seen_version = int(seen.get("version", 0))
    digest = hashlib.sha256(current.payload).hexdigest()
    version = current.predicate.version
    if version < seen_version:
        return (
            f"the revocation list {where} was rolled back: version {version}, "
            f"version {seen_version} was seen before"
        )
    if version == seen_version and digest != seen.get("sha256"):
        return f"the revocation list {where} version {version} differs from the one seen before"
    if version == seen_version + 1 and current.predicate.previous != seen.get("sha256"):
        return f"the revocation list {where} version {version} does not follow the version seen"
    return None


def fetch(
    client: RegistryClient, location: Reference, trusted: Sequence[PublicKey]
) -> RevocationListView:
    """The list as the gate needs it; ``problem`` set when it is missing, not signed by a
    trusted key, malformed or rolled back (expiry is the gate's to judge, with its clock). An
    unreachable registry raises RegistryError."""
    current = _read(client, location, trusted)
    if isinstance(current, str):
        return RevocationListView(location=str(location), problem=current)
    problem = _rollback_problem(str(location), current)
    if problem is not None:
        return RevocationListView(
            location=str(location), version=current.view.version, problem=problem
        )
    _remember(str(location), current.predicate.version, hashlib.sha256(current.payload).hexdigest())
    return current.view


# ---- writing ------------------------------------------------------------------------------------
def _statement(
    location: Reference,
    version: int,
    previous: str | None,
    entries: list[dict[str, Any]],
    now: dt.datetime,
    validity: dt.timedelta,
) -> dict[str, Any]:
    predicate: dict[str, Any] = {
        "version": version,
        "issuedAt": rfc3339(now),
        "expiresAt": rfc3339(now + validity),
        "entries": entries,
    }
    if previous is not None:
        predicate["previous"] = previous
    entries_digest = hashlib.sha256(serialize({"entries": entries})).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": str(location), "digest": {"sha256": entries_digest}}],
        "predicateType": HARDEN_REVOCATION_LIST,
        "predicate": predicate,
    }


def _push(
    client: RegistryClient,
    location: Reference,
    version: int,
    envelope: bytes,
    now: dt.datetime,
) -> None:
    push_signed_artifact(
        client,
        location.repository,
        [f"v{version}", location.tag or CURRENT_TAG],  # v<N>: history, for restores
        ARTIFACT_TYPE,
        envelope,
        {CREATED_ANNOTATION: rfc3339(now), "dev.harden.revocation-list.version": str(version)},
    )


def _write(
    client: RegistryClient,
    location: Reference,
    signer: Signer,
    current: _Current | None,
    entries: list[dict[str, Any]],
    now: dt.datetime,
    validity: dt.timedelta,
) -> int:
    version = current.predicate.version + 1 if current else 1
    previous = hashlib.sha256(current.payload).hexdigest() if current else None
    statement = _statement(location, version, previous, entries, now, validity)
    payload = serialize(statement)
    _push(client, location, version, dsse.sign(payload, signer), now)
    return version


def _entries(current: _Current) -> list[dict[str, Any]]:
    """The entries exactly as signed (carried over unchanged into the next version)."""
    entries = json.loads(current.payload)["predicate"]["entries"]
    return [e for e in entries if isinstance(e, dict)]


def _current_for_writer(client: RegistryClient, location: Reference, signer: Signer) -> _Current:
    current = _read(client, location, [signer_public_key(signer)])
    if isinstance(current, str):
        raise RegistryError(
            current,
            hint="a new installation starts it with `harden revocations init --key URI`; "
            f"otherwise restore the newest version (tags v1..vN of {location.repository})",
        )
    problem = _rollback_problem(str(location), current)
    if problem is not None:
        raise RegistryError(problem, hint="restore the newest version before writing to it")
    return current


def _validate_validity(validity: dt.timedelta) -> None:
    if validity <= dt.timedelta(0):
        raise InputError(f"the revocation list validity must be positive, got {validity}")


def init(
    client: RegistryClient,
    location: Reference,
    signer: Signer,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> int:
    """Create version 1 (empty). Refuses when a list is already there (even one that does not
    verify: someone must look at it) or when this machine has seen one at that location."""
    _validate_validity(validity)
    try:
        client.get_manifest(location.repository, location.tag or CURRENT_TAG)
    except RegistryNotFound:
        pass
    else:
        raise InputError(
            f"a revocation list already exists at {location}",
            hint="use `harden revocations refresh` to re-sign it",
        )
    if str(location) in _load_seen():
        raise InputError(
            f"the revocation list at {location} existed before (version "
            f"{_load_seen()[str(location)].get('version')} was seen here) and is now gone",
            hint=f"restore it from the tags v1..vN of {location.repository}; recreating it "
            "empty would drop every revocation",
        )
    _write(client, location, signer, None, [], now, validity)
    return _read_back(client, location, signer)


def append(
    client: RegistryClient,
    location: Reference,
    signer: Signer,
    new: Sequence[Entry],
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> int:
    """Add ``new`` entries as the next version; returns the version that holds them.

    Read, extend, write, then read back: a concurrent writer that replaced our version is
    merged with on the next round (bounded), so no entry is lost to a race."""
    _validate_validity(validity)
    wanted = [e.to_json() for e in new]
    for _ in range(_WRITE_ATTEMPTS):
        current = _current_for_writer(client, location, signer)
        present = _entries(current)
        keys = {(e.get("digest"), e.get("kind"), e.get("at")) for e in present}
        missing = [e for e in wanted if (e["digest"], e["kind"], e["at"]) not in keys]
        if not missing:
            digest = hashlib.sha256(current.payload).hexdigest()
            _remember(str(location), current.predicate.version, digest)
            return current.predicate.version
        _write(client, location, signer, current, present + missing, now, validity)
        client.sleep(random.uniform(0.005, 0.03))  # let a racing writer land, then re-read
    raise RegistryError(
        f"could not record {len(wanted)} entr(y/ies) in the revocation list {location} after "
        f"{_WRITE_ATTEMPTS} attempts",
        hint="many concurrent writers; run the command again",
    )


def refresh(
    client: RegistryClient,
    location: Reference,
    signer: Signer,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> int:
    """Re-sign the current entries as the next version with a new freshness window."""
    _validate_validity(validity)
    current = _current_for_writer(client, location, signer)
    _write(client, location, signer, current, _entries(current), now, validity)
    return _read_back(client, location, signer)


def _read_back(client: RegistryClient, location: Reference, signer: Signer) -> int:
    """The version now current (ours, or a racing writer's successor), remembered as seen."""
    current = _current_for_writer(client, location, signer)
    digest = hashlib.sha256(current.payload).hexdigest()
    _remember(str(location), current.predicate.version, digest)
    return current.predicate.version


def client_for(client: RegistryClient, location: Reference) -> RegistryClient:
    """``client`` when the list lives in its registry, else a client for the list's registry."""
    if location.registry == client.registry:
        return client
    return RegistryClient.for_reference(location)


def fetch_for(client: RegistryClient, trusted: Sequence[PublicKey]) -> RevocationListView:
    """The revocation list that governs images in ``client``'s registry (see location_for)."""
    location = location_for(client.registry)
    return fetch(client_for(client, location), location, trusted)


def record(client: RegistryClient, signer: Signer, entry: Entry, now: dt.datetime) -> int:
    """Append one entry to the list that governs ``client``'s registry; returns its version."""
    location = location_for(client.registry)
    return append(client_for(client, location), location, signer, [entry], now)


def record_failed_verification(
    client: RegistryClient, signer: Signer, digest: str, repository: str, report: VerifyReport
) -> int:
    """Record that verifying ``digest`` failed at ``report.finished_at``: from then on no
    passing result verified at or before that time counts, whatever the index still lists."""
    failed = sum(1 for r in report.results if r.status in (Status.FAILED, Status.ERROR))
    entry = Entry(
        digest,
        "failed",
        report.finished_at,
        f"{failed} rule(s) failed or errored against {report.baseline.id}",
        "harden attest",
        f"{client.registry}/{repository}",
    )
    return record(client, signer, entry, report.finished_at)
