"""Pydantic models of the attestations we read back (a trust boundary).

The Statement layer allows unknown fields (in-toto: consumers MUST ignore unknown fields); so do
the predicates, so a newer minor writer stays readable. Every timestamp is RFC 3339 UTC with a
``Z``; every sha256 digest is 64 lowercase hex characters.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from harden.errors import AttestationError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
HARDEN_COMPLIANCE = "https://harden.dev/attestation/compliance/v1"
HARDEN_REVOCATION = "https://harden.dev/attestation/revocation/v1"
HARDEN_OPENSCAP_SCAN = "https://harden.dev/attestation/openscap-scan/v1"
HARDEN_REVOCATION_LIST = "https://harden.dev/attestation/revocation-list/v1"
CYCLONEDX_BOM = "https://cyclonedx.org/bom"  # the package inventory (SBOM), CycloneDX 1.6
OPENVEX = "https://openvex.dev/ns/v0.2.0"  # which CVEs a rebuild fixed

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_RFC3339_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_DIGEST_KEY = re.compile(r"[a-z][a-zA-Z0-9_-]*")


def _utc_timestamp(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            raise ValueError("timestamp without a time zone")
        return v.astimezone(dt.UTC)
    if not isinstance(v, str) or not _RFC3339_Z.fullmatch(v):
        raise ValueError("must be an RFC 3339 timestamp in UTC ending in Z")
    frac = v[19:-1]
    base = dt.datetime.strptime(v[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    if frac:
        base += dt.timedelta(microseconds=round(float(frac) * 1_000_000))
    return base


def _iso_date(v: Any) -> Any:
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        return dt.date.fromisoformat(v)
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    raise ValueError("must be a date YYYY-MM-DD")


def _sha256_ref(v: str) -> str:
    if not (v.startswith("sha256:") and _HEX64.fullmatch(v[7:])):
        raise ValueError("must be sha256:<64 lowercase hex>")
    return v


UtcTime = Annotated[dt.datetime, BeforeValidator(_utc_timestamp)]
IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]
Sha256Ref = Annotated[StrictStr, AfterValidator(_sha256_ref)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


class _Open(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


def _check_digest_set(v: dict[str, str]) -> dict[str, str]:
    for alg, value in v.items():
        # DigestSet keys are lowercase; a few spec'd ones are camelCase (gitCommit, dirHash)
        if not _DIGEST_KEY.fullmatch(alg):
            raise ValueError(f"bad digest algorithm name {alg!r}")
        if alg == "sha256" and not _HEX64.fullmatch(value):
            raise ValueError("sha256 digest must be 64 lowercase hex characters")
        if alg == "sha512" and not _HEX128.fullmatch(value):
            raise ValueError("sha512 digest must be 128 lowercase hex characters")
    return v


class ResourceDescriptor(_Open):
    name: StrictStr | None = None
    uri: StrictStr | None = None
    digest: dict[StrictStr, StrictStr] | None = None
    content: StrictStr | None = None
    downloadLocation: StrictStr | None = None
    mediaType: StrictStr | None = None
    annotations: dict[str, Any] | None = None

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return None if v is None else _check_digest_set(v)

    @model_validator(mode="after")
    def _one_of(self) -> ResourceDescriptor:
        if self.uri is None and self.digest is None and self.content is None:
            raise ValueError("a resource descriptor needs one of uri, digest, content")
        return self

    @property
    def sha256(self) -> str | None:
        """``sha256:<hex>`` when the descriptor has a sha256 digest."""
        if self.digest and "sha256" in self.digest:
            return "sha256:" + self.digest["sha256"]
        return None


class Subject(ResourceDescriptor):
    digest: dict[StrictStr, StrictStr]

    @field_validator("digest")
    @classmethod
    def _needs_sha256(cls, v: dict[str, str]) -> dict[str, str]:
        if "sha256" not in v:
            raise ValueError("a subject needs a sha256 digest")
        return v


# ---------------------------------------------------------------- predicates


class TestResultV01(_Open):
    __test__ = False  # not a pytest class

    result: Literal["PASSED", "WARNED", "FAILED"]
    configuration: list[ResourceDescriptor]
    url: StrictStr | None = None
    passedTests: list[StrictStr] = []
    warnedTests: list[StrictStr] = []
    failedTests: list[StrictStr] = []


class BaselineV1(_Open):
    id: NonEmpty
    version: NonEmpty
    digest: Sha256Ref


class WaiverV1(_Open):
    rule: NonEmpty
    owner: NonEmpty
    reason: NonEmpty
    expires: IsoDate


class ComplianceV1(_Open):
    verifiedAt: UtcTime
    validUntil: UtcTime
    compliant: StrictBool
    baseline: BaselineV1
    waivers: list[WaiverV1] = []
    controls: dict[StrictStr, list[StrictStr]] = {}
    summary: dict[StrictStr, StrictInt] = {}

    @model_validator(mode="after")
    def _window(self) -> ComplianceV1:
        if self.validUntil < self.verifiedAt:
            raise ValueError("validUntil is before verifiedAt")
        return self


class BuilderV1(_Open):
    id: NonEmpty
    version: dict[StrictStr, StrictStr] = {}


class BuildMetadataV1(_Open):
    invocationId: StrictStr | None = None
    startedOn: UtcTime | None = None
    finishedOn: UtcTime | None = None


class RunDetailsV1(_Open):
    builder: BuilderV1
    metadata: BuildMetadataV1 | None = None
    byproducts: list[ResourceDescriptor] = []


class BuildDefinitionV1(_Open):
    buildType: NonEmpty
    externalParameters: dict[str, Any]
    internalParameters: dict[str, Any] = {}
    resolvedDependencies: list[ResourceDescriptor] = []


class ProvenanceV1(_Open):
    buildDefinition: BuildDefinitionV1
    runDetails: RunDetailsV1

    def dependency(self, name: str) -> ResourceDescriptor | None:
        for d in self.buildDefinition.resolvedDependencies:
            if d.name == name:
                return d
        return None


class RevocationV1(_Open):
    reason: NonEmpty
    revokedAt: UtcTime
    revokedBy: NonEmpty
    cascadeFrom: Sha256Ref | None = None


class ScanRuleV1(_Open):
    id: NonEmpty
    result: Literal[
        "pass",
        "fail",
        "error",
        "unknown",
        "notapplicable",
        "notchecked",
        "notselected",
        "informational",
        "fixed",
    ]
    severity: StrictStr = "unknown"


class ScanFamilyV1(_Open):
    score: float | None = None
    passed: Annotated[StrictInt, Field(ge=0)]
    judged: Annotated[StrictInt, Field(ge=0)]


class OpenscapScanV1(_Open):
    """An OpenSCAP scan of the subject (``harden build --scan``): the profile and content it
    ran, harden's score (pass rate over the file-judged rules, docs/scanner-agreement.md), the
    counts it is computed from, every selected rule's result and the ARF's digest."""

    scannedAt: UtcTime
    scanner: NonEmpty
    profile: NonEmpty
    benchmark: StrictStr = ""
    content: NonEmpty
    contentVersion: StrictStr = ""
    score: Annotated[float, Field(ge=0, le=100)] | None
    xccdfScore: float | None = None
    counts: dict[StrictStr, Annotated[StrictInt, Field(ge=0)]]
    families: dict[StrictStr, ScanFamilyV1] = {}
    rules: list[ScanRuleV1] = []
    arfDigest: Sha256Ref

    @model_validator(mode="after")
    def _score_matches_counts(self) -> OpenscapScanV1:
        passed = self.counts.get("pass", 0) + self.counts.get("fixed", 0)
        judged = passed + sum(self.counts.get(k, 0) for k in ("fail", "error", "unknown"))
        expected = None if judged == 0 else round(100.0 * passed / judged, 1)
        if expected != self.score:
            raise ValueError(f"score {self.score} does not match the counts ({expected})")
        return self


class RevocationListEntry(_Open):
    """One digest the list says must not be used: ``revoked`` (always), or ``failed`` (a
    verification at ``at`` failed: no passing result verified at or before ``at`` counts)."""

    digest: Sha256Ref
    kind: Literal["revoked", "failed"]
    at: UtcTime
    reason: NonEmpty
    by: NonEmpty
    repository: StrictStr | None = None
    cascadeFrom: Sha256Ref | None = None


class RevocationListV1(_Open):
    """The signed, expiring, append-only revocation list (all repositories, by digest).

    ``version`` grows by one with every change; ``previous`` is the sha256 (hex) of the previous
    version's statement bytes, so a version that drops entries cannot pass for a successor."""

    version: StrictInt = Field(ge=1)
    previous: StrictStr | None = None
    issuedAt: UtcTime
    expiresAt: UtcTime
    entries: list[RevocationListEntry] = Field(max_length=100_000)

    @model_validator(mode="after")
    def _window(self) -> RevocationListV1:
        if self.expiresAt <= self.issuedAt:
            raise ValueError("expiresAt must be after issuedAt")
        if (self.version == 1) != (self.previous is None):
            raise ValueError("previous is required from version 2 on (and only there)")
        return self


# ---------------------------------------------------------------- the statement

_P = TypeVar("_P", bound=BaseModel)


class Statement(_Open):
    """An in-toto Statement v1. Subjects are matched purely by digest."""

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[Subject] = Field(min_length=1)
    predicateType: NonEmpty
    predicate: dict[str, Any] = {}

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    @property
    def subject_digests(self) -> frozenset[str]:
        """Every subject's ``sha256:<hex>``."""
        return frozenset(s.sha256 for s in self.subject if s.sha256)

    def matches(self, digest: str) -> bool:
        """True when one subject has this digest (``sha256:<hex>``); names are ignored."""
        return digest.lower() in self.subject_digests

    def _typed(self, predicate_type: str, model: type[_P]) -> _P:
        if self.predicateType != predicate_type:
            raise AttestationError(
                f"predicate type is {self.predicateType}, expected {predicate_type}"
            )
        try:
            return model.model_validate(self.predicate)
        except ValidationError as e:
            raise AttestationError(
                f"malformed {predicate_type} predicate: {_first_error(e)}"
            ) from e

    def compliance(self) -> ComplianceV1:
        return self._typed(HARDEN_COMPLIANCE, ComplianceV1)

    def test_result(self) -> TestResultV01:
        return self._typed(TEST_RESULT, TestResultV01)

    def provenance(self) -> ProvenanceV1:
        return self._typed(SLSA_PROVENANCE, ProvenanceV1)

    def revocation(self) -> RevocationV1:
        return self._typed(HARDEN_REVOCATION, RevocationV1)

    def openscap_scan(self) -> OpenscapScanV1:
        return self._typed(HARDEN_OPENSCAP_SCAN, OpenscapScanV1)

    def revocation_list(self) -> RevocationListV1:
        return self._typed(HARDEN_REVOCATION_LIST, RevocationListV1)


def _first_error(e: ValidationError) -> str:
    errs = e.errors(include_url=False)
    parts = []
    for err in errs[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    more = len(errs) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_statement(obj: Any) -> Statement:
    """Validate a decoded JSON value as a Statement v1 (AttestationError when it is not)."""
    if not isinstance(obj, dict):
        raise AttestationError("the statement is not a JSON object")
    t = obj.get("_type")
    if t != STATEMENT_TYPE:
        raise AttestationError(
            f"unsupported statement _type {t!r}, expected {STATEMENT_TYPE}",
            hint="Statement v0.1 (cosign --predicate, BuildKit) is not accepted; "
            "attest with harden or `cosign attest --statement`",
        )
    if "predicate" in obj and not isinstance(obj["predicate"], dict):
        raise AttestationError("the statement's predicate is not a JSON object")
    try:
        return Statement.model_validate(obj)
    except ValidationError as e:
        raise AttestationError(f"malformed statement: {_first_error(e)}") from e
