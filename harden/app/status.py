"""Freshness of the golden images of a directory of definitions (`harden status`), the rebuild
plan (`harden plan`) and the cron job that carries it out (`harden rebuild`).

The definitions are loaded with the one loader (:func:`harden.imagedef.load_definitions`); the
facts come from the registry through the :class:`~harden.inventory.Inventory`; the states from
:func:`harden.lifecycle.assess`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harden.app.context import Context, default_client
from harden.attest.keys import PublicKey, Signer
from harden.baseline.resolve import Catalogue
from harden.imagedef import ImageDefinition, load_definitions

if TYPE_CHECKING:
    from harden.inventory import Inventory
    from harden.lifecycle import ImageStatus
    from harden.rebuild import BuildOutcome, Plan

__all__ = [
    "Rebuilt",
    "Statuses",
    "make_inventory",
    "plan",
    "rebuild",
    "status",
    "tracked",
    "tracked_definitions",
]


def tracked(
    defs: Sequence[ImageDefinition], ctx: Context, *, vms: bool = False
) -> list[ImageDefinition]:
    """The definitions with a destination: container images, and VM templates with ``vms``.

    ``status``, ``rebuild`` and ``plan`` pass ``vms=True`` (a pushed VM template artifact has the
    same facts as a container image, and rebuild builds either); ``revoke --cascade`` follows
    registry base digests, which a VM template (based on a disk file) does not have."""
    out = []
    for d in defs:
        is_vm = d.doc.target.value == "vm"
        if not d.doc.destination or (is_vm and not vms):
            what = "images" if vms else "container images"
            ctx.progress(f"skipping {d.path}: only {what} with a destination are tracked")
            continue
        out.append(d)
    return out


def tracked_definitions(
    directory: Path, ctx: Context, *, vms: bool = True
) -> list[ImageDefinition]:
    return tracked(load_definitions(directory), ctx, vms=vms)


def make_inventory(
    catalogue: Catalogue, trusted: Sequence[PublicKey], ctx: Context, jobs: int
) -> Inventory:
    from harden.debian.archive import ArchiveReader
    from harden.debian.check import SecurityCheck
    from harden.inventory import Inventory
    from harden.paths import harden_home
    from harden.state.cache import open_cache

    cache = open_cache(harden_home())
    if cache.rebuilt:
        ctx.progress("the local inventory cache was unreadable: rebuilding it from the registry")
    security = SecurityCheck(ArchiveReader(harden_home() / "archive", ctx.clock))
    if ctx.registry is default_client:  # the inventory's own default: one retry, for speed
        return Inventory(catalogue, trusted, ctx.clock, jobs=jobs, cache=cache, security=security)
    return Inventory(
        catalogue,
        trusted,
        ctx.clock,
        jobs=jobs,
        cache=cache,
        client_factory=ctx.registry,
        security=security,
    )


def gather(
    defs: Sequence[ImageDefinition], inventory: Inventory, warn_within: dt.timedelta
) -> list[ImageStatus]:
    from harden.lifecycle import assess

    return [assess(f, inventory.clock, warn_within) for f in inventory.facts(defs)]


@dataclass(frozen=True)
class Statuses:
    checked_at: dt.datetime
    images: tuple[ImageStatus, ...]

    @property
    def exit_code(self) -> int:
        from harden.lifecycle import exit_code

        return int(exit_code(self.images))


def status(
    directory: Path,
    catalogue: Catalogue,
    trusted: Sequence[PublicKey],
    ctx: Context,
    *,
    warn_within: dt.timedelta,
    jobs: int = 8,
) -> Statuses:
    """The state of every tracked image of ``directory`` (fresh, expiring, stale, ...)."""
    defs = tracked_definitions(directory, ctx)
    inventory = make_inventory(catalogue, trusted, ctx, jobs)
    images = tuple(gather(defs, inventory, warn_within))
    return Statuses(ctx.clock.now(), images)


def _plan(
    defs: list[ImageDefinition],
    catalogue: Catalogue,
    trusted: Sequence[PublicKey],
    ctx: Context,
    everything: bool,
    jobs: int,
) -> tuple[Plan, Inventory]:
    from harden.rebuild import plan_rebuild

    inventory = make_inventory(catalogue, trusted, ctx, jobs)
    statuses = [] if everything else gather(defs, inventory, dt.timedelta(0))
    return plan_rebuild(defs, statuses, everything=everything), inventory


def plan(
    directory: Path,
    catalogue: Catalogue,
    trusted: Sequence[PublicKey],
    ctx: Context,
    *,
    everything: bool = False,
) -> Plan:
    """The images to rebuild in dependency waves (exactly what `status` says needs it)."""
    defs = tracked_definitions(directory, ctx)
    the_plan, _ = _plan(defs, catalogue, trusted, ctx, everything, jobs=8)
    return the_plan


@dataclass(frozen=True)
class Rebuilt:
    plan: Plan
    outcomes: tuple[BuildOutcome, ...]

    @property
    def failed(self) -> list[BuildOutcome]:
        return [o for o in self.outcomes if o.failed]


def rebuild(
    directory: Path,
    catalogue: Catalogue,
    trusted: Sequence[PublicKey],
    ctx: Context,
    *,
    signer: Signer | None = None,
    everything: bool = False,
    jobs: int = 2,
    lock_timeout: float = 60.0,
    dry_run: bool = False,
) -> Rebuilt:
    """Rebuild what needs it (or everything), parents first, ``jobs`` at a time; each build is
    :func:`harden.app.build.build` with ``force`` (signed with ``signer``). A lock per image
    under $HARDEN_HOME/locks keeps two runs off the same image; every rebuild is audited."""
    from harden.app.build import build
    from harden.errors import HardenError
    from harden.lifecycle import assess
    from harden.paths import harden_home
    from harden.rebuild import PlannedBuild, run_plan

    trusted = list(trusted)
    if signer is not None:
        from harden.attest.keys import signer_public_key

        trusted.append(signer_public_key(signer))
    elif not dry_run:
        ctx.progress("warning: no --key: the rebuilt images carry no attestations (status: stale)")
    defs = tracked_definitions(directory, ctx)
    by_name = {d.name: d for d in defs}
    the_plan, inv = _plan(defs, catalogue, trusted, ctx, everything, jobs=8)
    for name in the_plan.unknown:
        ctx.progress(f"{name}: state unknown (registry unreachable): not rebuilt")

    def build_one(b: PlannedBuild) -> str | None:
        defn = by_name[b.name]
        built = build(defn, catalogue, ctx.prefixed(f"[{b.name}] "), signer=signer, force=True)
        if built.vm is not None:
            if not built.compliant or not built.vm.written:
                raise HardenError(
                    f"{b.name}: the rebuilt template is not compliant: not written, not pushed",
                    hint=f"run `harden build {defn.path}` to see the failing rules",
                )
            return built.pushed_digest
        assert built.container is not None
        if not built.compliant or built.container.digest is None:
            raise HardenError(
                f"{b.name}: the rebuilt image is not compliant: not pushed",
                hint=f"run `harden build {defn.path}` to see the failing rules",
            )
        if built.attestation_error is not None:
            raise built.attestation_error
        return built.container.digest

    def recheck(b: PlannedBuild) -> str | None:
        facts = inv.facts([by_name[b.name]])
        st = assess(facts[0], ctx.clock, dt.timedelta(0))
        return st.label if st.needs_rebuild or st.state.value == "unknown" else None

    outcomes = run_plan(
        the_plan,
        build_one,
        jobs=jobs,
        lock_dir=harden_home() / "locks",
        lock_timeout=lock_timeout,
        audit=ctx.audit,
        clock=ctx.clock,
        recheck=None if everything else recheck,
        dry_run=dry_run,
        progress=ctx.progress,
    )
    return Rebuilt(the_plan, tuple(outcomes))
