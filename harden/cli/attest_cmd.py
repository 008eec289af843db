"""`harden attest REF` (verify now, sign, attach) and `harden attestation list|verify REF`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.cli.common import (
    allow_unencrypted_option,
    baselines_option,
    catalogue,
    complete_baseline_ids,
    complete_definitions,
    compliance_state,
    context,
    dump_json,
    duration,
    emit,
    load_signer_from_uri,
    load_trusted,
    output_option,
    plain_table,
    progress,
    trusted_keys_option,
)
from harden.errors import ExitCode

if TYPE_CHECKING:
    from harden.attest.predicates import Statement


def _table(rows: list[list[str]]) -> str:
    return plain_table(["REFERRER", "PREDICATE TYPE", "RESULT"], rows)


@click.command()
@click.argument("ref")
@click.option("--key", "key_uri", required=True, help="Signing key URI: file:PATH or a path.")
@click.option(
    "--definition",
    shell_complete=complete_definitions,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The image definition: its baseline (with parameters and waivers), max_age as the "
    "validity, and SLSA provenance (base from the image's OCI base annotations).",
)
@click.option(
    "--baseline",
    "baseline_id",
    default=None,
    shell_complete=complete_baseline_ids,
    help="Baseline id (without --definition).",
)
@baselines_option
@click.option(
    "--valid-for",
    default=None,
    callback=duration,
    help="Validity window, e.g. 12h, 30d, 4w (default: max_age or 30d).",
)
@allow_unencrypted_option
def attest(
    allow_unencrypted: bool,
    ref: str,
    key_uri: str,
    definition: Path | None,
    baseline_id: str | None,
    baseline_dirs: tuple[Path, ...],
    valid_for: dt.timedelta | None,
) -> None:
    """Verify the registry image REF now, sign the result and attach it as referrers.

    REF is resolved to its digest; that exact digest is pulled and verified. Signed and
    attached: test-result and compliance (validUntil = now + validity), and SLSA provenance
    with --definition. The image itself is never rewritten. Exit 0 attached (whatever the
    verification found: a FAILED result is attested too), 3 bad input, 4 registry/key problems.
    """
    from harden.app.attest import attest as run_attest
    from harden.imagedef import load_definition

    signer = load_signer_from_uri(
        key_uri, allow_unencrypted=allow_unencrypted
    )  # a bad key fails before any work
    defn = load_definition(definition) if definition else None
    done = run_attest(
        ref,
        signer,
        catalogue(baseline_dirs),
        context(),
        definition=defn,
        baseline_id=baseline_id,
        validity=valid_for,
    )
    state = compliance_state(done.compliant)
    emit(_table([[a.referrer, a.predicate_type, state] for a in done.attached]), None)


@click.group()
def attestation() -> None:
    """List and verify the attestations stored as referrers of an image."""


@attestation.command("list")
@click.argument("ref")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@output_option
def list_cmd(ref: str, fmt: str, output: Path | None) -> None:
    """List the attestation referrers of REF (nothing is verified; see `verify`)."""
    from harden.app.attest import list_attestations
    from harden.attest.statements import PREDICATE_TYPE_ANNOTATION
    from harden.labels import CREATED

    listed = list_attestations(ref, context())
    digest, found = listed.digest, listed.referrers
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "image": ref,
            "digest": digest,
            "attestations": [d.to_json() for d in found],
        }
        emit(dump_json(doc), output)
        return
    rows = [
        [
            d.digest,
            d.artifact_type or "",
            d.annotations.get(PREDICATE_TYPE_ANNOTATION, ""),
            d.annotations.get(CREATED, ""),
        ]
        for d in found
    ]
    emit(
        plain_table(["REFERRER", "ARTIFACT TYPE", "PREDICATE TYPE (unverified)", "CREATED"], rows),
        output,
    )
    progress(f"{len(found)} attestation(s) refer to {digest}")


def _summary(statement: Statement) -> str:
    from harden.attest.predicates import (
        HARDEN_COMPLIANCE,
        HARDEN_REVOCATION,
        SLSA_PROVENANCE,
        TEST_RESULT,
    )
    from harden.errors import AttestationError
    from harden.results import rfc3339

    kind = statement.predicateType
    try:
        if kind == HARDEN_COMPLIANCE:
            c = statement.compliance()
            state = compliance_state(c.compliant)
            return f"{state}, verified {rfc3339(c.verifiedAt)}, valid until {rfc3339(c.validUntil)}"
        if kind == TEST_RESULT:
            t = statement.test_result()
            return f"{t.result} ({len(t.passedTests)} passed, {len(t.failedTests)} failed)"
        if kind == SLSA_PROVENANCE:
            p = statement.provenance()
            base = p.dependency("base-image")
            return f"built by {p.runDetails.builder.id}" + (f" from {base.uri}" if base else "")
        if kind == HARDEN_REVOCATION:
            r = statement.revocation()
            return f"REVOKED by {r.revokedBy}: {r.reason}"
    except AttestationError as e:
        return f"malformed: {e.message}"
    return "unknown predicate type"


@attestation.command("verify")
@click.argument("ref")
@trusted_keys_option("Trusted public key (PEM); repeatable.", required=True)
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@output_option
def verify_cmd(ref: str, keys: tuple[Path, ...], fmt: str, output: Path | None) -> None:
    """Verify the signatures of REF's attestations with the public key(s).

    Prints each attestation's predicate type and result. Exit 0 when at least one attestation
    for REF's digest verifies, 1 when none does, 4 for registry or key problems.
    """
    from harden.app.attest import verify_attestations

    checked = verify_attestations(ref, load_trusted(keys), context())
    digest = checked.digest
    rows: list[dict[str, Any]] = []
    for a in checked.attestations:
        if a.verified is not None:
            rows.append(
                {
                    "referrer": a.referrer,
                    "verified": True,
                    "keyid": a.verified.keyid,
                    "predicate_type": a.verified.statement.predicateType,
                    "result": _summary(a.verified.statement),
                }
            )
            continue
        assert a.problem is not None
        row: dict[str, Any] = {"referrer": a.referrer, "verified": False}
        if a.problem.predicate_type is not None:
            row["predicate_type"] = a.problem.predicate_type
        row["error"] = a.problem.message
        rows.append(row)
    ok = sum(1 for r in rows if r["verified"])
    if fmt == "json":
        emit(
            dump_json(
                {
                    "schema_version": 1,
                    "image": ref,
                    "digest": digest,
                    "verified": ok,
                    "attestations": rows,
                }
            ),
            output,
        )
    else:
        table = [
            [
                r["referrer"],
                r.get("predicate_type", "?"),
                r["result"] if r["verified"] else f"NOT VERIFIED: {r['error']}",
            ]
            for r in rows
        ]
        emit(_table(table), output)
    progress(f"{ok} of {len(rows)} attestation(s) of {digest} verified")
    if ok == 0:
        raise click.exceptions.Exit(int(ExitCode.POLICY))
