"""Build in-toto Statement v1 attestations and parse them back.

Four predicates:

- SLSA provenance v1: how the image was built (base image, baseline and image definition pinned
  by digest in ``resolvedDependencies``).
- in-toto test-result v0.1: the verification outcome, one rule id per test. ``passed`` rules are
  ``passedTests``; ``waived`` rules are ``warnedTests`` and make the result ``WARNED``; ``failed``
  and ``error`` rules are ``failedTests`` and make it ``FAILED``; ``not_applicable`` rules are in
  none of the lists (the predicate has no place for them; the compliance summary counts them).
- harden compliance v1: what the standard predicates cannot carry: the signed verification time,
  a validity window, the waivers that applied, the controls covered, summary counts.
- harden revocation v1: a signed "do not promote / use this digest any more".

Statements are plain dicts; :func:`serialize` makes the canonical bytes that get signed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harden.attest.predicates import (
    CYCLONEDX_BOM,
    HARDEN_COMPLIANCE,
    HARDEN_OPENSCAP_SCAN,
    HARDEN_REVOCATION,
    OPENVEX,
    SLSA_PROVENANCE,
    STATEMENT_TYPE,
    TEST_RESULT,
    ComplianceV1,
    ProvenanceV1,
    RevocationV1,
    Statement,
    TestResultV01,
    parse_statement,
)
from harden.baseline.model import Waiver
from harden.errors import AttestationError
from harden.results import Status, VerifyReport, rfc3339

__all__ = [
    "ARTIFACT_TYPE_FOR_PREDICATE",
    "BUILD_TYPE_CONTAINER",
    "BUILD_TYPE_VM",
    "CYCLONEDX_BOM",
    "HARDEN_COMPLIANCE",
    "HARDEN_REVOCATION",
    "LEGACY_DSSE_MEDIA_TYPE",
    "MAX_STATEMENT_BYTES",
    "OPENVEX",
    "PREDICATE_TYPE_ANNOTATION",
    "SLSA_PROVENANCE",
    "STATEMENT_TYPE",
    "TEST_RESULT",
    "BuildInfo",
    "ComplianceV1",
    "ProvenanceV1",
    "RevocationV1",
    "Statement",
    "Subject",
    "TestResultV01",
    "artifact_type",
    "compliance",
    "controls_covered",
    "loads_strict",
    "parse",
    "provenance",
    "revocation",
    "sbom",
    "serialize",
    "test_result",
    "vex",
]

# OCI artifactType (and layer mediaType) of one DSSE envelope stored as a referrer, per predicate
# (in-toto: ``application/vnd.in-toto.<predicate>+dsse``; harden's own under vnd.harden)
ARTIFACT_TYPE_FOR_PREDICATE: dict[str, str] = {
    SLSA_PROVENANCE: "application/vnd.in-toto.provenance+dsse",
    TEST_RESULT: "application/vnd.in-toto.test-result+dsse",
    HARDEN_COMPLIANCE: "application/vnd.harden.compliance+dsse",
    HARDEN_REVOCATION: "application/vnd.harden.revocation+dsse",
    HARDEN_OPENSCAP_SCAN: "application/vnd.harden.openscap-scan+dsse",
    CYCLONEDX_BOM: "application/vnd.cyclonedx+dsse",
    OPENVEX: "application/vnd.openvex+dsse",
}
# cosign's legacy label for a DSSE layer; readers accept it too
LEGACY_DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_TYPE_ANNOTATION = "in-toto.io/predicate-type"


def artifact_type(predicate_type: str) -> str:
    """The OCI artifactType for an envelope of ``predicate_type`` (KeyError if unknown)."""
    return ARTIFACT_TYPE_FOR_PREDICATE[predicate_type]


BUILD_TYPE_CONTAINER = "https://harden.dev/buildtypes/container/v1"
BUILD_TYPE_VM = "https://harden.dev/buildtypes/vm/v1"
MAX_STATEMENT_BYTES = 1024 * 1024

_SHA256_REF = re.compile(r"sha256:[0-9a-f]{64}")


def _hex(digest: str, what: str) -> str:
    """``sha256:<hex>`` -> ``<hex>`` (ValueError when it is not one)."""
    if not _SHA256_REF.fullmatch(digest):
        raise ValueError(f"{what} must be sha256:<64 lowercase hex>, got {digest!r}")
    return digest[7:]


@dataclass(frozen=True)
class Subject:
    name: str
    digest: str  # "sha256:<hex>"

    def __post_init__(self) -> None:
        _hex(self.digest, "subject digest")

    def descriptor(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": _hex(self.digest, "subject digest")}}


@dataclass(frozen=True)
class BuildInfo:
    build_type: str  # BUILD_TYPE_CONTAINER | BUILD_TYPE_VM
    image_definition: Mapping[str, str]  # name, path, sha256 ("sha256:<hex>" or bare hex)
    base_name: str  # e.g. 127.0.0.1:5000/library/debian:12 or a qcow2 path/URL
    base_digest: str  # sha256:<hex>
    baseline_id: str
    baseline_version: str
    baseline_digest: str  # sha256:<hex>
    builder_id: str
    harden_version: str
    started_on: dt.datetime
    finished_on: dt.datetime
    invocation_id: str | None = None
    internal_parameters: Mapping[str, Any] = field(default_factory=dict)  # e.g. the CI run
    extra_parameters: Mapping[str, Any] = field(default_factory=dict)


def _subjects(subject: Subject | Sequence[Subject]) -> list[dict[str, Any]]:
    items = [subject] if isinstance(subject, Subject) else list(subject)
    if not items:
        raise ValueError("a statement needs at least one subject")
    return [s.descriptor() for s in items]


def _statement(
    subject: Subject | Sequence[Subject], predicate_type: str, predicate: dict[str, Any]
) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(subject),
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def _base_uri(build_type: str, base_name: str) -> str:
    if "://" in base_name:
        return base_name
    if build_type == BUILD_TYPE_VM:
        return "file:" + base_name
    return "docker://" + base_name


def provenance(subject: Subject | Sequence[Subject], build: BuildInfo) -> dict[str, Any]:
    """SLSA provenance v1; base image, baseline and image definition in resolvedDependencies."""
    idef = build.image_definition
    idef_sha = str(idef.get("sha256", ""))
    idef_hex = idef_sha[7:] if idef_sha.startswith("sha256:") else idef_sha
    _hex("sha256:" + idef_hex, "image definition sha256")
    baseline = f"{build.baseline_id}@{build.baseline_version}"
    external: dict[str, Any] = {
        "imageDefinition": str(idef.get("path", "")),
        "name": str(idef.get("name", "")),
        "baseline": baseline,
        **dict(build.extra_parameters),
    }
    metadata: dict[str, Any] = {
        "startedOn": rfc3339(build.started_on),
        "finishedOn": rfc3339(build.finished_on),
    }
    if build.invocation_id:
        metadata["invocationId"] = build.invocation_id
    predicate = {
        "buildDefinition": {
            "buildType": build.build_type,
            "externalParameters": external,
            "internalParameters": dict(build.internal_parameters),
            "resolvedDependencies": [
                {
                    "name": "base-image",
                    "uri": _base_uri(build.build_type, build.base_name),
                    "digest": {"sha256": _hex(build.base_digest, "base image digest")},
                },
                {
                    "name": "baseline",
                    "digest": {"sha256": _hex(build.baseline_digest, "baseline digest")},
                    "annotations": {"id": build.baseline_id, "version": build.baseline_version},
                },
                {
                    "name": "image-definition",
                    "uri": "file:" + str(idef.get("path", "")),
                    "digest": {"sha256": idef_hex},
                },
            ],
        },
        "runDetails": {
            "builder": {"id": build.builder_id, "version": {"harden": build.harden_version}},
            "metadata": metadata,
            "byproducts": [],
        },
    }
    return _statement(subject, SLSA_PROVENANCE, predicate)


def _ids(report: VerifyReport, *statuses: Status) -> list[str]:
    return sorted(r.rule_id for r in report.results if r.status in statuses)


def test_result(
    subject: Subject | Sequence[Subject], report: VerifyReport, baseline_uri: str
) -> dict[str, Any]:
    """in-toto test-result v0.1: PASSED, WARNED (only waived failures) or FAILED."""
    passed = _ids(report, Status.PASSED)
    warned = _ids(report, Status.WAIVED)
    failed = _ids(report, Status.FAILED, Status.ERROR)
    result = "FAILED" if failed else "WARNED" if warned else "PASSED"
    config: dict[str, Any] = {
        "name": f"{report.baseline.id}@{report.baseline.version}",
        "digest": {"sha256": _hex(report.baseline.digest, "baseline digest")},
    }
    if baseline_uri:
        config["uri"] = baseline_uri
    predicate = {
        "result": result,
        "configuration": [config],
        "passedTests": passed,
        "warnedTests": warned,
        "failedTests": failed,
    }
    return _statement(subject, TEST_RESULT, predicate)


test_result.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def controls_covered(report: VerifyReport) -> dict[str, list[str]]:
    """Controls of every rule that passed, per framework (sorted, unique)."""
    out: dict[str, set[str]] = {}
    for r in report.results:
        if r.status is Status.PASSED:
            for framework, ids in r.controls.items():
                out.setdefault(framework, set()).update(ids)
    return {k: sorted(v) for k, v in sorted(out.items())}


def compliance(
    subject: Subject | Sequence[Subject],
    report: VerifyReport,
    *,
    verified_at: dt.datetime,
    valid_until: dt.datetime,
    waivers: Mapping[str, Waiver],
    controls: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """The harden compliance predicate.

    ``waivers`` lists the waivers that applied: one per rule the report marks ``waived`` (taken
    from ``waivers``, else from the rule result's own waiver info).
    """
    if valid_until < verified_at:
        raise ValueError("valid_until is before verified_at")
    applied: list[dict[str, str]] = []
    for r in sorted(report.by_status(Status.WAIVED), key=lambda x: x.rule_id):
        w = waivers.get(r.rule_id)
        if w is not None:
            applied.append(
                {
                    "rule": r.rule_id,
                    "owner": w.owner,
                    "reason": w.reason,
                    "expires": w.expires.isoformat(),
                }
            )
        elif r.waiver is not None:
            applied.append(
                {
                    "rule": r.rule_id,
                    "owner": r.waiver.owner,
                    "reason": r.waiver.reason,
                    "expires": r.waiver.expires.isoformat(),
                }
            )
        else:
            raise ValueError(f"rule {r.rule_id} is waived but no waiver is known for it")
    predicate = {
        "verifiedAt": rfc3339(verified_at),
        "validUntil": rfc3339(valid_until),
        "compliant": report.compliant,
        "baseline": {
            "id": report.baseline.id,
            "version": report.baseline.version,
            "digest": report.baseline.digest,
        },
        "target": report.target,
        "platform": report.platform,
        "waivers": applied,
        "controls": {k: sorted(set(v)) for k, v in sorted(controls.items())},
        "summary": report.summary(),
    }
    return _statement(subject, HARDEN_COMPLIANCE, predicate)


def revocation(
    subject: Subject | Sequence[Subject],
    *,
    reason: str,
    revoked_at: dt.datetime,
    revoked_by: str,
    cascade_from: str | None = None,
) -> dict[str, Any]:
    """The harden revocation predicate; ``cascade_from`` = the revoked base image digest."""
    if not reason:
        raise ValueError("a revocation needs a reason")
    predicate: dict[str, Any] = {
        "reason": reason,
        "revokedAt": rfc3339(revoked_at),
        "revokedBy": revoked_by,
    }
    if cascade_from is not None:
        _hex(cascade_from, "cascade_from")
        predicate["cascadeFrom"] = cascade_from
    return _statement(subject, HARDEN_REVOCATION, predicate)


# ---------------------------------------------------------------- bytes


def openscap_scan(
    subject: Subject | Sequence[Subject], scan: Mapping[str, Any], scanned_at: dt.datetime
) -> dict[str, Any]:
    """The harden openscap-scan v1 statement from ``ScanResult.to_json()``."""
    predicate = {
        "scannedAt": rfc3339(scanned_at),
        "scanner": scan["scanner"],
        "profile": scan["profile"],
        "benchmark": scan["benchmark"],
        "content": scan["content"],
        "contentVersion": scan["content_version"],
        "score": scan["score"],
        "xccdfScore": scan["xccdf_score"],
        "counts": dict(scan["counts"]),
        "families": dict(scan["families"]),
        "rules": list(scan["rules"]),
        "arfDigest": scan["arf_digest"],
    }
    return _statement(subject, HARDEN_OPENSCAP_SCAN, predicate)


def sbom(subject: Subject | Sequence[Subject], doc: Mapping[str, Any]) -> dict[str, Any]:
    """The package inventory: a CycloneDX 1.6 document (:func:`harden.sbom.cyclonedx`)."""
    return _statement(subject, CYCLONEDX_BOM, dict(doc))


def vex(subject: Subject | Sequence[Subject], doc: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenVEX v0.2.0 document (:func:`harden.debian.fixes.openvex`) about the subject."""
    return _statement(subject, OPENVEX, dict(doc))


def serialize(statement: Mapping[str, Any]) -> bytes:
    """Compact canonical JSON: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # C speed; the loop below only runs when a key repeats (SBOMs are large)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise AttestationError(f"duplicate JSON key {k!r}")
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise AttestationError(f"invalid JSON number {name}")


def loads_strict(data: bytes, what: str) -> Any:
    """JSON from bytes: UTF-8 only, no duplicate keys, no NaN/Infinity (AttestationError)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AttestationError(f"{what} is not UTF-8") from e
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except AttestationError as e:
        raise AttestationError(f"{what}: {e.message}") from e
    except (ValueError, RecursionError) as e:
        raise AttestationError(f"{what} is not valid JSON: {e}") from e


def parse(payload: bytes) -> Statement:
    """Parse statement bytes (e.g. a verified DSSE payload) into a :class:`Statement`."""
    if len(payload) > MAX_STATEMENT_BYTES:
        raise AttestationError(f"statement larger than {MAX_STATEMENT_BYTES} bytes")
    return parse_statement(loads_strict(payload, "statement"))
