"""`harden attest REF` (verify now, sign, attach) and `harden attestation list|verify REF`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.cli.common import (
    baselines_option,
    catalogue,
    dump_json,
    duration,
    emit,
    plain_table,
    progress,
)
from harden.clock import SystemClock
from harden.publish import attach_signed, build_info, sign_for_report

if TYPE_CHECKING:
    from harden.attest.keys import Signer

DEFAULT_VALIDITY = dt.timedelta(days=30)
LABEL_BASE_NAME = "org.opencontainers.image.base.name"
LABEL_BASE_DIGEST = "org.opencontainers.image.base.digest"


def load_signer_from_uri(uri: str) -> Signer:
    """The signer for ``--key URI``; the password from $HARDEN_KEY_PASSWORD or a prompt."""
    from harden.attest import keys

    def prompt() -> str:
        value: str = click.prompt("Key password", hide_input=True, err=True)
        return value

    return keys.load_signer(uri, keys.password_from_env_or_prompt(prompt))


def _table(rows: list[list[str]]) -> str:
    return plain_table(["REFERRER", "PREDICATE TYPE", "RESULT"], rows)


@click.command()
@click.argument("ref")
@click.option("--key", "key_uri", required=True, help="Signing key URI: file:PATH or a path.")
@click.option(
    "--definition",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The image definition: its baseline (with parameters and waivers), max_age as the "
    "validity, and SLSA provenance (base from the image's OCI base annotations).",
)
@click.option("--baseline", "baseline_id", default=None, help="Baseline id (without --definition).")
@baselines_option
@click.option(
    "--valid-for",
    default=None,
    callback=duration,
    help="Validity window, e.g. 12h, 30d, 4w (default: max_age or 30d).",
)
def attest(
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
    from harden.audit import AuditAction, AuditLog
    from harden.baseline.resolve import resolve as resolve_baseline
    from harden.imagedef import load_definition
    from harden.oci import RegistryClient, parse_reference, resolve
    from verifiers.refs import DEFAULT_BASELINE, OPENERS
    from verifiers.runner import verify

    signer = load_signer_from_uri(key_uri)  # a bad key fails before any work
    defn = load_definition(definition) if definition else None
    validity = valid_for if valid_for else defn.max_age if defn else DEFAULT_VALIDITY
    cat = catalogue(baseline_dirs)
    reference = parse_reference(ref)
    client = RegistryClient.for_reference(reference)
    manifest = resolve(client, reference)
    digest = manifest.digest
    pinned = f"{reference.registry}/{reference.repository}@{digest}"
    clock = SystemClock()
    progress(f"verifying {pinned}")
    with OPENERS["docker-image"](pinned) as opened:
        if defn is not None:
            baseline = defn.resolve_baseline(cat)
        else:
            bid = baseline_id or opened.recorded_baseline or DEFAULT_BASELINE[opened.target.kind]
            baseline = resolve_baseline(cat, bid)
        labels = (opened.target.image_config() or {}).get("Labels") or {}
        report = verify(opened.target, baseline, clock, image=pinned, digest=digest)
    build = None
    if defn is not None:
        from harden.attest.statements import BUILD_TYPE_CONTAINER

        base_name = str(labels.get(LABEL_BASE_NAME) or defn.doc.base or "")
        base_digest = str(labels.get(LABEL_BASE_DIGEST) or "")
        if base_name and base_digest.startswith("sha256:"):
            build = build_info(
                build_type=BUILD_TYPE_CONTAINER,
                definition={"name": defn.name, "path": str(definition), "sha256": defn.sha256},
                base_name=base_name,
                base_digest=base_digest,
                baseline=baseline,
                started=report.started_at,
                finished=report.finished_at,
            )
        else:
            progress("no provenance: the image carries no org.opencontainers.image.base.* labels")
    else:
        progress("no provenance signed (pass --definition for SLSA provenance)")
    signed = sign_for_report(
        report,
        f"{reference.registry}/{reference.repository}",
        digest,
        signer,
        verified_at=report.finished_at,
        validity=validity,
        waivers=baseline.waivers,
        build=build,
    )
    attached = attach_signed(client, reference.repository, manifest.descriptor(), signed, clock)
    if not report.compliant:  # a failure must not be hidden by dropping it from the index
        from harden.attest.revlist import record_failed_verification

        record_failed_verification(client, signer, digest, reference.repository, report)
    AuditLog.default(clock).append(
        AuditAction.ATTEST,
        ref,
        digest,
        "compliant" if report.compliant else "not compliant",
        {"referrers": [d.digest for d in attached], "baseline": baseline.id},
    )
    rows = [
        [d.digest, s.predicate_type, "compliant" if report.compliant else "NOT compliant"]
        for d, s in zip(attached, signed, strict=True)
    ]
    emit(_table(rows), None)
    progress(f"attached {len(attached)} attestation(s) to {pinned}")


@click.group()
def attestation() -> None:
    """List and verify the attestations stored as referrers of an image."""


@attestation.command("list")
@click.argument("ref")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def list_cmd(ref: str, fmt: str) -> None:
    """List the attestation referrers of REF (nothing is verified; see `verify`)."""
    from harden.attest.statements import PREDICATE_TYPE_ANNOTATION
    from harden.attest.store import list_attestations
    from harden.oci import RegistryClient, parse_reference, resolve
    from harden.oci.model import CREATED_ANNOTATION

    reference = parse_reference(ref)
    client = RegistryClient.for_reference(reference)
    digest = resolve(client, reference).digest
    found = list_attestations(client, reference.repository, digest)
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "image": ref,
            "digest": digest,
            "attestations": [d.to_json() for d in found],
        }
        emit(dump_json(doc), None)
        return
    rows = [
        [
            d.digest,
            d.artifact_type or "",
            d.annotations.get(PREDICATE_TYPE_ANNOTATION, ""),
            d.annotations.get(CREATED_ANNOTATION, ""),
        ]
        for d in found
    ]
    emit(
        plain_table(["REFERRER", "ARTIFACT TYPE", "PREDICATE TYPE (unverified)", "CREATED"], rows),
        None,
    )
    progress(f"{len(found)} attestation(s) refer to {digest}")


def _summary(statement: Any) -> str:
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
            state = "compliant" if c.compliant else "NOT compliant"
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
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted public key (PEM); repeatable.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def verify_cmd(ref: str, keys: tuple[Path, ...], fmt: str) -> None:
    """Verify the signatures of REF's attestations with the public key(s).

    Prints each attestation's predicate type and result. Exit 0 when at least one attestation
    for REF's digest verifies, 1 when none does, 4 for registry or key problems.
    """
    from harden.attest.dsse import verify
    from harden.attest.keys import load_public_key
    from harden.attest.store import fetch_envelopes
    from harden.errors import AttestationError
    from harden.oci import RegistryClient, parse_reference, resolve

    trusted = [load_public_key(k) for k in keys]
    reference = parse_reference(ref)
    client = RegistryClient.for_reference(reference)
    digest = resolve(client, reference).digest
    fetched = fetch_envelopes(client, reference.repository, digest)
    rows: list[dict[str, Any]] = []
    for label, envelope in fetched.envelopes:
        referrer = label.removeprefix("referrer ")
        try:
            v = verify(envelope, trusted)
        except AttestationError as e:
            rows.append({"referrer": referrer, "verified": False, "error": e.message})
            continue
        if not v.statement.matches(digest):
            rows.append(
                {
                    "referrer": referrer,
                    "verified": False,
                    "predicate_type": v.statement.predicateType,
                    "error": "signed, but for another image: "
                    + ", ".join(sorted(v.statement.subject_digests)),
                }
            )
            continue
        rows.append(
            {
                "referrer": referrer,
                "verified": True,
                "keyid": v.keyid,
                "predicate_type": v.statement.predicateType,
                "result": _summary(v.statement),
            }
        )
    for problem in fetched.problems:
        referrer, _, why = problem.removeprefix("referrer ").partition(": ")
        rows.append({"referrer": referrer, "verified": False, "error": why})
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
            None,
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
        emit(_table(table), None)
    progress(f"{ok} of {len(rows)} attestation(s) of {digest} verified")
    if ok == 0:
        raise click.exceptions.Exit(1)
