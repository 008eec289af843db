"""Gather every fact a baseline needs in ONE command on the target.

testinfra's way (one ``docker exec`` or SSH command per property) costs about 120 ms per check in
a container and 100 ms per command on an emulated VM; a baseline of 100 rules would take many
seconds. Instead a :class:`FactPlan` is derived from the rules, rendered into one POSIX shell script
whose output is a sequence of sections framed by a per-run nonce, and parsed back into
:class:`Facts`. Every value from a baseline is shell-quoted; glob patterns were validated by the
baseline model to contain no shell syntax beyond ``* ? [ ]``.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harden.baseline.kinds import (
    AUDIT_RULES_DIR,
    AccountCheck,
    Accounts,
    Apt,
    AptCheck,
    AuditRules,
    Command,
    ConfigLine,
    FileAbsent,
    FilePermissions,
    KernelModuleDisabled,
    MountOption,
    RuleKind,
    ServiceDisabled,
    Sysctl,
)
from harden.baseline.resolve import Rule
from harden.target import TargetKind, walk_prune
from harden.verifiers.aptconf import APT_CONF, APT_CONF_D, SOURCES_D, SOURCES_LIST

_GLOB_SAFE = re.compile(r"^/[A-Za-z0-9_.+@%*?\[\]/\-]*$")
MAX_FILE_LINES = 5000  # a configuration file; more is reported as a limit, never cut silently
MAX_TABLE_LINES = 1_000_000  # /etc/passwd, shadow, group, gshadow
MAX_LINE_CHARS = 65536
TRUNCATED = "truncated"
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
SYSCTL_FILES = ("/etc/sysctl.conf",)
# a config_line under this directory is read by a PAM module: /etc/pam.d is gathered as well, so
# the check can tell whether the module is in the stack (verifiers/pam.py)
PAM_CONFIG_DIR = "/etc/security/"
SYSCTL_DIRS = (
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
)
MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d")
# a PAM module's configuration file -> the module and the Debian PAM stacks that must load it: on
# a VM a setting there only counts when the module is in every one of those stacks
PAM_CONFIG_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "/etc/security/faillock.conf": ("pam_faillock.so", ("common-auth", "common-account")),
    "/etc/security/pwquality.conf": ("pam_pwquality.so", ("common-password",)),
    "/etc/security/pwhistory.conf": ("pam_pwhistory.so", ("common-password",)),
}


def q(value: str) -> str:
    """The one quoting function for shell text."""
    return shlex.quote(value)


def glob_word(pattern: str) -> str:
    """A glob pattern as an unquoted shell word; refuses anything but safe glob syntax."""
    if not _GLOB_SAFE.match(pattern):
        raise ValueError(f"unsafe path pattern {pattern!r}")
    return pattern


@dataclass
class FactPlan:
    target: TargetKind
    stat_globs: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)  # file contents
    dropin_dirs: set[str] = field(default_factory=set)
    sysctl_keys: set[str] = field(default_factory=set)
    units: set[str] = field(default_factory=set)
    modprobe: bool = False
    mounts: bool = False
    suid: bool = False
    world_writable: bool = False
    accounts: bool = False
    owners: bool = False  # files whose uid has no account / gid no group (the walk)
    sshd_effective: bool = False
    audit: bool = False  # the kernel's loaded audit rules (auditctl -l), on a running VM
    commands: dict[str, str] = field(default_factory=dict)  # rule id -> check
    exists: set[str] = field(default_factory=set)

    @classmethod
    def for_rules(cls, rules: Iterable[Rule], target: TargetKind) -> FactPlan:
        plan = cls(target)
        for rule in rules:
            for cond in rule.when:
                if cond.file_exists:
                    plan.exists.add(cond.file_exists)
            spec = rule.spec
            if isinstance(spec, FileAbsent | FilePermissions):
                plan.stat_globs.update(_paths(spec.paths))
            elif isinstance(spec, ConfigLine):
                plan.files.add(str(spec.path))
                if spec.dropin_dir:
                    plan.dropin_dirs.add(spec.dropin_dir)
                if str(spec.path).startswith(PAM_CONFIG_DIR):
                    plan.dropin_dirs.add("/etc/pam.d")
                if target is TargetKind.VM and str(spec.path).endswith("/sshd_config"):
                    plan.sshd_effective = True
                if target is TargetKind.VM and str(spec.path) in PAM_CONFIG_MODULES:
                    _module, stacks = PAM_CONFIG_MODULES[str(spec.path)]
                    plan.files.update(f"/etc/pam.d/{stack}" for stack in stacks)
            elif isinstance(spec, Sysctl):
                plan.sysctl_keys.add(spec.key)
            elif isinstance(spec, ServiceDisabled):
                plan.units.update(_paths(spec.units))
            elif isinstance(spec, KernelModuleDisabled):
                plan.modprobe = True
            elif isinstance(spec, MountOption):
                plan.mounts = True
            elif rule.kind is RuleKind.SUID_SGID_ALLOWLIST:
                plan.suid = True
            elif rule.kind is RuleKind.WORLD_WRITABLE:
                plan.world_writable = True
            elif isinstance(spec, Accounts):
                plan.accounts = True
                if spec.check in (AccountCheck.NO_UNOWNED_FILES, AccountCheck.NO_UNGROUPED_FILES):
                    plan.owners = True
            elif isinstance(spec, Apt):
                if spec.check is AptCheck.NO_INSECURE_REPOSITORIES:
                    plan.files.add(APT_CONF)
                    plan.dropin_dirs.add(APT_CONF_D)
                else:
                    plan.files.add(SOURCES_LIST)
                    plan.dropin_dirs.add(SOURCES_D)
            elif isinstance(spec, AuditRules):
                plan.dropin_dirs.add(AUDIT_RULES_DIR)  # the rules at rest
                plan.audit = target is TargetKind.VM
                plan.suid = plan.suid or spec.privileged_programs
            elif isinstance(spec, Command):
                plan.commands[rule.id] = spec.check
        return plan

    def script(self, nonce: str) -> str:
        """One POSIX sh script printing every section framed by ``nonce`` markers."""
        out: list[str] = [
            "#!/bin/sh",
            "# harden fact collection: read-only",
            "export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            f"N={q(nonce)}",
            'sec() { printf "\\n@@F-%s %s\\n" "$N" "$1"; }',
            # a section cut by a limit ends with the word "truncated": Facts.limits, never a pass
            'end() { printf "\\n@@E-%s %s%s\\n" "$N" "${1:-0}" "${tr:+ ' + TRUNCATED + '}"; tr=; }',
            # shell builtins only: on an emulated VM every fork costs tens of milliseconds
            'cat_file() { [ -f "$1" ] || return 0; n=0; m=${2:-' + str(MAX_FILE_LINES) + "}; "
            'while IFS= read -r l || [ -n "$l" ]; do '
            f'if [ "$n" -ge "$m" ] || [ "${{#l}}" -gt {MAX_LINE_CHARS} ]; then tr=1; break; fi; '
            'printf \'%s\\n\' "$l"; n=$((n + 1)); done < "$1"; }',
            "tr=",
            *(self._commands_start() if self.commands else []),
            "set --",
            "sec os-release; if [ -f /etc/os-release ]; then cat_file /etc/os-release; "
            "else cat_file /usr/lib/os-release; fi; end",
            "sec packages; if command -v dpkg-query >/dev/null 2>&1; then "
            "dpkg-query -W -f='${db:Status-Abbrev}\\t${Package}\\n' 2>/dev/null; "
            "elif command -v apk >/dev/null 2>&1; then apk info 2>/dev/null | sed 's/^/ii \\t/'; "
            "fi; end",
            "sec systemd; [ -d /run/systemd/system ] && echo running; end",
        ]
        for pattern in sorted(self.stat_globs):
            # which files each pattern matches (builtins), then ONE stat for all of them
            out.append(
                f"sec {q('match:' + pattern)}; for f in {glob_word(pattern)}; do "
                'if [ -e "$f" ] || [ -L "$f" ]; then printf \'%s\\n\' "$f"; set -- "$@" "$f"; fi; '
                "done; end"
            )
        if self.stat_globs:
            out.append('sec stats; [ "$#" -gt 0 ] && stat -c \'%a\t%U\t%G\t%F\t%n\' -- "$@"; end')
        for path in sorted(self.files):
            out.append(f"sec {q('file:' + path)}; cat_file {q(path)}; end")
            out.append(f"sec {q('exists:' + path)}; [ -e {q(path)} ] && echo yes; end")
        for d in sorted(self.dropin_dirs):
            out.append(
                f"sec {q('dir:' + d)}; for f in {glob_word(d)}/*; do "
                '[ -f "$f" ] && printf "%s\\n" "$f"; done; end'
            )
            out.append(
                f'for f in {glob_word(d)}/*; do [ -f "$f" ] || continue; '
                'sec "file:$f"; cat_file "$f"; end; done'
            )
        for path in sorted(self.exists):
            out.append(f"sec {q('exists:' + path)}; [ -e {q(path)} ] && echo yes; end")
        if self.sysctl_keys:
            files = " ".join(q(f) for f in SYSCTL_FILES)
            dirs = " ".join(f"{glob_word(d)}/*.conf" for d in SYSCTL_DIRS)
            out.append(
                f'for f in {files} {dirs}; do [ -f "$f" ] || continue; '
                'sec "sysctlfile:$f"; cat_file "$f"; end; done'
            )
            if self.target is TargetKind.VM:
                # one grep for every key ("PATH:VALUE" lines, split by parse()), not the read
                # builtin: /proc/sys answers a read at an offset > 0 with end-of-file, so
                # byte-wise reads saw "65536" as "6"; and not a cat per key: a fork costs
                # 40 ms under TCG, 2.5 s for debian-vm's 62 keys
                procs = " ".join(q(_proc_sys(key)) for key in sorted(self.sysctl_keys))
                out.append(
                    f"sec {SYSCTL_LIVE}; if command -v grep >/dev/null 2>&1; then "
                    f"grep -H '' {procs} 2>/dev/null; else for f in {procs}; do "
                    '[ -f "$f" ] && printf \'%s:%s\\n\' "$f" "$(cat "$f" 2>/dev/null)"; '
                    "done; fi; end"
                )
        for unit in sorted(self.units):
            lines = [f"sec {q('unit:' + unit)}"]
            for d in UNIT_DIRS:
                p = f"{d}/{unit}"
                lines.append(
                    f'if [ -L {q(p)} ]; then echo "link {d} $(readlink {q(p)})"; '
                    f"elif [ -e {q(p)} ]; then echo {q('file ' + d)}; fi"
                )
            lines.append(
                f"for w in /etc/systemd/system/*.wants/{q(unit)} /etc/systemd/system/*.requires/{q(unit)}; "
                'do [ -L "$w" ] && echo "wanted $w"; done'
            )
            lines.append(
                "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then "
                f'echo "is-enabled $(systemctl is-enabled {q(unit)} 2>/dev/null)"; '
                f'echo "is-active $(systemctl is-active {q(unit)} 2>/dev/null)"; fi'
            )
            lines.append("end")
            out.append("; ".join(lines))
        if self.modprobe:
            dirs = " ".join(f"{glob_word(d)}/*.conf" for d in MODPROBE_DIRS)
            out.append(
                f'for f in {dirs}; do [ -f "$f" ] || continue; '
                'sec "modprobe:$f"; cat_file "$f"; end; done'
            )
            if self.target is TargetKind.VM:
                out.append("sec modules-loaded; cat /proc/modules 2>/dev/null; end")
        if self.mounts:
            out.append("sec mounts; cat /proc/self/mounts 2>/dev/null; end")
            out.append("sec fstab; cat_file /etc/fstab; end")
        if self.suid or self.world_writable or self.owners:
            # One walk for all (GNU find's "," evaluates every branch), of every local file
            # system (walk_prune): a setuid file on a partitioned VM's /usr or /var is in force
            # as much as one on "/", and the sealed view reads every partition too.
            # Owners: the numeric ids of what root does not own, judged by parse() against the
            # target's own passwd and group as the sealed view judges (-nouser/-nogroup asked
            # NSS once per file: 1.4 s of 2.8 under TCG for 10,500 entries).
            owners = (
                ", \\( \\( ! -uid 0 -o ! -gid 0 \\) -printf 'own %U %G %p\\0' \\) "
                if self.owners
                else ""
            )
            out.append(
                f"sec walk; find / {walk_prune()} \\( -type f -perm /6000 -printf 'suid %p\\0' \\) , "
                "\\( -type f -perm -0002 -printf 'ww file %p\\0' \\) , "
                "\\( -type d -perm -0002 ! -perm -1000 -printf 'ww dir %p\\0' \\) "
                f"{owners}2>/dev/null; end"
            )
        if self.accounts:
            for name in ("passwd", "group", "shadow", "gshadow"):
                out.append(f"sec {name}; cat_file /etc/{name} {MAX_TABLE_LINES}; end")
        if self.sshd_effective:
            out.append(
                "sec sshd-T; if command -v sshd >/dev/null 2>&1; then "
                "sshd -T 2>/dev/null; rc=$?; else rc=127; fi; end $rc"
            )
        if self.audit:
            # one auditctl for every audit_rules rule (they were a command check each, 14
            # auditctl runs); its exit status is kept: a failing auditctl is no rule list
            out.append(
                f"sec {AUDIT_LOADED}; if [ -d /run/systemd/system ]; then "
                "if command -v auditctl >/dev/null 2>&1; then auditctl -l 2>&1; rc=$?; "
                "else echo 'auditctl: not found'; rc=127; fi; else rc=0; fi; end $rc"
            )
        if self.commands:
            out.extend(self._commands_collect())
        out.append("exit 0")
        return "\n".join(out) + "\n"

    def commands_script(self, nonce: str) -> str:
        """Only the baseline authors' checks (``command`` rules), framed like :meth:`script`."""
        if not self.commands:
            return ""
        head = self.script(nonce).split("\ntr=\n", 1)[0]
        return f"{head}\ntr=\nset --\n{self._commands_script()}\nexit 0\n"

    def _commands_script(self) -> str:
        return "\n".join([*self._commands_start(), *self._commands_collect()])

    def _commands_start(self) -> list[str]:
        """Start the baseline authors' checks concurrently, when a private folder on /dev/shm
        (tmpfs: never part of an image layer) can hold their results. :meth:`script` starts them
        before the other sections, which then run beside them: a section is one shell's work,
        one CPU of an emulated VM, while the checks are many processes."""
        out = [
            "P=; if [ -d /dev/shm ] && T=$(mktemp -d /dev/shm/harden-facts.XXXXXX 2>/dev/null); then",
            "P=1",
        ]
        for i, (_rule_id, check) in enumerate(sorted(self.commands.items())):
            # braces, not a subshell: $( ) forks once already; printf truncates (builtin)
            out.append(
                f"( o=$( {{ {check}\n}} 2>&1 </dev/null ); rc=$?; "
                f'printf \'%.2000s\\n\' "$o" > "$T/{i}.out"; echo "$rc" > "$T/{i}.rc" ) &'
            )
        out.append("fi")
        return out

    def _commands_collect(self) -> list[str]:
        """The checks' exit status and a little output each, as ``command:`` sections: those
        started by :meth:`_commands_start`, or (no /dev/shm) one after the other here."""
        items = sorted(self.commands.items())
        out = ['if [ -n "$P" ]; then', "wait"]
        for i, (rule_id, _check) in enumerate(items):
            out.append(
                f'rc=127; [ -f "$T/{i}.rc" ] && read -r rc < "$T/{i}.rc"; '
                f'sec {q("command:" + rule_id)}; cat_file "$T/{i}.out"; end "$rc"'
            )
        out.append('rm -rf "$T"')
        out.append("else")
        for rule_id, check in items:
            out.append(
                f"sec {q('command:' + rule_id)}; o=$( {{ {check}\n}} 2>&1 </dev/null ); rc=$?; "
                "printf '%.2000s\\n' \"$o\"; end $rc"
            )
        out.append("fi")
        return out


def _paths(value: object) -> list[str]:
    assert isinstance(value, list), "parameters are substituted before facts are planned"
    return [str(v) for v in value]


@dataclass(frozen=True)
class StatEntry:
    mode: int
    owner: str
    group: str
    type: str
    path: str


class FactLimitExceeded(Exception):
    """A rule read a section whose source passed a limit: the rule's result is ``error``."""

    def __init__(self, section: str, why: str) -> None:
        super().__init__(f"{section}: {why}")
        self.section = section
        self.why = why


@dataclass(frozen=True)
class Facts:
    sections: Mapping[str, str]
    status: Mapping[str, int]
    limits: Mapping[str, str] = field(default_factory=dict)  # section -> which limit it passed

    def _check(self, name: str) -> None:
        why = self.limits.get(name)
        if why is not None:
            raise FactLimitExceeded(name, why)

    def _section(self, name: str) -> str | None:
        self._check(name)
        return self.sections.get(name)

    def get(self, name: str) -> str | None:
        return self._section(name)

    def has(self, name: str) -> bool:
        return name in self.sections

    def installed_packages(self) -> frozenset[str]:
        pkgs = set()
        for line in (self._section("packages") or "").splitlines():
            status, _, name = line.partition("\t")
            if status.startswith("ii"):
                pkgs.add(name.split(":")[0].strip())
        return frozenset(pkgs)

    def os_release(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for line in (self._section("os-release") or "").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and key not in result:
                result[key.strip()] = value.strip().strip('"').strip("'")
        return result

    def stats(self, pattern: str) -> list[StatEntry]:
        by_path: dict[str, StatEntry] = {}
        for line in (self._section("stats") or "").splitlines():
            parts = line.split("\t", 4)
            if len(parts) == 5:
                entry = StatEntry(int(parts[0], 8), parts[1], parts[2], parts[3], parts[4])
                by_path[entry.path] = entry
        matched = self.lines("match:" + pattern)
        return [by_path[p] for p in matched if p in by_path]

    def file(self, path: str) -> str | None:
        return self._section("file:" + path)

    def exists(self, path: str) -> bool:
        return (self._section("exists:" + path) or "").strip() == "yes"

    def with_prefix(self, prefix: str) -> dict[str, str]:
        for k in self.limits:
            if k.startswith(prefix):
                self._check(k)
        return {k[len(prefix) :]: v for k, v in self.sections.items() if k.startswith(prefix)}

    def lines(self, name: str) -> list[str]:
        return [ln for ln in (self._section(name) or "").splitlines() if ln.strip()]

    @property
    def systemd_running(self) -> bool:
        return (self.sections.get("systemd") or "").strip() == "running"


AUDIT_LOADED = "audit-loaded"  # auditctl -l on a running VM
SYSCTL_LIVE = "sysctl-live"  # facts "sysctl-live:KEY": the running kernel's values (VM)
_PROC_SYS = "/proc/sys/"


def _proc_sys(key: str) -> str:
    return _PROC_SYS + key.replace(".", "/")


def new_nonce() -> str:
    return secrets.token_hex(8)


def parse(output: bytes | str, nonce: str) -> Facts:
    """Parse the framed sections; bytes that are not UTF-8 are kept as surrogates (escaped
    where a path is shown), never a crash."""
    text = output.decode("utf-8", "surrogateescape") if isinstance(output, bytes) else output
    start = f"@@F-{nonce} "
    stop = f"@@E-{nonce} "
    sections: dict[str, str] = {}
    status: dict[str, int] = {}
    limits: dict[str, str] = {}
    name: str | None = None
    buf: list[str] = []
    for line in text.split("\n"):
        if line.startswith(start):
            name, buf = line[len(start) :], []
        elif line.startswith(stop) and name is not None:
            body = "\n".join(buf)
            if body.startswith("\n"):
                body = body[1:]
            sections[name] = sections.get(name, "") + body
            words = line[len(stop) :].split()
            try:
                status[name] = int(words[0]) if words else 0
            except ValueError:
                status[name] = -1
            if TRUNCATED in words[1:]:
                limits[name] = (
                    f"not read to the end: more than {MAX_FILE_LINES} lines (accounts: "
                    f"{MAX_TABLE_LINES}) or a line longer than {MAX_LINE_CHARS} characters"
                )
            name = None
        elif name is not None:
            buf.append(line)
    live = sections.pop(SYSCTL_LIVE, None)
    if live is not None:
        for line in live.split("\n"):
            path, colon, value = line.partition(":")
            if colon and path.startswith(_PROC_SYS):
                name = SYSCTL_LIVE + ":" + path[len(_PROC_SYS) :].replace("/", ".")
                sections[name] = sections[name] + "\n" + value if name in sections else value
    walk = sections.get("walk")
    if walk is not None:
        # NUL-separated (find -printf %p\0): a newline in a name stays in the name, escaped
        from harden.verifiers.fsview import display

        items = [_raw(x).lstrip(b"\n") for x in walk.split("\0") if x.strip("\n")]
        sections["suid"] = "\n".join(display(x[5:]) for x in items if x.startswith(b"suid "))
        owned = [x[4:].split(b" ", 2) for x in items if x.startswith(b"own ")]
        _owners(sections, limits, [o for o in owned if len(o) == 3])
        sections["world-writable"] = "\n".join(
            x[3:].split(b" ", 1)[0].decode() + " " + display(x[3:].split(b" ", 1)[1])
            for x in items
            if x.startswith(b"ww ") and b" " in x[3:]
        )
    for key, value in sections.items():  # the rest as text: undecodable bytes replaced
        sections[key] = _raw(value).decode("utf-8", "replace")
    return Facts(sections, status, limits)


def _ids(table: str | None) -> set[str]:
    """The ids (third field) of a passwd or group file."""
    return {f[2] for f in (ln.split(":") for ln in (table or "").splitlines()) if len(f) >= 3}


def _owners(sections: dict[str, str], limits: dict[str, str], owned: list[list[bytes]]) -> None:
    """ "unowned" and "ungrouped" from the walk's ``own UID GID PATH`` records (entries root
    does not own) and the target's own /etc/passwd and /etc/group."""
    from harden.verifiers.fsview import display

    users, groups = _ids(sections.get("passwd")), _ids(sections.get("group"))
    # the walk leaves out what root owns: an account file without root says so once
    no_root = ["the entries owned by uid 0"] if "0" not in users else []
    no_group = ["the entries of gid 0"] if "0" not in groups else []
    sections["unowned"] = "\n".join(
        no_root + [display(path) for uid, _gid, path in owned if uid.decode() not in users]
    )
    sections["ungrouped"] = "\n".join(
        no_group + [display(path) for _uid, gid, path in owned if gid.decode() not in groups]
    )
    for table, derived in (("passwd", "unowned"), ("group", "ungrouped")):
        if table in limits:  # a table cut short cannot say which ids exist
            limits[derived] = limits[table]


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")
