"""`harden rebuild [DIR]` (the cron job) and `harden plan [DIR]` (the same plan as a CI matrix)."""

from __future__ import annotations

from pathlib import Path

import click

from harden.cli.common import (
    DEFAULT_DIR,
    allow_unencrypted_option,
    baselines_option,
    catalogue,
    context,
    dump_json,
    emit,
    load_signer_from_uri,
    load_trusted,
    output_option,
    plain_table,
    progress,
    trusted_keys_option,
)
from harden.errors import ExitCode

DEFAULT_BUILD_ARGS = '--key "$HARDEN_SIGNING_KEY"'

directory_argument = click.argument(
    "directory", required=False, default=DEFAULT_DIR, type=click.Path(path_type=Path)
)


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
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@output_option
@allow_unencrypted_option
def rebuild(
    allow_unencrypted: bool,
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
    from harden.app.status import rebuild as run_rebuild
    from harden.errors import UsageError
    from harden.rebuild import Outcome, summary_rows

    if stale and everything:
        raise UsageError("--stale and --all exclude each other")
    ctx = context()
    signer = (
        load_signer_from_uri(key_uri, allow_unencrypted=allow_unencrypted)
        if key_uri is not None
        else None
    )
    done = run_rebuild(
        directory,
        catalogue(baseline_dirs),
        load_trusted(trust),
        ctx,
        signer=signer,
        everything=everything,
        jobs=jobs,
        lock_timeout=lock_timeout,
        dry_run=dry_run,
    )
    plan, outcomes = done.plan, list(done.outcomes)
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
    "-f",
    "fmt",
    type=click.Choice(["json", "github-matrix", "gitlab"]),
    default="json",
    show_default=True,
)
@click.option("--all", "everything", is_flag=True, help="Plan every image, needed or not.")
@trusted_keys_option("Trusted public key (repeatable), as for `harden status`.")
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
    from harden.app.status import plan as make_plan
    from harden.rebuild import PlanFormat, render_plan

    ctx = context()
    the_plan = make_plan(
        directory, catalogue(baseline_dirs), load_trusted(keys), ctx, everything=everything
    )
    emit(render_plan(the_plan, PlanFormat(fmt), build_args), output)
    progress(
        f"{len(the_plan.builds)} image(s) to rebuild in {len(the_plan.waves)} wave(s)"
        + (f"; unknown: {', '.join(the_plan.unknown)}" if the_plan.unknown else "")
    )
    if the_plan.unknown:
        raise click.exceptions.Exit(int(ExitCode.ENVIRONMENT))
