"""Checks are pure functions of facts: exercise each kind's semantics on hand-made facts."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harden.baseline.resolve import Catalogue, ResolvedBaseline, resolve
from harden.clock import FixedClock
from harden.errors import BaselineError
from harden.results import RuleResult, Status
from harden.target import CommandResult, TargetKind
from harden.verifiers.facts import FactPlan, Facts, parse
from harden.verifiers.runner import evaluate_rules, verify

HEADER = """\
id: t
version: 1.0.0
title: test
platforms: [{family: debian, versions: ["12", "13"]}]
targets: [container, vm]
"""


def baseline(tmp_path: Path, rules: str, extra: str = "") -> ResolvedBaseline:
    d = tmp_path / "bl"
    d.mkdir(exist_ok=True)
    (d / "t.yaml").write_text(
        HEADER + extra + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  ")
    )
    return resolve(Catalogue([d]), "t")


def facts(**sections: str) -> Facts:
    base = {
        "os-release": 'ID=debian\nVERSION_ID="12"\n',
        "packages": "ii \tbash\nii \topenssh-server\n",
    }
    base.update(
        {
            k.replace("__", ":").replace("_", "-") if k.startswith("x_") else k: v
            for k, v in sections.items()
        }
    )
    return Facts(base, {k: 0 for k in base})


def run(
    bl: ResolvedBaseline,
    f: Facts,
    kind: TargetKind = TargetKind.CONTAINER,
    cfg: dict[str, Any] | None = None,
    today: dt.date = dt.date(2026, 6, 1),
) -> dict[str, RuleResult]:
    return {r.rule_id: r for r in evaluate_rules(bl, f, kind, cfg, today)}


SSHD_RULE = """\
- id: ssh.permit-root-login
  title: no root login
  controls: {iso27017: [CLD.9.5.2]}
  config_line: {path: /etc/ssh/sshd_config, dropin_dir: /etc/ssh/sshd_config.d, key: PermitRootLogin, value: "no"}
"""


def test_sshd_first_match_follows_include_order(tmp_path: Path) -> None:
    bl = baseline(tmp_path, SSHD_RULE)
    main = "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n"
    f = Facts(
        {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "file:/etc/ssh/sshd_config": main,
            "dir:/etc/ssh/sshd_config.d": "/etc/ssh/sshd_config.d/00-harden.conf\n/etc/ssh/sshd_config.d/50-x.conf",
            "file:/etc/ssh/sshd_config.d/00-harden.conf": "PermitRootLogin no\n",
            "file:/etc/ssh/sshd_config.d/50-x.conf": "PermitRootLogin yes\n",
        },
        {},
    )
    r = run(bl, f)["ssh.permit-root-login"]
    assert r.status is Status.PASSED
    assert "00-harden.conf" in r.evidence[0]
    # without the drop-in the main file's later line is the first match
    f2 = Facts({**f.sections, "dir:/etc/ssh/sshd_config.d": ""}, {})
    r2 = run(bl, f2)["ssh.permit-root-login"]
    assert r2.status is Status.FAILED
    assert "PermitRootLogin yes" in r2.evidence[0]


def test_sshd_settings_after_match_block_are_ignored(tmp_path: Path) -> None:
    bl = baseline(tmp_path, SSHD_RULE)
    f = Facts(
        {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "file:/etc/ssh/sshd_config": "Match User x\nPermitRootLogin no\n",
        },
        {},
    )
    assert run(bl, f)["ssh.permit-root-login"].status is Status.FAILED


def test_missing_config_file_is_not_applicable_not_passed(tmp_path: Path) -> None:
    bl = baseline(tmp_path, SSHD_RULE)
    r = run(bl, Facts({"os-release": "ID=debian\nVERSION_ID=12\n"}, {}))["ssh.permit-root-login"]
    assert r.status is Status.NOT_APPLICABLE
    assert "does not exist" in r.reason
    # the fact script always prints a (here empty) file section: the exists probe decides
    empty = Facts(
        {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "file:/etc/ssh/sshd_config": "",
            "exists:/etc/ssh/sshd_config": "",
        },
        {},
    )
    assert run(bl, empty)["ssh.permit-root-login"].status is Status.NOT_APPLICABLE


def test_systemd_style_dropins_are_read_after_the_main_file(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: journald.storage
      title: persistent journal
      controls: {iso27017: [CLD.9.5.2]}
      config_line:
        path: /etc/systemd/journald.conf
        dropin_dir: /etc/systemd/journald.conf.d
        key: Storage
        value: persistent
        separator: equals
        match: last
    """,
    )
    sections = {
        "os-release": "ID=debian\nVERSION_ID=12\n",
        "file:/etc/systemd/journald.conf": "[Journal]\nStorage=auto\n",
        "exists:/etc/systemd/journald.conf": "yes",
        "dir:/etc/systemd/journald.conf.d": "/etc/systemd/journald.conf.d/99-harden.conf\n"
        "/etc/systemd/journald.conf.d/10-x.conf",
        "file:/etc/systemd/journald.conf.d/10-x.conf": "Storage=volatile\n",
        "file:/etc/systemd/journald.conf.d/99-harden.conf": "Storage=persistent\n",
    }
    r = run(bl, Facts(sections, {}))["journald.storage"]
    assert r.status is Status.PASSED and "99-harden.conf" in r.evidence[0]
    sections["file:/etc/systemd/journald.conf.d/99-harden.conf"] = ""
    assert run(bl, Facts(sections, {}))["journald.storage"].status is Status.FAILED


def test_sshd_T_wins_on_a_vm(tmp_path: Path) -> None:
    bl = baseline(tmp_path, SSHD_RULE)
    f = Facts(
        {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "file:/etc/ssh/sshd_config": "PermitRootLogin no\n",
            "sshd-T": "port 22\npermitrootlogin yes\n",
        },
        {"sshd-T": 0},
    )
    r = run(bl, f, TargetKind.VM)["ssh.permit-root-login"]
    assert r.status is Status.FAILED and "sshd -T" in r.evidence[0]


def test_login_defs_last_match_and_numeric_compare(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: login.pass-max-days
      title: max days
      controls: {iso27017: [CLD.9.5.2]}
      config_line: {path: /etc/login.defs, key: PASS_MAX_DAYS, value: 365, compare: le, match: last}
    """,
    )
    ok = Facts(
        {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "file:/etc/login.defs": "PASS_MAX_DAYS 99999\n# PASS_MAX_DAYS 1\nPASS_MAX_DAYS 90\n",
        },
        {},
    )
    assert run(bl, ok)["login.pass-max-days"].status is Status.PASSED
    bad = Facts({**ok.sections, "file:/etc/login.defs": "PASS_MAX_DAYS 99999\n"}, {})
    assert run(bl, bad)["login.pass-max-days"].status is Status.FAILED


def test_sysctl_order_and_live_value(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: sysctl.ip-forward
      title: no forwarding
      controls: {iso27017: [CLD.9.5.1]}
      sysctl: {key: net.ipv4.ip_forward, value: 0}
    """,
    )
    sections = {
        "os-release": "ID=debian\nVERSION_ID=12\n",
        "sysctlfile:/usr/lib/sysctl.d/99-harden.conf": "net.ipv4.ip_forward = 1\n",
        "sysctlfile:/etc/sysctl.d/99-harden.conf": "net.ipv4.ip_forward = 0\n",
        "sysctlfile:/etc/sysctl.d/50-x.conf": "net.ipv4.ip_forward=1\n",
        "sysctl-live:net.ipv4.ip_forward": "0\n",
    }
    # /etc/sysctl.d/99-harden.conf shadows the /usr/lib file of the same name and sorts last
    assert run(bl, Facts(sections, {}), TargetKind.VM)["sysctl.ip-forward"].status is Status.PASSED
    sections["sysctl-live:net.ipv4.ip_forward"] = "1\n"
    r = run(bl, Facts(sections, {}), TargetKind.VM)["sysctl.ip-forward"]
    assert r.status is Status.FAILED and any("live" in e for e in r.evidence)


def test_target_and_condition_applicability(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: kmod.cramfs
      title: cramfs
      controls: {iso27017: [CLD.9.5.2]}
      kernel_module_disabled: {modules: [cramfs]}
    - id: svc.ssh
      title: ssh off
      controls: {iso27017: [CLD.9.5.2]}
      applies_to: {when: [{package_installed: avahi-daemon}]}
      service_disabled: {units: [avahi-daemon.service]}
    """,
    )
    res = run(bl, Facts({"os-release": "ID=debian\nVERSION_ID=12\n", "packages": ""}, {}))
    assert res["kmod.cramfs"].status is Status.NOT_APPLICABLE
    assert "vm only" in res["kmod.cramfs"].reason
    assert res["svc.ssh"].status is Status.NOT_APPLICABLE
    assert "avahi-daemon is not installed" in res["svc.ssh"].reason


def test_service_states(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: svc.cups
      title: cups off
      controls: {iso27017: [CLD.9.5.2]}
      service_disabled: {units: [cups.service]}
    """,
    )
    base = {"os-release": "ID=debian\nVERSION_ID=12\n"}
    absent = run(bl, Facts({**base, "unit:cups.service": ""}, {}))["svc.cups"]
    assert absent.status is Status.PASSED and "no unit file" in absent.evidence[0]
    wanted = "file /lib/systemd/system\nwanted /etc/systemd/system/multi-user.target.wants/cups.service\n"
    assert (
        run(bl, Facts({**base, "unit:cups.service": wanted}, {}))["svc.cups"].status
        is Status.FAILED
    )
    masked = "link /etc/systemd/system /dev/null\nfile /lib/systemd/system\n"
    assert (
        run(bl, Facts({**base, "unit:cups.service": masked}, {}))["svc.cups"].status
        is Status.PASSED
    )


def test_accounts_and_suid(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: acct.uid0
      title: uid0
      controls: {iso27017: [CLD.9.5.2]}
      accounts: {check: uid0_only_root}
    - id: acct.nologin
      title: nologin
      controls: {iso27017: [CLD.9.5.2]}
      accounts: {check: system_accounts_nologin}
    - id: acct.empty
      title: empty
      controls: {iso27017: [CLD.9.5.2]}
      accounts: {check: no_empty_passwords}
    - id: fs.suid
      title: suid
      controls: {iso27017: [CLD.9.5.2]}
      suid_sgid_allowlist: {allowlist: [/usr/bin/passwd]}
    """,
    )
    passwd = "root:x:0:0::/root:/bin/bash\ntoor:x:0:0::/:/bin/sh\ndaemon:x:1:1::/:/bin/sh\n"
    f = Facts(
        {
            "os-release": "ID=debian\nVERSION_ID=12\n",
            "passwd": passwd,
            "shadow": "root:*:1::::::\ndaemon::1::::::\n",
            "group": "root:x:0:\n",
            "suid": "/usr/bin/passwd\n/usr/bin/evil\n",
        },
        {},
    )
    res = run(bl, f)
    assert res["acct.uid0"].status is Status.FAILED and "toor" in res["acct.uid0"].evidence[0]
    assert res["acct.nologin"].status is Status.FAILED
    assert res["acct.empty"].status is Status.FAILED
    assert res["fs.suid"].evidence == ("setuid/setgid not on the allow-list: /usr/bin/evil",)


def test_waiver_active_then_expired(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: pkg.telnet
      title: no telnet
      controls: {iso27017: [CLD.9.5.2]}
      package_absent: {packages: [telnet]}
    """,
        extra="waivers:\n  - {rule: pkg.telnet, reason: legacy, owner: ops, expires: 2026-06-30}\n",
    )
    f = Facts({"os-release": "ID=debian\nVERSION_ID=12\n", "packages": "ii \ttelnet\n"}, {})
    waived = run(bl, f, today=dt.date(2026, 6, 30))["pkg.telnet"]
    assert (
        waived.status is Status.WAIVED and waived.waiver is not None and not waived.waiver.expired
    )
    assert waived.evidence == ("installed: telnet",)  # never hidden
    expired = run(bl, f, today=dt.date(2026, 7, 1))["pkg.telnet"]
    assert expired.status is Status.FAILED and "expired" in expired.reason
    # an expired waiver fails the rule even when the check itself passes
    clean = Facts({**f.sections, "packages": ""}, {})
    assert run(bl, clean, today=dt.date(2026, 7, 1))["pkg.telnet"].status is Status.FAILED


def test_image_config_never_echoes_secret_values(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        """\
    - id: image.no-secret-env
      title: no secrets
      controls: {iso27017: [CLD.9.5.2]}
      applies_to: {targets: [container]}
      image_config: {check: no_secret_env}
    - id: image.user
      title: user
      controls: {iso27017: [CLD.9.5.2]}
      applies_to: {targets: [container]}
      image_config: {check: non_root_user, user: app}
    """,
    )
    cfg = {"Env": ["PATH=/bin", "DB_PASSWORD=hunter2"], "User": ""}
    res = run(bl, facts(), cfg=cfg)
    r = res["image.no-secret-env"]
    assert r.status is Status.FAILED and "DB_PASSWORD" in r.evidence[0]
    assert "hunter2" not in " ".join(r.evidence)
    assert res["image.user"].status is Status.FAILED


def test_parse_ignores_forged_markers_and_bad_bytes() -> None:
    out = b"\n@@F-abc os-release\nID=debian\n@@F-zzz passwd\n\xff\xfe\n@@E-abc 0\n"
    f = parse(out, "abc")
    assert "passwd" not in f.sections
    assert "\ufffd" in f.sections["os-release"]


def test_owners_are_judged_against_the_targets_own_account_files() -> None:
    """The walk prints the numeric owner of what root does not own; parse() judges it against
    the target's /etc/passwd and /etc/group, as the sealed view does (not NSS: find -nouser
    asked it once per file)."""
    walk = b"own 1000 1000 /home/a\0own 4242 0 /srv/orphan\nfile\0own 0 4343 /srv/g\0suid /usr/bin/su\0"
    out = (
        b"\n@@F-n passwd\nroot:x:0:0::/root:/bin/sh\na:x:1000:1000::/home/a:/bin/sh\n@@E-n 0\n"
        b"\n@@F-n group\nroot:x:0:\na:x:1000:\n@@E-n 0\n"
        b"\n@@F-n walk\n" + walk + b"\n@@E-n 0\n"
    )
    f = parse(out, "n")
    assert f.lines("unowned") == ["/srv/orphan\\nfile"]
    assert f.lines("ungrouped") == ["/srv/g"]
    assert f.lines("suid") == ["/usr/bin/su"]
    # without root in the account files, what root owns is unowned too (the walk skips it)
    f = parse(out.replace(b"root:x:0:0::/root:/bin/sh\n", b""), "n")
    assert f.lines("unowned") == ["the entries owned by uid 0", "/srv/orphan\\nfile", "/srv/g"]
    # a passwd cut short cannot say which uids exist: the owner rules are errors, not passes
    f = parse(out.replace(b"/bin/sh\n@@E-n 0", b"/bin/sh\n@@E-n 0 truncated", 1), "n")
    assert "unowned" in f.limits and "ungrouped" not in f.limits


class ScriptTarget:
    """A fake target answering the fact script with canned sections (verify wiring only)."""

    kind = TargetKind.CONTAINER

    def __init__(self, sections: dict[str, str]) -> None:
        self.sections = sections
        self.scripts: list[str] = []

    def describe(self) -> str:
        return "fake"

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        self.scripts.append(script)
        nonce = script.split("N=", 1)[1].split("\n", 1)[0].strip("'")
        body = "".join(f"\n@@F-{nonce} {k}\n{v}\n@@E-{nonce} 0\n" for k, v in self.sections.items())
        return CommandResult(0, body.encode(), b"")

    def image_config(self) -> dict[str, Any] | None:
        return {"User": "app", "Env": []}


def test_verify_runs_one_command_for_the_whole_baseline(tmp_path: Path) -> None:
    bl = baseline(
        tmp_path,
        SSHD_RULE
        + """\
- id: pkg.telnet
  title: no telnet
  controls: {iso27017: [CLD.9.5.2]}
  package_absent: {packages: [telnet]}
""",
    )
    t = ScriptTarget({"os-release": "ID=debian\nVERSION_ID=12\n", "packages": "ii \tbash\n"})
    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    report = verify(t, bl, clock, image="x", digest=None)
    assert len(t.scripts) == 1
    assert report.compliant
    assert report.summary()["not_applicable"] == 1  # no sshd_config
    assert report.to_json()["started_at"] == "2026-01-01T00:00:00Z"


def test_plan_quotes_values_and_rejects_unsafe_globs() -> None:
    from harden.verifiers.facts import glob_word

    with pytest.raises(ValueError):
        glob_word("/etc/$(reboot)")
    plan = FactPlan(TargetKind.CONTAINER, commands={"x.y": "true"}, units={"a.service"})
    script = plan.script("n0nce")
    assert "sec unit:a.service;" in script
    assert "/etc/systemd/system/*.wants/a.service" in script


def test_one_stat_for_every_pattern_and_one_walk_for_suid_and_world_writable(
    tmp_path: Path,
) -> None:
    """Run the real fact script with /bin/sh on a folder tree: patterns map back to their files."""
    import subprocess

    bl = baseline(
        tmp_path,
        f"""\
    - id: fs.a
      title: a
      controls: {{iso27017: [CLD.9.5.2]}}
      file_permissions: {{paths: [{tmp_path}/t/a*], max_mode: "0644"}}
    - id: fs.b
      title: b
      controls: {{iso27017: [CLD.9.5.2]}}
      file_absent: {{paths: [{tmp_path}/t/b]}}
    """,
    )
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a1").write_text("x")
    (tree / "a2").write_text("x")
    (tree / "a2").chmod(0o666)
    (tree / "b").write_text("x")
    plan = FactPlan.for_rules(bl.rules, TargetKind.CONTAINER)
    script = plan.script("n0")
    assert script.count("stat -c") == 1
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True).stdout
    f = parse(out, "n0")
    assert [e.path for e in f.stats(f"{tmp_path}/t/a*")] == [f"{tree}/a1", f"{tree}/a2"]
    res = run(bl, Facts({**f.sections, "os-release": "ID=debian\nVERSION_ID=12\n"}, f.status))
    assert res["fs.a"].status is Status.FAILED and "a2: mode 0666" in res["fs.a"].evidence[0]
    assert res["fs.b"].status is Status.FAILED
    walk = parse(
        b"\n@@F-n walk\nsuid /usr/bin/su\0suid /usr/bin/passwd\netc\0ww file /tmp/x\0"
        b"ww dir /srv/d\0suid /x\xff\0\n@@E-n 0\n",
        "n",
    )
    # NUL-separated: a newline in a name stays in the name (escaped), never cut at the newline
    assert walk.lines("suid") == ["/usr/bin/su", "/usr/bin/passwd\\netc", "/x\\xff"]
    assert walk.lines("world-writable") == ["file /tmp/x", "dir /srv/d"]


def test_command_checks_run_concurrently_and_leave_nothing_behind(tmp_path: Path) -> None:
    """c.a waits for a file only c.b creates: one after the other (a first), c.a would fail."""
    import subprocess

    flag = tmp_path / "b-ran"
    checks = {
        "c.a": f"i=0; while [ ! -e {flag} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; "
        f"test -e {flag}",
        "c.b": f"touch {flag}",
        "c.fails": "echo nope; exit 3",
    }
    plan = FactPlan(TargetKind.CONTAINER, commands=checks)
    before = set(Path("/dev/shm").iterdir())
    out = subprocess.run(["/bin/sh", "-c", plan.script("n1")], capture_output=True, check=True)
    f = parse(out.stdout, "n1")
    assert f.status["command:c.a"] == 0
    assert f.status["command:c.fails"] == 3 and f.get("command:c.fails") == "nope\n"
    assert set(Path("/dev/shm").iterdir()) == before


# ---------------------------------------------------------------- settings without effect (PAM)

FAILLOCK_RULE = """\
- id: pam.faillock-deny
  title: faillock deny
  controls: {iso27017: [CLD.9.5.2]}
  config_line: {path: /etc/security/faillock.conf, key: deny, value: 5, compare: le, separator: equals, match: last}
"""
PWQUALITY_RULE = """\
- id: pam.pwquality-minlen
  title: pwquality minlen
  controls: {iso27017: [CLD.9.5.2]}
  config_line:
    path: /etc/security/pwquality.conf
    dropin_dir: /etc/security/pwquality.conf.d
    key: minlen
    value: 14
    compare: ge
    separator: equals
    match: last
"""
DEBIAN_COMMON_AUTH = """\
auth	[success=1 default=ignore]	pam_unix.so nullok
auth	requisite			pam_deny.so
auth	required			pam_permit.so
"""
FAILLOCK_AUTH = """\
auth	required	pam_faillock.so preauth
auth	[success=1 default=ignore]	pam_unix.so nullok
auth	[default=die]	pam_faillock.so authfail
auth	requisite	pam_deny.so
auth	required	pam_permit.so
"""


def pam_facts(**files: str) -> Facts:
    sections = {
        "os-release": 'ID=debian\nVERSION_ID="12"\n',
        "packages": "ii \tlibpam-modules\n",
        "dir:/etc/pam.d": "\n".join(f"/etc/pam.d/{n}" for n in files if "/" not in n),
    }
    for name, text in files.items():
        path = name if name.startswith("/") else f"/etc/pam.d/{name}"
        sections["file:" + path] = text
        sections["exists:" + path] = "yes"
    return Facts(sections, {})


def test_faillock_conf_without_pam_faillock_in_the_stack_fails(tmp_path: Path) -> None:
    bl = baseline(tmp_path, FAILLOCK_RULE)
    conf = {"/etc/security/faillock.conf": "deny = 5\n"}
    # Debian's stock stack: faillock.conf says deny=5, but nothing ever reads it
    f = pam_facts(**conf, **{"common-auth": DEBIAN_COMMON_AUTH, "common-account": ""})
    r = run(bl, f)["pam.faillock-deny"]
    assert r.status is Status.FAILED
    assert "has no effect" in r.evidence[0] and "pam_faillock.so" in r.evidence[0]
    assert any("preauth" in e for e in r.evidence)
    assert any("common-account" in e for e in r.evidence)
    # in the auth stack but not in the account stack: still no effect
    f = pam_facts(**conf, **{"common-auth": FAILLOCK_AUTH, "common-account": ""})
    r = run(bl, f)["pam.faillock-deny"]
    assert r.status is Status.FAILED
    assert [e for e in r.evidence if "common-account" in e]
    assert not [e for e in r.evidence if "common-auth" in e and e.startswith("no ")]


def test_faillock_in_force_through_include_passes(tmp_path: Path) -> None:
    bl = baseline(tmp_path, FAILLOCK_RULE)
    f = pam_facts(
        **{
            "/etc/security/faillock.conf": "deny = 5\n",
            "common-auth": "@include harden-faillock-auth\n",
            "harden-faillock-auth": FAILLOCK_AUTH,
            "common-account": "account required pam_unix.so\naccount required pam_faillock.so\n",
        }
    )
    r = run(bl, f)["pam.faillock-deny"]
    assert r.status is Status.PASSED, r.evidence
    assert r.evidence[0].startswith("/etc/security/faillock.conf: deny 5")
    assert any("harden-faillock-auth: auth" in e for e in r.evidence)
    # a commented-out or optional module line is not in force
    f2 = pam_facts(
        **{
            "/etc/security/faillock.conf": "deny = 5\n",
            "common-auth": FAILLOCK_AUTH.replace("auth\trequired\tpam_faillock.so preauth", "#x"),
            "common-account": "account optional pam_faillock.so\n",
        }
    )
    r = run(bl, f2)["pam.faillock-deny"]
    assert r.status is Status.FAILED and "has no effect" in r.evidence[0]


def test_faillock_module_argument_overrides_the_file(tmp_path: Path) -> None:
    bl = baseline(tmp_path, FAILLOCK_RULE)
    f = pam_facts(
        **{
            "/etc/security/faillock.conf": "deny = 5\n",
            "common-auth": FAILLOCK_AUTH.replace("authfail", "authfail deny=50"),
            "common-account": "account required pam_faillock.so\n",
        }
    )
    r = run(bl, f)["pam.faillock-deny"]
    assert r.status is Status.FAILED
    assert "pam_faillock.so authfail deny=50" in r.evidence[0] and "deny 50" in r.evidence[0]


def test_pwquality_needs_pam_pwquality_in_common_password(tmp_path: Path) -> None:
    bl = baseline(tmp_path, PWQUALITY_RULE)
    conf = {"/etc/security/pwquality.conf": "minlen = 14\n"}
    stock = "password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\n"
    r = run(bl, pam_facts(**conf, **{"common-password": stock}))["pam.pwquality-minlen"]
    assert r.status is Status.FAILED
    assert "pwquality.conf has no effect" in r.evidence[0]
    with_module = "password requisite pam_pwquality.so retry=3\n" + stock
    r = run(bl, pam_facts(**conf, **{"common-password": with_module}))["pam.pwquality-minlen"]
    assert r.status is Status.PASSED, r.evidence
    assert r.evidence[0] == "/etc/security/pwquality.conf: minlen 14 (want minlen >= 14)"
    # a weaker minlen on the module line wins over the file
    weak = with_module.replace("retry=3", "retry=3 minlen=8")
    r = run(bl, pam_facts(**conf, **{"common-password": weak}))["pam.pwquality-minlen"]
    assert r.status is Status.FAILED and "minlen 8" in r.evidence[0]


def test_non_pam_config_files_are_unaffected(tmp_path: Path) -> None:
    # login.defs is read by shadow's tools, not by a PAM module named after it
    bl = baseline(
        tmp_path,
        """\
    - id: login.pass-max-days
      title: max days
      controls: {iso27017: [CLD.9.5.2]}
      config_line: {path: /etc/login.defs, key: PASS_MAX_DAYS, value: 365, compare: le, match: last}
    """,
    )
    f = pam_facts(**{"/etc/login.defs": "PASS_MAX_DAYS 90\n"})
    r = run(bl, f)["login.pass-max-days"]
    assert r.status is Status.PASSED and r.evidence == (
        "/etc/login.defs: PASS_MAX_DAYS 90 (want PASS_MAX_DAYS <= 365)",
    )


def test_plan_gathers_pam_stacks_for_pam_config_files(tmp_path: Path) -> None:
    bl = baseline(tmp_path, FAILLOCK_RULE)
    plan = FactPlan.for_rules(bl.rules, TargetKind.VM)
    assert "/etc/pam.d" in plan.dropin_dirs
    (tmp_path / "x").mkdir()
    bl2 = baseline(tmp_path / "x", SSHD_RULE)
    assert "/etc/pam.d" not in FactPlan.for_rules(bl2.rules, TargetKind.VM).dropin_dirs


def test_rules_the_host_enforces_are_not_applicable_to_a_container_with_why(
    tmp_path: Path,
) -> None:
    bl = baseline(
        tmp_path,
        """\
- id: sysctl.kptr
  title: kptr_restrict
  controls: {iso27017: [CLD.9.5.2]}
  applies_to: {targets: [vm]}
  sysctl: {key: kernel.kptr_restrict, value: 2}
- id: audit.loaded
  title: audit rules loaded
  controls: {iso27017: [CLD.9.5.2]}
  applies_to: {targets: [vm]}
  command: {check: "auditctl -l | grep -q identity", remediation: "true"}
- id: pkg.telnet
  title: no telnet
  controls: {iso27017: [CLD.9.5.2]}
  package_absent: {packages: [telnet]}
""",
    )
    t = ScriptTarget({"os-release": "ID=debian\nVERSION_ID=12\n", "packages": "ii \tbash\n"})
    report = verify(
        t, bl, FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)), image="x", digest=None
    )
    by_id = {r.rule_id: r for r in report.results}
    assert by_id["sysctl.kptr"].status is Status.NOT_APPLICABLE
    assert "a container shares the host's kernel" in (by_id["sysctl.kptr"].reason or "")
    assert by_id["audit.loaded"].status is Status.NOT_APPLICABLE
    assert "enforced by the host" in (by_id["audit.loaded"].reason or "")
    assert by_id["pkg.telnet"].status is Status.PASSED
    # a VM rule's check never runs inside the container, nor are its facts gathered
    assert "auditctl" not in t.scripts[0] and "sysctlfile" not in t.scripts[0]


PWHISTORY_RULE = """\
- id: pam.pwhistory-remember
  title: pwhistory remember
  controls: {iso27017: [CLD.9.5.2]}
  config_line: {path: /etc/security/pwhistory.conf, key: remember, value: 24, compare: ge, separator: equals, match: last}
"""


@pytest.mark.parametrize("version", ["12", "13"])
def test_pwhistory_conf_is_ignored_by_debian_12s_pam(tmp_path: Path, version: str) -> None:
    bl = baseline(tmp_path, PWHISTORY_RULE)
    in_stack = "password requisite pam_pwhistory.so use_authtok\npassword required pam_unix.so\n"

    def facts_for(stack: str) -> Facts:
        f = pam_facts(
            **{"/etc/security/pwhistory.conf": "remember = 24\n", "common-password": stack}
        )
        return Facts({**f.sections, "os-release": f'ID=debian\nVERSION_ID="{version}"\n'}, {})

    r = run(bl, facts_for(in_stack))["pam.pwhistory-remember"]
    if version == "13":
        assert r.status is Status.PASSED, r.evidence
    else:
        # Linux-PAM 1.5.2 (Debian 12) has no pwhistory.conf: the file's value has no effect
        assert r.status is Status.FAILED
        assert r.evidence[0].startswith("/etc/security/pwhistory.conf: remember 24 is ignored")
        assert any("does not read /etc/security/pwhistory.conf" in e for e in r.evidence)
    # the module argument counts on both
    with_arg = in_stack.replace("use_authtok", "use_authtok remember=24")
    r = run(bl, facts_for(with_arg))["pam.pwhistory-remember"]
    assert r.status is Status.PASSED, r.evidence
    assert "pam_pwhistory.so use_authtok remember=24" in r.evidence[0]


def test_the_shell_path_marks_a_cut_file_as_a_limit_never_a_pass(tmp_path: Path) -> None:
    """A line longer than the limit (or too many lines) ends the section as truncated: error."""
    import subprocess

    conf = tmp_path / "login.defs"
    conf.write_text("A" * 70_000 + "\nUMASK 077\n")
    bl = baseline(
        tmp_path,
        f"""\
    - id: login.umask
      title: umask
      controls: {{iso27017: [CLD.9.5.2]}}
      config_line: {{path: {conf}, key: UMASK, value: "077", separator: space}}
    """,
    )
    out = subprocess.run(
        ["/bin/sh", "-c", FactPlan.for_rules(bl.rules, TargetKind.CONTAINER).script("n1")],
        capture_output=True,
        check=True,
    ).stdout
    f = parse(out, "n1")
    assert f"file:{conf}" in f.limits
    res = run(
        bl, Facts({**f.sections, "os-release": "ID=debian\nVERSION_ID=12\n"}, f.status, f.limits)
    )
    assert res["login.umask"].status is Status.ERROR
    assert "not read to the end" in res["login.umask"].evidence[0]


def test_live_sysctl_values_are_read_by_one_process_and_split_per_key() -> None:
    """The VM plan reads every live value with one grep (a fork is 40 ms under TCG), and the
    parse gives each key its own fact; run here on the host's own /proc/sys."""
    import subprocess

    keys = {"kernel.ostype", "net.ipv4.ip_local_port_range", "kernel.no_such_key_here"}
    plan = FactPlan(TargetKind.VM, sysctl_keys=keys)
    script = plan.script("n2")
    assert script.count("grep -H") == 1 and "cat /proc/sys" not in script
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True).stdout
    f = parse(out, "n2")
    assert f.get("sysctl-live:kernel.ostype") == "Linux"
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    assert f.get("sysctl-live:net.ipv4.ip_local_port_range") == f"{low}\t{high}"  # tab kept
    assert f.get("sysctl-live:kernel.no_such_key_here") is None
    # a value of several lines stays one fact; lines without a /proc/sys path are dropped
    many = parse(
        b"\n@@F-m sysctl-live\n/proc/sys/a/b:1\n/proc/sys/a/b:2\n/etc/passwd:x\nnoise\n@@E-m 0\n",
        "m",
    )
    assert many.get("sysctl-live:a.b") == "1\n2"
    assert [k for k in many.sections if k.startswith("sysctl-live")] == ["sysctl-live:a.b"]


AUDIT_RULES = """\
- id: audit.identity
  title: identity files audited
  controls: {iso27017: [CLD.9.5.2]}
  applies_to: {targets: [vm]}
  audit_rules:
    file: 50-harden-identity.rules
    rules: ["-w /etc/passwd -p wa -k identity", "-a always,exit -F arch=b64 -S chmod,fchmod -k perm"]
    expect: ["^-w /etc/passwd -p wa", "arch=b64 -S ([a-z0-9_]+,)*fchmod(,| |$)"]
- id: audit.privileged
  title: privileged programs audited
  controls: {iso27017: [CLD.9.5.2]}
  applies_to: {targets: [vm]}
  audit_rules: {file: 50-harden-privileged.rules, privileged_programs: true}
"""
OS = {"os-release": "ID=debian\nVERSION_ID=12\n"}
SUID = {"suid": "/usr/bin/su\n/usr/bin/sudo\n"}
LOADED = (
    "-w /etc/passwd -p wa -k identity\n"
    "-a always,exit -F arch=b64 -S chmod,fchmod -F key=perm\n"
    "-a always,exit -S all -F path=/usr/bin/su -F perm=x -F auid>=1000 -F auid!=-1 -F key=p\n"
    "-a always,exit -S all -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=-1 -F key=p\n"
)


def live(loaded: str, rc: int = 0, more: dict[str, str] | None = None) -> Facts:
    sections = {**OS, **SUID, "systemd": "running", "audit-loaded": loaded, **(more or {})}
    return Facts(sections, {"audit-loaded": rc})


def test_audit_rules_are_judged_on_the_kernels_loaded_list(tmp_path: Path) -> None:
    bl = baseline(tmp_path, AUDIT_RULES)
    res = run(bl, live(LOADED), TargetKind.VM)
    assert res["audit.identity"].status is Status.PASSED, res["audit.identity"]
    assert res["audit.identity"].evidence == ("all 2 expected rule(s) in auditctl -l (4 rules)",)
    assert res["audit.privileged"].status is Status.PASSED
    # "su" is not satisfied by the rule for "sudo", nor a syscall by a longer name's rule
    res = run(
        bl,
        live(
            LOADED.replace("path=/usr/bin/su ", "path=/usr/bin/sux ").replace(
                ",fchmod", ",fchmodat"
            )
        ),
        TargetKind.VM,
    )
    assert res["audit.identity"].evidence == (
        "not in auditctl -l: arch=b64 -S ([a-z0-9_]+,)*fchmod(,| |$)",
    )
    assert res["audit.privileged"].evidence == (
        "no rule in auditctl -l for privileged program /usr/bin/su",
    )


def test_rules_files_without_the_rules_loaded_fail_on_a_running_system(tmp_path: Path) -> None:
    """What harden wrote to /etc/audit/rules.d is not what the kernel enforces: a running
    system is judged on auditctl -l only; its failure or an empty list is a failure."""
    bl = baseline(tmp_path, AUDIT_RULES)
    files = {
        "dir:/etc/audit/rules.d": "/etc/audit/rules.d/50-harden-identity.rules",
        "file:/etc/audit/rules.d/50-harden-identity.rules": LOADED,
    }
    res = run(bl, live("No rules\n", more=files), TargetKind.VM)
    assert res["audit.identity"].status is Status.FAILED
    assert res["audit.identity"].evidence[0] == "not in auditctl -l: ^-w /etc/passwd -p wa"
    res = run(bl, live("You must be root to run this program.\n", rc=4, more=files), TargetKind.VM)
    assert res["audit.identity"].evidence == (
        "auditctl -l exited 4: You must be root to run this program.",
    )
    assert res["audit.privileged"].status is Status.FAILED
    no_section = Facts({**OS, **SUID, "systemd": "running", **files}, {})
    assert run(bl, no_section, TargetKind.VM)["audit.identity"].evidence == (
        "the loaded audit rules were not read",
    )


def test_audit_rules_at_rest_are_the_rules_files_augenrules_loads(tmp_path: Path) -> None:
    bl = baseline(tmp_path, AUDIT_RULES)
    d = "/etc/audit/rules.d"
    f = Facts(
        {
            **OS,
            **SUID,
            "systemd": "",
            f"dir:{d}": f"{d}/10-base.rules\n{d}/50-harden-identity.rules.bak\n{d}/README",
            f"file:{d}/10-base.rules": LOADED.replace("/etc/passwd", "/etc/shadow"),
            f"file:{d}/50-harden-identity.rules.bak": LOADED,  # augenrules reads *.rules only
            f"file:{d}/README": LOADED,
        },
        {},
    )
    res = run(bl, f, TargetKind.VM)
    assert res["audit.identity"].evidence == ("not in /etc/audit/rules.d: ^-w /etc/passwd -p wa",)
    assert res["audit.privileged"].status is Status.PASSED


def test_the_plan_reads_auditctl_once_for_every_audit_rule() -> None:
    from harden.baseline.resolve import Catalogue, resolve

    bl = resolve(Catalogue.from_search_path(), "debian-vm")
    audit = [r for r in bl.rules if r.kind.value == "audit_rules"]
    assert len(audit) >= 13
    script = FactPlan.for_rules(bl.rules, TargetKind.VM).script("N")
    assert script.count("auditctl -l") == 1 and "sec audit-loaded" in script
    assert "sec walk" in script  # privileged programs come from the one walk
    # an audit_rules rule is a VM rule: a container's script does not read audit rules
    assert all({t.value for t in r.targets} == {"vm"} for r in audit)
    assert "audit-loaded" not in FactPlan.for_rules(audit, TargetKind.CONTAINER).script("N")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ('{file: 50-x.rules, rules: ["-w /x -p wa"], expect: ["^-w /x\\\\s"]}', "expect.0"),
        ('{file: 50-x.rules, rules: ["-w /x -p wa"], expect: ["[[:space:]]"]}', "POSIX classes"),
        ('{file: 50-x.rules, rules: ["-w /x -p wa"], expect: ["(unclosed"]}', "not a regular"),
        ('{file: 50-x.rules, rules: ["-w /x -p wa"]}', "rules need expect"),
        ("{file: ../../cron.d/x.rules, privileged_programs: true}", "file"),
        ('{file: 50-x.rules, rules: ["-w /x; rm -rf /"], expect: [x]}', None),
        ('{file: 50-x.rules, rules: ["-w /x\' -p wa"], expect: [x]}', "rules.0"),
    ],
)
def test_audit_rules_specs_that_would_not_mean_the_same_are_refused(
    tmp_path: Path, spec: str, words: str | None
) -> None:
    rule = f"- id: a.b\n  title: t\n  controls: {{iso27017: [CLD.9.5.2]}}\n  audit_rules: {spec}\n"
    if words is None:  # a shell metacharacter is harmless: every line is quoted when written
        bl = baseline(tmp_path, rule)
        from harden.builder.render import render_rule

        text = render_rule(bl.rules[0], "debian", TargetKind.VM)
        assert "'-w /x; rm -rf /'" in text
        return
    with pytest.raises(BaselineError) as e:
        baseline(tmp_path, rule)
    assert "t.yaml:" in str(e.value) and words in str(e.value), str(e.value)
