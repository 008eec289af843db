"""`harden rebuild [DIR]` (the cron job) and `harden plan [DIR]` (the same plan as a CI matrix)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.cli.common import (
    baselines_option,
    catalogue,
    dump_json,
    emit,
    output_option,
    plain_table,
    progress,
)
from harden.cli.status_cmd import (
    DEFAULT_DIR,
    cli_clock,
    gather,
    load_definitions,
    load_trusted,
    make_inventory,
    tracked,
)
from harden.errors import ExitCode

if TYPE_CHECKING:
    from harden.attest.keys import PublicKey, Signer
    from harden.clock import Clock
    from harden.imagedef import ImageDefinition
    from harden.inventory import Inventory
    from harden.rebuild import Plan

DEFAULT_BUILD_ARGS = '--key "$HARDEN_SIGNING_KEY"'

directory_argument = click.argument(
    "directory", required=False, default=DEFAULT_DIR, type=click.Path(path_type=Path)
)


def _plan(
    defs: list[ImageDefinition],
    baseline_dirs: tuple[Path, ...],
    trusted: list[PublicKey],
    clock: Clock,
    everything: bool,
    jobs: int,
) -> tuple[Plan, Inventory]:
    from harden.rebuild import plan_rebuild

    inventory = make_inventory(baseline_dirs, trusted, clock, jobs)
    statuses = [] if everything else gather(defs, inventory, dt.timedelta(0))
    return plan_rebuild(defs, statuses, everything=everything), inventory


@click.command()
@directory_argument
@click.option(
    "--stale", is_flag=True, help="Rebuild the images that need it (the default; for cron)."
)
@click.option("--all", "everything", is_flag=True, help="Rebuild every image, needed or not.")
@click.option("--jobs", "-j", default=2, show_default=True, type=click.IntRange(1, 32))
@click.option("--dry-run", is_flag=True, help="Show what would be rebuilt, build nothing.")
@click.option(
    "--key",
    "key_uri",
    default=None,
    help="Sign the rebuilt images' attestations with this key (file:PATH); its public key is "
    "also trusted when deciding what needs a rebuild.",
)
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another trusted public key for reading existing attestations (repeatable).",
)
@click.option(
    "--lock-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for another rebuild of the same image.",
)
@baselines_option
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@output_option
def rebuild(
    directory: Path,
    stale: bool,
    everything: bool,
    jobs: int,
    dry_run: bool,
    key_uri: str | None,
    trust: tuple[Path, ...],
    lock_timeout: float,
    baseline_dirs: tuple[Path, ...],
    fmt: str,
    output: Path | None,
) -> None:
    """Rebuild the golden images that need it: stale, outdated, revoked or missing (exactly what
    `harden status` says), and the images built on them; parents first, --jobs at a time.

    Each build is `harden build --force` (with --key: signed and attached). A lock per image
    under $HARDEN_HOME/locks keeps two runs off the same image. Every rebuild is audited with
    its reason. Exit 0 all rebuilt (or nothing to do), 1 a build failed, 4 a registry could not
    be asked.
    """
    from harden.audit import AuditLog
    from harden.errors import UsageError
    from harden.lifecycle import assess
    from harden.paths import harden_home
    from harden.rebuild import Outcome, PlannedBuild, run_plan, summary_rows

    if stale and everything:
        raise UsageError("--stale and --all exclude each other")
    clock = cli_clock()
    signer = _signer(key_uri)
    trusted = load_trusted(trust)
    if signer is not None:
        from harden.attest.keys import signer_public_key

        trusted.append(signer_public_key(signer))
    elif not dry_run:
        progress("warning: no --key: the rebuilt images carry no attestations (status: stale)")
    defs = tracked(load_definitions(directory), vms=True)
    by_name = {d.name: d for d in defs}
    plan, inv = _plan(defs, baseline_dirs, trusted, clock, everything, jobs=8)
    for name in plan.unknown:
        progress(f"{name}: state unknown (registry unreachable): not rebuilt")
    cat = catalogue(baseline_dirs)

    def build_one(b: PlannedBuild) -> str | None:
        from builder.container_build import build_container
        from builder.docker_engine import Engine
        from harden.errors import HardenError

        defn = by_name[b.name]
        if defn.doc.target.value == "vm":
            return _rebuild_vm(defn, b.name)
        result = build_container(
            defn,
            cat,
            Engine.connect(),
            clock,
            force=True,
            progress=lambda m: progress(f"[{b.name}] {m}"),
        )
        if not result.compliant or result.digest is None:
            raise HardenError(
                f"{b.name}: the rebuilt image is not compliant: not pushed",
                hint=f"run `harden build {defn.path}` to see the failing rules",
            )
        if signer is not None:
            from harden.publish import attach_build_attestations

            attached = attach_build_attestations(result, defn, defn.path, signer, clock)
            progress(f"[{b.name}] attached {len(attached)} signed attestation(s)")
        return result.digest

    def _rebuild_vm(defn: Any, name: str) -> str | None:
        """A VM template: build and seal it again, sign, push the artifact (as `harden build`)."""
        from builder.vm_build import build_vm
        from harden.errors import HardenError
        from harden.publish import publish_vm

        result = build_vm(
            defn, cat, clock, force=True, progress=lambda m: progress(f"[{name}] {m}")
        )
        if not result.compliant or not result.written:
            raise HardenError(
                f"{name}: the rebuilt template is not compliant: not written, not pushed",
                hint=f"run `harden build {defn.path}` to see the failing rules",
            )
        return publish_vm(
            result, defn, signer, defn.doc.destination, clock=clock, progress=progress
        )

    def recheck(b: PlannedBuild) -> str | None:
        facts = inv.facts([by_name[b.name]])
        status = assess(facts[0], clock, dt.timedelta(0))
        return status.label if status.needs_rebuild or status.state.value == "unknown" else None

    outcomes = run_plan(
        plan,
        build_one,
        jobs=jobs,
        lock_dir=harden_home() / "locks",
        lock_timeout=lock_timeout,
        audit=AuditLog.default(clock),
        clock=clock,
        recheck=None if everything else recheck,
        dry_run=dry_run,
        progress=progress,
    )
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "dry_run": dry_run,
            "plan": plan.to_json(),
            "outcomes": [o.to_json() for o in outcomes],
        }
        emit(dump_json(doc), output)
    elif outcomes:
        headers = ["IMAGE", "OUTCOME", "REASON", "DIGEST", "DETAIL", "TIME"]
        emit(plain_table(headers, summary_rows(outcomes)), output)
    else:
        emit("nothing to rebuild", output)
    failed = [o for o in outcomes if o.outcome is Outcome.FAILED]
    rebuilt = [o for o in outcomes if o.outcome is Outcome.REBUILT]
    progress(f"{len(rebuilt)} rebuilt, {len(failed)} failed, {len(outcomes)} planned")
    if failed:
        raise click.exceptions.Exit(int(ExitCode.POLICY))
    if plan.unknown:
        raise click.exceptions.Exit(int(ExitCode.ENVIRONMENT))


@click.command()
@directory_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "github-matrix", "gitlab"]),
    default="json",
    show_default=True,
)
@click.option("--all", "everything", is_flag=True, help="Plan every image, needed or not.")
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted public key (repeatable), as for `harden status`.",
)
@click.option(
    "--build-args",
    default=DEFAULT_BUILD_ARGS,
    show_default=True,
    help="Extra arguments of `harden build` in the GitLab jobs.",
)
@baselines_option
@output_option
def plan(
    directory: Path,
    fmt: str,
    everything: bool,
    keys: tuple[Path, ...],
    build_args: str,
    baseline_dirs: tuple[Path, ...],
    output: Path | None,
) -> None:
    """The images to rebuild, in dependency waves, as a CI build matrix.

    \b
    json           {"schema_version": 1, "waves": [[{name, definition, reason, command}]]}
    github-matrix  lines for $GITHUB_OUTPUT: waves=N, wave0={"include": [...]}, wave1=...
    gitlab         a child pipeline: one stage per wave, parallel:matrix over DEFINITION
    Exit 0 (a plan, maybe empty), 4 a registry could not be asked.
    """
    from harden.rebuild import PlanFormat, render_plan

    clock = cli_clock()
    defs = tracked(load_definitions(directory), vms=True)
    the_plan, _ = _plan(defs, baseline_dirs, load_trusted(keys), clock, everything, jobs=8)
    emit(render_plan(the_plan, PlanFormat(fmt), build_args), output)
    progress(
        f"{len(the_plan.builds)} image(s) to rebuild in {len(the_plan.waves)} wave(s)"
        + (f"; unknown: {', '.join(the_plan.unknown)}" if the_plan.unknown else "")
    )
    if the_plan.unknown:
        raise click.exceptions.Exit(int(ExitCode.ENVIRONMENT))


def _signer(key_uri: str | None) -> Signer | None:
    if key_uri is None:
        return None
    from harden.cli.attest_cmd import load_signer_from_uri

    return load_signer_from_uri(key_uri)
