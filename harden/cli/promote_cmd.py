"""`harden promote SRC DST`: the registry promotion gate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from harden.cli.common import (
    complete_baseline_ids,
    context,
    dump_json,
    duration,
    emit,
    load_trusted,
    output_option,
    plain_table,
    progress,
    trusted_keys_option,
)
from harden.errors import ExitCode

if TYPE_CHECKING:
    from harden.promote import PromoteResult


@click.command()
@click.argument("src")
@click.argument("dst")
@trusted_keys_option(
    "Trusted public key (PEM, from `harden keygen`); repeatable, every key is tried.", required=True
)
@click.option(
    "--max-age",
    default="30d",
    show_default=True,
    callback=duration,
    help="Deny when the latest verification is older than this (12h, 30d, 4w).",
)
@click.option(
    "--baseline",
    "baselines",
    shell_complete=complete_baseline_ids,
    multiple=True,
    help="Allowed baseline id (or id@version); repeatable. Default: any baseline.",
)
@click.option(
    "--min-scan-score",
    type=click.FloatRange(0, 100),
    default=None,
    help="Also require a signed OpenSCAP scan attestation (harden build --scan) whose score "
    "is at least this (0-100); no scan attestation denies.",
)
@click.option("--dry-run", is_flag=True, help="Decide (and audit the decision) but copy nothing.")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "json", "junit", "sarif"]),
    default="table",
    show_default=True,
    help="junit: one testcase per gate policy (a denial fails the policies that denied); "
    "sarif: one result per policy that denied, located at the source image (oci://SRC).",
)
@output_option
def promote(
    src: str,
    dst: str,
    keys: tuple[Path, ...],
    max_age: object,
    baselines: tuple[str, ...],
    min_scan_score: float | None,
    dry_run: bool,
    fmt: str,
    output: Path | None,
) -> None:
    """Promote SRC to DST by digest when its attestations pass the gate.

    SRC is resolved to a digest; every attestation referring to that digest is verified with
    the trusted keys. All must hold: signed by a trusted key, subject = SRC digest, known
    predicate type, result PASSED (or failures only under unexpired waivers), verified within
    --max-age and validUntil ahead, an allowed baseline, not revoked. Then the image is copied
    by digest (identical manifest bytes, attestations along, the tag last). Every decision is
    written to the audit log. Exit 0 promoted (or allowed with --dry-run), 1 denied (every
    reason is listed), 2 usage, 3 malformed input, 4 registry or key problems.
    """
    import datetime as dt

    from harden.app.promote import promote as run_promote

    assert max_age is None or isinstance(max_age, dt.timedelta)
    result = run_promote(
        src,
        dst,
        load_trusted(keys),
        context(),
        max_age=max_age,
        baselines=baselines,
        min_scan_score=min_scan_score,
        dry_run=dry_run,
    )
    if fmt == "json":
        emit(dump_json(result.to_json()), output)
    elif fmt == "junit":
        emit(junit_xml(result), output)
    elif fmt == "sarif":
        emit(sarif(result), output)
    else:
        rows = [["src", result.src], ["dst", result.dst], ["digest", result.digest]]
        rows.append(["attestations", f"{result.attestations} found, {result.verified} verified"])
        rows.append(["decision", "ALLOWED" if result.allowed else "DENIED"])
        rows += [["reason", r] for r in result.decision.reasons]
        listed = "\n".join(result.decision.reasons)
        rows += [["rejected", r] for r in result.rejected if r not in listed]
        emit(plain_table(["FIELD", "VALUE"], rows), output)
    if not result.allowed:
        progress(f"DENIED: {result.src} ({result.digest}) is not promoted to {result.dst}")
        if fmt != "table":
            for reason in result.decision.reasons:
                progress(f"  - {reason}")
        raise click.exceptions.Exit(int(ExitCode.POLICY))
    if result.copied:
        progress(f"promoted {result.src} -> {result.dst} ({result.digest})")
    else:
        progress(f"allowed (dry run, nothing copied): {result.src} ({result.digest})")


def _failed_policies(result: PromoteResult) -> tuple[list[str], dict[str, list[str]]]:
    """The gate's policies and, per policy, the reasons it denied (a reason no policy claims is
    the policy "gate": never silently dropped)."""
    policies = list(result.decision.policies)
    failed: dict[str, list[str]] = {p: [] for p in policies}
    for reason in result.decision.reasons:
        name, sep, text = reason.partition(": ")
        if sep and name in failed:
            failed[name].append(text)
        else:  # a reason no policy claims: its own testcase, never silently dropped
            failed.setdefault("gate", []).append(reason)
            if "gate" not in policies:
                policies.append("gate")
    if not policies:
        policies = ["gate"]
        failed["gate"] = [] if result.allowed else ["denied"]
    return policies, failed


def sarif(result: PromoteResult) -> str:
    """The gate decision as SARIF: one result per policy that denied, at oci://SRC@DIGEST."""
    from harden.report.cases import Case, cases_sarif

    policies, failed = _failed_policies(result)
    subject = f"{result.src}@{result.digest}" if result.digest else result.src
    cases = [
        Case(p, tuple(failed[p]), failure_type=p, location=f"oci://{subject}", subject=subject)
        for p in policies
    ]
    return cases_sarif(
        "harden/promote/",
        cases,
        rule_help={p: f"The promotion gate's policy {p} denied {result.src}." for p in policies},
        properties={"src": result.src, "dst": result.dst, "allowed": result.allowed},
    )


def junit_xml(result: PromoteResult) -> str:
    """The gate decision as JUnit XML: one testcase per policy, its reasons as the failure."""
    from harden.report.cases import Case, cases_junit

    policies, failed = _failed_policies(result)
    return cases_junit(
        "harden promote",
        f"harden.promote {result.src} -> {result.dst}",
        "harden.promote.gate",
        [Case(p, tuple(failed[p]), failure_type="denied") for p in policies],
        properties={
            "digest": result.digest,
            "allowed": str(result.allowed).lower(),
            "attestations": str(result.attestations),
            "verified": str(result.verified),
        },
        system_out=["rejected: " + r for r in result.rejected],
    )
