"""Render resolved rules into POSIX sh remediation scripts (jinja2 templates per rule kind).

A script runs every rule of one :class:`Phase` in a fixed order. Each rule runs in a subshell with
``set -e``; before it the script prints ``@@harden-rule <id>`` to stdout, on failure
``@@harden-failed <id> <status>`` to stderr and stops; at the end it prints ``@@harden-done``.
After each rule it prints ``@@harden-time <id> <centiseconds>`` (read from ``/proc/uptime``).
:func:`parse_failure` and :func:`rule_times` read those markers back.

Every file path is written as ``"$R"/path`` with ``R="${HARDEN_ROOT:-}"``, so a script can be run
against a root folder (tests); commands that only work on a live system (apt-get, systemctl,
sysctl -w, modprobe, mount) are skipped when ``$R`` is set. Every value from a baseline goes
through :func:`shlex.quote` (the ``quote``, ``rooted``, ``rooted_glob`` and ``glob_pattern``
filters); the one exception is a ``command`` rule's ``remediation`` and ``check`` text, which is
shell by definition.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jinja2

from harden.baseline.kinds import (
    AUDIT_RELOAD,
    AUDIT_RULES_DIR,
    Accounts,
    Apt,
    AuditRules,
    Command,
    Compare,
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
from harden.baseline.pam import PAM_EFFECT
from harden.baseline.resolve import ResolvedBaseline, Rule
from harden.errors import BaselineError, RemediationError
from harden.paths import templates_dir
from harden.target import CommandResult, TargetKind, walk_prune

RULE_MARKER = "@@harden-rule"
FAILED_MARKER = "@@harden-failed"
DONE_MARKER = "@@harden-done"
TIME_MARKER = "@@harden-time"  # "@@harden-time <id> <centiseconds>" after each rule

_FAMILY_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_GLOB_CHARS = frozenset("*?[]")
# a path component that may stay unquoted: the AbsPath alphabet without the slash
_SAFE_GLOB_COMPONENT = re.compile(r"^[A-Za-z0-9_.+@%*?\[\]\-]+$")
_UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
)
# shells that do not allow an interactive login
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")
TMPFS_MOUNTPOINTS = frozenset({"/tmp", "/dev/shm"})  # noqa: S108 - fstab mount points


class Phase(StrEnum):
    NETWORK = "network"  # needs the package mirror (runs with network "host")
    OFFLINE = "offline"  # everything else (runs with network "none")


@dataclass(frozen=True)
class RemediationFailure:
    rule_id: str  # "" when the script failed before any rule started
    exit_status: int
    output: str


# purges first, then config files, sysctl, modules, mounts; permissions, suid and
# world-writable fixes last so they also cover files the earlier steps created
KIND_ORDER: tuple[RuleKind, ...] = (
    RuleKind.PACKAGE_ABSENT,
    RuleKind.PACKAGE_PRESENT,
    RuleKind.SERVICE_DISABLED,
    RuleKind.FILE_ABSENT,
    RuleKind.CONFIG_LINE,
    RuleKind.SYSCTL,
    RuleKind.KERNEL_MODULE_DISABLED,
    RuleKind.MOUNT_OPTION,
    RuleKind.ACCOUNTS,
    RuleKind.APT,
    RuleKind.COMMAND,
    RuleKind.FILE_PERMISSIONS,
    RuleKind.SUID_SGID_ALLOWLIST,
    # after the setuid bits that stay are known: one audit rule per privileged program
    RuleKind.AUDIT_RULES,
    RuleKind.WORLD_WRITABLE,
    RuleKind.IMAGE_CONFIG,
)
_ORDER = {k: i for i, k in enumerate(KIND_ORDER)}


# ---------------------------------------------------------------- quoting filters


def quote(value: object) -> str:
    """The one quoting function: ``shlex.quote`` of the value's text."""
    if isinstance(value, bool):
        value = "yes" if value else "no"
    return shlex.quote(str(value))


def rooted(path: str) -> str:
    """A literal path under the script's root folder: ``"$R"/etc/x``."""
    if not path.startswith("/"):
        raise BaselineError(f"path {path!r} is not absolute")
    return '"$R"' + quote(path)


def _has_glob(component: str) -> bool:
    return any(c in _GLOB_CHARS for c in component)


def glob_pattern(path: str) -> str:
    """A path as a shell pattern: literal components quoted, glob components left bare.

    A bare component must consist of the AbsPath alphabet only (no space, quote, ``$`` or
    backquote), so leaving it unquoted lets the shell expand the glob and nothing else.
    """
    if not path.startswith("/"):
        raise BaselineError(f"path {path!r} is not absolute")
    words = []
    for component in path.split("/")[1:]:
        if not component:
            words.append("")
        elif _has_glob(component):
            if not _SAFE_GLOB_COMPONENT.match(component):
                raise BaselineError(f"path {path!r}: unsafe characters in glob {component!r}")
            words.append(component)
        else:
            words.append(quote(component))
    return "/" + "/".join(words)


def rooted_glob(path: str) -> str:
    """A path pattern under the root folder: ``"$R"/etc/ssh/ssh_host_*``."""
    return '"$R"' + glob_pattern(path)


def template_environment() -> jinja2.Environment:
    """The jinja2 environment for remediation templates (StrictUndefined, no autoescape)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "remediation")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell, not HTML; values go through `quote`
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["quote"] = quote
    env.filters["rooted"] = rooted
    env.filters["rooted_glob"] = rooted_glob
    env.filters["glob_pattern"] = glob_pattern
    env.globals["walk_prune"] = walk_prune
    return env


# ---------------------------------------------------------------- derived values


def _strs(value: list[str] | str, what: str) -> list[str]:
    if isinstance(value, str):  # an unresolved ${param}: resolve() substitutes these
        raise BaselineError(f"{what} is an unresolved parameter reference {value!r}")
    return list(value)


def _int(value: int | str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BaselineError(f"{what} must be an integer, got {value!r}")
    return value


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def removal_mode(max_mode: str) -> str:
    """The symbolic chmod argument that removes every bit beyond ``max_mode`` (e.g. 0640 ->
    ``u-xs,g-wxs,o-rwxt``); "" when nothing is to remove."""
    allowed = int(max_mode, 8)
    table = (
        ("u", ((0o400, "r"), (0o200, "w"), (0o100, "x"), (0o4000, "s"))),
        ("g", ((0o040, "r"), (0o020, "w"), (0o010, "x"), (0o2000, "s"))),
        ("o", ((0o004, "r"), (0o002, "w"), (0o001, "x"), (0o1000, "t"))),
    )
    parts = []
    for who, bits in table:
        letters = "".join(letter for bit, letter in bits if not allowed & bit)
        if letters:
            parts.append(who + "-" + letters)
    return ",".join(parts)


def unit_file_name(unit: str) -> str:
    return unit if unit.endswith(_UNIT_SUFFIXES) else unit + ".service"


def _ctx_packages(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, PackageAbsent | PackagePresent)
    return {"packages": _strs(spec.packages, "packages")}


def _ctx_service(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, ServiceDisabled)
    return {"units": [unit_file_name(u) for u in _strs(spec.units, "units")], "mask": spec.mask}


def _ctx_file_absent(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, FileAbsent)
    paths = _strs(spec.paths, "paths")
    for p in paths:
        first = p.split("/")[1] if p.count("/") >= 1 else ""
        if not first or _has_glob(first):
            raise BaselineError(
                f"file_absent path {p!r} is too broad",
                hint="name at least the top-level folder literally, e.g. /root/.cache",
            )
    return {"paths": paths}


def _ctx_file_permissions(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, FilePermissions)
    return {
        "paths": _strs(spec.paths, "paths"),
        "owner": spec.owner,
        "group": spec.group,
        "chmod": removal_mode(spec.max_mode),
        "missing_ok": spec.missing_ok,
    }


def _ctx_config_line(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, ConfigLine)
    value = _text(spec.value)
    write_value = value
    if spec.compare is Compare.ONE_OF:
        # the value lists the acceptable choices; write the first (the baseline's preference)
        write_value = value.split(",")[0].strip()
    sep = {"equals": "=", "spaced_equals": " = "}.get(spec.separator, " ")
    line = spec.key + sep + write_value
    keep_int: int | None = None
    if spec.compare in (Compare.LE, Compare.GE):
        try:
            keep_int = int(value)
        except ValueError as e:
            raise BaselineError(
                f"config_line {spec.key}: compare {spec.compare.value} needs an integer value, "
                f"got {value!r}"
            ) from e
    mode = "inplace"
    dropin_file = include_line = ""
    if spec.dropin_dir is not None:
        if _has_glob(spec.dropin_dir):
            raise BaselineError(f"dropin_dir {spec.dropin_dir!r} must not contain glob characters")
        d = spec.dropin_dir.rstrip("/") or "/"
        if spec.match == "first":
            mode = "dropin_first"
            dropin_file = d + "/00-harden.conf"
            include_line = "Include " + d + "/*.conf"
        else:
            mode = "dropin_last"
            dropin_file = d + "/99-harden.conf"
    return {
        "path": spec.path,
        "key": spec.key,
        "line": line,
        "mode": mode,
        "dropin_dir": spec.dropin_dir or "",
        "dropin_file": dropin_file,
        "include_line": include_line,
        "match": spec.match,
        "compare": spec.compare.value,
        "keep_int": keep_int,
        "one_of": [v.strip().lower() for v in value.split(",") if v.strip()],
        "requires_file": spec.requires_file,
        "pam": _pam_ctx(spec, write_value),
    }


def _pam_ctx(spec: ConfigLine, write_value: str) -> dict[str, Any] | None:
    """How to put the module that reads ``spec.path`` into the PAM stack (None: not a PAM file)."""
    effect = PAM_EFFECT.get(str(spec.path))
    if effect is None:
        return None
    arg = f" {spec.key}={write_value}" if spec.key in effect.argument_keys else ""
    profiles = [{"name": p.name, "text": p.text.replace("{arg}", arg)} for p in effect.profiles]
    names = [p.name for p in effect.profiles]
    if effect.packaged_profile:
        names.append(effect.packaged_profile)
    needs = [{"stack": n.stack, "ptype": n.ptype, "args": list(n.args)} for n in effect.needs]
    return {"module": effect.module, "profiles": profiles, "names": names, "needs": needs}


def _ctx_sysctl(spec: Spec, target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, Sysctl)
    value = _text(spec.value)
    return {
        "key": spec.key,
        "value": value,
        "line": spec.key + " = " + value,
        "proc_path": glob_pattern("/proc/sys/" + spec.key.replace(".", "/")),
        "live": target is TargetKind.VM,
    }


def _ctx_modules(spec: Spec, target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, KernelModuleDisabled)
    return {"modules": _strs(spec.modules, "modules"), "live": target is TargetKind.VM}


def _merge_mount_options(options: Sequence[str], tmpfs_size: str | None) -> list[str]:
    opts = list(dict.fromkeys(o for opt in options for o in opt.split(",") if o))
    if tmpfs_size is not None:
        opts = [o for o in opts if not o.startswith("size=")] + ["size=" + tmpfs_size]
    return opts


def _ctx_mount(spec: Spec, target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, MountOption)
    if _has_glob(spec.mountpoint):
        raise BaselineError(f"mountpoint {spec.mountpoint!r} must not contain glob characters")
    mountpoint = spec.mountpoint.rstrip("/") or "/"
    opts = _merge_mount_options(_strs(spec.options, "options"), spec.tmpfs_size)
    tmpfs = mountpoint in TMPFS_MOUNTPOINTS
    return {
        "mountpoint": mountpoint,
        "options": ",".join(opts),
        "tmpfs_line": (
            "tmpfs\t" + mountpoint + "\ttmpfs\t" + ",".join(["defaults", *opts]) + "\t0\t0"
            if tmpfs
            else ""
        ),
        "required": spec.required,
        "live": target is TargetKind.VM,
    }


def _ctx_suid(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, SuidSgidAllowlist)
    return {"allowlist": _strs(spec.allowlist, "allowlist")}


def _ctx_world_writable(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, WorldWritable)
    return {"exclude": [p.rstrip("/") or "/" for p in _strs(spec.exclude, "exclude")]}


def _ctx_accounts(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, Accounts)
    allow = _strs(spec.allow_login, "allow_login")
    return {
        "check": spec.check.value,
        "uid_min": _int(spec.uid_min, "uid_min"),
        # a space-separated, space-padded list: awk tests index(allow, " " name " ")
        "allow_login": " " + " ".join(allow) + " ",
        "nologin_shells": " " + " ".join(NOLOGIN_SHELLS) + " ",
    }


def _ctx_image_config(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, ImageConfig)
    return {"check": spec.check.value}


def _ctx_apt(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, Apt)
    return {"check": spec.check.value}


def audit_check_script(spec: AuditRules) -> str:
    """The shell form of an ``audit_rules`` check, for a build's "already compliant?" test and
    its re-check after the reload (the verifier judges the same facts in Python): the loaded
    rules on a running system, else the rules files under the script's root folder ``$R``."""
    out = [
        'if [ -z "${R:-}" ] && [ -d /run/systemd/system ]; then r=$(auditctl -l 2>&1) || '
        '{ echo "auditctl -l: $r"; exit 1; }; s="auditctl -l"; '
        f'else r=$(cat "${{R:-}}"{AUDIT_RULES_DIR}/*.rules 2>/dev/null); s={AUDIT_RULES_DIR}; fi'
    ]
    if spec.expect:
        out.append(
            f"for p in {' '.join(quote(p) for p in spec.expect)}; do "
            'printf \'%s\\n\' "$r" | grep -Eq -- "$p" || { echo "not in $s: $p"; exit 1; }; '
            'done; echo "all in $s"'
        )
    if spec.privileged_programs:
        root = '"${R:-}"'
        out.append(
            f"n=0; for f in $(find {root}/ {walk_prune(root)} -type f -perm /6000 -print "
            '2>/dev/null); do f=${f#"${R:-}"}; n=$((n + 1)); '
            'printf \'%s\\n\' "$r" | grep -Fq -- "-F path=$f -F perm=x" || '
            '{ echo "not in $s: $f"; exit 1; }; done; echo "$n setuid/setgid programs, each in $s"'
        )
    return "\n".join(out)


def _ctx_audit_rules(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, AuditRules)
    return {
        "path": f"{AUDIT_RULES_DIR}/{spec.file}",
        "rules": list(spec.rules),
        "privileged_programs": spec.privileged_programs,
        "check": audit_check_script(spec),
        "after": AUDIT_RELOAD,
    }


def _ctx_command(spec: Spec, _target: TargetKind) -> dict[str, Any]:
    assert isinstance(spec, Command)
    return {
        "remediation": spec.remediation.rstrip("\n"),
        "check": spec.check.rstrip("\n"),
        "after": spec.after.rstrip("\n") if spec.after is not None else None,
    }


_CONTEXT: Mapping[RuleKind, Callable[[Spec, TargetKind], dict[str, Any]]] = {
    RuleKind.PACKAGE_ABSENT: _ctx_packages,
    RuleKind.PACKAGE_PRESENT: _ctx_packages,
    RuleKind.SERVICE_DISABLED: _ctx_service,
    RuleKind.FILE_ABSENT: _ctx_file_absent,
    RuleKind.FILE_PERMISSIONS: _ctx_file_permissions,
    RuleKind.CONFIG_LINE: _ctx_config_line,
    RuleKind.SYSCTL: _ctx_sysctl,
    RuleKind.KERNEL_MODULE_DISABLED: _ctx_modules,
    RuleKind.MOUNT_OPTION: _ctx_mount,
    RuleKind.SUID_SGID_ALLOWLIST: _ctx_suid,
    RuleKind.WORLD_WRITABLE: _ctx_world_writable,
    RuleKind.ACCOUNTS: _ctx_accounts,
    RuleKind.IMAGE_CONFIG: _ctx_image_config,
    RuleKind.APT: _ctx_apt,
    RuleKind.AUDIT_RULES: _ctx_audit_rules,
    RuleKind.COMMAND: _ctx_command,
}


# ---------------------------------------------------------------- rendering


def remediation_rules(baseline: ResolvedBaseline, target: TargetKind, today: dt.date) -> list[Rule]:
    """The rules a build applies on ``target``: those for that target, not actively waived."""
    rules = []
    for r in baseline.rules:
        if target.value not in {t.value for t in r.targets}:
            continue
        w = baseline.waivers.get(r.id)
        if w is not None and w.active_on(today):
            continue
        rules.append(r)
    return rules


def rule_phase(rule: Rule) -> Phase:
    return Phase.NETWORK if rule.kind is RuleKind.PACKAGE_PRESENT else Phase.OFFLINE


def _family_template(env: jinja2.Environment, family: str, name: str) -> jinja2.Template:
    if not _FAMILY_RE.match(family) or not (templates_dir() / "remediation" / family).is_dir():
        raise BaselineError(
            f"no remediation templates for distribution family {family!r}",
            hint="supported: " + ", ".join(supported_families()),
        )
    try:
        return env.get_template(family + "/" + name)
    except jinja2.TemplateNotFound as e:
        raise BaselineError(
            f"no remediation template {name} for family {family!r}",
            hint="this rule kind cannot be remediated on this family; waive or exclude the rule",
        ) from e


def supported_families() -> list[str]:
    root = templates_dir() / "remediation"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "common")


@dataclass(frozen=True)
class _Deferred:
    """Where a rule's ``after`` action goes in its script (see :func:`render_script`)."""

    number: int  # the rule's place in the script: its flag file is "$harden_tmp/r<number>"
    action: int  # the action's number (flag "a<action>")


def _after_of(rule: Rule) -> str | None:
    if isinstance(rule.spec, Command) and rule.spec.after is not None:
        return rule.spec.after.rstrip("\n")
    if isinstance(rule.spec, AuditRules):
        return AUDIT_RELOAD
    return None


def _check_of(rule: Rule) -> str:
    """The shell check of a rule with an ``after`` action, run again after it."""
    if isinstance(rule.spec, AuditRules):
        return audit_check_script(rule.spec)
    assert isinstance(rule.spec, Command)
    return rule.spec.check.rstrip("\n")


def _render_rule(
    env: jinja2.Environment,
    rule: Rule,
    family: str,
    target: TargetKind,
    deferred: _Deferred | None = None,
) -> str:
    template = _family_template(env, family, rule.kind.value + ".sh.j2")
    ctx = _CONTEXT[rule.kind](rule.spec, target)
    if rule.kind in (RuleKind.COMMAND, RuleKind.AUDIT_RULES):
        ctx["deferred"] = deferred or _Deferred(number=1, action=1)
    body = template.render(rule=rule, target=target.value, **ctx)
    if rule.kind is RuleKind.IMAGE_CONFIG:
        return body
    wrapper = env.get_template("common/rule.sh.j2")
    conditions = [
        {"package": c.package_installed, "file": c.file_exists, "text": c.describe()}
        for c in rule.when
    ]
    return wrapper.render(rule=rule, body=body.rstrip("\n"), conditions=conditions)


def render_rule(rule: Rule, family: str, target: TargetKind) -> str:
    """The shell block for one rule (needs the helper functions of :func:`render_script`)."""
    return _render_rule(template_environment(), rule, family, target)


def render_script(
    rules: Sequence[Rule],
    family: str,
    target: TargetKind,
    phase: Phase,
) -> str:
    """One POSIX sh script with every rule of ``phase``, in :data:`KIND_ORDER`.

    A ``command`` rule's ``after`` action (and an ``audit_rules`` rule's reload) (a reload such as ``augenrules --load``) runs once,
    after all rules, on a live system, when a rule that names it was remediated; then those
    rules' checks run.
    """
    env = template_environment()
    _family_template(env, family, "helpers.sh.j2")  # fails early for an unknown family
    selected = sorted((r for r in rules if rule_phase(r) is phase), key=lambda r: _ORDER[r.kind])
    actions: dict[str, list[tuple[int, Rule]]] = {}
    blocks = []
    for number, r in enumerate(selected, start=1):
        after = _after_of(r)
        deferred = None
        if after is not None:
            actions.setdefault(after, []).append((number, r))
            deferred = _Deferred(number=number, action=list(actions).index(after) + 1)
        blocks.append(_render_rule(env, r, family, target, deferred).rstrip("\n"))
    after_blocks = [
        {
            "number": i,
            "text": text,
            "id": "after:" + users[0][1].id,
            "rules": [{"number": n, "id": r.id, "check": _check_of(r)} for n, r in users],
        }
        for i, (text, users) in enumerate(actions.items(), start=1)
    ]
    return env.get_template("common/script.sh.j2").render(
        family=family,
        target=target.value,
        phase=phase.value,
        blocks=blocks,
        after_blocks=after_blocks,
    )


# ---------------------------------------------------------------- reading the markers back

_FAILED_RE = re.compile(r"^" + FAILED_MARKER + r" (\S+) (-?[0-9]+)\s*$", re.MULTILINE)
_RULE_RE = re.compile(r"^" + RULE_MARKER + r" (\S+)\s*$", re.MULTILINE)
_MARKER_LINE_RE = re.compile(r"^@@harden-[a-z]+( .*)?\n?", re.MULTILINE)
_OUTPUT_LIMIT = 8000


def parse_failure(stdout: str, stderr: str, exit_status: int) -> RemediationFailure | None:
    """The failed rule of a script run, or None when the script ran to its end."""
    done = re.search(r"^" + DONE_MARKER + r"\s*$", stdout, re.MULTILINE) is not None
    if exit_status == 0 and done:
        return None
    failed = list(_FAILED_RE.finditer(stderr)) or list(_FAILED_RE.finditer(stdout))
    started = list(_RULE_RE.finditer(stdout))
    if failed:
        rule_id = failed[-1].group(1)
        status = int(failed[-1].group(2))
    else:
        rule_id = started[-1].group(1) if started else ""
        status = exit_status
    # the failing rule's own stdout, then stderr, without the marker lines
    rule_out = ""
    for m in started:
        if m.group(1) == rule_id:
            rule_out = stdout[m.end() :]
    text = _MARKER_LINE_RE.sub("", rule_out.lstrip("\n") + stderr).strip()
    if len(text) > _OUTPUT_LIMIT:
        text = "..." + text[-_OUTPUT_LIMIT:]
    return RemediationFailure(rule_id=rule_id, exit_status=status, output=text)


_TIME_RE = re.compile(r"^" + TIME_MARKER + r" (\S+) ([0-9]+)\s*$", re.MULTILINE)


def rule_times(stdout: str) -> dict[str, float]:
    """Seconds each rule of a script run took (from its ``@@harden-time`` markers)."""
    times: dict[str, float] = {}
    for m in _TIME_RE.finditer(stdout):
        times[m.group(1)] = times.get(m.group(1), 0.0) + int(m.group(2)) / 100
    return times


def slowest(times: Mapping[str, float], n: int = 8) -> str:
    """The ``n`` slowest rules and the total, for a progress line."""
    top = sorted(times.items(), key=lambda kv: kv[1], reverse=True)[:n]
    rest = ", ".join(f"{rid} {sec:.1f} s" for rid, sec in top)
    return f"{len(times)} rules in {sum(times.values()):.1f} s; slowest: {rest or '-'}"


def check_remediation(result: CommandResult, *, consequence: str = "") -> None:
    """Raise RemediationError naming the failed rule and its output when a script run failed.

    ``consequence`` is added to the message (e.g. "; no template written")."""
    failure = parse_failure(
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
        result.exit_status,
    )
    if failure is not None:
        what = f"rule {failure.rule_id}" if failure.rule_id else "the remediation script"
        raise RemediationError(
            f"remediation of {what} failed (exit {failure.exit_status}){consequence}",
            hint="command output:\n" + (failure.output or "(none)")[-2000:],
        )
