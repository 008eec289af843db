"""`harden evidence [DIR] --output OUTDIR`: the auditor's bundle (index.html + evidence.json)."""

from __future__ import annotations

from pathlib import Path

import click

from harden.cli.common import (
    baselines_option,
    catalogue,
    context,
    load_trusted,
    progress,
    trusted_keys_option,
)


@click.command()
@click.argument(
    "directory",
    required=False,
    default="images",
    type=click.Path(file_okay=False, path_type=Path),
)
@baselines_option
@click.option(
    "--output",
    "-o",
    "outdir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory to write index.html and evidence.json to (replaced atomically).",
)
@click.option("--since", default=None, metavar="DATE", help="History from DATE on (2025-03-01).")
@trusted_keys_option(
    "Trusted public key (PEM); repeatable. Every cited attestation is checked with them."
)
@click.option(
    "--control",
    "controls",
    multiple=True,
    metavar="[FRAMEWORK:]ID",
    help="Only this control (e.g. CLD.9.5.2 or iso27017:CLD.9.5.2); repeatable. "
    "Default: every control, summary for iso27017:CLD.9.5.2.",
)
@click.pass_context
def evidence(
    ctx: click.Context,
    directory: Path,
    baseline_dirs: tuple[Path, ...],
    outdir: Path,
    since: str | None,
    keys: tuple[Path, ...],
    controls: tuple[str, ...],
) -> None:
    """Write an auditor's evidence bundle for the golden images defined in DIRECTORY.

    For each control the baselines name (ISO 27017 CLD.9.5.2 first): the rules implementing
    it; for each golden image (definitions with a destination): its current digest, its last
    signed verification with the attestation digest and key, each attestation's signature
    checked with --key; the build, rebuild, promotion and denial history, the waivers, and the
    audit log's integrity. Exit 0 bundle written, 1 written but an attestation does not verify
    or the audit log is tampered, 3 bad input, 4 registry unreachable.
    """
    from harden.app.evidence import evidence as run_evidence
    from harden.evidence import parse_since

    when = parse_since(since) if since else None
    trusted = load_trusted(keys)
    done = run_evidence(
        directory,
        catalogue(baseline_dirs),
        trusted,
        context(),
        outdir=outdir,
        since=when,
        controls=controls,
    )
    bundle, written = done.bundle, done.directory
    progress(f"wrote {written / 'index.html'} and {written / 'evidence.json'}")
    for row in bundle.summary():
        progress(f"{row['control']}: {len(row['images'])} golden image(s)")
        for i in row["images"]:
            progress(
                f"  {i['image']}: {i['signed_result']}, {i['signature']}, "
                f"last rebuild {i['last_rebuild'] or 'none recorded'}"
            )
    if not bundle.ok:
        for p in bundle.problems:
            progress(f"PROBLEM: {p}")
        ctx.exit(1)
