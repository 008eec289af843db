"""The baseline file format, validated at the trust boundary (pydantic v2, frozen, no extras).

A baseline file declares metadata, typed parameters, rules and waivers. Each rule carries exactly
one kind key from :data:`harden.baseline.kinds.KIND_MODELS`. ``docs/baseline.schema.json`` is
generated from :class:`BaselineDoc`.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from harden.baseline.frameworks import (
    ANSSI_BP28_LEVEL,
    ANSSI_LEVELS,
    CIS_DEBIAN12_LEVEL,
    CIS_LEVELS,
)
from harden.baseline.kinds import (
    Accounts,
    Apt,
    AuditRules,
    Command,
    ConfigLine,
    FileAbsent,
    FilePermissions,
    ImageConfig,
    KernelModuleDisabled,
    MountOption,
    PackageAbsent,
    PackagePresent,
    RuleKind,
    ServiceDisabled,
    Spec,
    SuidSgidAllowlist,
    Sysctl,
    WorldWritable,
)

BaselineIdStr = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")]
RuleIdStr = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]*(\.[a-z0-9][a-z0-9_\-]*)+$", max_length=96),
]
ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$", max_length=64)]
ControlId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]*$", max_length=64)
]
FrameworkName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$", max_length=64)]
Text = Annotated[str, StringConstraints(max_length=4000)]


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Target(StrEnum):
    CONTAINER = "container"
    VM = "vm"


class Family(StrEnum):
    DEBIAN = "debian"
    UBUNTU = "ubuntu"
    RHEL = "rhel"  # the RHEL family: RHEL, Rocky, Alma, CentOS Stream, Fedora
    ALPINE = "alpine"


class Platform(Strict):
    family: Family
    versions: list[Annotated[str, StringConstraints(pattern=r"^[0-9][0-9.]*$")]] = Field(
        default_factory=list, description="major versions; empty means every version"
    )

    def admits(self, family: str, version: str) -> bool:
        if family != self.family.value:
            return False
        if not self.versions:
            return True
        major = version.split(".")[0]
        return version in self.versions or major in self.versions


class Condition(Strict):
    """A fact about the target that must hold for a rule to apply."""

    package_installed: (
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.\-]*$")] | None
    ) = None
    file_exists: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_.+@%/\-]*$")] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        if (self.package_installed is None) == (self.file_exists is None):
            raise ValueError("a condition needs exactly one of package_installed, file_exists")
        return self

    def describe(self) -> str:
        if self.package_installed is not None:
            return f"package {self.package_installed} is installed"
        return f"{self.file_exists} exists"


class AppliesTo(Strict):
    targets: list[Target] | None = Field(default=None, min_length=1)
    platforms: list[Platform] | None = Field(default=None, min_length=1)
    when: list[Condition] = Field(default_factory=list)


ParamType = Literal["string", "integer", "boolean", "list"]
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "list": (list,),
}


def check_param_value(ptype: str, value: Any) -> str | None:
    """Why ``value`` is not of parameter type ``ptype``, or None when it is."""
    if ptype == "integer" and isinstance(value, bool):
        return "expected an integer, got a boolean"
    if not isinstance(value, _PY_TYPES[ptype]):
        return f"expected {ptype}, got {type(value).__name__}"
    # bool is an int subclass, but yes/no in a list of packages or paths is a mistake
    if (
        ptype == "list"
        and isinstance(value, list)
        and not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
    ):
        return "a list parameter holds strings or integers"
    return None


class Parameter(Strict):
    type: ParamType
    default: Any
    description: Text

    @model_validator(mode="after")
    def _default_has_type(self) -> Parameter:
        problem = check_param_value(self.type, self.default)
        if problem:
            raise ValueError(f"default: {problem}")
        return self


class Waiver(Strict):
    rule: RuleIdStr
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    owner: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    expires: dt.date

    @field_validator("expires", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return dt.date.fromisoformat(v)
            except ValueError as e:
                raise ValueError(f"expires must be a date YYYY-MM-DD, got {v!r}") from e
        if isinstance(v, dt.datetime) or not isinstance(v, dt.date):
            # pydantic would read a number as seconds since 1970 (expires: 0 -> 1970-01-01)
            raise ValueError(f"expires must be a date YYYY-MM-DD, got {v!r}")
        return v

    def active_on(self, today: dt.date) -> bool:
        return today <= self.expires


KIND_FIELDS = tuple(k.value for k in RuleKind)

SsgRuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=128)]
AnssiId = Annotated[str, StringConstraints(pattern=r"^R[0-9]{1,3}$")]
CisId = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+){0,5}$", max_length=32)]


class References(Strict):
    """The ids other scanners and benchmarks use for what a rule checks (ids only, no text).

    ``ssg``: SCAP Security Guide (ComplianceAsCode) rule ids, as in the Debian data stream
    without the ``xccdf_org.ssgproject.content_rule_`` prefix; the OpenSCAP second opinion reads
    them. ``anssi``: ANSSI-BP-028 v2.0 recommendations (``R31``). ``cis``: CIS Debian Linux 12
    Benchmark recommendation ids (``5.3.3.1.1``).
    """

    ssg: list[SsgRuleId] = Field(default_factory=list)
    anssi: list[AnssiId] = Field(default_factory=list)
    cis: list[CisId] = Field(default_factory=list)

    @field_validator("anssi")
    @classmethod
    def _known_anssi(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in ANSSI_BP28_LEVEL]
        if unknown:
            raise ValueError(f"not an ANSSI-BP-028 v2.0 recommendation: {', '.join(unknown)}")
        return v

    @field_validator("cis")
    @classmethod
    def _known_cis(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in CIS_DEBIAN12_LEVEL]
        if unknown:
            raise ValueError(f"not a CIS Debian Linux 12 recommendation id: {', '.join(unknown)}")
        return v


class Framework(StrEnum):
    ANSSI_BP28 = "anssi_bp28"
    CIS_DEBIAN12 = "cis_debian12"


class Selection(Strict):
    """Which inherited rules a profile keeps, by the level of the recommendations they implement.

    A rule mapped to the framework is kept when one of its recommendations is at ``level`` or
    below. ``unmapped: keep`` (the default) keeps harden's own rules that the framework does not
    name (image hygiene, ISO 27017 only); ``drop`` keeps the framework's rules alone. ``also``
    keeps the listed rules whatever their mapping, ``drop_rules`` removes the listed ones.
    """

    framework: Framework
    level: Literal[
        "minimal", "intermediary", "enhanced", "high", "level_1_server", "level_2_server"
    ]
    unmapped: Literal["keep", "drop"] = "keep"
    also: list[RuleIdStr] = Field(default_factory=list)

    @model_validator(mode="after")
    def _level_of_framework(self) -> Selection:
        levels = ANSSI_LEVELS if self.framework is Framework.ANSSI_BP28 else CIS_LEVELS
        if self.level not in levels:
            raise ValueError(
                f"level {self.level!r} is not a level of {self.framework.value} "
                f"(one of: {', '.join(levels)})"
            )
        return self


class RuleDoc(Strict):
    id: RuleIdStr
    title: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    rationale: Text = ""
    severity: Severity = Severity.MEDIUM
    controls: dict[FrameworkName, list[ControlId]] = Field(
        description="framework -> control ids, e.g. iso27017: [CLD.9.5.2], cis_debian12: ['5.1.20']"
    )
    references: References = Field(
        default_factory=References,
        description="ids of the same check in SCAP Security Guide (ssg), ANSSI-BP-028 (anssi), "
        "CIS Debian Linux 12 (cis)",
    )
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    override: bool = Field(
        default=False, description="replace the rule of the same id from a parent baseline"
    )
    # exactly one of the kind keys
    package_absent: PackageAbsent | None = None
    package_present: PackagePresent | None = None
    service_disabled: ServiceDisabled | None = None
    file_absent: FileAbsent | None = None
    file_permissions: FilePermissions | None = None
    config_line: ConfigLine | None = None
    sysctl: Sysctl | None = None
    kernel_module_disabled: KernelModuleDisabled | None = None
    mount_option: MountOption | None = None
    suid_sgid_allowlist: SuidSgidAllowlist | None = None
    world_writable: WorldWritable | None = None
    accounts: Accounts | None = None
    image_config: ImageConfig | None = None
    apt: Apt | None = None
    audit_rules: AuditRules | None = None
    command: Command | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kinds = [k for k in KIND_FIELDS if data.get(k) is not None]  # `kind: null` is none
            if not kinds:
                unknown = [k for k in data if k not in cls.model_fields]
                extra = f" (unknown key(s): {', '.join(unknown)})" if unknown else ""
                raise ValueError(
                    "a rule needs exactly one kind key, one of: " + ", ".join(KIND_FIELDS) + extra
                )
            if len(kinds) > 1:
                raise ValueError(f"a rule has exactly one kind, found {', '.join(kinds)}")
        return data

    @field_validator("controls")
    @classmethod
    def _needs_iso(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v.get("iso27017"):
            raise ValueError("every rule maps to at least one ISO 27017 control (iso27017: [...])")
        return v

    @model_validator(mode="after")
    def _one_home_for_cis(self) -> RuleDoc:
        legacy = self.controls.get("cis_debian12")
        if legacy and self.references.cis and sorted(legacy) != sorted(self.references.cis):
            raise ValueError(
                "controls.cis_debian12 and references.cis disagree; keep the ids in references.cis"
            )
        if self.controls.get("anssi_bp28"):
            raise ValueError("ANSSI-BP-028 ids go in references.anssi, not controls.anssi_bp28")
        return self

    @property
    def kind(self) -> RuleKind:
        for k in RuleKind:
            if getattr(self, k.value) is not None:
                return k
        raise AssertionError("validated rule without a kind")  # pragma: no cover

    @property
    def spec(self) -> Spec:
        spec: Spec = getattr(self, self.kind.value)
        return spec


class BaselineDoc(Strict):
    """One baseline file."""

    id: BaselineIdStr
    version: Annotated[
        str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+){0,2}([\-+][0-9A-Za-z.\-]+)?$")
    ]
    title: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    description: Text = ""
    extends: list[BaselineIdStr] = Field(default_factory=list)
    platforms: list[Platform] = Field(min_length=1)
    targets: list[Target] = Field(min_length=1)
    parameters: dict[ParamName, Parameter] = Field(default_factory=dict)
    set_parameters: dict[ParamName, Any] = Field(
        default_factory=dict, description="override values of parameters declared by a parent"
    )
    exclude_rules: list[RuleIdStr] = Field(
        default_factory=list, description="drop these inherited rules"
    )
    select: Selection | None = Field(
        default=None,
        description="a profile: keep the inherited rules that implement a framework's level",
    )
    rules: list[RuleDoc] = Field(default_factory=list)
    waivers: list[Waiver] = Field(default_factory=list)


def json_schema() -> dict[str, Any]:
    schema = BaselineDoc.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://harden.dev/schemas/baseline.schema.json"
    return schema
