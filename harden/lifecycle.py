"""Freshness of golden images: the status model and its state machine.

Pure: :func:`assess` takes the facts an adapter fetched (:mod:`harden.inventory`) and an injected
clock, and decides one :class:`State` per image, with every reason in words:

- ``unknown``  a registry (the image's or its base's) could not be asked: never fresh;
- ``serving-revoked`` the production tag (``promote_to``) serves a digest the signed revocation
  list revokes (or whose latest verification failed), whatever the staging image's state:
  re-promote a good image; exits 1 even when the staging image is fresh;
- ``missing``  no image at the definition's destination;
- ``revoked``  a revocation signed by a trusted key names the image's digest;
- ``stale``    no verified compliance attestation (missing, unverifiable, not compliant), or
  older than ``max_age``, or past ``validUntil``, or a waiver it relied on has expired;
- ``outdated`` the base image's digest or the resolved baseline's digest changed since the build,
  or the Debian archive has security fixes for packages in the image's signed SBOM
  (``outdated (base)``, ``outdated (baseline)``, ``outdated (security: 3 packages)``, ...);
- ``expiring`` fresh now, but it turns stale within the warning window;
- ``fresh``.

When several hold, the first in that order is the state; :attr:`ImageStatus.reasons` lists all.
stale, outdated, revoked and missing need a rebuild (:attr:`State.needs_rebuild`).

Also pure, for ``harden revoke --cascade``: :func:`cascade` walks the images whose recorded base
digest is a revoked digest, transitively.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from harden.clock import Clock
from harden.debian.fixes import Fix
from harden.debian.pending import PendingUpdate
from harden.errors import ExitCode
from harden.results import rfc3339

__all__ = [
    "SCHEMA_VERSION",
    "ImageFacts",
    "ImageStatus",
    "Revocation",
    "State",
    "Verification",
    "assess",
    "cascade",
    "exit_code",
    "format_age",
]

SCHEMA_VERSION = 1


class State(StrEnum):
    FRESH = "fresh"
    EXPIRING = "expiring"
    STALE = "stale"
    OUTDATED = "outdated"
    REVOKED = "revoked"
    MISSING = "missing"
    UNKNOWN = "unknown"
    SERVING_REVOKED = "serving-revoked"

    @property
    def needs_rebuild(self) -> bool:
        return self in _NEEDS_REBUILD


_NEEDS_REBUILD = frozenset({State.STALE, State.OUTDATED, State.REVOKED, State.MISSING})


@dataclass(frozen=True)
class Revocation:
    reason: str
    revoked_at: dt.datetime | None
    revoked_by: str
    cascade_from: str | None = None


@dataclass(frozen=True)
class Verification:
    """The latest compliance attestation that verified against a trusted key."""

    verified_at: dt.datetime
    valid_until: dt.datetime
    compliant: bool
    baseline_digest: str
    waivers: tuple[tuple[str, dt.date], ...] = ()  # (rule id, expires) of the waivers applied


@dataclass(frozen=True)
class ImageFacts:
    """What the registry says about one image definition's golden image (no judgement)."""

    name: str
    definition: str  # path of the image definition
    destination: str | None
    max_age: dt.timedelta
    base: str | None = None
    digest: str | None = None  # at the destination; None = nothing there
    production: str | None = None  # promote_to reference
    production_digest: str | None = None
    created: dt.datetime | None = None  # org.opencontainers.image.created label
    recorded_base_digest: str | None = None  # org.opencontainers.image.base.digest label
    recorded_baseline_digest: str | None = None  # dev.harden.baseline.digest label
    verification: Verification | None = None
    attestation_problems: tuple[str, ...] = ()  # why envelopes did not count
    revocations: tuple[Revocation, ...] = ()
    current_base_digest: str | None = None  # what the base reference names now
    current_baseline_digest: str | None = None  # the definition's baseline resolved now
    unreachable: tuple[str, ...] = ()  # registry errors: the state cannot be known
    notes: tuple[str, ...] = ()  # worth saying, but no state (e.g. the base tag is gone)
    # pending updates of the packages in the image's SBOM; None = not checked (no SBOM/archive)
    pending_updates: tuple[PendingUpdate, ...] | None = None
    production_problems: tuple[str, ...] = ()  # what the revocation list says of production
    fixes: tuple[Fix, ...] = ()  # the CVE/DSA/DLA ids of the pending security updates
    # the archive could not be read ("archive unreachable") or was refused ("archive refused")
    archive_state: str | None = None
    archive_problem: str | None = None


@dataclass(frozen=True)
class ImageStatus:
    facts: ImageFacts
    state: State
    reasons: tuple[str, ...]
    now: dt.datetime
    outdated: tuple[str, ...] = ()  # "base", "baseline"
    expires_at: dt.datetime | None = None  # when it turns stale (earliest of the limits)
    all_states: frozenset[State] = field(default_factory=frozenset)

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def label(self) -> str:
        """``outdated (base)``, ``stale``, ..."""
        if self.state is State.OUTDATED:
            return f"outdated ({', '.join(self.outdated)})"
        if self.state is State.UNKNOWN and self.facts.archive_state and not self.facts.unreachable:
            return f"unknown ({self.facts.archive_state})"
        return self.state.value

    @property
    def needs_rebuild(self) -> bool:
        if self.state is State.SERVING_REVOKED:  # the staging image may need one too
            return any(s.needs_rebuild for s in self.all_states)
        return self.state.needs_rebuild

    @property
    def verified_at(self) -> dt.datetime | None:
        v = self.facts.verification
        return v.verified_at if v else None

    @property
    def age(self) -> dt.timedelta | None:
        since = self.verified_at or self.facts.created
        return None if since is None else self.now - since

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        v = f.verification

        def t(x: dt.datetime | None) -> str | None:
            return rfc3339(x) if x else None

        age = self.age
        return {
            "name": f.name,
            "definition": f.definition,
            "state": self.state.value,
            "label": self.label,
            "needs_rebuild": self.needs_rebuild,
            "outdated": list(self.outdated),
            "reasons": list(self.reasons),
            "destination": f.destination,
            "digest": f.digest,
            "production": f.production,
            "production_digest": f.production_digest,
            "production_problems": list(f.production_problems),
            "built_at": t(f.created),
            "verified_at": t(v.verified_at if v else None),
            "valid_until": t(v.valid_until if v else None),
            "expires_at": t(self.expires_at),
            "age_seconds": int(age.total_seconds()) if age is not None else None,
            "max_age_seconds": int(f.max_age.total_seconds()),
            "base": {
                "reference": f.base,
                "recorded": f.recorded_base_digest,
                "current": f.current_base_digest,
            },
            "baseline": {
                "recorded": self.recorded_baseline,
                "current": f.current_baseline_digest,
            },
            "notes": list(f.notes),
            "pending_updates": None
            if f.pending_updates is None
            else [
                {
                    "package": u.name,
                    "installed": u.installed,
                    "candidate": u.candidate,
                    "suite": u.suite,
                    "security": u.security,
                    **fix_json(f.fixes, u),
                }
                for u in f.pending_updates
            ],
            "archive": {"state": f.archive_state, "problem": f.archive_problem}
            if f.archive_state
            else None,
            "revoked": bool(f.revocations),
            "revocations": [
                {
                    "reason": r.reason,
                    "revoked_at": t(r.revoked_at),
                    "revoked_by": r.revoked_by,
                    "cascade_from": r.cascade_from,
                }
                for r in f.revocations
            ],
        }

    @property
    def recorded_baseline(self) -> str | None:
        v = self.facts.verification
        return v.baseline_digest if v else self.facts.recorded_baseline_digest


def _fix_for(fixes: Sequence[Fix], u: PendingUpdate) -> Fix | None:
    return next((x for x in fixes if x.update == u), None)


def fix_json(fixes: Sequence[Fix], u: PendingUpdate) -> dict[str, Any]:
    fix = _fix_for(fixes, u)
    return {"fixes": list(fix.ids) if fix else [], "published": fix.published if fix else None}


def describe_fix(fixes: Sequence[Fix], u: PendingUpdate) -> str:
    """``zzhello 1.0 -> 1.1 (bookworm-security) fixes CVE-..., DSA-... (published ...)``."""
    fix = _fix_for(fixes, u)
    text = u.describe()
    if fix and fix.ids:
        text += " fixes " + ", ".join(fix.ids)
    if fix and fix.published:
        text += f" (published {fix.published})"
    return text


_ORDER = (
    State.UNKNOWN,
    State.SERVING_REVOKED,
    State.MISSING,
    State.REVOKED,
    State.STALE,
    State.OUTDATED,
    State.EXPIRING,
    State.FRESH,
)


def format_age(d: dt.timedelta | None) -> str:
    if d is None:
        return "-"
    seconds = int(d.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds >= 86400:
        return f"{sign}{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{sign}{seconds // 3600}h{(seconds % 3600) // 60}m"
    return f"{sign}{seconds // 60}m"


def _day_end(day: dt.date) -> dt.datetime:
    """A waiver that ``expires`` on a day is active through that day (UTC)."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def assess(facts: ImageFacts, clock: Clock, warn_within: dt.timedelta) -> ImageStatus:
    """The state of one image now (see the module docstring for the rules)."""
    now = clock.now()
    if now.tzinfo is None:
        raise ValueError("the clock must give an aware datetime")
    found: dict[State, list[str]] = {s: [] for s in _ORDER}
    outdated: list[str] = []
    expires_at: dt.datetime | None = None

    found[State.UNKNOWN] += list(facts.unreachable)
    found[State.SERVING_REVOKED] += list(facts.production_problems)
    if not facts.unreachable and facts.digest is None:
        found[State.MISSING].append(f"no image at {facts.destination}")
    if facts.digest is not None:
        for r in facts.revocations:
            when = f" at {rfc3339(r.revoked_at)}" if r.revoked_at else ""
            cascade = f", cascaded from {r.cascade_from}" if r.cascade_from else ""
            found[State.REVOKED].append(f"revoked{when} by {r.revoked_by}: {r.reason}{cascade}")

        v = facts.verification
        stale = found[State.STALE]
        if v is None:
            stale.append("no verified compliance attestation")
            stale += list(facts.attestation_problems)
        else:
            limits = [v.verified_at + facts.max_age, v.valid_until]
            limits += [_day_end(expires) for _, expires in v.waivers]
            expires_at = min(limits)
            if not v.compliant:
                stale.append(f"the verification at {rfc3339(v.verified_at)} was not compliant")
            if now >= v.verified_at + facts.max_age:
                stale.append(
                    f"verified {format_age(now - v.verified_at)} ago, older than max_age "
                    f"{format_age(facts.max_age)}"
                )
            if now >= v.valid_until:
                stale.append(f"the compliance attestation expired at {rfc3339(v.valid_until)}")
            for rule, expires in v.waivers:
                if now >= _day_end(expires):
                    stale.append(f"the waiver for {rule} expired on {expires.isoformat()}")
            if not stale and now >= expires_at - warn_within:
                found[State.EXPIRING].append(
                    f"turns stale at {rfc3339(expires_at)} (in {format_age(expires_at - now)})"
                )

        if facts.current_base_digest is not None:
            if facts.recorded_base_digest is None:
                outdated.append("base")
                found[State.OUTDATED].append("the image records no base digest")
            elif facts.recorded_base_digest != facts.current_base_digest:
                outdated.append("base")
                found[State.OUTDATED].append(
                    f"base {facts.base} is now {facts.current_base_digest}, "
                    f"built on {facts.recorded_base_digest}"
                )
        recorded_baseline = v.baseline_digest if v else facts.recorded_baseline_digest
        current_baseline = facts.current_baseline_digest
        if current_baseline is not None and recorded_baseline != current_baseline:
            outdated.append("baseline")
            found[State.OUTDATED].append(
                f"baseline now resolves to {current_baseline}, "
                f"verified against {recorded_baseline or '(none recorded)'}"
            )

        security = [u for u in facts.pending_updates or () if u.security]
        if security:
            n = len(security)
            outdated.append(f"security: {n} package{'s' if n != 1 else ''}")
            found[State.OUTDATED] += [
                f"security fix pending: {describe_fix(facts.fixes, u)}" for u in security
            ]

    if facts.archive_problem:
        # an archive that cannot be read leaves the security state unknown; an image that needs
        # a rebuild anyway (stale, revoked, missing) keeps that state, the problem as a reason
        settled = next((x for x in (State.MISSING, State.REVOKED, State.STALE) if found[x]), None)
        found[settled or State.UNKNOWN].append(facts.archive_problem)
    present = frozenset(s for s, reasons in found.items() if reasons)
    state = next((s for s in _ORDER if s in present), State.FRESH)
    reasons = tuple(r for s in _ORDER for r in found[s]) + facts.notes
    return ImageStatus(
        facts=facts,
        state=state,
        reasons=reasons,
        now=now,
        outdated=tuple(outdated),
        expires_at=expires_at,
        all_states=present or frozenset({State.FRESH}),
    )


def exit_code(statuses: Iterable[ImageStatus]) -> ExitCode:
    """4 when any state is unknown (a registry could not be asked), else 1 when anything needs a
    rebuild, else 0 (fresh or expiring)."""
    items = list(statuses)
    if any(s.state is State.UNKNOWN for s in items):
        return ExitCode.ENVIRONMENT
    if any(s.needs_rebuild or State.SERVING_REVOKED in s.all_states for s in items):
        return ExitCode.POLICY
    return ExitCode.OK


def cascade(root_digest: str, images: Sequence[ImageFacts]) -> list[tuple[ImageFacts, str]]:
    """Every image built on ``root_digest``, transitively: ``(image, the parent digest it was
    built on)`` in breadth-first order, each image once (a cycle cannot loop)."""
    out: list[tuple[ImageFacts, str]] = []
    seen = {root_digest}
    frontier = [root_digest]
    while frontier:
        parent = frontier.pop(0)
        for img in images:
            if img.digest is None or img.digest in seen:
                continue
            if img.recorded_base_digest == parent:
                seen.add(img.digest)
                out.append((img, parent))
                frontier.append(img.digest)
    return out
