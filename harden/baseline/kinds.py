"""The fixed vocabulary of rule kinds and the typed specification each one takes.

Every field that names something on the target (a package, a unit, a path, a sysctl key)
is constrained to characters that cannot break out of a shell word; remediation templates
quote every value as well, so a baseline cannot smuggle shell into a build.
"""

from __future__ import annotations

import re
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

PARAM_REF = r"^\$\{[a-z_][a-z0-9_]*\}$"
ParamRef = Annotated[str, StringConstraints(pattern=PARAM_REF)]

PackageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.\-]*$", max_length=128)]
UnitName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$", max_length=128)
]
# absolute path, optionally with shell-style glob characters (* ? [ ]), no whitespace or quoting
AbsPath = Annotated[
    str, StringConstraints(pattern=r"^/[A-Za-z0-9_.+@%*?\[\]/\-]*$", max_length=512)
]
SysctlKey = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_*\-]+)+$", max_length=128)
]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-]+$", max_length=64)]
UserName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_\-]*\$?$", max_length=32)]
OctalMode = Annotated[str, StringConstraints(pattern=r"^0?[0-7]{3,4}$")]
ConfigKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)]
# a value written into a config file: one line, no control characters
ConfigValue = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$", max_length=1024)]
MountOpt = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_=,\-]+$", max_length=64)]


class RuleKind(StrEnum):
    PACKAGE_ABSENT = "package_absent"
    PACKAGE_PRESENT = "package_present"
    SERVICE_DISABLED = "service_disabled"
    FILE_ABSENT = "file_absent"
    FILE_PERMISSIONS = "file_permissions"
    CONFIG_LINE = "config_line"
    SYSCTL = "sysctl"
    KERNEL_MODULE_DISABLED = "kernel_module_disabled"
    MOUNT_OPTION = "mount_option"
    SUID_SGID_ALLOWLIST = "suid_sgid_allowlist"
    WORLD_WRITABLE = "world_writable"
    ACCOUNTS = "accounts"
    IMAGE_CONFIG = "image_config"
    APT = "apt"
    AUDIT_RULES = "audit_rules"
    COMMAND = "command"


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackageAbsent(Spec):
    """None of ``packages`` is installed. Remediation purges them."""

    packages: list[PackageName] | ParamRef = Field(min_length=1)


class PackagePresent(Spec):
    """Every package in ``packages`` is installed. Remediation installs them (needs the mirror)."""

    packages: list[PackageName] | ParamRef = Field(min_length=1)


class ServiceDisabled(Spec):
    """Each unit is disabled or masked; a unit that does not exist counts as disabled."""

    units: list[UnitName] | ParamRef = Field(min_length=1)
    mask: bool = True


class FileAbsent(Spec):
    """No file matches any of ``paths`` (shell globs allowed)."""

    paths: list[AbsPath] | ParamRef = Field(min_length=1)


class FilePermissions(Spec):
    """Each existing path has the owner, group, and a mode no more permissive than ``max_mode``."""

    paths: list[AbsPath] | ParamRef = Field(min_length=1)
    owner: UserName | ParamRef | None = None
    group: UserName | ParamRef | None = None
    max_mode: OctalMode | ParamRef
    missing_ok: bool = True


class Compare(StrEnum):
    EQ = "eq"  # equal (case-insensitive for words)
    LE = "le"  # integer, at most
    GE = "ge"  # integer, at least
    ONE_OF = "one_of"  # the value is one of a comma-separated list
    SUBSET = "subset"  # every comma-separated item of the effective value is in ``value``


class ConfigLine(Spec):
    """``key`` has an effective value that satisfies ``compare`` against ``value``.

    ``match: first`` follows the first occurrence (sshd, with ``Include`` drop-ins expanded where
    they appear); ``match: last`` the last one (login.defs, most shell-style files).
    """

    path: AbsPath | ParamRef
    key: ConfigKey
    value: ConfigValue | int | ParamRef
    compare: Compare = Compare.EQ
    # equals writes key=value; spaced_equals writes key = value, for parsers that need the
    # blanks (auditd.conf: "space_left_action=email" is a syntax error and auditd does not start)
    separator: Literal["space", "equals", "spaced_equals"] = "space"
    match: Literal["first", "last"] = "first"
    dropin_dir: AbsPath | None = None
    missing_ok: bool = False
    # a file that does not exist makes the rule not applicable (e.g. sshd_config without sshd)
    requires_file: bool = True


class Sysctl(Spec):
    """``key`` is persisted with ``value`` under /etc/sysctl.d; on a VM the live value matches too."""

    key: SysctlKey
    value: int | ConfigValue | ParamRef
    compare: Literal["eq", "ge"] = "eq"


class KernelModuleDisabled(Spec):
    """Each module is blocked (``install M /bin/false`` + ``blacklist M``); on a VM, not loaded."""

    modules: list[ModuleName] | ParamRef = Field(min_length=1)


class MountOption(Spec):
    """``mountpoint`` is mounted with every option in ``options`` (VM only)."""

    mountpoint: AbsPath
    options: list[MountOpt] | ParamRef = Field(min_length=1)
    tmpfs_size: str | None = Field(default=None, pattern=r"^[0-9]+[kmgKMG%]?$")
    required: bool = False  # a mount point that is not a separate mount fails instead of n/a


class SuidSgidAllowlist(Spec):
    """Only files on ``allowlist`` carry setuid/setgid bits; remediation strips the rest."""

    allowlist: list[AbsPath] | ParamRef


class WorldWritable(Spec):
    """No world-writable file; every world-writable directory has the sticky bit."""

    exclude: list[AbsPath] | ParamRef = Field(default_factory=list)


class AccountCheck(StrEnum):
    UID0_ONLY_ROOT = "uid0_only_root"
    ROOT_GID_ZERO = "root_gid_zero"
    SYSTEM_ACCOUNTS_NOLOGIN = "system_accounts_nologin"
    NO_EMPTY_PASSWORDS = "no_empty_passwords"
    ALL_SHADOWED = "all_shadowed"
    UNIQUE_IDS = "unique_ids"
    GROUPS_EXIST = "groups_exist"
    SHADOW_GROUP_EMPTY = "shadow_group_empty"
    # every file's owner uid has an account / its gid a group (read from the file system walk)
    NO_UNOWNED_FILES = "no_unowned_files"
    NO_UNGROUPED_FILES = "no_ungrouped_files"


class Accounts(Spec):
    check: AccountCheck
    # system accounts are those with uid below this (Debian: 1000); root is exempt
    uid_min: int | ParamRef = 1000
    allow_login: list[UserName] | ParamRef = Field(default_factory=lambda: ["root", "sync"])


class ImageCheck(StrEnum):
    NON_ROOT_USER = "non_root_user"
    NO_SECRET_ENV = "no_secret_env"  # noqa: S105 (a check name, not a secret)
    HEALTHCHECK = "healthcheck"


class ImageConfig(Spec):
    """Container image configuration (container only). ``user`` is set by the build."""

    check: ImageCheck
    user: UserName | ParamRef | None = None
    secret_patterns: list[str] | ParamRef = Field(
        default_factory=lambda: ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "PRIVATE_KEY"]
    )


class AptCheck(StrEnum):
    # no apt.conf option lets apt accept unsigned, insecure, downgraded or weakly signed indices
    NO_INSECURE_REPOSITORIES = "no_insecure_repositories"
    # no source in sources.list(.d) is marked trusted, allow-insecure, allow-weak or
    # allow-downgrade-to-insecure
    NO_TRUSTED_SOURCES = "no_trusted_sources"


class Apt(Spec):
    """apt's own configuration, parsed by harden from the files (apt.conf syntax, sources lists):
    nothing on the target runs."""

    check: AptCheck


# one audit rule as augenrules reads it: a single line starting with an option, no quote
AuditRuleLine = Annotated[str, StringConstraints(pattern=r"^-[^\x00-\x1f\x7f']*$", max_length=1024)]
# a pattern over loaded audit rules (``auditctl -l``) or rules files, one line at a time: the
# extended regular expressions grep -E and Python's re read alike (no backslash, no POSIX class,
# no interval)
AuditPattern = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_ ,.=/^$()|*+?!<>:\[\]-]+$", max_length=256)
]
AuditRulesFile = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}-[a-z0-9][a-z0-9-]*\.rules$")]
AUDIT_RULES_DIR = "/etc/audit/rules.d"
# what loads a rules file into the kernel on a running system; a build's rules need it once,
# after all rules (auditd runs it at every boot)
AUDIT_RELOAD = "augenrules --load >/dev/null"


class AuditRules(Spec):
    """Audit rules the kernel enforces (VM only). ``expect`` patterns each match a loaded rule
    (``auditctl -l`` on a running system, the files of /etc/audit/rules.d at rest); with
    ``privileged_programs`` every setuid/setgid program on the system has its own
    ``-F path=P -F perm=x`` rule. Remediation writes ``rules`` (or one rule per privileged
    program) to ``/etc/audit/rules.d/<file>`` and loads them once after all rules."""

    file: AuditRulesFile
    rules: list[AuditRuleLine] = Field(default_factory=list, max_length=256)
    expect: list[AuditPattern] = Field(default_factory=list, max_length=256)
    privileged_programs: bool = False

    @field_validator("expect")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if "[:" in pattern or "{" in pattern:
                raise ValueError(
                    f"pattern {pattern!r}: POSIX classes and intervals are not read alike"
                )
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"pattern {pattern!r} is not a regular expression: {e}") from e
        return v

    @model_validator(mode="after")
    def _something(self) -> AuditRules:
        if self.privileged_programs == bool(self.rules):
            raise ValueError("give either rules (with expect) or privileged_programs: true")
        if self.rules and not self.expect:
            raise ValueError("rules need expect: the patterns the loaded rules must match")
        return self


class Command(Spec):
    """Escape hatch for what genuinely needs execution: ``check`` exits 0 when compliant,
    ``remediation`` makes it so. For a container image the check runs in a contained container
    (the report marks its result ``executed``); without an engine it is an ``error``."""

    check: str = Field(min_length=1, max_length=4096)
    remediation: str = Field(min_length=1, max_length=8192)
    # a reload the remediation needs before the check can pass on a running system (e.g.
    # ``augenrules --load``): run once after all rules of the script, on a live system only,
    # then the check
    after: str | None = Field(default=None, min_length=1, max_length=1024)

    @field_validator("check", "remediation", "after")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("must not contain NUL bytes")
        return v


KIND_MODELS: dict[RuleKind, type[Spec]] = {
    RuleKind.PACKAGE_ABSENT: PackageAbsent,
    RuleKind.PACKAGE_PRESENT: PackagePresent,
    RuleKind.SERVICE_DISABLED: ServiceDisabled,
    RuleKind.FILE_ABSENT: FileAbsent,
    RuleKind.FILE_PERMISSIONS: FilePermissions,
    RuleKind.CONFIG_LINE: ConfigLine,
    RuleKind.SYSCTL: Sysctl,
    RuleKind.KERNEL_MODULE_DISABLED: KernelModuleDisabled,
    RuleKind.MOUNT_OPTION: MountOption,
    RuleKind.SUID_SGID_ALLOWLIST: SuidSgidAllowlist,
    RuleKind.WORLD_WRITABLE: WorldWritable,
    RuleKind.ACCOUNTS: Accounts,
    RuleKind.IMAGE_CONFIG: ImageConfig,
    RuleKind.APT: Apt,
    RuleKind.AUDIT_RULES: AuditRules,
    RuleKind.COMMAND: Command,
}

# kinds that only make sense on a VM (a container shares the host kernel and has no mounts/boot)
VM_ONLY_KINDS = frozenset(
    {RuleKind.KERNEL_MODULE_DISABLED, RuleKind.MOUNT_OPTION, RuleKind.AUDIT_RULES}
)
CONTAINER_ONLY_KINDS = frozenset({RuleKind.IMAGE_CONFIG})


def spec_as_dict(spec: Spec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


# Why a rule written for VMs does not apply to a container image: the host enforces it. Shown
# as the not_applicable reason when a container profile includes the VM rules of its framework.
HOST_ENFORCED_WHY: dict[RuleKind, str] = {
    RuleKind.SYSCTL: "a container shares the host's kernel: the host sets kernel parameters",
    RuleKind.KERNEL_MODULE_DISABLED: "a container cannot load kernel modules: the host's "
    "kernel decides which modules exist",
    RuleKind.MOUNT_OPTION: "the container runtime sets a container's mounts, not the image",
    RuleKind.SERVICE_DISABLED: "no init system runs in a container: services are the host's",
    RuleKind.AUDIT_RULES: "a container shares the host's kernel: the host's audit rules apply",
}
HOST_ENFORCED_DEFAULT = (
    "enforced by the host: a container image has no boot, no logins and no services of its own"
)
