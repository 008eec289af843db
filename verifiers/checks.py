"""Evaluate each rule kind against gathered facts. Pure: no I/O, no clock.

Each check returns an :class:`Outcome` (passed or failed, with evidence: what was found). The
runner adds applicability (target, platform, conditions) and waivers around it.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harden.baseline.kinds import (
    AUDIT_RULES_DIR,
    AccountCheck,
    Accounts,
    Apt,
    AptCheck,
    AuditRules,
    Command,
    Compare,
    ConfigLine,
    FileAbsent,
    FilePermissions,
    ImageCheck,
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
from harden.baseline.resolve import Rule
from harden.target import TargetKind
from harden.verifiers import aptconf
from harden.verifiers.facts import AUDIT_LOADED, SYSCTL_DIRS, SYSCTL_FILES, Facts
from harden.verifiers.pam import effect as pam_effect

MAX_EVIDENCE = 20  # lines per rule; the rest is summarised


@dataclass(frozen=True)
class Outcome:
    passed: bool
    evidence: tuple[str, ...]
    not_applicable: str | None = None  # set when the check finds the rule does not apply

    @classmethod
    def ok(cls, *evidence: str) -> Outcome:
        return cls(True, tuple(evidence))

    @classmethod
    def fail(cls, *evidence: str) -> Outcome:
        return cls(False, _cap(evidence))

    @classmethod
    def na(cls, why: str) -> Outcome:
        return cls(True, (), why)


def _cap(lines: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    lines = tuple(lines)
    if len(lines) <= MAX_EVIDENCE:
        return lines
    return (*lines[:MAX_EVIDENCE], f"... and {len(lines) - MAX_EVIDENCE} more")


@dataclass(frozen=True)
class CheckContext:
    target: TargetKind
    facts: Facts
    image_config: Mapping[str, Any] | None


Checker = Callable[[Any, CheckContext], Outcome]


# ---------------------------------------------------------------- packages and services


def _package_absent(spec: PackageAbsent, ctx: CheckContext) -> Outcome:
    wanted = list(spec.packages)
    installed = ctx.facts.installed_packages()
    found = [p for p in wanted if p in installed]
    if found:
        return Outcome.fail(*(f"installed: {p}" for p in found))
    return Outcome.ok(f"not installed: {', '.join(wanted)}")


def _package_present(spec: PackagePresent, ctx: CheckContext) -> Outcome:
    installed = ctx.facts.installed_packages()
    missing = [p for p in spec.packages if p not in installed]
    if missing:
        return Outcome.fail(*(f"not installed: {p}" for p in missing))
    return Outcome.ok(f"installed: {', '.join(spec.packages)}")


def unit_state(facts: Facts, unit: str) -> tuple[str, list[str]]:
    """('absent'|'masked'|'enabled'|'disabled', evidence) from unit files, symlinks and systemctl."""
    lines = facts.lines("unit:" + unit)
    files = [ln for ln in lines if ln.startswith(("file ", "link "))]
    wanted = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("wanted ")]
    enabled = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("is-enabled ")), "")
    active = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("is-active ")), "")
    masked = any(
        ln.startswith(("link /etc/systemd/system ", "link /run/systemd/system "))
        and ln.endswith(" /dev/null")
        for ln in files
    ) or enabled.strip() in {"masked", "masked-runtime"}
    if masked:
        return "masked", [f"{unit}: masked"]
    if not files and not wanted and enabled.strip() in {"", "not-found"}:
        return "absent", [f"{unit}: no unit file"]
    ev = [f"{unit}: wanted by {w}" for w in wanted]
    if enabled.strip() in {"enabled", "enabled-runtime", "alias", "indirect", "linked"}:
        ev.append(f"{unit}: systemctl is-enabled: {enabled.strip()}")
    if active.strip() in {"active", "activating", "reloading"}:
        ev.append(f"{unit}: systemctl is-active: {active.strip()}")
    if ev:
        return "enabled", ev
    return "disabled", [f"{unit}: disabled"]


def _service_disabled(spec: ServiceDisabled, ctx: CheckContext) -> Outcome:
    bad: list[str] = []
    good: list[str] = []
    for unit in spec.units:
        state, ev = unit_state(ctx.facts, unit)
        (bad if state == "enabled" else good).extend(ev)
    if bad:
        return Outcome.fail(*bad)
    return Outcome.ok(*good)


# ---------------------------------------------------------------- files


def _file_absent(spec: FileAbsent, ctx: CheckContext) -> Outcome:
    found = [e.path for p in spec.paths for e in ctx.facts.stats(p)]
    if found:
        return Outcome.fail(*(f"present: {p}" for p in found))
    return Outcome.ok(f"absent: {', '.join(spec.paths)}")


def _file_permissions(spec: FilePermissions, ctx: CheckContext) -> Outcome:
    max_mode = int(str(spec.max_mode), 8)
    bad: list[str] = []
    good: list[str] = []
    seen = 0
    for pattern in spec.paths:
        for e in ctx.facts.stats(pattern):
            seen += 1
            problems = []
            if e.type == "symbolic link":
                continue
            if e.mode & ~max_mode & 0o7777:
                problems.append(f"mode {e.mode:04o} is more permissive than {max_mode:04o}")
            if spec.owner and e.owner != spec.owner:
                problems.append(f"owner {e.owner}, expected {spec.owner}")
            if spec.group and e.group != spec.group:
                problems.append(f"group {e.group}, expected {spec.group}")
            if problems:
                bad.append(f"{e.path}: " + "; ".join(problems))
            else:
                good.append(f"{e.path}: {e.mode:04o} {e.owner}:{e.group}")
    if bad:
        return Outcome.fail(*bad)
    if seen == 0:
        if spec.missing_ok:
            return Outcome.na(f"no file matches {', '.join(spec.paths)}")
        return Outcome.fail(f"missing: {', '.join(spec.paths)}")
    return Outcome.ok(*good)


# ---------------------------------------------------------------- config lines


def _split(line: str, separator: str) -> tuple[str, str] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if separator == "spaced_equals":
        # auditd.conf's parser splits on blanks: "key = value" or the line is an error there
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[1] != "=":
            return None
        return parts[0], (parts[2].strip().strip('"') if len(parts) == 3 else "")
    if separator == "equals":
        key, sep, value = line.partition("=")
        if not sep:
            return None
        return key.strip(), value.strip().strip('"')
    parts = line.split(None, 1)
    if len(parts) == 1:
        return parts[0], ""
    value = parts[1].strip()
    if "#" in value and separator == "space":
        value = value.split(" #", 1)[0].strip()
    return parts[0], value.strip('"')


def effective_config(spec: ConfigLine, facts: Facts) -> tuple[str | None, str]:
    """The effective value of ``spec.key`` and where it came from."""
    key = spec.key.lower()
    path = str(spec.path)
    dropins = sorted(facts.lines("dir:" + spec.dropin_dir)) if spec.dropin_dir else []

    def walk(file: str, depth: int) -> list[tuple[str, str]]:
        text = facts.file(file)
        if text is None or depth > 4:
            return []
        found: list[tuple[str, str]] = []
        for raw in text.splitlines():
            kv = _split(raw, spec.separator)
            if kv is None:
                continue
            k, v = kv
            if k.lower() == "match" and spec.match == "first":
                break  # settings after Match apply conditionally (sshd)
            if k.lower() == "include" and spec.dropin_dir:
                for pattern in v.split():
                    if not pattern.startswith("/"):
                        pattern = posixpath.join(posixpath.dirname(path), pattern)
                    for inc in dropins:
                        if fnmatch.fnmatch(inc, pattern):
                            found.extend(walk(inc, depth + 1))
                continue
            if k.lower() == key:
                found.append((v, file))
        return found

    values = walk(path, 0)
    main_includes = any(
        (kv := _split(raw, spec.separator)) is not None and kv[0].lower() == "include"
        for raw in (facts.file(path) or "").splitlines()
    )
    if spec.dropin_dir and spec.match == "last" and not main_includes:
        # systemd-style *.conf.d (journald, pwquality): drop-ins are read after the main
        # file in lexical order of their names, and the last assignment wins
        for inc in sorted(dropins, key=posixpath.basename):
            if inc.endswith(".conf"):
                values.extend(walk(inc, 1))
    if not values:
        return None, path
    value, source = values[0] if spec.match == "first" else values[-1]
    return value, source


def compare(actual: str, spec_value: str | int, how: Compare) -> bool:
    expected = str(spec_value)
    if how is Compare.EQ:
        return actual.strip().lower() == expected.strip().lower()
    if how in (Compare.LE, Compare.GE):
        try:
            a, e = int(actual.split()[0]), int(expected)
        except (ValueError, IndexError):
            return False
        return a <= e if how is Compare.LE else a >= e
    allowed = {x.strip().lower() for x in expected.split(",") if x.strip()}
    if how is Compare.ONE_OF:
        return actual.strip().lower() in allowed
    items = [x.strip().lower() for x in actual.split(",") if x.strip()]
    return bool(items) and all(i in allowed for i in items)


_WORDS = {"eq": "=", "le": "<=", "ge": ">=", "one_of": "one of", "subset": "subset of"}


def _config_line(spec: ConfigLine, ctx: CheckContext) -> Outcome:
    path = str(spec.path)
    # the plan always asks whether the file exists; an empty "file:" section is not a file
    present = (
        ctx.facts.exists(path)
        if ctx.facts.has("exists:" + path)
        else ctx.facts.file(path) is not None
    )
    if not present:
        if spec.requires_file:
            return Outcome.na(f"{path} does not exist")
        return Outcome.fail(f"{path} does not exist")
    want = f"{spec.key} {_WORDS[spec.compare.value]} {spec.value}"
    sshd_t = ctx.facts.get("sshd-T")
    if (
        path.endswith("/sshd_config")
        and sshd_t is not None
        and ctx.facts.status.get("sshd-T") == 0
        and sshd_t.strip()
    ):
        for line in sshd_t.splitlines():
            kv = _split(line, "space")
            if kv and kv[0].lower() == spec.key.lower():
                ok = compare(kv[1], spec.value, spec.compare)
                ev = f"sshd -T: {kv[0]} {kv[1]} (want {want})"
                return Outcome.ok(ev) if ok else Outcome.fail(ev)
    value, source = effective_config(spec, ctx.facts)
    pam = pam_effect(ctx.facts, path)
    ignored_value: str | None = None
    if pam is not None and pam.file_ignored is not None and value is not None:
        # the module does not read this file here: the value written there has no effect
        ignored_value, value = f"{source}: {spec.key} {value} is ignored", None
    if pam is not None and spec.key.lower() in pam.args:
        # a module argument (pam_pwquality.so minlen=8) overrides the configuration file
        value, pam_line = pam.args[spec.key.lower()]
        source = pam_line.render()
    pam_why: tuple[str, ...] = ()
    if pam is not None and not pam.in_force:
        pam_why = pam.evidence
    if pam is not None and pam.file_ignored is not None and spec.key.lower() not in pam.args:
        pam_why = (*pam_why, pam.file_ignored)
    if value is None:
        if spec.missing_ok and not pam_why:
            return Outcome.ok(f"{spec.key} not set in {path} (default accepted)")
        first = ignored_value or f"{spec.key} not set in {path}"
        return Outcome.fail(f"{first} (want {want})", *pam_why)
    ev = f"{source}: {spec.key} {value} (want {want})"
    if pam is not None and not pam.in_force:
        return Outcome.fail(*pam.evidence, ev)
    ok = compare(value, spec.value, spec.compare)
    extra = pam.evidence if pam is not None else ()
    return Outcome.ok(ev, *extra) if ok else Outcome.fail(ev, *extra)


# ---------------------------------------------------------------- kernel


def _sysctl_files_in_order(facts: Facts) -> list[tuple[str, str]]:
    """systemd-sysctl order: by file name across dirs (earlier dir wins a name), then sysctl.conf."""
    files = facts.with_prefix("sysctlfile:")
    by_name: dict[str, str] = {}
    for d in SYSCTL_DIRS:
        for path in sorted(files):
            if posixpath.dirname(path) == d:
                by_name.setdefault(posixpath.basename(path), path)
    ordered = [(by_name[n], files[by_name[n]]) for n in sorted(by_name)]
    ordered += [(p, files[p]) for p in SYSCTL_FILES if p in files]
    return ordered


def _norm_key(key: str) -> str:
    return key.strip().lstrip("-").replace("/", ".")


def _sysctl(spec: Sysctl, ctx: CheckContext) -> Outcome:
    persisted: tuple[str, str] | None = None
    for path, text in _sysctl_files_in_order(ctx.facts):
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            k, sep, v = line.partition("=")
            if sep and _norm_key(k) == spec.key:
                persisted = (v.strip(), path)
    expected = str(spec.value)

    def matches(actual: str) -> bool:
        a = " ".join(actual.split())
        if spec.compare == "ge":
            try:
                return int(a) >= int(expected)
            except ValueError:
                return False
        return a == " ".join(expected.split())

    bad: list[str] = []
    good: list[str] = []
    if persisted is None:
        bad.append(f"{spec.key} not persisted under /etc/sysctl.d (want {expected})")
    elif matches(persisted[0]):
        good.append(f"{persisted[1]}: {spec.key} = {persisted[0]}")
    else:
        bad.append(f"{persisted[1]}: {spec.key} = {persisted[0]} (want {expected})")
    if ctx.target is TargetKind.VM:
        live = ctx.facts.get("sysctl-live:" + spec.key)
        if live is None or not live.strip():
            bad.append(f"{spec.key}: no live value in /proc/sys")
        elif matches(live.strip()):
            good.append(f"live: {spec.key} = {live.strip()}")
        else:
            bad.append(f"live: {spec.key} = {live.strip()} (want {expected})")
    return Outcome.fail(*bad) if bad else Outcome.ok(*good)


_BLOCKERS = {"/bin/false", "/bin/true", "/usr/bin/false", "/usr/bin/true"}


def _kernel_module(spec: KernelModuleDisabled, ctx: CheckContext) -> Outcome:
    installs: dict[str, str] = {}
    blacklisted: set[str] = set()
    for _path, text in sorted(ctx.facts.with_prefix("modprobe:").items()):
        for raw in text.splitlines():
            parts = raw.split()
            if len(parts) >= 3 and parts[0] == "install":
                installs[parts[1].replace("-", "_")] = " ".join(parts[2:])
            elif len(parts) >= 2 and parts[0] == "blacklist":
                blacklisted.add(parts[1].replace("-", "_"))
    loaded = {ln.split()[0] for ln in ctx.facts.lines("modules-loaded")}
    bad: list[str] = []
    good: list[str] = []
    for mod in spec.modules:
        m = str(mod).replace("-", "_")
        how = installs.get(m)
        if how is None or how.split()[0] not in _BLOCKERS:
            bad.append(f"{mod}: no 'install {mod} /bin/false' in modprobe.d")
        if m not in blacklisted:
            bad.append(f"{mod}: not blacklisted in modprobe.d")
        if ctx.target is TargetKind.VM and m in loaded:
            bad.append(f"{mod}: loaded (/proc/modules)")
        if how is not None and m in blacklisted and m not in loaded:
            good.append(f"{mod}: install {how}; blacklisted")
    return Outcome.fail(*bad) if bad else Outcome.ok(*good)


def _mount_option(spec: MountOption, ctx: CheckContext) -> Outcome:
    entry: list[str] | None = None
    for raw in ctx.facts.lines("mounts"):
        parts = raw.split()
        if len(parts) >= 4 and parts[1] == spec.mountpoint:
            entry = parts  # the last mount on a mount point is the visible one
    if entry is None:
        if spec.required:
            return Outcome.fail(f"{spec.mountpoint} is not a separate mount")
        return Outcome.na(f"{spec.mountpoint} is not a separate mount")
    opts = set(entry[3].split(","))
    missing = [o for o in spec.options if o not in opts]
    ev = f"{spec.mountpoint} ({entry[2]}) mounted {entry[3]}"
    if missing:
        return Outcome.fail(f"{ev}; missing {','.join(missing)}")
    # on a VM the options in force must also be the ones the next boot mounts with (fstab)
    if ctx.target is TargetKind.VM and ctx.facts.has("fstab"):
        for raw in ctx.facts.lines("fstab"):
            parts = raw.split()
            if len(parts) >= 4 and not parts[0].startswith("#") and parts[1] == spec.mountpoint:
                lost = [o for o in spec.options if o not in parts[3].split(",")]
                if lost:
                    return Outcome.fail(
                        ev, f"/etc/fstab: {spec.mountpoint} {parts[3]}; missing {','.join(lost)}"
                    )
                return Outcome.ok(ev, f"/etc/fstab: {spec.mountpoint} {parts[3]}")
    return Outcome.ok(ev)


# ---------------------------------------------------------------- filesystem walks


def _suid(spec: SuidSgidAllowlist, ctx: CheckContext) -> Outcome:
    allowed = set(spec.allowlist)
    found = ctx.facts.lines("suid")
    bad = [p for p in found if p not in allowed]
    if bad:
        return Outcome.fail(*(f"setuid/setgid not on the allow-list: {p}" for p in bad))
    return Outcome.ok(f"{len(found)} setuid/setgid file(s), all on the allow-list")


def _world_writable(spec: WorldWritable, ctx: CheckContext) -> Outcome:
    excluded = list(spec.exclude)
    bad = []
    for line in ctx.facts.lines("world-writable"):
        kind, _, path = line.partition(" ")
        if any(path == e or path.startswith(e.rstrip("/") + "/") for e in excluded):
            continue
        if kind == "file":
            bad.append(f"world-writable file: {path}")
        else:
            bad.append(f"world-writable directory without sticky bit: {path}")
    if bad:
        return Outcome.fail(*bad)
    return Outcome.ok("no world-writable files; world-writable directories are sticky")


# ---------------------------------------------------------------- audit rules


def audit_rules_in_force(facts: Facts) -> tuple[list[str], str] | Outcome:
    """The audit rules in force and where they were read: the kernel's list on a running
    system (``auditctl -l``), else the rules files augenrules loads at boot (``*.rules`` of
    /etc/audit/rules.d, in name order). A failing ``auditctl`` is a failed rule, never an
    empty list."""
    if facts.systemd_running:
        if AUDIT_LOADED not in facts.status:
            return Outcome.fail("the loaded audit rules were not read")
        text = facts.get(AUDIT_LOADED) or ""
        rc = facts.status[AUDIT_LOADED]
        if rc != 0:
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            return Outcome.fail(f"auditctl -l exited {rc}: {first}".rstrip(": "))
        lines = [ln for ln in text.splitlines() if ln.strip() and ln.strip() != "No rules"]
        return lines, "auditctl -l"
    files = sorted(f for f in facts.lines("dir:" + AUDIT_RULES_DIR) if f.endswith(".rules"))
    lines = [ln for f in files for ln in (facts.file(f) or "").splitlines() if ln.strip()]
    return lines, AUDIT_RULES_DIR


def _audit_rules(spec: AuditRules, ctx: CheckContext) -> Outcome:
    found = audit_rules_in_force(ctx.facts)
    if isinstance(found, Outcome):
        return found
    lines, source = found
    missing = [
        f"not in {source}: {p}"
        for p in spec.expect
        if not any(re.search(p, line) for line in lines)
    ]
    programs = ctx.facts.lines("suid") if spec.privileged_programs else []
    missing += [
        f"no rule in {source} for privileged program {f}"
        for f in programs
        if not any(f"-F path={f} -F perm=x" in line for line in lines)
    ]
    if missing:
        return Outcome.fail(*missing)
    if spec.privileged_programs:
        return Outcome.ok(f"{len(programs)} setuid/setgid program(s), each with a rule in {source}")
    return Outcome.ok(f"all {len(spec.expect)} expected rule(s) in {source} ({len(lines)} rules)")


# ---------------------------------------------------------------- accounts


def _table(text: str | None, fields: int) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            rows.append(parts)
    return rows


_NOLOGIN = {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"}


def _accounts(spec: Accounts, ctx: CheckContext) -> Outcome:
    passwd = _table(ctx.facts.get("passwd"), 7)
    shadow = _table(ctx.facts.get("shadow"), 2)
    group = _table(ctx.facts.get("group"), 4)
    check = spec.check
    if check is AccountCheck.UID0_ONLY_ROOT:
        uid0 = [p[0] for p in passwd if p[2] == "0"]
        if uid0 != ["root"]:
            return Outcome.fail(f"accounts with UID 0: {', '.join(uid0) or 'none'}")
        return Outcome.ok("only root has UID 0")
    if check is AccountCheck.ROOT_GID_ZERO:
        root = next((p for p in passwd if p[0] == "root"), None)
        if root is None or root[3] != "0":
            return Outcome.fail(f"root primary GID is {root[3] if root else 'missing'}")
        return Outcome.ok("root has GID 0")
    if check is AccountCheck.SYSTEM_ACCOUNTS_NOLOGIN:
        uid_min = int(spec.uid_min)
        allow = set(spec.allow_login)
        bad = [
            f"{p[0]} (uid {p[2]}) has shell {p[6]}"
            for p in passwd
            if p[2].isdigit()
            and int(p[2]) < uid_min
            and p[0] not in allow
            and p[6].strip() not in _NOLOGIN
        ]
        return Outcome.fail(*bad) if bad else Outcome.ok("system accounts have no login shell")
    if check is AccountCheck.NO_EMPTY_PASSWORDS:
        bad = [f"{s[0]} has an empty password" for s in shadow if s[1] == ""]
        bad += [f"{p[0]} has an empty password in /etc/passwd" for p in passwd if p[1] == ""]
        return Outcome.fail(*bad) if bad else Outcome.ok("no account has an empty password")
    if check is AccountCheck.ALL_SHADOWED:
        bad = [f"{p[0]}: password field is not 'x'" for p in passwd if p[1] != "x"]
        return Outcome.fail(*bad) if bad else Outcome.ok("all accounts use shadowed passwords")
    if check is AccountCheck.UNIQUE_IDS:
        bad = []
        for label, rows, col in (
            ("UID", passwd, 2),
            ("GID", group, 2),
            ("user", passwd, 0),
            ("group", group, 0),
        ):
            seen: dict[str, str] = {}
            for r in rows:
                if r[col] in seen:
                    bad.append(f"duplicate {label} {r[col]}: {seen[r[col]]}, {r[0]}")
                seen.setdefault(r[col], r[0])
        return Outcome.fail(*bad) if bad else Outcome.ok("UIDs, GIDs, user and group names unique")
    if check is AccountCheck.GROUPS_EXIST:
        gids = {g[2] for g in group}
        bad = [f"{p[0]}: primary GID {p[3]} has no group" for p in passwd if p[3] not in gids]
        return Outcome.fail(*bad) if bad else Outcome.ok("every primary GID exists in /etc/group")
    if check is AccountCheck.NO_UNOWNED_FILES:
        bad = [f"no account has the owner uid of {p}" for p in ctx.facts.lines("unowned")]
        return Outcome.fail(*bad) if bad else Outcome.ok("every file's owner has an account")
    if check is AccountCheck.NO_UNGROUPED_FILES:
        bad = [f"no group has the gid of {p}" for p in ctx.facts.lines("ungrouped")]
        return Outcome.fail(*bad) if bad else Outcome.ok("every file's group exists")
    if check is AccountCheck.SHADOW_GROUP_EMPTY:
        sh = next((g for g in group if g[0] == "shadow"), None)
        if sh is None:
            return Outcome.na("no shadow group")
        members = [m for m in sh[3].split(",") if m.strip()]
        users = [p[0] for p in passwd if p[3] == sh[2]]
        if members or users:
            return Outcome.fail(f"shadow group members: {', '.join(members + users)}")
        return Outcome.ok("shadow group has no members")
    raise AssertionError(check)  # pragma: no cover


# ---------------------------------------------------------------- container config


def _image_config(spec: ImageConfig, ctx: CheckContext) -> Outcome:
    cfg = ctx.image_config
    if cfg is None:
        return Outcome.na("no container image configuration (not a container image)")
    if spec.check is ImageCheck.NON_ROOT_USER:
        user = str(cfg.get("User") or "")
        name = user.split(":")[0]
        if name in {"", "root", "0"}:
            return Outcome.fail(f"USER is {user or 'unset (root)'}")
        if spec.user and name != spec.user:
            return Outcome.fail(f"USER is {user}, expected {spec.user}")
        return Outcome.ok(f"USER {user}")
    if spec.check is ImageCheck.NO_SECRET_ENV:
        patterns = [re.escape(p) for p in spec.secret_patterns]
        rx = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None
        bad = []
        for item in cfg.get("Env") or []:
            name, _, value = str(item).partition("=")
            if rx is not None and rx.search(name) and value:
                bad.append(f"ENV {name} looks like a secret")  # never echo the value
        return Outcome.fail(*bad) if bad else Outcome.ok("no secret-looking ENV")
    if spec.check is ImageCheck.HEALTHCHECK:
        hc = cfg.get("Healthcheck") or {}
        test = hc.get("Test") if isinstance(hc, dict) else None
        if not test or test == ["NONE"]:
            return Outcome.fail("no HEALTHCHECK")
        return Outcome.ok("HEALTHCHECK " + " ".join(str(t) for t in test))
    raise AssertionError(spec.check)  # pragma: no cover


# ---------------------------------------------------------------- apt


def _apt_files(facts: Facts, prefix: str) -> dict[str, str]:
    """path -> text of the gathered files under ``prefix`` (a file over a limit: error)."""
    out: dict[str, str] = {}
    for name in sorted(facts.sections):
        if name.startswith("file:" + prefix):
            text = facts.file(name[len("file:") :])
            if text is not None:
                out[name[len("file:") :]] = text
    return out


def _apt(spec: Apt, ctx: CheckContext) -> Outcome:
    bad: list[str] = []
    env = (ctx.image_config or {}).get("Env") or []
    redirect = [str(e) for e in env if str(e).startswith("APT_CONFIG=")]
    if spec.check is AptCheck.NO_INSECURE_REPOSITORIES:
        bad += [f"{e} in the image environment: apt reads that file too" for e in redirect]
        found, count = aptconf.insecure_options(_apt_files(ctx.facts, "/etc/apt/"))
        bad += found
        if bad:
            return Outcome.fail(*bad)
        return Outcome.ok(f"no insecure apt option in {count} apt.conf file(s)")
    if spec.check is AptCheck.NO_TRUSTED_SOURCES:
        files = {
            p: t
            for p, t in _apt_files(ctx.facts, "/etc/apt/").items()
            if p == aptconf.SOURCES_LIST or p.startswith(aptconf.SOURCES_D + "/")
        }
        bad += aptconf.trusted_sources(files)
        if bad:
            return Outcome.fail(*bad)
        return Outcome.ok(f"no source marked trusted or insecure in {len(files)} file(s)")
    raise AssertionError(spec.check)  # pragma: no cover


def _command(spec: Command, ctx: CheckContext, rule_id: str) -> Outcome:
    name = "command:" + rule_id
    if name not in ctx.facts.status:
        return Outcome.fail("check did not run")
    rc = ctx.facts.status[name]
    out = [ln for ln in (ctx.facts.get(name) or "").splitlines() if ln.strip()][:5]
    if rc == 0:
        return Outcome.ok("check exited 0", *out)
    return Outcome.fail(f"check exited {rc}", *out)


CHECKERS: dict[RuleKind, Checker] = {
    RuleKind.PACKAGE_ABSENT: _package_absent,
    RuleKind.PACKAGE_PRESENT: _package_present,
    RuleKind.SERVICE_DISABLED: _service_disabled,
    RuleKind.FILE_ABSENT: _file_absent,
    RuleKind.FILE_PERMISSIONS: _file_permissions,
    RuleKind.CONFIG_LINE: _config_line,
    RuleKind.SYSCTL: _sysctl,
    RuleKind.KERNEL_MODULE_DISABLED: _kernel_module,
    RuleKind.MOUNT_OPTION: _mount_option,
    RuleKind.SUID_SGID_ALLOWLIST: _suid,
    RuleKind.WORLD_WRITABLE: _world_writable,
    RuleKind.ACCOUNTS: _accounts,
    RuleKind.IMAGE_CONFIG: _image_config,
    RuleKind.APT: _apt,
    RuleKind.AUDIT_RULES: _audit_rules,
}


def evaluate(rule: Rule, ctx: CheckContext) -> Outcome:
    spec: Spec = rule.spec
    if isinstance(spec, Command):
        return _command(spec, ctx, rule.id)
    return CHECKERS[rule.kind](spec, ctx)
