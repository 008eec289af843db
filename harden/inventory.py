"""The inventory adapter: fetch the facts about every golden image from its registry.

For each container image definition: the digest at its destination (and at ``promote_to``), the
labels the build recorded (base digest, baseline digest, created: they live in the image config,
which the manifest digest pins), the attestations referring to the digest (verified here against
the trusted keys: the latest compliance statement and any revocation), the digest the base
reference names now, and the baseline the definition resolves to now. :mod:`harden.lifecycle`
judges them.

Requests run on a bounded thread pool (one HTTP session per thread and registry); each registry
is pinged once first, so an unreachable registry costs one failed request, not one per image.

Content that a digest names never changes, so manifests by digest, config blobs and envelope
blobs are cached in SQLite under ``$HARDEN_HOME/inventory.db`` (or in ``$HARDEN_DB``'s ``content``
table: :func:`harden.state.cache.open_cache`). The registry stays the source of
truth: what can change (tags, the list of referrers) is asked every time, every cached row is
checked against its digest when read, and a cache that is deleted, unreadable or corrupt is
recreated empty and refilled from the registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden import labels
from harden.attest import dsse, revlist
from harden.attest.keys import PublicKey
from harden.attest.predicates import CYCLONEDX_BOM, _utc_timestamp
from harden.attest.store import (
    AttestationProblem,
    FetchedEnvelope,
    FetchedEnvelopes,
    ProblemKind,
    list_attestations,
)
from harden.baseline.resolve import Catalogue
from harden.clock import Clock
from harden.debian.check import SecurityCheck
from harden.errors import AttestationError, HardenError, InputError, RegistryError
from harden.files import sha256_file
from harden.gate import RevocationListView, gather_evidence, latest_compliance
from harden.imagedef import ImageDefinition
from harden.lifecycle import ImageFacts, Revocation, Verification
from harden.oci.client import RegistryClient, RegistryNotFound
from harden.oci.model import Reference, parse_reference
from harden.results import rfc3339

__all__ = [
    "DEFAULT_JOBS",
    "LABEL_BASELINE_DIGEST",
    "LABEL_BASE_DIGEST",
    "LABEL_CREATED",
    "ContentCache",
    "Inventory",
    "normalize_reference",
]

DEFAULT_JOBS = 8
LABEL_CREATED = labels.CREATED
LABEL_BASE_DIGEST = labels.BASE_DIGEST
LABEL_BASELINE_DIGEST = labels.BASELINE_DIGEST
MAX_CONFIG_BYTES = 4 << 20

ClientFactory = Callable[[str], RegistryClient]


def normalize_reference(ref: str) -> str:
    """``host/repo`` -> ``host/repo:latest``; anything else unchanged (for matching)."""
    rest, at, digest = ref.partition("@")
    last = rest.rsplit("/", 1)[-1]
    if ":" not in last and not at:
        rest += ":latest"
    return rest + (at + digest if at else "")


# ---- the content-addressed cache ---------------------------------------------------------------
class ContentCache:
    """Immutable content by digest in one SQLite file; corrupt or missing means empty."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        self.rebuilt = False
        if path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = self._connect()
            conn.execute("SELECT count(*) FROM content").fetchone()
            self._conn = conn
        except sqlite3.DatabaseError:
            self._recreate()
        except OSError:
            self._conn = None  # no cache this time; the registry answers everything

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
        # a cache: no fsync per write (a torn file is detected and rebuilt), readers see writers
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS content (digest TEXT PRIMARY KEY, data BLOB)")
        return conn

    def _recreate(self) -> None:
        assert self.path is not None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        self.rebuilt = True
        try:
            self._conn = self._connect()
        except (sqlite3.Error, OSError):
            self._conn = None

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            if self._conn is None:
                return None
            try:
                row = self._conn.execute(
                    "SELECT data FROM content WHERE digest = ?", (digest,)
                ).fetchone()
            except sqlite3.DatabaseError:
                self._recreate()
                return None
            if row is None:
                self.misses += 1
                return None
            data = bytes(row[0])
            if not digest.startswith("sha256:") or (
                "sha256:" + hashlib.sha256(data).hexdigest() != digest
            ):
                self._drop(digest)
                self.misses += 1
                return None
            self.hits += 1
            return data

    def _drop(self, digest: str) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("DELETE FROM content WHERE digest = ?", (digest,))
            self._conn.commit()
        except sqlite3.DatabaseError:
            self._recreate()

    def put(self, digest: str, data: bytes) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO content (digest, data) VALUES (?, ?)", (digest, data)
                )
                self._conn.commit()
            except sqlite3.DatabaseError:
                self._recreate()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# ---- the inventory -----------------------------------------------------------------------------
def _default_factory(registry: str) -> RegistryClient:
    client = RegistryClient.for_reference(Reference(registry, "harden"))
    client.max_retries = 1
    return client


@dataclass(frozen=True)
class _Ref:
    text: str
    ref: Reference | None  # None: not a registry reference (e.g. a local engine image)


def _parse(text: str) -> _Ref:
    try:
        return _Ref(text, parse_reference(normalize_reference(text)))
    except InputError:
        return _Ref(text, None)


class Inventory:
    """Fetches :class:`ImageFacts` for image definitions (see the module docstring)."""

    def __init__(
        self,
        catalogue: Catalogue,
        trusted: Sequence[PublicKey],
        clock: Clock,
        *,
        jobs: int = DEFAULT_JOBS,
        cache: ContentCache | None = None,
        client_factory: ClientFactory = _default_factory,
        security: SecurityCheck | None = None,
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.catalogue = catalogue
        self.trusted = list(trusted)
        self.clock = clock
        self.jobs = jobs
        self.cache = cache or ContentCache(None)
        self._factory = client_factory
        self.security = security  # None: pending security updates are not checked
        self._local = threading.local()
        self._baselines: dict[str, str] = {}
        self._baseline_lock = threading.Lock()
        self._revocation_lists: dict[str, RevocationListView] = {}

    # -- plumbing ---------------------------------------------------------------------------------
    def client(self, registry: str) -> RegistryClient:
        """One client (one HTTP session) per thread and registry."""
        clients: dict[str, RegistryClient] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = {}
            self._local.clients = clients
        if registry not in clients:
            clients[registry] = self._factory(registry)
        return clients[registry]

    def _map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if self.jobs == 1 or len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="inventory") as pool:
            return list(pool.map(fn, items))

    def _ping(self, registries: Iterable[str]) -> dict[str, str | None]:
        def ping(registry: str) -> tuple[str, str | None]:
            try:
                self.client(registry).ping()
            except RegistryError as e:
                return registry, e.message
            return registry, None

        return dict(self._map(ping, sorted(set(registries))))

    def _manifest_json(self, client: RegistryClient, repo: str, digest: str) -> dict[str, Any]:
        data = self.cache.get(digest)
        if data is None:
            data = client.get_manifest(repo, digest).data
            self.cache.put(digest, data)
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise InputError(f"manifest {digest} is not a JSON object")
        return doc

    def _blob(self, client: RegistryClient, repo: str, digest: str, max_bytes: int) -> bytes:
        data = self.cache.get(digest)
        if data is None:
            data = client.get_blob(repo, digest, max_bytes)
            self.cache.put(digest, data)
        return data

    def baseline_digest(self, defn: ImageDefinition) -> str:
        key = defn.doc.baseline.model_dump_json()
        with self._baseline_lock:
            cached = self._baselines.get(key)
        if cached is None:
            cached = defn.resolve_baseline(self.catalogue).digest
            with self._baseline_lock:
                self._baselines[key] = cached
        return cached

    # -- facts ------------------------------------------------------------------------------------
    def facts(self, definitions: Sequence[ImageDefinition]) -> list[ImageFacts]:
        """Facts for every definition that has a destination, in the order given."""
        defs = [d for d in definitions if d.doc.destination]
        baselines = {d.path: self.baseline_digest(d) for d in defs}  # bad input fails first
        refs: dict[str, _Ref] = {}
        for d in defs:
            for text in (d.doc.destination, d.doc.base, d.doc.promote_to):
                if text:
                    refs[text] = _parse(text)
        down = self._ping(r.ref.registry for r in refs.values() if r.ref is not None)
        bases = sorted({d.doc.base for d in defs if d.doc.base})
        current = dict(self._map(lambda b: (b, self._current_base(refs[b], down)), bases))
        disks = sorted({d.doc.vm.disk for d in defs if d.doc.vm and not d.doc.base})
        current.update(self._map(lambda p: (p, _disk_digest(Path(p))), disks))
        return list(self._map(lambda d: self._one(d, refs, down, current, baselines[d.path]), defs))

    def _current_base(self, base: _Ref, down: Mapping[str, str | None]) -> str | HardenError | None:
        """The digest the base names now; None when it is no registry reference."""
        if base.ref is None:
            return None
        if down.get(base.ref.registry):
            return RegistryError(f"base {base.text}: {down[base.ref.registry]}")
        if base.ref.digest:
            return base.ref.digest
        try:
            found = self.client(base.ref.registry).head_manifest(
                base.ref.repository, base.ref.tag or "latest"
            )
        except HardenError as e:
            return e
        if found is None:
            return RegistryNotFound(f"base {base.text} is not in its registry")
        return found.digest

    def _one(
        self,
        defn: ImageDefinition,
        refs: Mapping[str, _Ref],
        down: Mapping[str, str | None],
        current_bases: Mapping[str, str | HardenError | None],
        baseline_digest: str,
    ) -> ImageFacts:
        doc = defn.doc
        assert doc.destination is not None
        facts = ImageFacts(
            name=doc.name,
            definition=str(defn.path),
            destination=doc.destination,
            max_age=defn.max_age,
            base=_base_of(defn),
            production=doc.promote_to,
            current_baseline_digest=baseline_digest,
        )
        unreachable: list[str] = []
        base = _base_of(defn)
        base_now = current_bases.get(base) if base else None
        notes: tuple[str, ...] = ()
        if isinstance(base_now, RegistryNotFound):  # a fact, not an outage
            notes = (f"{base_now.message}: cannot compare, and a rebuild would fail",)
            base_now = None
        elif isinstance(base_now, HardenError):
            unreachable.append(base_now.message)
            base_now = None
        dest = refs[doc.destination].ref
        if dest is None:
            raise InputError(
                f"{defn.path}: destination {doc.destination} is not a registry reference",
                hint="write host[:port]/repository:tag",
            )
        if down.get(dest.registry):
            return _replace(facts, unreachable=(*unreachable, str(down[dest.registry])))
        sbom: dict[str, Any] | None = None
        try:
            facts, sbom = self._image(facts, dest)
            if doc.promote_to:
                prod = refs[doc.promote_to].ref
                if prod is not None and not down.get(prod.registry):
                    found = self.client(prod.registry).head_manifest(
                        prod.repository, prod.tag or "latest"
                    )
                    facts = _replace(facts, production_digest=found.digest if found else None)
            facts = self._with_revocation_list(facts, dest.registry)
        except RegistryError as e:
            unreachable.append(e.message)
        if sbom is not None and self.security is not None:
            facts = self._pending(facts, defn, sbom, self.security)
        return _replace(
            facts, current_base_digest=base_now, unreachable=tuple(unreachable), notes=notes
        )

    @staticmethod
    def _pending(
        facts: ImageFacts, defn: ImageDefinition, sbom: dict[str, Any], security: SecurityCheck
    ) -> ImageFacts:
        """The packages of the image's signed SBOM against its archive's security suites."""
        from harden.debian.check import unreachable
        from harden.sbom import codename_of, installed_of

        codename = codename_of(sbom)
        if codename is None:
            return _replace(facts, notes=(*facts.notes, "the SBOM names no Debian release"))
        try:
            archives = defn.update_archives(codename)
            names = security.candidate_names(archives)
            found = security.pending(archives, installed_of(sbom, names))
        except HardenError as e:
            state = "archive unreachable" if unreachable(e) else "archive refused"
            return _replace(facts, archive_state=state, archive_problem=f"{state}: {e.message}")
        return _replace(facts, pending_updates=found.updates, fixes=found.fixes)

    def _image(
        self, facts: ImageFacts, dest: Reference
    ) -> tuple[ImageFacts, dict[str, Any] | None]:
        """The image's facts and its newest verified SBOM (CycloneDX), if it has one."""
        client = self.client(dest.registry)
        try:
            found = client.head_manifest(dest.repository, dest.tag or "latest")
        except RegistryNotFound:
            found = None
        if found is None:
            return facts, None
        digest = found.digest
        labels = self._labels(client, dest.repository, digest)
        created = _time(labels.get(LABEL_CREATED))
        facts = _replace(
            facts,
            digest=digest,
            created=created,
            recorded_base_digest=labels.get(LABEL_BASE_DIGEST),
            recorded_baseline_digest=labels.get(LABEL_BASELINE_DIGEST),
        )
        fetched = self._envelopes(client, dest.repository, digest)
        envelopes, problems = fetched.envelopes, fetched.problems
        if not self.trusted:
            problems = ["no trusted key given (--key): attestations cannot be verified", *problems]
            return _replace(facts, attestation_problems=tuple(problems)), None
        ev = gather_evidence(envelopes, self.trusted, digest, self.clock.now())
        problems += list(ev.rejected)
        c, unreadable = latest_compliance(ev)  # the same choice the promotion gate makes
        problems += unreadable
        verification = (
            None
            if c is None
            else Verification(
                verified_at=c.verifiedAt,
                valid_until=c.validUntil,
                compliant=c.compliant,
                baseline_digest=c.baseline.digest,
                waivers=tuple((w.rule, w.expires) for w in c.waivers),
            )
        )
        revocations: list[Revocation] = []
        for s in ev.revocations:
            if not s.statement.matches(digest):
                continue
            try:
                r = s.statement.revocation()
            except AttestationError as e:
                revocations.append(Revocation(f"(unreadable: {e.message})", None, s.keyid[:12]))
                continue
            revocations.append(Revocation(r.reason, r.revokedAt, r.revokedBy, r.cascadeFrom))
        return _replace(
            facts,
            verification=verification,
            attestation_problems=tuple(problems),
            revocations=tuple(revocations),
        ), newest_sbom(ev.for_subject(CYCLONEDX_BOM))

    def _revocation_list(self, registry: str) -> RevocationListView | None:
        """The signed revocation list governing ``registry`` (read once per registry)."""
        if not self.trusted:
            return None
        with self._baseline_lock:
            if registry in self._revocation_lists:
                return self._revocation_lists[registry]
        view = revlist.fetch_for(self.client(registry), self.trusted)
        with self._baseline_lock:
            self._revocation_lists[registry] = view
        return view

    def _with_revocation_list(self, facts: ImageFacts, registry: str) -> ImageFacts:
        """What the signed revocation list (by digest, every repository) says of the image and
        of the digest its production tag serves: the gate's view, not only the referrers."""
        rl = self._revocation_list(registry)
        if rl is None or facts.digest is None:
            return facts
        if rl.problem is not None:
            return _replace(facts, notes=(*facts.notes, f"the gate would deny: {rl.problem}"))
        revocations = list(facts.revocations)
        known = {(r.reason, r.revoked_at) for r in revocations}
        for e in rl.for_digest(facts.digest, "revoked"):
            if (e.reason, e.at) not in known:
                revocations.append(Revocation(e.reason, e.at, e.by, e.cascadeFrom))
        verification = facts.verification
        problems = list(facts.attestation_problems)
        for e in rl.for_digest(facts.digest, "failed"):
            if verification is not None and e.at >= verification.verified_at:
                verification = dataclasses.replace(verification, compliant=False)
                problems.append(f"a verification at {rfc3339(e.at)} failed: {e.reason}")
        production: list[str] = []
        served = facts.production_digest
        if served is not None and served != facts.digest:
            for e in rl.for_digest(served, "revoked"):
                production.append(
                    f"production {facts.production} still serves {served}, revoked at "
                    f"{rfc3339(e.at)} by {e.by}: {e.reason}"
                )
            for e in rl.for_digest(served, "failed"):
                production.append(
                    f"production {facts.production} still serves {served}, whose verification "
                    f"at {rfc3339(e.at)} failed: {e.reason}"
                )
        elif served is not None and revocations:
            production.append(f"production {facts.production} serves {served}, which is revoked")
        return _replace(
            facts,
            revocations=tuple(revocations),
            verification=verification,
            attestation_problems=tuple(problems),
            production_problems=tuple(production),
        )

    def _labels(self, client: RegistryClient, repo: str, digest: str) -> dict[str, str]:
        manifest = self._manifest_json(client, repo, digest)
        if "manifests" in manifest:  # an index: the labels of its first image
            children = manifest.get("manifests") or []
            if not children or not isinstance(children[0], dict):
                return {}
            return self._labels(client, repo, str(children[0].get("digest")))
        config = manifest.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            return {}
        try:
            doc = json.loads(self._blob(client, repo, config["digest"], MAX_CONFIG_BYTES))
        except (ValueError, UnicodeDecodeError):
            return {}
        labels = (doc.get("config") or {}).get("Labels") if isinstance(doc, dict) else None
        out = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        annotations = manifest.get("annotations")
        if isinstance(annotations, dict):  # manifest annotations count too (label wins)
            for k, v in annotations.items():
                out.setdefault(str(k), str(v))
        return out

    def _envelopes(self, client: RegistryClient, repo: str, digest: str) -> FetchedEnvelopes:
        """Like :func:`harden.attest.store.fetch_envelopes`, through the cache."""
        referrers = list_attestations(client, repo, digest)
        items: list[FetchedEnvelope] = []
        problems: list[AttestationProblem] = []
        for referrer in referrers:
            try:
                layers = self._manifest_json(client, repo, referrer.digest).get("layers") or []
                if len(layers) != 1 or not isinstance(layers[0], dict):
                    raise InputError(f"has {len(layers)} layers, an attestation has exactly one")
                size = int(layers[0].get("size", 0))
                if size > dsse.MAX_ENVELOPE_BYTES:
                    raise InputError(f"envelope is {size} bytes, more than the limit")
                blob = self._blob(
                    client, repo, str(layers[0].get("digest")), dsse.MAX_ENVELOPE_BYTES
                )
                items.append(FetchedEnvelope(referrer.digest, blob))
            except RegistryError:
                raise
            except (HardenError, ValueError) as e:
                why = getattr(e, "message", str(e))
                problems.append(AttestationProblem(referrer.digest, ProblemKind.UNREADABLE, why))
        return FetchedEnvelopes(tuple(items), tuple(problems), tuple(referrers))

    def resolve_digest(self, ref_text: str) -> tuple[Reference, str]:
        """The digest a reference names now (RegistryNotFound when nothing is there)."""
        ref = parse_reference(ref_text)
        if ref.digest:
            return ref, ref.digest
        found = self.client(ref.registry).head_manifest(ref.repository, ref.tag or "latest")
        if found is None:
            raise RegistryNotFound(f"{ref_text}: no such image", hint="check the reference")
        return ref, found.digest


def newest_sbom(statements: Sequence[Any]) -> dict[str, Any] | None:
    """The CycloneDX document of the newest (``metadata.timestamp``) verified SBOM statement."""
    best: tuple[str, dict[str, Any]] | None = None
    for s in statements:
        doc = s.statement.predicate
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        when = str(meta.get("timestamp", "")) if isinstance(meta, dict) else ""
        if best is None or when > best[0]:
            best = (when, doc)
    return best[1] if best else None


def _base_of(defn: ImageDefinition) -> str | None:
    """A container's base reference; a VM template's base disk (the file it was built from)."""
    if defn.doc.base:
        return defn.doc.base
    return defn.doc.vm.disk if defn.doc.vm else None


def _disk_digest(path: Path) -> str | HardenError:
    """sha256 of a VM base disk now (the VM counterpart of asking a registry for a base tag)."""
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return RegistryNotFound(f"base disk {path} does not exist")
    except OSError as e:
        return InputError(f"base disk {path}: {e.strerror or e}")


def _replace(facts: ImageFacts, **changes: Any) -> ImageFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = _utc_timestamp(text)
    except ValueError:
        return None
    return value if isinstance(value, dt.datetime) else None
