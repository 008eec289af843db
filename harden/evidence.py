"""`harden evidence`: an auditor's bundle for ISO 27017 CLD.9.5.2 and every control the baselines name.

The bundle answers, per control (``framework:id``), *which rules implement it* (from the baselines
the image definitions use and every baseline on the search path), and per golden image *what is
in the registry now, what its last signed verification said, and whether that signature checks
out with the auditor's keys*. The audit log adds the history: builds and rebuilds (the proof of
"regularly updated"), promotions, denials and revocations, and the log's own integrity.

Shape (data flows one way):

- :func:`collect` is pure: it takes the facts an adapter fetched (:class:`ImageFacts` from a
  :class:`RegistryView`, :class:`AuditFacts` from :func:`read_audit`), the trusted keys and an
  injected clock, verifies every cited attestation (pure crypto) and returns a frozen
  :class:`Bundle`.
- :func:`render_html` / :meth:`Bundle.to_json` turn a bundle into text; untrusted strings (they
  come from registries, attestations and the audit log) are cleaned and the template escapes.
- :func:`write_bundle` writes ``index.html`` and ``evidence.json`` atomically: everything goes to
  a temporary sibling directory first, which is then renamed into place; a failure leaves the
  previous bundle (or nothing) and never half a bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harden import imagedef
from harden.attest.keys import PublicKey
from harden.attest.predicates import (
    HARDEN_COMPLIANCE,
    HARDEN_OPENSCAP_SCAN,
    HARDEN_REVOCATION,
    SLSA_PROVENANCE,
    TEST_RESULT,
)
from harden.attest.verification import newest_compliance
from harden.audit import GENESIS, AuditEntry, AuditLog, AuditLogCorrupt
from harden.baseline.resolve import Catalogue, ResolvedBaseline, resolve
from harden.clock import Clock, parse_utc
from harden.errors import AttestationError, HardenError, InputError
from harden.imagedef import ImageDefinition
from harden.report.formats import clean, clean_line
from harden.results import rfc3339

if TYPE_CHECKING:
    from harden.oci.client import RegistryClient
    from harden.oci.types import Reference

__all__ = [
    "DEFAULT_FOCUS",
    "SCHEMA_VERSION",
    "AttestationCheck",
    "AuditFacts",
    "Bundle",
    "ControlEvidence",
    "Fetched",
    "HistoryEvent",
    "ImageEvidence",
    "ImageFacts",
    "OciRegistryView",
    "RegistryView",
    "RuleRef",
    "SignedResult",
    "WaiverEvidence",
    "collect",
    "load_definitions",
    "parse_control",
    "parse_since",
    "read_audit",
    "render_html",
    "write_bundle",
]

SCHEMA_VERSION = 1
DEFAULT_FOCUS = "iso27017:CLD.9.5.2"
TEMPLATE = "evidence.html.j2"
INDEX = "index.html"
JSON_FILE = "evidence.json"

_SHORT_PREDICATE = {
    SLSA_PROVENANCE: "provenance",
    TEST_RESULT: "test-result",
    HARDEN_COMPLIANCE: "compliance",
    HARDEN_REVOCATION: "revocation",
    HARDEN_OPENSCAP_SCAN: "openscap-scan",
}
# audit actions and which history list they belong to
_REBUILD_ACTIONS = frozenset({"build", "rebuild"})
_GOOD_BUILD_OUTCOMES = frozenset({"compliant", "rebuilt"})


# ---------------------------------------------------------------- inputs


def parse_since(text: str) -> dt.datetime:
    """``2025-03-01`` or ``2025-03-01T12:00:00Z`` (no zone = UTC); InputError otherwise."""
    try:
        return parse_utc(text)
    except ValueError as e:
        raise InputError(
            f"--since {text!r} is not a date",
            hint="use 2025-03-01 or 2025-03-01T12:00:00Z (a date without a zone is UTC)",
        ) from e


def parse_control(text: str) -> tuple[str | None, str]:
    """``iso27017:CLD.9.5.2`` -> (framework, id); a bare ``CLD.9.5.2`` -> (None, id)."""
    framework, sep, cid = text.strip().partition(":")
    if not sep:
        framework, cid = "", framework
    if not cid:
        raise InputError(f"--control {text!r} names no control", hint="e.g. CLD.9.5.2")
    return (framework or None), cid


def load_definitions(directory: Path) -> list[ImageDefinition]:
    """Every image definition (``*.yaml``/``*.yml``) in ``directory``, sorted by file name."""
    return imagedef.load_definitions(directory, require_some=True)


@dataclass(frozen=True)
class Fetched:
    """The attestation referrers of one digest: (referrer digest, envelope bytes), and the
    referrers that could not be read, (referrer digest, why)."""

    envelopes: tuple[tuple[str, bytes], ...] = ()
    problems: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImageFacts:
    """What the registry says about one definition's destination (no judgement)."""

    digest: str | None  # None: nothing at the destination
    fetched: Fetched = Fetched()


class RegistryView(Protocol):
    """The registry as :func:`collect` needs it; RegistryError (exit 4) when unreachable."""

    def facts(self, reference: str) -> ImageFacts: ...


class OciRegistryView:
    """:class:`RegistryView` over harden's OCI client (one client per registry host)."""

    def __init__(self, client_factory: Callable[[str], RegistryClient] | None = None) -> None:
        self._clients: dict[str, RegistryClient] = {}
        self._factory = client_factory  # registry host -> client; default: docker config

    def _client(self, ref: Reference) -> RegistryClient:
        from harden.oci import RegistryClient

        client = self._clients.get(ref.registry)
        if client is None:
            client = self._clients[ref.registry] = (
                self._factory(ref.registry) if self._factory else RegistryClient.for_reference(ref)
            )
        return client

    def facts(self, reference: str) -> ImageFacts:
        from harden.attest.store import fetch_envelopes
        from harden.oci import parse_reference

        ref = parse_reference(reference)
        client = self._client(ref)
        target = ref.digest or ref.tag or "latest"
        head = client.head_manifest(ref.repository, target)
        if head is None:
            return ImageFacts(None)
        fetched = fetch_envelopes(client, ref.repository, head.digest)
        return ImageFacts(
            head.digest,
            Fetched(
                tuple((i.referrer, i.envelope) for i in fetched.items),
                tuple((p.referrer, p.message) for p in fetched.unreadable),
            ),
        )

    def production_problems(self, reference: str, trusted: Sequence[PublicKey]) -> list[str]:
        """What the signed revocation list says of the digest ``reference`` (a production tag)
        serves: each revocation or failed verification, or why the list cannot be trusted."""
        from harden.attest import revlist
        from harden.oci import parse_reference

        ref = parse_reference(reference)
        client = self._client(ref)
        head = client.head_manifest(ref.repository, ref.digest or ref.tag or "latest")
        if head is None or not trusted:
            return []
        view = revlist.fetch_for(client, trusted)
        if view.problem is not None:
            return [f"production {reference}: the gate would deny every promotion: {view.problem}"]
        out = [
            f"production {reference} serves {head.digest}, revoked at {rfc3339(e.at)} by "
            f"{e.by}: {e.reason}"
            for e in view.for_digest(head.digest, "revoked")
        ]
        out += [
            f"production {reference} serves {head.digest}, whose verification at "
            f"{rfc3339(e.at)} failed: {e.reason}"
            for e in view.for_digest(head.digest, "failed")
        ]
        return out


@dataclass(frozen=True)
class AuditFacts:
    path: str
    entries: tuple[AuditEntry, ...]  # from --since on, chain order
    problems: tuple[str, ...]  # AuditLog.verify(); () = intact
    head: tuple[int, str]
    exists: bool
    gaps: tuple[str, ...] = ()  # the log cannot evidence what exists (missing, empty)


def read_audit(
    log: AuditLog, since: dt.datetime | None, trusted: Sequence[PublicKey] = ()
) -> AuditFacts:
    """The audit log's entries (from ``since``) and its integrity check, against the latest
    signed checkpoint too when HARDEN_AUDIT_ANCHOR is set (:mod:`harden.attest.checkpoint`)."""
    from harden.attest import checkpoint

    try:
        if checkpoint.anchor_from_env() is not None and not trusted:
            problems = [*log.verify(), "the audit checkpoints cannot be checked: no --key given"]
        else:
            problems = checkpoint.verify_log(log, trusted)
        entries = log.entries(since=since)
        head = log.head()
    except AuditLogCorrupt as e:  # a damaged log is evidence of a problem, not a crash
        return AuditFacts(log.location, (), (e.message,), (0, GENESIS), log.exists())
    return AuditFacts(log.location, tuple(entries), tuple(problems), head, log.exists())


# ---------------------------------------------------------------- the bundle model


@dataclass(frozen=True)
class RuleRef:
    id: str
    title: str
    severity: str
    baselines: tuple[str, ...]


@dataclass(frozen=True)
class ControlEvidence:
    framework: str
    id: str
    rules: tuple[RuleRef, ...]
    images: tuple[str, ...]  # names of the golden images whose baseline implements it

    @property
    def key(self) -> str:
        return f"{self.framework}:{self.id}"


@dataclass(frozen=True)
class AttestationCheck:
    """One cited attestation (a referrer of the image digest) and what checking it found."""

    referrer: str  # the referrer manifest digest
    predicate_type: str | None  # known only once the signature verified
    verified: bool
    keyid: str | None
    reason: str = ""  # why it is NOT verified

    @property
    def kind(self) -> str:
        if self.predicate_type is None:
            return "unknown"
        return _SHORT_PREDICATE.get(self.predicate_type, self.predicate_type)

    @property
    def statement(self) -> str:
        if self.verified:
            return f"signature verified with key {self.keyid}"
        return f"NOT verified: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "referrer": self.referrer,
            "predicate_type": self.predicate_type,
            "kind": self.kind,
            "verified": self.verified,
            "keyid": self.keyid,
            "statement": self.statement,
        }


@dataclass(frozen=True)
class SignedResult:
    """The last verification of an image, from its verified compliance and test-result."""

    compliant: bool
    verified_at: dt.datetime
    valid_until: dt.datetime
    baseline: str  # id@version
    baseline_digest: str
    summary: Mapping[str, int]
    attestation: str  # the compliance referrer digest
    keyid: str
    test_result: str | None = None  # PASSED | WARNED | FAILED
    test_attestation: str | None = None
    passed_tests: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "compliant": self.compliant,
            "verified_at": rfc3339(self.verified_at),
            "valid_until": rfc3339(self.valid_until),
            "baseline": self.baseline,
            "baseline_digest": self.baseline_digest,
            "summary": dict(self.summary),
            "attestation": self.attestation,
            "keyid": self.keyid,
            "test_result": self.test_result,
            "test_attestation": self.test_attestation,
        }


@dataclass(frozen=True)
class HistoryEvent:
    seq: int
    at: dt.datetime
    action: str
    image: str
    digest: str | None
    outcome: str
    reason: str  # the rebuild reason, the denial reasons, ... ("" when none)
    # a build that produced and pushed a new image (not reused, not --no-push, compliant)
    new_image: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": rfc3339(self.at),
            "action": self.action,
            "image": self.image,
            "digest": self.digest,
            "outcome": self.outcome,
            "reason": self.reason,
            "new_image": self.new_image,
        }


@dataclass(frozen=True)
class WaiverEvidence:
    image: str
    rule: str
    owner: str
    expires: dt.date
    reason: str
    expired: bool
    in_signed_result: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "rule": self.rule,
            "owner": self.owner,
            "expires": self.expires.isoformat(),
            "reason": self.reason,
            "expired": self.expired,
            "in_signed_result": self.in_signed_result,
        }


@dataclass(frozen=True)
class ImageEvidence:
    name: str
    definition: str
    destination: str
    baseline: str  # id@version as resolved now
    baseline_digest: str
    digest: str | None
    attestations: tuple[AttestationCheck, ...]
    result: SignedResult | None
    revoked: str | None  # the reason of a verified revocation
    history: tuple[HistoryEvent, ...]
    last_rebuild: dt.datetime | None  # the last build that made a new image
    last_build: dt.datetime | None  # the last successful build, reused (inputs unchanged) too
    control_rules: Mapping[str, tuple[str, ...]]  # control key -> the image's rules for it
    scan: Mapping[str, Any] | None = None  # the latest verified OpenSCAP scan attestation
    # pending security fixes (package, versions, CVE/DSA ids, published) from the image's signed
    # SBOM against its archive; None = not checked
    pending_fixes: tuple[Mapping[str, Any], ...] | None = None

    @property
    def all_verified(self) -> bool:
        return all(a.verified for a in self.attestations)

    def passed_for(self, control: str) -> tuple[int, int] | None:
        """(rules of ``control`` that passed in the signed test-result, rules of it)."""
        rules = self.control_rules.get(control, ())
        if self.result is None or self.result.test_result is None or not rules:
            return None
        return sum(1 for r in rules if r in self.result.passed_tests), len(rules)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "definition": self.definition,
            "destination": self.destination,
            "baseline": self.baseline,
            "baseline_digest": self.baseline_digest,
            "digest": self.digest,
            "attestations": [a.to_json() for a in self.attestations],
            "all_attestations_verified": self.all_verified,
            "last_verification": self.result.to_json() if self.result else None,
            "revoked": self.revoked,
            "last_rebuild": rfc3339(self.last_rebuild) if self.last_rebuild else None,
            "last_build": rfc3339(self.last_build) if self.last_build else None,
            "history": [h.to_json() for h in self.history],
            "openscap_scan": dict(self.scan) if self.scan is not None else None,
            "pending_security_fixes": None
            if self.pending_fixes is None
            else [dict(p) for p in self.pending_fixes],
        }


@dataclass(frozen=True)
class Bundle:
    generated_at: dt.datetime
    since: dt.datetime | None
    images_dir: str
    trusted_keys: tuple[str, ...]
    focus: tuple[str, ...]  # the controls the summary is about
    controls: tuple[ControlEvidence, ...]
    images: tuple[ImageEvidence, ...]
    history: tuple[HistoryEvent, ...]  # every audit entry from --since on
    waivers: tuple[WaiverEvidence, ...]
    audit: AuditFacts
    serving: tuple[str, ...] = ()  # production tags serving a revoked or failed digest

    @property
    def audit_intact(self) -> bool:
        return not self.audit.problems

    @property
    def problems(self) -> list[str]:
        """Why the bundle is not clean evidence (exit 1): unverified attestations, tampering."""
        out = [
            f"{i.name}: attestation {a.referrer} {a.statement}"
            for i in self.images
            for a in i.attestations
            if not a.verified
        ]
        if self.audit.problems:
            out.append(f"the audit log is TAMPERED ({len(self.audit.problems)} problem(s))")
        # production serving a revoked digest first, then a log that cannot evidence anything
        return [*self.serving, *self.audit.gaps, *out]

    @property
    def ok(self) -> bool:
        return not self.problems

    def control(self, key: str) -> ControlEvidence | None:
        for c in self.controls:
            if c.key == key:
                return c
        return None

    def summary(self) -> list[dict[str, Any]]:
        """Per focus control: its images, their signed result and last rebuild."""
        out = []
        for key in self.focus:
            c = self.control(key)
            names = set(c.images) if c else set()
            rows = []
            for i in self.images:
                if i.name not in names:
                    continue
                passed = i.passed_for(key)
                rows.append(
                    {
                        "image": i.name,
                        "destination": i.destination,
                        "digest": i.digest,
                        "signed_result": _result_word(i),
                        "verified_at": rfc3339(i.result.verified_at) if i.result else None,
                        "attestation": i.result.attestation if i.result else None,
                        "signature": _signature_word(i),
                        "control_rules_passed": list(passed) if passed else None,
                        "last_rebuild": rfc3339(i.last_rebuild) if i.last_rebuild else None,
                        "last_build": rfc3339(i.last_build) if i.last_build else None,
                    }
                )
            out.append({"control": key, "rules": len(c.rules) if c else 0, "images": rows})
        return out

    def history_of(self, *actions: str) -> list[HistoryEvent]:
        return [h for h in self.history if h.action in actions]

    def to_json(self) -> dict[str, Any]:
        seq, head = self.audit.head
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": rfc3339(self.generated_at),
            "since": rfc3339(self.since) if self.since else None,
            "images_dir": self.images_dir,
            "trusted_keys": list(self.trusted_keys),
            "ok": self.ok,
            "problems": self.problems,
            "serving_revoked": list(self.serving),
            "summary": self.summary(),
            "controls": [
                {
                    "framework": c.framework,
                    "id": c.id,
                    "rules": [
                        {
                            "id": r.id,
                            "title": r.title,
                            "severity": r.severity,
                            "baselines": list(r.baselines),
                        }
                        for r in c.rules
                    ],
                    "images": list(c.images),
                }
                for c in self.controls
            ],
            "images": [i.to_json() for i in self.images],
            "history": {
                "rebuilds": [h.to_json() for h in self.history_of(*_REBUILD_ACTIONS)],
                "promotions": [h.to_json() for h in self.history_of("promote")],
                "denials": [h.to_json() for h in self.history_of("deny")],
                "revocations": [h.to_json() for h in self.history_of("revoke")],
                "verifications": [h.to_json() for h in self.history_of("verify", "attest")],
            },
            "waivers": [w.to_json() for w in self.waivers],
            "audit_log": {
                "path": self.audit.path,
                "exists": self.audit.exists,
                "intact": self.audit_intact,
                "problems": list(self.audit.problems),
                "gaps": list(self.audit.gaps),
                "head": {"seq": seq, "hash": head} if head != GENESIS else None,
                "entries": len(self.audit.entries),
            },
        }


def _result_word(i: ImageEvidence) -> str:
    if i.digest is None:
        return "not in the registry"
    if i.revoked is not None:
        return "REVOKED"
    if i.result is None:
        return "no verified signed result"
    return "compliant" if i.result.compliant else "NOT compliant"


def _signature_word(i: ImageEvidence) -> str:
    if i.result is not None:
        return f"signature verified with key {i.result.keyid}"
    bad = [a for a in i.attestations if not a.verified]
    if bad:
        return bad[0].statement
    return "no attestation"


# ---------------------------------------------------------------- collecting


def _check(referrer: str, envelope: bytes, trusted: Sequence[PublicKey], digest: str) -> Any:
    """(AttestationCheck, VerifiedStatement | None) of one envelope."""
    from harden.attest.verification import check_envelope

    if not trusted:
        return AttestationCheck(referrer, None, False, None, "no trusted key given (--key)"), None
    checked = check_envelope(referrer, envelope, trusted, digest)
    v = checked.verified
    if v is not None:
        return AttestationCheck(referrer, v.statement.predicateType, True, v.keyid), v
    assert checked.problem is not None
    p = checked.problem
    return AttestationCheck(referrer, p.predicate_type, False, None, p.message), None


def _signed_result(verified: Sequence[tuple[str, Any]]) -> SignedResult | None:
    """The newest verified compliance statement, joined with a test-result by the same key."""
    newest, _ = newest_compliance(v for _, v in verified)
    if newest is None:
        return None
    v, c = newest
    referrer = next(r for r, x in verified if x is v)
    test: tuple[str, Any] | None = None
    for ref2, v2 in verified:
        if v2.statement.predicateType != TEST_RESULT:
            continue
        try:
            t = v2.statement.test_result()
        except AttestationError:
            continue
        cfg = t.configuration[0].sha256 if t.configuration else None
        if cfg in (None, c.baseline.digest):
            test = (ref2, t)
    return SignedResult(
        compliant=c.compliant,
        verified_at=c.verifiedAt,
        valid_until=c.validUntil,
        baseline=f"{c.baseline.id}@{c.baseline.version}",
        baseline_digest=c.baseline.digest,
        summary=dict(c.summary),
        attestation=referrer,
        keyid=v.keyid,
        test_result=test[1].result if test else None,
        test_attestation=test[0] if test else None,
        passed_tests=frozenset(test[1].passedTests) if test else frozenset(),
    )


def _signed_scan(verified: Sequence[tuple[str, Any]]) -> dict[str, Any] | None:
    """The latest (by scannedAt) verified OpenSCAP scan attestation, summarised."""
    best: tuple[Any, str, str] | None = None
    for referrer, v in verified:
        if v.statement.predicateType != HARDEN_OPENSCAP_SCAN:
            continue
        try:
            scan = v.statement.openscap_scan()
        except AttestationError:
            continue
        if best is None or scan.scannedAt > best[0].scannedAt:
            best = (scan, referrer, v.keyid)
    if best is None:
        return None
    scan, referrer, keyid = best
    return {
        "profile": scan.profile,
        "score": scan.score,
        "xccdf_score": scan.xccdfScore,
        "content": f"{scan.content} {scan.contentVersion}".strip(),
        "scanner": scan.scanner,
        "scanned_at": rfc3339(scan.scannedAt),
        "failed": sorted(r.id for r in scan.rules if r.result in ("fail", "error", "unknown")),
        "arf_digest": scan.arfDigest,
        "attestation": referrer,
        "keyid": keyid,
    }


def _revoked(verified: Sequence[tuple[str, Any]]) -> str | None:
    for _, v in verified:
        if v.statement.predicateType == HARDEN_REVOCATION:
            try:
                return str(v.statement.revocation().reason)
            except AttestationError:
                continue
    return None


def _repository(reference: str) -> str:
    """``host/repo[:tag][@digest]`` -> ``host/repo``."""
    rest = reference.partition("@")[0]
    host, slash, path = rest.partition("/")
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path = path.rpartition(":")[0]
    return f"{host}{slash}{path}"


def _event(e: AuditEntry) -> HistoryEvent:
    d = e.details
    reason = ""
    if isinstance(d.get("reason"), str):
        reason = d["reason"]
    elif isinstance(d.get("reasons"), list):
        reason = "; ".join(str(r) for r in d["reasons"])
    elif e.action == "build":
        bits = []
        if isinstance(d.get("base"), dict):
            bits.append(f"base {d['base'].get('name')}@{str(d['base'].get('digest'))[:19]}")
        if isinstance(d.get("baseline"), dict):
            b = d["baseline"]
            bits.append(f"baseline {b.get('id')} {b.get('version')}")
        if d.get("reused"):
            bits.append("reused")
        if d.get("pushed") is False:
            bits.append("not pushed")
        reason = ", ".join(bits)
    elif isinstance(d.get("src"), str) and e.action == "promote":
        reason = f"from {d['src']}" + (f" to {d['dst']}" if isinstance(d.get("dst"), str) else "")
    elif isinstance(d.get("error"), str):
        reason = d["error"]
    new_image = (
        e.action in _REBUILD_ACTIONS
        and e.outcome in _GOOD_BUILD_OUTCOMES
        and not d.get("reused", False)
        and d.get("pushed", True) is not False
    )
    return HistoryEvent(
        e.seq,
        e.at,
        e.action,
        clean_line(e.image),
        e.digest,
        clean_line(e.outcome),
        clean(reason),
        new_image,
    )


def _baseline_rules(catalogue: Catalogue, ids: Iterable[str]) -> dict[str, ResolvedBaseline]:
    out: dict[str, ResolvedBaseline] = {}
    for bid in sorted(set(ids)):
        try:
            out[bid] = resolve(catalogue, bid)
        except HardenError:
            # an abstract or parameter-less baseline that does not resolve alone: skip it
            continue
    return out


def collect(
    definitions: Sequence[ImageDefinition],
    catalogue: Catalogue,
    registry: RegistryView,
    audit: AuditFacts,
    trusted: Sequence[PublicKey],
    clock: Clock,
    *,
    images_dir: str = "images",
    since: dt.datetime | None = None,
    controls: Sequence[str] = (),
    pending: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Bundle:
    """Assemble the evidence bundle; RegistryError when a registry cannot be reached.

    ``pending``: image name -> its pending security fixes (from `harden status`'s check)."""
    now = clock.now()
    today = now.astimezone(dt.UTC).date()
    golden = [d for d in definitions if d.doc.destination]
    resolved_for = {d.name: d.resolve_baseline(catalogue) for d in golden}
    shipped = _baseline_rules(catalogue, [*catalogue.ids(), *(d.doc.baseline.id for d in golden)])

    # control -> rule id -> (rule, baselines)
    table: dict[tuple[str, str], dict[str, tuple[Any, set[str]]]] = {}
    for baseline in [*shipped.values(), *resolved_for.values()]:
        for rule in baseline.rules:
            for fw, ids in rule.controls.items():
                for cid in ids:
                    rules = table.setdefault((fw, cid), {})
                    known = rules.setdefault(rule.id, (rule, set()))
                    known[1].add(baseline.id)
    image_controls: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, rb in resolved_for.items():
        per: dict[str, set[str]] = {}
        for rule in rb.rules:
            for fw, ids in rule.controls.items():
                for cid in ids:
                    per.setdefault(f"{fw}:{cid}", set()).add(rule.id)
        image_controls[name] = {k: tuple(sorted(v)) for k, v in per.items()}

    wanted = _wanted(controls, table)
    control_list = tuple(
        ControlEvidence(
            framework=fw,
            id=cid,
            rules=tuple(
                RuleRef(r.id, r.title, r.severity.value, tuple(sorted(bs)))
                for _, (r, bs) in sorted(table[(fw, cid)].items())
            ),
            images=tuple(n for n in sorted(image_controls) if f"{fw}:{cid}" in image_controls[n]),
        )
        for fw, cid in sorted(table, key=_control_sort)
        if wanted is None or (fw, cid) in wanted
    )
    focus = (
        tuple(f"{fw}:{cid}" for fw, cid in sorted(wanted, key=_control_sort))
        if wanted is not None
        else (DEFAULT_FOCUS,)
    )

    history = tuple(_event(e) for e in audit.entries)
    images: list[ImageEvidence] = []
    waivers: list[WaiverEvidence] = []
    for d in golden:
        assert d.doc.destination is not None
        facts = registry.facts(d.doc.destination)
        checks: list[AttestationCheck] = []
        verified: list[tuple[str, Any]] = []
        if facts.digest is not None:
            for referrer, env in facts.fetched.envelopes:
                check, v = _check(referrer, env, trusted, facts.digest)
                checks.append(check)
                if v is not None:
                    verified.append((referrer, v))
            for referrer, why in facts.fetched.problems:
                checks.append(AttestationCheck(referrer, None, False, None, clean_line(why)))
        result = _signed_result(verified)
        repo = _repository(d.doc.destination)
        digests = {facts.digest} - {None}
        mine = [
            h
            for h in history
            if _repository(h.image) == repo or (h.digest is not None and h.digest in digests)
        ]
        # promotions carry the image on to production: follow its digests there too
        digests |= {h.digest for h in mine if h.digest}
        mine = [
            h
            for h in history
            if _repository(h.image) == repo or (h.digest is not None and h.digest in digests)
        ]
        rebuilds = [h for h in mine if h.new_image]
        builds = [
            h for h in mine if h.action in _REBUILD_ACTIONS and h.outcome in _GOOD_BUILD_OUTCOMES
        ]
        rb = resolved_for[d.name]
        images.append(
            ImageEvidence(
                name=d.name,
                definition=str(d.path),
                destination=d.doc.destination,
                baseline=f"{rb.id}@{rb.version}",
                baseline_digest=rb.digest,
                digest=facts.digest,
                attestations=tuple(checks),
                result=result,
                revoked=_revoked(verified),
                history=tuple(mine),
                last_rebuild=max((h.at for h in rebuilds), default=None),
                last_build=max((h.at for h in builds), default=None),
                control_rules=image_controls[d.name],
                scan=_signed_scan(verified),
                pending_fixes=tuple(pending[d.name])
                if pending is not None and d.name in pending
                else None,
            )
        )
        signed_waivers: set[str] = set()
        for _, v in verified:
            if v.statement.predicateType == HARDEN_COMPLIANCE:
                with contextlib.suppress(AttestationError):
                    signed_waivers |= {w.rule for w in v.statement.compliance().waivers}
        for rule_id, w in sorted(rb.waivers.items()):
            waivers.append(
                WaiverEvidence(
                    image=d.name,
                    rule=rule_id,
                    owner=w.owner,
                    expires=w.expires,
                    reason=w.reason,
                    expired=not w.active_on(today),
                    in_signed_result=rule_id in signed_waivers,
                )
            )
    serving: list[str] = []
    production_of = getattr(registry, "production_problems", None)
    if production_of is not None:
        for d in golden:
            if d.doc.promote_to:
                serving += production_of(d.doc.promote_to, trusted)
    present = [i.name for i in images if i.digest]
    if present and audit.head[0] == 0 and not audit.problems:
        what = "does not exist" if not audit.exists else "is empty"
        gap = (
            f"the audit log {audit.path} {what}, but {len(present)} golden image(s) exist "
            f"({', '.join(present[:3])}{', ...' if len(present) > 3 else ''}): their builds, "
            "promotions and revocations are not evidenced (an ephemeral runner? keep "
            "$HARDEN_HOME, and anchor the log with HARDEN_AUDIT_ANCHOR)"
        )
        audit = dataclasses.replace(audit, gaps=(*audit.gaps, gap))
    return Bundle(
        generated_at=now,
        since=since,
        images_dir=images_dir,
        trusted_keys=tuple(sorted(k.keyid for k in trusted)),
        focus=focus,
        controls=control_list,
        images=tuple(images),
        history=history,
        waivers=tuple(waivers),
        audit=audit,
        serving=tuple(serving),
    )


def _control_sort(key: tuple[str, str]) -> tuple[int, str, tuple[Any, ...]]:
    fw, cid = key
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in cid.split("."))
    return (0 if f"{fw}:{cid}" == DEFAULT_FOCUS else 1, fw, parts)


def _wanted(
    controls: Sequence[str], table: Mapping[tuple[str, str], Any]
) -> set[tuple[str, str]] | None:
    if not controls:
        return None
    wanted: set[tuple[str, str]] = set()
    for text in controls:
        fw, cid = parse_control(text)
        hits = {k for k in table if k[1] == cid and (fw is None or k[0] == fw)}
        if not hits:
            known = ", ".join(f"{f}:{c}" for f, c in sorted(table, key=_control_sort)[:8])
            raise InputError(
                f"--control {text}: no rule of the baselines maps to it",
                hint=f"controls the baselines name include {known}, ...",
            )
        wanted |= hits
    return wanted


# ---------------------------------------------------------------- rendering and writing


def _environment() -> Any:
    import jinja2

    from harden.paths import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "report")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["clean"] = lambda v: clean_line(str(v)) if v is not None else ""
    env.filters["cleanblock"] = lambda v: clean(str(v)) if v is not None else ""
    return env


def render_html(bundle: Bundle) -> str:
    """The self-contained index.html (inline CSS, no scripts, no external assets)."""
    doc = bundle.to_json()
    return str(
        _environment()
        .get_template(TEMPLATE)
        .render(
            doc=doc,
            focus_rows=doc["summary"],
            ok=bundle.ok,
            problems=bundle.problems,
            images=doc["images"],
            controls=doc["controls"],
            history=doc["history"],
            waivers=doc["waivers"],
            audit=doc["audit_log"],
            audit_problems=list(bundle.audit.problems),
        )
    )


MARKER = ".harden-evidence"  # in every bundle harden writes: what may be replaced
_BUNDLE_FILES = frozenset({MARKER, INDEX, JSON_FILE})


def _check_target(outdir: Path) -> None:
    """OUTDIR may be replaced only when absent, empty, or a bundle harden wrote (its marker and
    nothing but its own files); anything else is refused, never deleted."""
    if outdir.is_symlink() or (outdir.exists() and not outdir.is_dir()):
        raise InputError(f"--output {outdir} exists and is not a directory")
    if not outdir.exists():
        return
    names = {p.name for p in outdir.iterdir()}
    if not names:
        return
    if MARKER not in names:
        raise InputError(
            f"--output {outdir} is a non-empty directory harden did not write "
            f"(it holds {', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''})",
            hint="pick a new or empty directory; harden replaces only a bundle it wrote",
        )
    foreign = sorted(names - _BUNDLE_FILES)
    if foreign:
        raise InputError(
            f"--output {outdir} holds files harden did not write ({', '.join(foreign[:3])})",
            hint="move them away or pick another directory; harden deletes nothing of yours",
        )


def _remove_bundle(path: Path) -> None:
    """Remove a previous bundle file by file (never a tree): a file that appeared meanwhile
    stays, with its directory."""
    for name in _BUNDLE_FILES:
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def write_bundle(bundle: Bundle, outdir: Path) -> Path:
    """Write OUTDIR/index.html and OUTDIR/evidence.json atomically: a new directory beside it,
    then renamed into place.

    OUTDIR is replaced only when it is absent, empty or a bundle harden wrote before
    (recognised by its marker file and holding nothing else); anything else is refused
    (InputError, exit 3) rather than deleted. A path that cannot be written is refused the same.
    """
    html = render_html(bundle)
    data = json.dumps(bundle.to_json(), indent=2, ensure_ascii=False) + "\n"
    outdir = outdir.absolute()
    try:
        _check_target(outdir)
        outdir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    except OSError as e:
        raise InputError(
            f"cannot write the evidence bundle to {outdir}: {e.strerror or e}",
            hint="pick a directory you can write to (--output)",
        ) from e
    old: Path | None = None
    try:
        marker = "written by harden evidence; this directory is replaced by the next run\n"
        for name, text in ((INDEX, html), (JSON_FILE, data), (MARKER, marker)):
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # noqa: S103  # a report for readers, like any written file
        if outdir.exists():
            _check_target(outdir)  # again, just before the swap
            old = outdir.with_name(f".{outdir.name}.old-{os.getpid()}")
            os.rename(outdir, old)
        try:
            os.rename(tmp, outdir)
        except BaseException:
            if old is not None:
                os.rename(old, outdir)
                old = None
            raise
    except OSError as e:
        _remove_bundle(tmp)
        raise InputError(
            f"cannot write the evidence bundle to {outdir}: {e.strerror or e}",
            hint="pick a directory you can write to (--output)",
        ) from e
    except BaseException:
        _remove_bundle(tmp)
        raise
    if old is not None:
        _remove_bundle(old)
    return outdir
