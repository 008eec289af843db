"""The signed revocation list of a registry (`harden revocations init|refresh|show`).

The list itself (signing, versions, rollback protection) is :mod:`harden.attest.revlist`; the
gate's acceptance check is :class:`harden.gate.RevocationListCurrent`. These use cases pick the
list's location and registry client from the context and return typed results."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from harden.app.context import Context
from harden.attest.keys import PublicKey, Signer
from harden.gate import RevocationListView

__all__ = ["ListShown", "ListWritten", "init", "refresh", "show"]


@dataclass(frozen=True)
class ListWritten:
    location: str  # registry/repository:tag of the list
    version: int  # the version now current


@dataclass(frozen=True)
class ListShown:
    view: RevocationListView
    problems: tuple[str, ...]  # why the gate would not accept it (empty: accepted)

    @property
    def accepted(self) -> bool:
        return not self.problems


def init(registry: str, signer: Signer, ctx: Context, *, valid_for: dt.timedelta) -> ListWritten:
    """Create the (empty) list of ``registry`` (host[:port]); refuses when one exists."""
    from harden.attest import revlist

    location = revlist.location_for(registry)
    version = revlist.init(ctx.client(location), location, signer, ctx.clock.now(), valid_for)
    ctx.progress(f"revocation list {location} created (version {version})")
    return ListWritten(str(location), version)


def refresh(registry: str, signer: Signer, ctx: Context, *, valid_for: dt.timedelta) -> ListWritten:
    """Re-sign the current entries of ``registry``'s list as its next version."""
    from harden.attest import revlist

    location = revlist.location_for(registry)
    version = revlist.refresh(ctx.client(location), location, signer, ctx.clock.now(), valid_for)
    ctx.progress(f"revocation list {location} re-signed (version {version})")
    return ListWritten(str(location), version)


def show(registry: str, trusted: Sequence[PublicKey], ctx: Context) -> ListShown:
    """``registry``'s list as the gate reads it, and why the gate would not accept it."""
    from harden.attest import revlist
    from harden.gate import Evidence, RevocationListCurrent

    location = revlist.location_for(registry)
    view = revlist.fetch(ctx.client(location), location, trusted)
    problems = RevocationListCurrent().check(Evidence("", [], [], [], ctx.clock.now(), view))
    return ListShown(view, tuple(problems))
