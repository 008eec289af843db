"""An injected clock: the core never calls datetime.now() itself."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class FixedClock:
    """A clock for tests; ``advance`` moves it forward."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, delta: dt.timedelta) -> None:
        self._now += delta


class ShiftedClock:
    """The system clock moved to start at ``start`` (and running on from there)."""

    def __init__(self, start: dt.datetime, system: Clock | None = None) -> None:
        self._system = system or SystemClock()
        self._offset = start - self._system.now()

    def now(self) -> dt.datetime:
        return self._system.now() + self._offset


NOW_ENV = "HARDEN_NOW"


def clock_from_environment(environ: Mapping[str, str]) -> Clock:
    """SystemClock, or - as a testing aid - one that starts at ``$HARDEN_NOW`` (RFC 3339).

    Every command takes its clock from here, so ``HARDEN_NOW`` moves all of them alike."""
    from harden.errors import UsageError

    text = environ.get(NOW_ENV, "").strip()
    if not text:
        return SystemClock()
    try:
        start = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise UsageError(
            f"{NOW_ENV}={text!r} is not an RFC 3339 time", hint="e.g. 2026-05-01T12:00:00Z"
        ) from e
    if start.tzinfo is None:
        raise UsageError(f"{NOW_ENV}={text!r} has no time zone", hint="end it with Z")
    return ShiftedClock(start.astimezone(dt.UTC))


def parse_utc(text: str) -> dt.datetime:
    """``2025-03-01`` or an RFC 3339 time (``...Z``); a value without a zone is UTC.

    Raises ValueError: callers turn it into the error their input deserves."""
    when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
