"""The shipped default baselines, loaded through the real loader and resolver."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from harden.baseline.kinds import (
    ConfigLine,
    PackageAbsent,
    RuleKind,
    SuidSgidAllowlist,
)
from harden.baseline.model import Target
from harden.baseline.resolve import Catalogue, ResolvedBaseline, lint_file, load_doc, resolve
from harden.paths import shipped_baselines_dir

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "baselines.md"
SHIPPED = ("debian-common", "debian-container", "debian-vm")

# kinds whose settings belong to the kernel, the boot or running services: never on a container
VM_ONLY = {
    RuleKind.KERNEL_MODULE_DISABLED,
    RuleKind.MOUNT_OPTION,
    RuleKind.SYSCTL,
}

# what a working Debian system (and a container built from it) cannot lose
ESSENTIAL = {
    "apt",
    "base-files",
    "base-passwd",
    "bash",
    "coreutils",
    "dash",
    "debianutils",
    "dpkg",
    "findutils",
    "grep",
    "gzip",
    "libc-bin",
    "libc6",
    "libpam-modules",
    "libpam-runtime",
    "login",
    "mount",
    "passwd",
    "sed",
    "tar",
    "util-linux",
}

# setuid/setgid files of the debian:12 and debian:13 minbase images
MINBASE_SUID = {
    "/usr/bin/chage",
    "/usr/bin/chfn",
    "/usr/bin/chsh",
    "/usr/bin/expiry",
    "/usr/bin/gpasswd",
    "/usr/bin/mount",
    "/usr/bin/newgrp",
    "/usr/bin/passwd",
    "/usr/bin/su",
    "/usr/bin/umount",
    "/usr/sbin/unix_chkpwd",
}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue([shipped_baselines_dir()])


@pytest.fixture(scope="module")
def resolved(catalogue: Catalogue) -> dict[str, ResolvedBaseline]:
    return {bid: resolve(catalogue, bid) for bid in SHIPPED}


def test_shipped_ids(catalogue: Catalogue) -> None:
    assert set(SHIPPED) <= set(catalogue.ids())


def test_rule_counts(resolved: dict[str, ResolvedBaseline]) -> None:
    assert len(resolved["debian-container"].rules) >= 60
    assert len(resolved["debian-vm"].rules) >= 100


def test_extends_and_targets(resolved: dict[str, ResolvedBaseline]) -> None:
    assert resolved["debian-common"].targets == {Target.CONTAINER, Target.VM}
    assert resolved["debian-container"].targets == {Target.CONTAINER}
    assert resolved["debian-vm"].targets == {Target.VM}
    assert resolved["debian-container"].chain == ("debian-common", "debian-container")
    assert resolved["debian-vm"].chain == ("debian-common", "debian-vm")
    for r in resolved.values():
        assert [(p.family.value, p.versions) for p in r.platforms] == [("debian", ["12", "13"])]


def test_every_rule_maps_to_iso27017(resolved: dict[str, ResolvedBaseline]) -> None:
    for b in resolved.values():
        for rule in b.rules:
            assert "CLD.9.5.2" in rule.controls.get("iso27017", ()), rule.id
            assert rule.title and rule.rationale, rule.id


def test_cis_ids_are_well_formed(resolved: dict[str, ResolvedBaseline]) -> None:
    for rule in resolved["debian-vm"].rules + resolved["debian-container"].rules:
        for framework in ("cis_debian12", "cis_dil"):
            for cid in rule.controls.get(framework, ()):
                assert re.fullmatch(r"[1-7](\.[0-9]+){1,4}", cid), (rule.id, framework, cid)


def test_rule_ids_unique_across_shipped_files() -> None:
    seen: Counter[str] = Counter()
    for bid in SHIPPED:
        loaded = load_doc(shipped_baselines_dir() / f"{bid}.yaml")
        assert loaded.doc.id == bid
        for rule in loaded.doc.rules:
            assert re.fullmatch(r"[a-z0-9]+(\.[a-z0-9-]+)+", rule.id), rule.id
            assert not rule.override, rule.id
            seen[rule.id] += 1
    assert [rid for rid, n in seen.items() if n > 1] == []


def test_vm_only_kinds_never_target_containers(resolved: dict[str, ResolvedBaseline]) -> None:
    container_ids = {r.id for r in resolved["debian-container"].rules}
    for b in resolved.values():
        for rule in b.rules:
            if rule.kind in VM_ONLY:
                assert Target.CONTAINER not in rule.targets, rule.id
                assert rule.id not in container_ids, rule.id
    kinds = {r.kind for r in resolved["debian-vm"].rules}
    assert kinds >= VM_ONLY


def test_vm_file_rules_target_vm_only(resolved: dict[str, ResolvedBaseline]) -> None:
    vm_own = [r for r in resolved["debian-vm"].rules if r.baseline == "debian-vm"]
    assert vm_own
    for rule in vm_own:
        assert rule.targets == {Target.VM}, rule.id


def test_container_rules(resolved: dict[str, ResolvedBaseline]) -> None:
    c = resolved["debian-container"]
    non_root = c.rule("image.non-root-user")
    assert non_root.kind is RuleKind.IMAGE_CONFIG
    assert non_root.spec.model_dump()["user"] == c.parameters["container_user"] == "app"
    for rid in ("image.no-secret-env", "pkg.sudo-absent", "pkg.openssh-server-absent"):
        assert c.rule(rid).targets == {Target.CONTAINER}
    sshd = c.rule("pkg.openssh-server-absent").spec
    assert isinstance(sshd, PackageAbsent)
    assert "openssh-server" in sshd.packages


def test_sshd_rules_need_openssh_server(resolved: dict[str, ResolvedBaseline]) -> None:
    sshd_rules = [
        r
        for r in resolved["debian-vm"].rules
        if isinstance(r.spec, ConfigLine) and r.spec.path == "/etc/ssh/sshd_config"
    ]
    assert len(sshd_rules) >= 15
    for rule in sshd_rules:
        spec = rule.spec
        assert isinstance(spec, ConfigLine)
        assert spec.dropin_dir == "/etc/ssh/sshd_config.d", rule.id
        assert spec.match == "first" and spec.separator == "space", rule.id
        assert [c.package_installed for c in rule.when] == ["openssh-server"], rule.id
        assert rule.targets == {Target.VM}, rule.id


def test_never_removes_essential_packages(resolved: dict[str, ResolvedBaseline]) -> None:
    for b in resolved.values():
        for rule in b.rules:
            if isinstance(rule.spec, PackageAbsent):
                assert not set(rule.spec.packages) & ESSENTIAL, rule.id


def test_suid_allowlist_keeps_minbase_helpers(resolved: dict[str, ResolvedBaseline]) -> None:
    for bid in SHIPPED:
        spec = resolved[bid].rule("fs.suid-sgid-allowlist").spec
        assert isinstance(spec, SuidSgidAllowlist)
        assert set(spec.allowlist) >= MINBASE_SUID, bid


def test_login_defs_parameters(resolved: dict[str, ResolvedBaseline]) -> None:
    c = resolved["debian-container"]
    expected = {
        "login.umask": ("UMASK", "027", "eq"),
        "login.pass-max-days": ("PASS_MAX_DAYS", 365, "le"),
        "login.pass-min-days": ("PASS_MIN_DAYS", 1, "ge"),
        "login.pass-warn-age": ("PASS_WARN_AGE", 7, "ge"),
        "login.encrypt-method": ("ENCRYPT_METHOD", "SHA512,YESCRYPT", "one_of"),
    }
    for rid, (key, value, how) in expected.items():
        spec = c.rule(rid).spec
        assert isinstance(spec, ConfigLine)
        assert (spec.path, spec.key, spec.value, spec.compare.value, spec.match) == (
            "/etc/login.defs",
            key,
            value,
            how,
            "last",
        ), rid


def _doc_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_worked_example_lints(tmp_path: Path) -> None:
    blocks = [b for b in _doc_blocks() if b.startswith("# baselines-example/web.yaml\n")]
    assert len(blocks) == 1
    d = tmp_path / "baselines-example"
    d.mkdir()
    web = d / "web.yaml"
    web.write_text(blocks[0], encoding="utf-8")
    cat = Catalogue([d, shipped_baselines_dir()])
    r = lint_file(web, cat)
    assert r.id == "web"
    assert r.chain == ("debian-common", "debian-container", "web")
    assert "pkg.nginx-absent" in r.waivers
    assert r.parameters["container_user"] == "www-data"
    assert r.rule("image.non-root-user").spec.model_dump()["user"] == "www-data"
    assert r.rule("image.healthcheck").targets == {Target.CONTAINER}
    base = resolve(Catalogue([shipped_baselines_dir()]), "debian-container")
    assert len(r.rules) == len(base.rules) + 1


def test_doc_table_matches_rule_counts(resolved: dict[str, ResolvedBaseline]) -> None:
    text = DOC.read_text(encoding="utf-8")
    for bid in SHIPPED:
        m = re.search(rf"^\| `{bid}` \|[^|]*\|[^|]*\| (\d+) \|", text, re.M)
        assert m is not None, bid
        assert int(m.group(1)) == len(resolved[bid].rules), bid


PROFILES = {
    f"debian-{t}-{fw}-{lv}": t
    for t in ("container", "vm")
    for fw, levels in (
        ("anssi-bp28", ("minimal", "intermediary", "enhanced", "high")),
        ("cis", ("l1", "l2")),
    )
    for lv in levels
}


def test_profiles_are_nested_selections_of_one_library(catalogue: Catalogue) -> None:
    got = {bid: resolve(catalogue, bid) for bid in PROFILES}
    text = DOC.read_text(encoding="utf-8")
    library = {r.id for b in ("debian-container", "debian-vm") for r in resolve(catalogue, b).rules}
    for bid, target in PROFILES.items():
        ids = {r.id for r in got[bid].rules}
        assert ids <= library, bid
        own = [r for r in got[bid].rules if target in {t.value for t in r.targets}]
        full = {r.id for r in resolve(catalogue, f"debian-{target}").rules}
        assert {r.id for r in own} <= full, bid
        m = re.search(rf"^\| `{bid}` \|[^|]*\|[^|]*\| (\d+) \| (\d+) \|", text, re.M)
        assert m is not None and (int(m.group(1)), int(m.group(2))) == (len(ids), len(own)), bid
    # a container profile lists the framework's VM rules too (reported not applicable)
    high = got["debian-container-anssi-bp28-high"]
    assert {r.id for r in resolve(catalogue, "debian-vm").rules} <= {r.id for r in high.rules}
    for t in ("container", "vm"):
        chain = [
            {r.id for r in got[f"debian-{t}-anssi-bp28-{lv}"].rules}
            for lv in ("minimal", "intermediary", "enhanced", "high")
        ]
        assert chain[0] < chain[1] <= chain[2] <= chain[3]
        assert {r.id for r in got[f"debian-{t}-cis-l1"].rules} < {
            r.id for r in got[f"debian-{t}-cis-l2"].rules
        }
    minimal = got["debian-container-anssi-bp28-minimal"]
    # umask (R36) is an enhanced recommendation: not in minimal, in enhanced with ANSSI's 077
    assert "login.umask-profile" not in {r.id for r in minimal.rules}
    enhanced = got["debian-container-anssi-bp28-enhanced"]
    assert enhanced.rule("login.umask-profile").spec.model_dump()["value"] == "077"
    # rules the framework does not name stay (unmapped: keep)
    assert "image.non-root-user" in {r.id for r in minimal.rules}


def test_rules_carry_references_and_the_demo_uses_the_high_container_profile(
    resolved: dict[str, ResolvedBaseline],
) -> None:
    r = resolved["debian-container"].rule("login.umask-profile")
    assert r.references == {
        "ssg": ("accounts_umask_etc_profile",),
        "anssi": ("R36",),
        "cis": ("5.4.3.3",),
    }
    assert r.controls["anssi_bp28"] == ("R36",) and r.controls["cis_debian12"] == ("5.4.3.3",)
    with_ssg = [x for x in resolved["debian-common"].rules if x.references["ssg"]]
    assert len(with_ssg) >= 35
    # the VM file still names CIS under controls: read as references.cis
    vm = resolved["debian-vm"]
    assert any(x.references["cis"] for x in vm.rules if x.baseline == "debian-vm")
    image = (REPO / "images" / "debian12.yaml").read_text(encoding="utf-8")
    assert "id: debian-container-anssi-bp28-high" in image
