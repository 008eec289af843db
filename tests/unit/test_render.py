"""Remediation rendering: run the rendered scripts against a copy of a fixture root folder.

Every script runs under /bin/sh (dash) with HARDEN_ROOT pointing at the copy; the tests assert
the file-level effect and that a second run leaves the tree byte-identical (idempotence).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from harden.baseline.kinds import RuleKind
from harden.baseline.resolve import Catalogue, Rule, resolve
from harden.builder.render import (
    DONE_MARKER,
    Phase,
    RemediationFailure,
    parse_failure,
    removal_mode,
    render_rule,
    render_script,
    rule_phase,
    rule_times,
    template_environment,
)
from harden.errors import BaselineError
from harden.target import TargetKind

FIXTURE = Path(__file__).parent / "fixtures" / "rootfs"
GOLDEN = Path(__file__).parent / "golden" / "remediation"
FIXTURE_UNIT_LINKS = (
    "multi-user.target.wants/cups.service",
    "multi-user.target.wants/ssh.service",
    "sockets.target.wants/cups.socket",
)

HEADER = """\
id: t
version: "1.0"
title: render test
platforms: [{family: debian}]
targets: [container, vm]
"""


def rules_from(tmp_path: Path, rules_yaml: str) -> list[Rule]:
    """Resolve a one-file baseline (HEADER + rules) through the real resolver."""
    bdir = tmp_path / "baselines"
    bdir.mkdir(exist_ok=True)
    text = HEADER + "rules:\n" + textwrap.indent(textwrap.dedent(rules_yaml), "  ")
    (bdir / "t.yaml").write_text(text)
    return list(resolve(Catalogue([bdir]), "t").rules)


def rule(rid: str, kind_yaml: str, extra: str = "") -> str:
    """One rule entry: id, title, controls, then the kind mapping (a YAML flow mapping line)."""
    return (
        f"- id: t.{rid}\n  title: {rid}\n  controls: {{iso27017: [CLD.9.5.2]}}\n"
        f"{extra}  {kind_yaml}\n"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(FIXTURE, dst, symlinks=True)
    # Enabled units are absolute symlinks (as on a real system); they are made here rather than
    # committed, because an absolute symlink in the tree breaks `python -m build`.
    system = dst / "etc/systemd/system"
    for link in FIXTURE_UNIT_LINKS:
        (system / link).parent.mkdir(parents=True, exist_ok=True)
        (system / link).symlink_to("/lib/systemd/system/" + Path(link).name)
    return dst


def run(script: str, root: Path) -> subprocess.CompletedProcess[str]:
    path = root.parent / "remediate.sh"
    path.write_text(script)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HARDEN_ROOT": str(root)}
    return subprocess.run(
        ["/bin/sh", str(path)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry under root: mode, uid, gid and content (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(p).encode()
            elif stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
            else:
                data = b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def apply(rules: list[Rule], root: Path, target: TargetKind = TargetKind.CONTAINER) -> str:
    """Run the offline script twice; assert success and idempotence; return the first stdout."""
    script = render_script(rules, "debian", target, Phase.OFFLINE)
    first = run(script, root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert parse_failure(first.stdout, first.stderr, first.returncode) is None
    after_first = snapshot(root)
    second = run(script, root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert snapshot(root) == after_first, "second run changed the tree"
    assert not list(root.rglob("*.harden-new")), "temporary files left behind"
    return first.stdout


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


# ---------------------------------------------------------------- file kinds


def test_file_absent_removes_globs_and_folders(tmp_path: Path, root: Path) -> None:
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key"):
        (root / "etc/ssh" / name).write_text("key\n")
    (root / "root/.cache/pip").mkdir(parents=True)
    (root / "root/.cache/pip/x").write_text("x")
    rules = rules_from(
        tmp_path,
        rule("hostkeys", "file_absent: {paths: [/etc/ssh/ssh_host_*, /root/.cache, /nope/x*]}"),
    )
    out = apply(rules, root)
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert not (root / "root/.cache").exists()
    assert (root / "root").is_dir()
    assert (root / "etc/ssh/sshd_config").is_file()
    assert "removed /etc/ssh/ssh_host_rsa_key" in out


def test_file_absent_refuses_a_top_level_glob(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, rule("all", "file_absent: {paths: ['/*']}"))
    with pytest.raises(BaselineError, match="too broad"):
        render_rule(rules[0], "debian", TargetKind.CONTAINER)


def test_file_permissions_only_removes_bits(tmp_path: Path, root: Path) -> None:
    shadow, issue = root / "etc/shadow", root / "etc/issue"
    shadow.chmod(0o666)
    os.chown(shadow, 1234, 1234)
    issue.chmod(0o600)  # stricter than the maximum: stays as it is
    rules = rules_from(
        tmp_path,
        rule(
            "shadow",
            "file_permissions: {paths: [/etc/shadow], owner: root, group: shadow, "
            "max_mode: '0640'}",
        )
        + rule("issue", "file_permissions: {paths: ['/etc/iss*', /etc/missing], max_mode: '0644'}"),
    )
    apply(rules, root)
    st = shadow.stat()
    assert (mode(shadow), st.st_uid, st.st_gid) == (0o640, 0, 42)  # gid 42 from the fixture
    assert mode(issue) == 0o600


def test_file_permissions_missing_file_fails_unless_missing_ok(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("gone", "file_permissions: {paths: [/etc/gone], max_mode: '0644', missing_ok: false}"),
    )
    res = run(render_script(rules, "debian", TargetKind.CONTAINER, Phase.OFFLINE), root)
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure is not None and failure.rule_id == "t.gone"
    assert "no file matches /etc/gone" in failure.output


def test_removal_mode() -> None:
    assert removal_mode("0640") == "u-xs,g-wxs,o-rwxt"
    assert removal_mode("0755") == "u-s,g-ws,o-wt"
    assert removal_mode("1777") == "u-s,g-s"
    assert removal_mode("7777") == ""


# ---------------------------------------------------------------- config_line


def test_sshd_dropin_first_match(tmp_path: Path, root: Path) -> None:
    main = root / "etc/ssh/sshd_config"
    before = main.read_bytes()
    sshd = "path: /etc/ssh/sshd_config, dropin_dir: /etc/ssh/sshd_config.d"
    rules = rules_from(
        tmp_path,
        rule("root", f"config_line: {{{sshd}, key: PermitRootLogin, value: 'no'}}")
        + rule("tries", f"config_line: {{{sshd}, key: MaxAuthTries, value: 4, compare: le}}")
        + rule(
            "login",
            f"config_line: {{{sshd}, key: PermitRootLogin, value: 'no,prohibit-password', "
            "compare: one_of}",
        ),
    )
    apply(rules, root)
    assert main.read_bytes() == before  # Debian's file has the Include line at the top
    dropin = root / "etc/ssh/sshd_config.d/00-harden.conf"
    # one line per key, the one_of rule writes its first (preferred) choice
    assert dropin.read_text() == "PermitRootLogin no\nMaxAuthTries 4\n"
    assert mode(dropin) == 0o644


def test_sshd_include_is_added_before_other_settings(tmp_path: Path, root: Path) -> None:
    main = root / "etc/ssh/sshd_config"
    main.write_text("# comment\nPort 22\nInclude /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n")
    rules = rules_from(
        tmp_path,
        rule(
            "x11",
            "config_line: {path: /etc/ssh/sshd_config, dropin_dir: /etc/ssh/sshd_config.d, "
            "key: X11Forwarding, value: 'no'}",
        ),
    )
    apply(rules, root)
    assert main.read_text() == (
        "Include /etc/ssh/sshd_config.d/*.conf\n# comment\nPort 22\nUsePAM yes\n"
    )
    assert (root / "etc/ssh/sshd_config.d/00-harden.conf").read_text() == "X11Forwarding no\n"


def test_login_defs_in_place(tmp_path: Path, root: Path) -> None:
    defs = "path: /etc/login.defs, match: last"
    rules = rules_from(
        tmp_path,
        rule("max", f"config_line: {{{defs}, key: PASS_MAX_DAYS, value: 365, compare: le}}")
        + rule("min", f"config_line: {{{defs}, key: PASS_MIN_DAYS, value: 1, compare: ge}}")
        + rule("warn", f"config_line: {{{defs}, key: PASS_WARN_AGE, value: 7, compare: ge}}")
        + rule("umask", f"config_line: {{{defs}, key: UMASK, value: '027'}}")
        + rule("rounds", f"config_line: {{{defs}, key: SHA_CRYPT_MIN_ROUNDS, value: 65536}}")
        + rule("new", f"config_line: {{{defs}, key: HARDEN_NEW, value: 'yes'}}"),
    )
    original = (FIXTURE / "etc/login.defs").read_text().splitlines()
    apply(rules, root)
    lines = (root / "etc/login.defs").read_text().splitlines()
    # edited in place: same line positions, the explanatory comments untouched
    assert len(lines) == len(original) + 1
    assert lines[original.index("PASS_MAX_DAYS\t99999")] == "PASS_MAX_DAYS 365"
    assert lines[original.index("PASS_MIN_DAYS\t0")] == "PASS_MIN_DAYS 1"
    assert lines[original.index("PASS_WARN_AGE\t14")] == "PASS_WARN_AGE\t14"  # 14 >= 7: kept
    assert lines[original.index("UMASK\t\t022")] == "UMASK 027"
    assert lines[original.index("#SHA_CRYPT_MIN_ROUNDS 5000")] == "SHA_CRYPT_MIN_ROUNDS 65536"
    assert "#\tPASS_MAX_DAYS\tMaximum number of days a password may be used." in lines
    assert lines[-1] == "HARDEN_NEW yes"


def test_config_line_equals_separator_and_duplicates(tmp_path: Path, root: Path) -> None:
    conf = root / "etc/app.conf"
    conf.write_text("# app\nLevel=1\nOther=x\nLevel=2\n")
    rules = rules_from(
        tmp_path,
        rule("lvl", "config_line: {path: /etc/app.conf, key: Level, value: 3, separator: equals}"),
    )
    apply(rules, root)
    assert conf.read_text() == "# app\nLevel=3\nOther=x\n"


def test_config_line_missing_file_is_not_applicable(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("nofile", "config_line: {path: /etc/nothere.conf, key: A, value: b}")
        + rule(
            "create",
            "config_line: {path: /etc/new.d/made.conf, key: A, value: b, requires_file: false}",
        ),
    )
    out = apply(rules, root)
    assert not (root / "etc/nothere.conf").exists()
    assert "not applicable: /etc/nothere.conf does not exist" in out
    assert (root / "etc/new.d/made.conf").read_text() == "A b\n"


def test_shell_metacharacters_in_a_value_stay_literal(tmp_path: Path, root: Path) -> None:
    canary = tmp_path / "pwned"
    value = f"\"; touch {canary}; # $(touch {canary}) `touch {canary}` 'x' \\n $HOME"
    # YAML single-quoted scalar: double the single quotes
    yaml_value = "'" + value.replace("'", "''") + "'"
    rules = rules_from(
        tmp_path,
        rule("meta", f"config_line: {{path: /etc/login.defs, key: BANNER, value: {yaml_value}}}"),
    )
    assert rules[0].spec.model_dump()["value"] == value
    apply(rules, root)
    assert not canary.exists()
    # match: first (the default) puts a new key first, where it wins
    assert (root / "etc/login.defs").read_text().splitlines()[0] == "BANNER " + value


# ---------------------------------------------------------------- sysctl, modules, mounts


def test_sysctl_dropin_one_line_per_key(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("fwd", "sysctl: {key: net.ipv4.ip_forward, value: 0}")
        + rule("aslr", "sysctl: {key: kernel.randomize_va_space, value: 2}")
        + rule("redir", "sysctl: {key: net.ipv4.conf.*.accept_redirects, value: 0}"),
    )
    conf = root / "etc/sysctl.d/99-harden.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("net.ipv4.ip_forward = 1\n")
    apply(rules, root, TargetKind.VM)  # VM: live writes are skipped in a root folder
    assert conf.read_text() == (
        "net.ipv4.ip_forward = 0\n"
        "kernel.randomize_va_space = 2\n"
        "net.ipv4.conf.*.accept_redirects = 0\n"
    )


def test_sysctl_live_part_only_for_vms(tmp_path: Path) -> None:
    [r] = rules_from(tmp_path, rule("fwd", "sysctl: {key: net.ipv4.ip_forward, value: 0}"))
    assert "/proc/sys/net/ipv4/ip_forward" in render_rule(r, "debian", TargetKind.VM)
    assert "/proc/sys" not in render_rule(r, "debian", TargetKind.CONTAINER)


def test_kernel_modules_blocked_once(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("fs", "kernel_module_disabled: {modules: [cramfs, udf]}")
        + rule("usb", "kernel_module_disabled: {modules: [usb-storage, cramfs]}"),
    )
    apply(rules, root, TargetKind.VM)
    assert (root / "etc/modprobe.d/harden.conf").read_text() == (
        "install cramfs /bin/false\nblacklist cramfs\n"
        "install udf /bin/false\nblacklist udf\n"
        "install usb-storage /bin/false\nblacklist usb-storage\n"
    )


def test_mount_options_in_fstab(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("tmp", "mount_option: {mountpoint: /tmp, options: [nodev, nosuid], tmpfs_size: 1G}")
        + rule("var", "mount_option: {mountpoint: /var, options: [nodev, nosuid]}")
        + rule("home", "mount_option: {mountpoint: /home, options: [nodev]}"),
    )
    out = apply(rules, root, TargetKind.VM)
    lines = (root / "etc/fstab").read_text().splitlines()
    assert lines[2] == "/dev/vda\t/\text4\terrors=remount-ro\t0\t1"
    assert lines[3] == "/dev/vdb\t/var\text4\tdefaults,nodev,nosuid\t0\t2"
    assert lines[4] == "tmpfs\t/tmp\ttmpfs\tdefaults,nodev,nosuid,size=1G\t0\t0"
    assert len(lines) == 5
    assert "not applicable: /home is not a separate mount" in out
    # a changed size replaces the old size= option instead of adding a second one
    rules = rules_from(
        tmp_path,
        rule("tmp", "mount_option: {mountpoint: /tmp, options: [nodev], tmpfs_size: 2G}"),
    )
    apply(rules, root, TargetKind.VM)
    assert (root / "etc/fstab").read_text().splitlines()[4] == (
        "tmpfs\t/tmp\ttmpfs\tdefaults,nodev,nosuid,size=2G\t0\t0"
    )


def test_required_mount_without_fstab_line_fails(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path, rule("srv", "mount_option: {mountpoint: /srv, options: [nodev], required: true}")
    )
    res = run(render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE), root)
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure is not None and failure.rule_id == "t.srv"
    assert "/srv has no line in /etc/fstab" in failure.output


# ---------------------------------------------------------------- suid, world-writable


def test_suid_sgid_outside_allowlist_stripped(tmp_path: Path, root: Path) -> None:
    bindir = root / "usr/bin"
    bindir.mkdir(parents=True)
    for name, m in (("passwd", 0o4755), ("su", 0o4755), ("evil", 0o4755), ("crontab", 0o2755)):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(m)
    rules = rules_from(
        tmp_path,
        rule("suid", "suid_sgid_allowlist: {allowlist: [/usr/bin/passwd, '/usr/bin/s*']}"),
    )
    out = apply(rules, root)
    assert mode(bindir / "passwd") == 0o4755
    assert mode(bindir / "su") == 0o4755
    assert mode(bindir / "evil") == 0o755
    assert mode(bindir / "crontab") == 0o755
    assert "removed setuid/setgid: /usr/bin/evil" in out


def test_world_writable(tmp_path: Path, root: Path) -> None:
    (root / "var/tmp").mkdir(parents=True)
    (root / "var/tmp").chmod(0o777)
    (root / "var/cache/app").mkdir(parents=True)
    (root / "var/cache/app/shared").write_text("x")
    (root / "var/cache/app/shared").chmod(0o666)
    (root / "etc/open").write_text("x")
    (root / "etc/open").chmod(0o666)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    rules = rules_from(tmp_path, rule("ww", "world_writable: {exclude: ['/var/cache/a*']}"))
    apply(rules, root)
    assert mode(root / "etc/open") == 0o664
    assert mode(root / "var/tmp") == 0o1777
    assert mode(root / "tmp") == 0o1777
    assert mode(root / "var/cache/app/shared") == 0o666  # excluded


# ---------------------------------------------------------------- accounts


def test_accounts_nologin_and_empty_passwords(tmp_path: Path, root: Path) -> None:
    (root / "etc/shadow").chmod(0o640)
    rules = rules_from(
        tmp_path,
        rule(
            "nologin",
            "accounts: {check: system_accounts_nologin, allow_login: [root, sync, operator]}",
        )
        + rule("empty", "accounts: {check: no_empty_passwords}")
        + rule("shadowgrp", "accounts: {check: shadow_group_empty}")
        + rule("uid0", "accounts: {check: uid0_only_root}")
        + rule("unique", "accounts: {check: unique_ids}")
        + rule("groups", "accounts: {check: groups_exist}"),
    )
    apply(rules, root)
    passwd = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()
    }
    assert passwd["games"][6] == "/usr/sbin/nologin"
    assert passwd["legacy"][6] == "/usr/sbin/nologin"  # empty shell means /bin/sh
    assert passwd["operator"][6] == "/bin/bash"  # allowed
    assert passwd["root"][6] == "/bin/bash"
    assert passwd["sync"][6] == "/bin/sync"
    assert passwd["alice"][6] == "/bin/bash"  # not a system account
    shadow = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/shadow").read_text().splitlines()
    }
    assert shadow["operator"][1] == "!"
    assert shadow["alice"][1] == "!"
    assert shadow["root"][1] == "*"
    assert mode(root / "etc/shadow") == 0o640  # the rewrite keeps the mode
    assert "shadow:x:42:\n" in (root / "etc/group").read_text()


@pytest.mark.parametrize(
    ("check", "line", "message"),
    [
        ("uid0_only_root", "toor:x:0:0::/root:/bin/sh", "other than root have uid 0: toor"),
        ("unique_ids", "alice2:x:1000:1000::/home/a:/bin/sh", "uid 1000"),
        ("groups_exist", "orphan:x:1001:4242::/home/o:/bin/sh", "orphan (gid 4242)"),
    ],
)
def test_accounts_unfixable_violation_names_the_rule(
    tmp_path: Path, root: Path, check: str, line: str, message: str
) -> None:
    with (root / "etc/passwd").open("a") as f:
        f.write(line + "\n")
    rules = rules_from(tmp_path, rule("acc", f"accounts: {{check: {check}}}"))
    res = run(render_script(rules, "debian", TargetKind.CONTAINER, Phase.OFFLINE), root)
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure is not None and failure.rule_id == "t.acc"
    assert message in failure.output


# ---------------------------------------------------------------- services, command


def test_service_disabled_and_masked(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("cups", "service_disabled: {units: [cups, cups.socket]}")
        + rule("ssh", "service_disabled: {units: [ssh.service], mask: false}"),
    )
    apply(rules, root)
    system = root / "etc/systemd/system"
    assert not (system / "multi-user.target.wants/cups.service").is_symlink()
    assert not (system / "sockets.target.wants/cups.socket").is_symlink()
    assert not (system / "multi-user.target.wants/ssh.service").is_symlink()
    assert os.readlink(system / "cups.service") == "/dev/null"
    assert os.readlink(system / "cups.socket") == "/dev/null"
    assert not (system / "ssh.service").exists()


def test_command_remediation_then_check(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule(
            "motd",
            'command: {remediation: \'printf "%s\\n" authorised > "$R"/etc/motd\', '
            "check: 'grep -qx authorised \"$R\"/etc/motd'}",
        ),
    )
    apply(rules, root)
    assert (root / "etc/motd").read_text() == "authorised\n"


def test_command_skips_remediation_when_check_passes(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("ok", "command: {remediation: 'touch \"$R\"/etc/touched', check: 'true'}"),
    )
    apply(rules, root)
    assert not (root / "etc/touched").exists()


def test_failing_rule_stops_the_script(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule(
            "boom",
            "command: {remediation: 'echo trying; false; echo not reached', "
            "check: 'test -e \"$R\"/etc/never'}",
        )
        + rule("later", "world_writable: {}"),  # would run after the command kind
    )
    (root / "etc/open").write_text("x")
    (root / "etc/open").chmod(0o666)
    res = run(render_script(rules, "debian", TargetKind.CONTAINER, Phase.OFFLINE), root)
    assert res.returncode == 1
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure == RemediationFailure(rule_id="t.boom", exit_status=1, output="trying")
    assert "@@harden-rule t.later" not in res.stdout
    assert DONE_MARKER not in res.stdout
    assert mode(root / "etc/open") == 0o666


def test_command_whose_check_still_fails(tmp_path: Path, root: Path) -> None:
    rules = rules_from(tmp_path, rule("nop", "command: {remediation: 'true', check: 'false'}"))
    res = run(render_script(rules, "debian", TargetKind.CONTAINER, Phase.OFFLINE), root)
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure is not None and failure.rule_id == "t.nop"
    assert "the check still fails" in failure.output


# a reload several rules need before their checks pass (as augenrules --load for audit rules)
RELOAD = 'cat "$R"/etc/staged/* > "$R"/etc/loaded; echo reload >> "$R"/etc/reloads'


def reload_rules(tmp_path: Path) -> list[Rule]:
    def cmd(name: str, remediation: str) -> str:
        return rule(
            name,
            f"command: {{remediation: '{remediation}', "
            f"check: 'grep -qx {name} \"$R\"/etc/loaded', after: '{RELOAD}'}}",
        )

    return rules_from(
        tmp_path,
        cmd("a", 'mkdir -p "$R"/etc/staged; echo a > "$R"/etc/staged/a')
        + rule("between", "file_absent: {paths: [/etc/issue]}")
        + cmd("b", 'mkdir -p "$R"/etc/staged; echo b > "$R"/etc/staged/b'),
    )


def live(script: str) -> str:
    """The script as on a running systemd (the deferred actions run only there)."""
    start = script.index("harden_systemd_live() {")
    end = script.index("}\n", start) + 2
    return script[:start] + "harden_systemd_live() { true; }\n" + script[end:]


def test_after_action_runs_once_after_all_rules_then_their_checks(
    tmp_path: Path, root: Path
) -> None:
    rules = reload_rules(tmp_path)
    script = render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE)
    assert script.splitlines().count(RELOAD) == 1  # the one line that runs it
    res = run(live(script), root)
    assert res.returncode == 0, res.stderr
    assert (root / "etc/reloads").read_text() == "reload\n"  # once, for both rules
    assert (root / "etc/loaded").read_text() == "a\nb\n"
    # the reload comes after every rule, and both checks after the reload
    out = res.stdout
    assert out.index("@@harden-rule t.between") < out.index("@@harden-rule after:t.a")
    assert out.rindex("@@harden-rule t.a") > out.index("@@harden-rule after:t.a")
    assert out.rindex("@@harden-rule t.b") > out.index("@@harden-rule after:t.a")
    assert set(rule_times(out)) == {"t.a", "t.between", "t.b", "after:t.a"}
    # compliant now: nothing is remediated, so nothing is reloaded
    again = run(live(script), root)
    assert again.returncode == 0, again.stderr
    assert (root / "etc/reloads").read_text() == "reload\n"
    assert "@@harden-rule after:t.a" not in again.stdout


def test_after_action_alone_still_makes_its_rule_pass(tmp_path: Path, root: Path) -> None:
    """One rule on its own: its reload runs for it."""
    rules = [r for r in reload_rules(tmp_path) if r.id == "t.b"]
    res = run(live(render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE)), root)
    assert res.returncode == 0, res.stderr
    assert (root / "etc/loaded").read_text() == "b\n"


def test_after_action_is_not_run_off_a_live_system_and_the_check_still_decides(
    tmp_path: Path, root: Path
) -> None:
    rules = reload_rules(tmp_path)
    res = run(render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE), root)
    assert not (root / "etc/reloads").exists()
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure is not None and failure.rule_id == "t.a"
    assert "the check still fails after the remediation and" in failure.output


def test_failing_after_action_names_the_rule_that_needs_it(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule("x", "command: {remediation: 'true', check: 'false', after: 'echo broken; exit 3'}"),
    )
    res = run(live(render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE)), root)
    failure = parse_failure(res.stdout, res.stderr, res.returncode)
    assert failure == RemediationFailure(rule_id="after:t.x", exit_status=3, output="broken")


def test_when_condition_skips_the_rule(tmp_path: Path, root: Path) -> None:
    rules = rules_from(
        tmp_path,
        rule(
            "cond",
            "file_absent: {paths: [/etc/issue]}",
            extra="  applies_to: {when: [{file_exists: /etc/nginx/nginx.conf}]}\n",
        )
        + rule(
            "pkg",
            "file_absent: {paths: [/etc/issue]}",
            extra="  applies_to: {when: [{package_installed: nginx}]}\n",
        ),
    )
    out = apply(rules, root)
    assert (root / "etc/issue").exists()
    assert "not applicable: it needs /etc/nginx/nginx.conf exists" in out


# ---------------------------------------------------------------- phases, packages, errors


PACKAGES = rule("purge", "package_absent: {packages: [telnet, rsh-client, nis]}") + rule(
    "install", "package_present: {packages: [libpam-pwquality, auditd]}"
)


def test_phases_split_packages(tmp_path: Path) -> None:
    rules = rules_from(tmp_path, PACKAGES + rule("ww", "world_writable: {}"))
    assert [rule_phase(r) for r in rules] == [Phase.OFFLINE, Phase.NETWORK, Phase.OFFLINE]
    net = render_script(rules, "debian", TargetKind.CONTAINER, Phase.NETWORK)
    off = render_script(rules, "debian", TargetKind.CONTAINER, Phase.OFFLINE)
    assert "@@harden-rule' t.install" in net and "t.purge" not in net
    assert "t.purge" in off and "t.install" not in off
    # purges before the world-writable sweep, whatever the baseline order
    reordered = [rules[2], rules[0]]
    off = render_script(reordered, "debian", TargetKind.CONTAINER, Phase.OFFLINE)
    assert off.index("t.purge") < off.index("t.ww")


def test_empty_phase_is_just_the_header(root: Path) -> None:
    script = render_script([], "debian", TargetKind.CONTAINER, Phase.NETWORK)
    assert script.startswith("#!/bin/sh\n")
    assert "'@@harden-rule'" not in script
    res = run(script, root)
    assert res.returncode == 0 and res.stdout == DONE_MARKER + "\n"


def test_package_rules_are_skipped_in_a_root_folder(tmp_path: Path, root: Path) -> None:
    rules = rules_from(tmp_path, PACKAGES)
    for phase in Phase:
        res = run(render_script(rules, "debian", TargetKind.CONTAINER, phase), root)
        assert res.returncode == 0, res.stderr
        assert "skipped in a root folder" in res.stdout


@pytest.mark.parametrize("name", ["package_absent", "package_present", "script_network"])
def test_golden(tmp_path: Path, name: str) -> None:
    rules = rules_from(tmp_path, PACKAGES)
    by_kind = {r.kind: r for r in rules}
    if name == "script_network":
        text = render_script(rules, "debian", TargetKind.VM, Phase.NETWORK)
    else:
        text = render_rule(by_kind[RuleKind(name)], "debian", TargetKind.CONTAINER)
    golden = GOLDEN / f"{name}.sh"
    if os.environ.get("HARDEN_REGEN_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_rendered_scripts_parse_with_dash(tmp_path: Path) -> None:
    """Every kind renders to syntactically valid sh, for both targets."""
    rules = rules_from(
        tmp_path,
        PACKAGES
        + rule("svc", "service_disabled: {units: [cups]}")
        + rule("sys", "sysctl: {key: net.ipv4.ip_forward, value: 0}")
        + rule("mod", "kernel_module_disabled: {modules: [udf]}", "  applies_to: {targets: [vm]}\n")
        + rule(
            "mnt",
            "mount_option: {mountpoint: /tmp, options: [nodev]}",
            "  applies_to: {targets: [vm]}\n",
        )
        + rule(
            "img",
            "image_config: {check: non_root_user, user: app}",
            "  applies_to: {targets: [container]}\n",
        )
        + "".join(rule(c, f"accounts: {{check: {c}}}") for c in ("root_gid_zero", "all_shadowed")),
    )
    for target in TargetKind:
        for phase in Phase:
            script = tmp_path / f"{target}-{phase}.sh"
            script.write_text(render_script(rules, "debian", target, phase))
            res = subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
    img = next(r for r in rules if r.kind is RuleKind.IMAGE_CONFIG)
    snippet = render_rule(img, "debian", TargetKind.CONTAINER)
    assert all(line.startswith("#") for line in snippet.splitlines())


def test_unknown_family_or_template(tmp_path: Path) -> None:
    [r] = rules_from(tmp_path, rule("ww", "world_writable: {}"))
    with pytest.raises(BaselineError, match="family 'alpine'"):
        render_rule(r, "alpine", TargetKind.CONTAINER)
    with pytest.raises(BaselineError, match=r"family '\.\./common'"):
        render_script([r], "../common", TargetKind.CONTAINER, Phase.OFFLINE)


def test_environment_is_strict_and_quotes() -> None:
    env = template_environment()
    assert env.from_string("{{ v | quote }}").render(v="a b; c") == "'a b; c'"
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ nope }}").render()


def test_parse_failure_without_markers() -> None:
    assert parse_failure(DONE_MARKER + "\n", "", 0) is None
    crashed = parse_failure("@@harden-rule t.a\nworking\n", "Killed\n", 137)
    assert crashed == RemediationFailure(rule_id="t.a", exit_status=137, output="working\nKilled")
    syntax = parse_failure("", "sh: 3: Syntax error\n", 2)
    assert syntax is not None and syntax.rule_id == "" and "Syntax error" in syntax.output


def test_pam_config_rule_writes_the_file_and_leaves_the_stack_to_the_target(
    tmp_path: Path, root: Path
) -> None:
    conf = root / "etc/security/faillock.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# deny = 3\n")
    rules = rules_from(
        tmp_path,
        rule(
            "pam.faillock-deny",
            "config_line: {path: /etc/security/faillock.conf, key: deny, value: 5, "
            "compare: le, separator: equals, match: last}",
        ),
    )
    out = apply(rules, root)
    assert conf.read_text() == "deny=5\n"  # the commented default line is replaced
    # pam-auth-update edits the running system's /etc/pam.d: never from a root folder
    assert "skipped: enabling pam_faillock.so needs pam-auth-update on the target itself" in out
    assert not (root / "usr/share/pam-configs").exists()
    script = render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE)
    assert "pam-auth-update --package --enable $enable" in script
    assert "pam_faillock.so preauth" in script and "harden-faillock-preauth" in script


def test_pam_has_reads_the_stack_as_the_verifier_does(root: Path) -> None:
    """The remediation skips pam-auth-update when the module is already in force: the test that
    decides it (harden_pam_has) must not take a comment, another type or a missing argument."""
    pamd = root / "etc/pam.d"
    pamd.mkdir(parents=True, exist_ok=True)
    (pamd / "common-auth").write_text(
        "# auth requisite pam_faillock.so preauth authfail\n"
        "auth\trequisite\t\t\tpam_faillock.so preauth\n"
        "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n"
        "-account required /lib/x86_64-linux-gnu/security/pam_faillock.so\n"
    )
    calls = {
        "common-auth auth pam_faillock.so preauth": 0,
        "common-auth auth pam_faillock.so": 0,
        "common-auth account pam_faillock.so": 0,  # '-account' and a module path count
        "common-auth auth pam_faillock.so authfail": 1,  # only in the comment
        "common-auth session pam_faillock.so": 1,
        "common-auth auth pam_unix.so nullok": 0,
        "common-auth auth pam_unix.so": 0,
        "common-account account pam_faillock.so": 1,  # no such stack
    }
    script = render_script([], "debian", TargetKind.VM, Phase.OFFLINE).replace(
        "printf '%s\\n' '@@harden-done'",
        "".join(f'harden_pam_has {c}; echo "{c}: $?"\n' for c in calls),
    )
    res = run(script, root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"{c}: {rc}" for c, rc in calls.items()]


def test_installed_package_list_is_read_once_and_again_after_a_change(root: Path) -> None:
    """harden_pkg_installed asks dpkg once per script, not once per rule; after a package rule
    (harden_pkgs_changed) or when dpkg's status file is newer than its list, it asks again."""
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    (status.parent / "info").mkdir(exist_ok=True)
    entry = "Package: {}\nStatus: {}\nArchitecture: amd64\nVersion: 1.0\nMaintainer: t\n\n"
    status.write_text(
        entry.format("auditd", "install ok installed")
        + entry.format("nginx", "deinstall ok config-files")
        + entry.format("libc6", "hold ok installed")
    )
    (status.parent / "status.new").write_text(entry.format("nginx", "install ok installed"))
    probe = (
        'for p in auditd nginx libc6 libc6:amd64 audit; do harden_pkg_installed "$p"; '
        'echo "$p $?"; done\n'
    )
    script = render_script([], "debian", TargetKind.VM, Phase.OFFLINE).replace(
        "printf '%s\\n' '@@harden-done'",
        probe
        # the same status file, rewritten in place with an older time: the list of this run
        + f"cp /dev/null {status}; touch -d '2000-01-01' {status}\n"
        + "echo auditd-still $(harden_pkg_installed auditd; echo $?)\n"
        + "harden_pkgs_changed\n"
        + probe
        # dpkg wrote the status file after the list was made (as apt-get in a command would)
        + f"cp {status}.new {status}\n"
        + 'echo "after dpkg: $(harden_pkg_installed nginx; echo $?)"\n',
    )
    res = run(script, root)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:5] == ["auditd 0", "nginx 1", "libc6 0", "libc6:amd64 0", "audit 1"]
    assert lines[5] == "auditd-still 0"  # the list of this run, not a query per rule
    assert lines[6:11] == ["auditd 1", "nginx 1", "libc6 1", "libc6:amd64 1", "audit 1"]
    assert lines[11:] == ["after dpkg: 0"]


def test_audit_rules_write_quoted_lines_and_a_rule_per_privileged_program(
    tmp_path: Path, root: Path
) -> None:
    """Off a live system the check reads the rules files under the root folder: the first run
    writes them (quoted, one per line; one rule per setuid program of the tree), the second
    finds the tree compliant and changes nothing."""
    rules = rules_from(
        tmp_path,
        rule(
            "watch",
            "audit_rules: {file: 50-harden-watch.rules, "
            f"rules: ['-w /etc/passwd -p wa -k identity', '-w /etc/x$(touch {tmp_path}/pwned) -p wa'], "
            "expect: ['^-w /etc/passwd -p wa', '^-w /etc/x']}",
            "  applies_to: {targets: [vm]}\n",
        )
        + rule(
            "privileged",
            "audit_rules: {file: 50-harden-privileged.rules, privileged_programs: true}",
            "  applies_to: {targets: [vm]}\n",
        ),
    )
    (root / "etc/audit/rules.d").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/true", root / "usr/bin/rootsh")
    (root / "usr/bin/rootsh").chmod(0o4755)
    script = render_script(rules, "debian", TargetKind.VM, Phase.OFFLINE)
    res = run(script, root)
    assert res.returncode == 0, res.stdout + res.stderr
    watch = (root / "etc/audit/rules.d/50-harden-watch.rules").read_text()
    assert watch == f"-w /etc/passwd -p wa -k identity\n-w /etc/x$(touch {tmp_path}/pwned) -p wa\n"
    assert not (tmp_path / "pwned").exists()  # written as text, never run
    privileged = (root / "etc/audit/rules.d/50-harden-privileged.rules").read_text()
    assert (
        "-a always,exit -F path=/usr/bin/rootsh -F perm=x -F auid>=1000 -F auid!=unset "
        "-k privileged\n"
    ) in privileged
    assert mode(root / "etc/audit/rules.d/50-harden-watch.rules") == 0o640
    before = {p: p.stat().st_mtime_ns for p in (root / "etc/audit/rules.d").iterdir()}
    again = run(script, root)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in (root / "etc/audit/rules.d").iterdir()} == before
    # a new setuid program is a missing rule: the check fails, the remediation adds it
    shutil.copy("/bin/true", root / "usr/bin/other")
    (root / "usr/bin/other").chmod(0o2755)
    assert run(script, root).returncode == 0
    assert (
        "-F path=/usr/bin/other -F perm=x"
        in (root / "etc/audit/rules.d/50-harden-privileged.rules").read_text()
    )
