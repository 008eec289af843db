"""The freshness state machine: time moved by days and months, waivers expiring, base and
baseline changes, revocations, missing and unreachable images, exit codes, cascades."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from harden.clock import FixedClock
from harden.errors import ExitCode
from harden.lifecycle import (
    ImageFacts,
    Revocation,
    State,
    Verification,
    assess,
    cascade,
    exit_code,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
BASE = "sha256:" + "b" * 64
BASELINE = "sha256:" + "c" * 64


def facts(**changes: object) -> ImageFacts:
    f = ImageFacts(
        name="app",
        definition="images/app.yaml",
        destination="127.0.0.1:5000/staging/app:latest",
        max_age=dt.timedelta(days=30),
        base="127.0.0.1:5000/library/debian:12",
        digest="sha256:" + "a" * 64,
        created=T0,
        recorded_base_digest=BASE,
        recorded_baseline_digest=BASELINE,
        verification=Verification(
            verified_at=T0,
            valid_until=T0 + dt.timedelta(days=30),
            compliant=True,
            baseline_digest=BASELINE,
        ),
        current_base_digest=BASE,
        current_baseline_digest=BASELINE,
    )
    return dataclasses.replace(f, **changes)  # type: ignore[arg-type]


def test_fresh_then_expiring_then_stale_as_days_pass() -> None:
    clock = FixedClock(T0)
    f = facts()
    s = assess(f, clock, WEEK)
    assert s.state is State.FRESH and s.label == "fresh" and not s.needs_rebuild
    assert s.expires_at == T0 + dt.timedelta(days=30)
    clock.advance(dt.timedelta(days=22, hours=23))
    assert assess(f, clock, WEEK).state is State.FRESH
    clock.advance(dt.timedelta(hours=2))  # 23 days 1 hour: inside the 7-day window
    s = assess(f, clock, WEEK)
    assert s.state is State.EXPIRING and not s.needs_rebuild
    assert "turns stale at 2026-03-31T12:00:00Z" in s.reasons[0]
    clock.advance(dt.timedelta(days=7))  # 30 days 1 hour
    s = assess(f, clock, WEEK)
    assert s.state is State.STALE and s.needs_rebuild
    assert any("older than max_age 30d" in r for r in s.reasons)
    assert s.age == dt.timedelta(days=30, hours=1)


def test_months_later_stale_for_age_and_expired_attestation() -> None:
    clock = FixedClock(T0)
    clock.advance(dt.timedelta(days=92))  # three months
    s = assess(facts(max_age=dt.timedelta(days=365)), clock, WEEK)
    assert s.state is State.STALE
    assert s.reasons == ("the compliance attestation expired at 2026-03-31T12:00:00Z",)


def test_waiver_expiry_makes_it_stale_the_day_after() -> None:
    expires = dt.date(2026, 3, 10)
    v = Verification(T0, T0 + dt.timedelta(days=30), True, BASELINE, (("pkg.x", expires),))
    clock = FixedClock(dt.datetime(2026, 3, 10, 23, 59, tzinfo=dt.UTC))
    s = assess(facts(verification=v), clock, dt.timedelta(0))
    assert s.state is State.FRESH  # the waiver holds through its last day
    assert s.expires_at == dt.datetime(2026, 3, 11, tzinfo=dt.UTC)
    assert assess(facts(verification=v), clock, dt.timedelta(days=1)).state is State.EXPIRING
    clock.advance(dt.timedelta(minutes=2))
    s = assess(facts(verification=v), clock, dt.timedelta(0))
    assert s.state is State.STALE
    assert s.reasons == ("the waiver for pkg.x expired on 2026-03-10",)


@pytest.mark.parametrize(
    ("changes", "label"),
    [
        ({"current_base_digest": "sha256:" + "d" * 64}, "outdated (base)"),
        ({"current_baseline_digest": "sha256:" + "e" * 64}, "outdated (baseline)"),
        (
            {
                "current_base_digest": "sha256:" + "d" * 64,
                "current_baseline_digest": "sha256:" + "e" * 64,
            },
            "outdated (base, baseline)",
        ),
        ({"recorded_base_digest": None}, "outdated (base)"),
    ],
)
def test_outdated_says_which(changes: dict[str, object], label: str) -> None:
    s = assess(facts(**changes), FixedClock(T0), WEEK)
    assert s.state is State.OUTDATED and s.needs_rebuild
    assert s.label == label


def test_baseline_compared_with_the_verified_attestation_not_the_label() -> None:
    # the label says one thing, the signed compliance statement another: the signed one counts
    s = assess(facts(recorded_baseline_digest="sha256:" + "e" * 64), FixedClock(T0), WEEK)
    assert s.state is State.FRESH


def test_missing_or_unverifiable_attestation_is_stale() -> None:
    s = assess(
        facts(verification=None, attestation_problems=("referrer x: bad signature",)),
        FixedClock(T0),
        WEEK,
    )
    assert s.state is State.STALE
    assert s.reasons == ("no verified compliance attestation", "referrer x: bad signature")
    v = dataclasses.replace(facts().verification, compliant=False)  # type: ignore[type-var]
    s = assess(facts(verification=v), FixedClock(T0), WEEK)
    assert s.state is State.STALE and "was not compliant" in s.reasons[0]


def test_precedence_revoked_over_stale_over_outdated() -> None:
    clock = FixedClock(T0 + dt.timedelta(days=40))
    f = facts(
        current_base_digest="sha256:" + "d" * 64,
        revocations=(Revocation("CVE-1", T0, "secops", None),),
    )
    s = assess(f, clock, WEEK)
    assert s.state is State.REVOKED
    assert {State.REVOKED, State.STALE, State.OUTDATED} <= s.all_states
    assert s.reasons[0].startswith("revoked at 2026-03-01T12:00:00Z by secops: CVE-1")
    assert assess(dataclasses.replace(f, revocations=()), clock, WEEK).state is State.STALE


def test_missing_and_unknown() -> None:
    s = assess(facts(digest=None, verification=None), FixedClock(T0), WEEK)
    assert s.state is State.MISSING and s.needs_rebuild
    s = assess(facts(unreachable=("cannot connect to 127.0.0.1:5000",)), FixedClock(T0), WEEK)
    assert s.state is State.UNKNOWN and not s.needs_rebuild
    assert s.label == "unknown"


def test_exit_codes() -> None:
    clock = FixedClock(T0)
    fresh = assess(facts(), clock, WEEK)
    expiring = assess(facts(), FixedClock(T0 + dt.timedelta(days=25)), WEEK)
    stale = assess(facts(verification=None), clock, WEEK)
    unknown = assess(facts(unreachable=("down",)), clock, WEEK)
    assert exit_code([fresh, expiring]) is ExitCode.OK
    assert exit_code([fresh, stale]) is ExitCode.POLICY
    assert exit_code([stale, unknown]) is ExitCode.ENVIRONMENT
    assert exit_code([]) is ExitCode.OK


def test_json_has_the_facts() -> None:
    doc = assess(facts(current_base_digest="sha256:" + "d" * 64), FixedClock(T0), WEEK).to_json()
    assert doc["state"] == "outdated" and doc["label"] == "outdated (base)"
    assert doc["base"] == {
        "reference": "127.0.0.1:5000/library/debian:12",
        "recorded": BASE,
        "current": "sha256:" + "d" * 64,
    }
    assert doc["verified_at"] == "2026-03-01T12:00:00Z" and doc["revoked"] is False


def test_naive_clock_is_refused() -> None:
    class Naive:
        def now(self) -> dt.datetime:
            return dt.datetime(2026, 1, 1)

    with pytest.raises(ValueError, match="aware"):
        assess(facts(), Naive(), WEEK)


def test_cascade_is_transitive_and_stops_on_cycles() -> None:
    d = {n: "sha256:" + n * 64 for n in "123459"}
    parent = facts(name="p", digest=d["1"])
    child = facts(name="c", digest=d["2"], recorded_base_digest=d["1"])
    grandchild = facts(name="g", digest=d["3"], recorded_base_digest=d["2"])
    unrelated = facts(name="u", digest=d["4"], recorded_base_digest=d["9"])
    loop = facts(name="l", digest=d["1"], recorded_base_digest=d["3"])  # same digest as root
    found = cascade(d["1"], [grandchild, unrelated, child, parent, loop])
    assert [(f.name, via) for f, via in found] == [("c", d["1"]), ("g", d["2"])]
    assert cascade(d["5"], [parent, child]) == []


# ---- the content cache the facts come through (harden.inventory) ----------------------------------
def test_content_cache_survives_corruption_and_checks_digests(tmp_path: Path) -> None:
    import hashlib

    from harden.inventory import ContentCache

    data = b"config bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / "inventory.db"
    cache = ContentCache(path)
    cache.put(digest, data)
    cache.put("sha256:" + "0" * 64, b"lies about its digest")
    assert cache.get(digest) == data
    assert cache.get("sha256:" + "0" * 64) is None  # checked on read, dropped
    cache.close()
    assert ContentCache(path).get(digest) == data  # persisted
    path.write_bytes(b"garbage" * 1000)
    rebuilt = ContentCache(path)
    assert rebuilt.rebuilt and rebuilt.get(digest) is None
    rebuilt.put(digest, data)
    assert rebuilt.get(digest) == data


def test_pending_security_fixes_make_an_image_outdated_with_the_packages() -> None:
    from harden.debian.pending import PendingUpdate
    from harden.lifecycle import ImageFacts, State, Verification, assess

    clock = FixedClock(dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    base = ImageFacts(
        name="web",
        definition="images/web.yaml",
        destination="127.0.0.1:5000/golden/web:12",
        max_age=dt.timedelta(days=30),
        digest="sha256:" + "1" * 64,
        verification=Verification(
            verified_at=dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
            valid_until=dt.datetime(2027, 1, 30, tzinfo=dt.UTC),
            compliant=True,
            baseline_digest="sha256:" + "2" * 64,
        ),
    )
    fixes = (
        PendingUpdate("libc6", "2.36-9", "2.36-9+deb12u9", "bookworm-security", "glibc"),
        PendingUpdate("tzdata", "2024a", "2024b", "bookworm-updates", "tzdata"),
        PendingUpdate("zlib1g", "1:1.2.13", "1:1.2.13+deb12u1", "bookworm-security", "zlib"),
    )
    assert assess(base, clock, dt.timedelta(days=1)).state is State.FRESH
    status = assess(dataclasses.replace(base, pending_updates=fixes), clock, dt.timedelta(days=1))
    assert status.state is State.OUTDATED
    assert status.label == "outdated (security: 2 packages)"
    assert "security fix pending: libc6 2.36-9 -> 2.36-9+deb12u9 (bookworm-security)" in (
        status.reasons
    )
    assert not any("tzdata" in r for r in status.reasons)  # not a security fix
    assert status.needs_rebuild
    assert [u["package"] for u in status.to_json()["pending_updates"]] == [
        "libc6",
        "tzdata",
        "zlib1g",
    ]


def test_production_serving_a_revoked_digest_is_its_own_state_and_exits_1() -> None:
    clock = FixedClock(T0)
    serving = "production 127.0.0.1:5000/prod/app:1 still serves sha256:dd..., revoked"
    s = assess(facts(production_problems=(serving,)), clock, WEEK)
    assert s.state is State.SERVING_REVOKED and s.label == "serving-revoked"
    assert s.reasons[0] == serving
    assert not s.needs_rebuild  # the staging image is fresh: re-promote, do not rebuild
    assert exit_code([s]) is ExitCode.POLICY
    assert s.to_json()["production_problems"] == [serving]
    stale_too = assess(facts(production_problems=(serving,), verification=None), clock, WEEK)
    assert stale_too.state is State.SERVING_REVOKED and stale_too.needs_rebuild
