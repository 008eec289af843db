"""Resolution: extends, parameters, overrides, waivers, exclusions, targets, digest, search path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from harden.baseline import resolve as resolve_mod
from harden.baseline.kinds import PackageAbsent, RuleKind
from harden.baseline.model import Target, Waiver
from harden.baseline.resolve import Catalogue, Overrides, lint_file, resolve, search_path
from harden.errors import BaselineError
from harden.yamlio import LineMap

COMMON = """\
id: t-common
version: 1.0.0
title: common
platforms: [{family: debian, versions: ["12"]}]
targets: [container, vm]
parameters:
  umask: {type: string, default: "027", description: umask}
  pkgs: {type: list, default: [telnet], description: packages}
rules:
  - id: pkg.telnet
    title: no telnet
    controls: {iso27017: [CLD.9.5.2]}
    package_absent: {packages: "${pkgs}"}
  - id: login.umask
    title: umask
    controls: {iso27017: [CLD.9.5.2]}
    config_line: {path: /etc/login.defs, key: UMASK, value: "${umask}", match: last}
  - id: kernel.usb
    title: no usb storage
    controls: {iso27017: [CLD.9.5.2]}
    kernel_module_disabled: {modules: [usb-storage]}
  - id: fs.tmp
    title: tmp options
    controls: {iso27017: [CLD.9.5.2]}
    mount_option: {mountpoint: /tmp, options: [nodev, nosuid]}
"""

MIDDLE = """\
id: t-middle
version: 1.0.0
title: middle
extends: [t-common]
platforms: [{family: debian}]
targets: [vm]
set_parameters: {umask: "077"}
rules:
  - id: svc.cron
    title: no cron
    controls: {iso27017: [CLD.12.1.2]}
    service_disabled: {units: [cron.service]}
"""

LEAF = """\
id: t-leaf
version: 2.0.0
title: leaf
extends: [t-middle]
platforms: [{family: debian}]
targets: [container, vm]
set_parameters: {pkgs: [telnet, rsh-client]}
exclude_rules: [svc.cron]
rules:
  - id: login.umask
    title: stricter umask
    override: true
    controls: {iso27017: [CLD.9.5.2]}
    config_line: {path: /etc/login.defs, key: UMASK, value: "0077", match: last}
  - id: pkg.nis
    title: no nis
    controls: {iso27017: [CLD.9.5.2]}
    package_absent: {packages: [nis]}
waivers:
  - {rule: pkg.telnet, reason: legacy client, owner: ops, expires: 2027-01-01}
"""


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    d = tmp_path / "lib"
    d.mkdir()
    (d / "common.yaml").write_text(COMMON)
    (d / "middle.yaml").write_text(MIDDLE)
    (d / "leaf.yaml").write_text(LEAF)
    return d


def test_a_single_baseline(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-common")
    assert r.chain == ("t-common",)
    assert [x.id for x in r.rules] == ["pkg.telnet", "login.umask", "kernel.usb", "fs.tmp"]
    assert r.parameters == {"umask": "027", "pkgs": ["telnet"]}
    telnet = r.rule("pkg.telnet")
    assert telnet.kind is RuleKind.PACKAGE_ABSENT
    assert telnet.spec == PackageAbsent(packages=["telnet"])
    assert telnet.source == f"{lib / 'common.yaml'}:10"
    assert telnet.baseline == "t-common"
    assert r.waivers == {}


def test_extends_chain_is_parents_first(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-leaf")
    assert r.chain == ("t-common", "t-middle", "t-leaf")
    assert r.id == "t-leaf"
    assert r.version == "2.0.0"
    # parents' rules first, in their order; exclusions dropped; overrides keep their place
    assert [x.id for x in r.rules] == [
        "pkg.telnet",
        "login.umask",
        "kernel.usb",
        "fs.tmp",
        "pkg.nis",
    ]
    assert [x.baseline for x in r.rules] == ["t-common", "t-leaf", "t-common", "t-common", "t-leaf"]


def test_set_parameters_flow_down_the_chain(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-leaf")
    assert r.parameters == {"umask": "077", "pkgs": ["telnet", "rsh-client"]}
    assert r.rule("pkg.telnet").spec == PackageAbsent(packages=["telnet", "rsh-client"])
    middle = resolve(Catalogue([lib]), "t-middle")
    assert middle.rule("login.umask").spec.model_dump()["value"] == "077"


def test_override_true_replaces_the_parent_rule(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-leaf")
    umask = r.rule("login.umask")
    assert umask.title == "stricter umask"
    assert umask.spec.model_dump()["value"] == "0077"
    assert umask.source == f"{lib / 'leaf.yaml'}:10"


def test_exclude_rules_drops_an_inherited_rule(lib: Path) -> None:
    assert "svc.cron" in {x.id for x in resolve(Catalogue([lib]), "t-middle").rules}
    assert "svc.cron" not in {x.id for x in resolve(Catalogue([lib]), "t-leaf").rules}


def test_waivers_attach_to_their_rule(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-leaf")
    assert set(r.waivers) == {"pkg.telnet"}
    w = r.waivers["pkg.telnet"]
    assert w.expires == dt.date(2027, 1, 1)
    assert w.owner == "ops"
    assert w.active_on(dt.date(2027, 1, 1))
    assert not w.active_on(dt.date(2027, 1, 2))
    assert r.to_json()["waivers"] == [
        {"rule": "pkg.telnet", "reason": "legacy client", "owner": "ops", "expires": "2027-01-01"}
    ]


def test_image_definition_overrides(lib: Path) -> None:
    overrides = Overrides(
        parameters={"umask": "0027"},
        waivers=(Waiver(rule="kernel.usb", reason="r", owner="o", expires=dt.date(2026, 6, 1)),),
        exclude_rules=("fs.tmp",),
        lines=LineMap("image.yaml"),
    )
    r = resolve(Catalogue([lib]), "t-middle", overrides)
    assert r.parameters["umask"] == "0027"
    assert r.rule("login.umask").spec.model_dump()["value"] == "0027"
    assert "fs.tmp" not in {x.id for x in r.rules}
    assert set(r.waivers) == {"kernel.usb"}
    assert r.digest != resolve(Catalogue([lib]), "t-middle").digest


def test_targets_default_to_the_declaring_documents_targets(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-leaf")
    # t-common declares [container, vm]; its rules keep both even though t-middle says [vm]
    assert r.rule("pkg.telnet").targets == {Target.CONTAINER, Target.VM}
    assert r.rule("pkg.nis").targets == {Target.CONTAINER, Target.VM}
    middle = resolve(Catalogue([lib]), "t-middle")
    assert middle.rule("svc.cron").targets == {Target.VM}
    assert middle.targets == {Target.VM}


def test_applies_to_targets_narrow_a_rule(lib: Path) -> None:
    (lib / "narrow.yaml").write_text(
        COMMON.replace("id: t-common", "id: t-narrow").replace(
            "    title: no telnet\n",
            "    title: no telnet\n    applies_to: {targets: [container]}\n",
        )
    )
    r = resolve(Catalogue([lib]), "t-narrow")
    assert r.rule("pkg.telnet").targets == {Target.CONTAINER}


def test_vm_only_kinds_never_get_the_container_target(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-leaf")
    for rid in ("kernel.usb", "fs.tmp"):
        assert r.rule(rid).targets == {Target.VM}
    assert {x.kind for x in r.rules if Target.CONTAINER in x.targets}.isdisjoint(
        {RuleKind.KERNEL_MODULE_DISABLED, RuleKind.MOUNT_OPTION}
    )


def test_a_diamond_merges_each_baseline_once(lib: Path) -> None:
    (lib / "side.yaml").write_text(
        MIDDLE.replace("id: t-middle", "id: t-side")
        .replace('set_parameters: {umask: "077"}\n', "")
        .replace("svc.cron", "svc.atd")
        .replace("cron.service", "atd.service")
    )
    (lib / "top.yaml").write_text(
        LEAF.replace("id: t-leaf", "id: t-top").replace("[t-middle]", "[t-middle, t-side]")
    )
    r = resolve(Catalogue([lib]), "t-top")
    assert r.chain == ("t-common", "t-middle", "t-side", "t-top")
    assert r.parameters["umask"] == "077"  # t-side does not reset what t-middle set
    assert [x.id for x in r.rules].count("pkg.telnet") == 1
    assert "svc.atd" in {x.id for x in r.rules}


def test_digest_is_stable_across_key_order_and_whitespace(tmp_path: Path, lib: Path) -> None:
    original = resolve(Catalogue([lib]), "t-common").digest
    assert original.startswith("sha256:")
    assert len(original) == len("sha256:") + 64
    other = tmp_path / "other"
    other.mkdir()
    reordered = (
        "# the same baseline, written differently\n"
        "targets:   [container,   vm]\n"
        "title: common\n"
        "platforms:\n  - versions: ['12']\n    family: debian\n"
        "version: '1.0.0'\n"
        "id: t-common\n\n"
        "parameters:\n"
        "  pkgs: {description: packages, default: [telnet], type: list}\n"
        "  umask:\n    description: umask\n    type: string\n    default: '027'\n"
        + COMMON[COMMON.index("rules:") :]
        .replace("    title: no telnet\n", "")
        .replace(
            "    controls: {iso27017: [CLD.9.5.2]}\n    package_absent",
            "    package_absent",
        )
        .replace(
            '    package_absent: {packages: "${pkgs}"}\n',
            '    package_absent:\n      packages: "${pkgs}"\n'
            "    controls:\n      iso27017:\n        - CLD.9.5.2\n    title: no telnet\n",
        )
    )
    (other / "common.yaml").write_text(reordered)
    assert resolve(Catalogue([other]), "t-common").digest == original
    assert resolve(Catalogue([lib]), "t-common").digest == original


def test_digest_changes_when_a_rule_value_changes(tmp_path: Path, lib: Path) -> None:
    original = resolve(Catalogue([lib]), "t-common").digest
    for old, new in [
        ("[usb-storage]", "[usb-storage, firewire-core]"),
        ("title: no telnet", "title: no telnet client"),
        ('default: "027"', 'default: "077"'),
    ]:
        changed = tmp_path / f"changed-{abs(hash(new))}"
        changed.mkdir()
        (changed / "common.yaml").write_text(COMMON.replace(old, new))
        assert resolve(Catalogue([changed]), "t-common").digest != original, new


def test_lint_file_takes_precedence_over_the_search_path(tmp_path: Path, lib: Path) -> None:
    edited = tmp_path / "common.yaml"
    edited.write_text(COMMON.replace("title: no telnet", "title: edited"))
    cat = Catalogue([lib])
    r = lint_file(edited, cat)
    assert r.rule("pkg.telnet").title == "edited"
    # and its children see the edited file too
    assert resolve(cat, "t-leaf").rule("pkg.telnet").title == "edited"


def _baseline_in(directory: Path, title: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "x.yaml").write_text(
        COMMON.replace("id: t-common", "id: t-where").replace("title: common", f"title: {title}")
    )


def test_search_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli_dir, env_a, env_b, shipped = (tmp_path / n for n in ("cli", "env-a", "env-b", "shipped"))
    monkeypatch.setattr(resolve_mod, "shipped_baselines_dir", lambda: shipped)
    monkeypatch.setenv("HARDEN_BASELINES", f"{env_a}:{env_b}")
    assert search_path([cli_dir]) == [cli_dir, env_a, env_b, shipped]

    _baseline_in(shipped, "shipped")
    assert resolve(Catalogue.from_search_path([cli_dir]), "t-where").title == "shipped"
    _baseline_in(env_b, "env-b")
    assert resolve(Catalogue.from_search_path([cli_dir]), "t-where").title == "env-b"
    _baseline_in(env_a, "env-a")
    assert resolve(Catalogue.from_search_path([cli_dir]), "t-where").title == "env-a"
    _baseline_in(cli_dir, "cli")
    assert resolve(Catalogue.from_search_path([cli_dir]), "t-where").title == "cli"

    monkeypatch.delenv("HARDEN_BASELINES")
    assert search_path() == [shipped]
    assert resolve(Catalogue.from_search_path(), "t-where").title == "shipped"


# ---------------------------------------------------------------- references and profiles

_LIB = """\
id: lib
version: 1.0.0
title: lib
platforms: [{family: debian}]
targets: [container]
rules:
  - id: a.minimal
    title: t
    controls: {iso27017: [CLD.9.5.2]}
    references: {ssg: [package_telnet_removed], anssi: [R62], cis: ["2.2.4"]}
    package_absent: {packages: [telnet]}
  - id: a.enhanced
    title: t
    controls: {iso27017: [CLD.9.5.2], cis_debian12: ["1.1.2.3.1"]}
    references: {anssi: [R36]}
    package_absent: {packages: [x]}
  - id: a.unmapped
    title: t
    controls: {iso27017: [CLD.9.5.2]}
    package_absent: {packages: [y]}
"""


def _profile(tmp_path: Path, select: str, name: str = "p") -> Path:
    d = tmp_path / "bl"
    d.mkdir(exist_ok=True)
    (d / "lib.yaml").write_text(_LIB)
    (d / f"{name}.yaml").write_text(
        f"id: {name}\nversion: 1.0.0\ntitle: p\nextends: [lib]\n"
        f"platforms: [{{family: debian}}]\ntargets: [container]\nselect: {select}\n"
    )
    return d


def test_selection_keeps_rules_at_or_below_the_level(tmp_path: Path) -> None:
    d = _profile(tmp_path, "{framework: anssi_bp28, level: minimal}")
    ids = [r.id for r in resolve(Catalogue([d]), "p").rules]
    assert ids == ["a.minimal", "a.unmapped"]
    d = _profile(tmp_path, "{framework: anssi_bp28, level: enhanced, unmapped: drop}")
    assert [r.id for r in resolve(Catalogue([d]), "p").rules] == ["a.minimal", "a.enhanced"]
    # CIS: 1.1.2.3.1 (separate /home) is Level 2; the legacy controls entry counts as a reference
    d = _profile(tmp_path, "{framework: cis_debian12, level: level_1_server, also: [a.enhanced]}")
    assert [r.id for r in resolve(Catalogue([d]), "p").rules] == [
        "a.minimal",
        "a.enhanced",
        "a.unmapped",
    ]
    d = _profile(tmp_path, "{framework: cis_debian12, level: level_1_server}")
    r = resolve(Catalogue([d]), "p")
    assert [x.id for x in r.rules] == ["a.minimal", "a.unmapped"]
    assert r.rule("a.minimal").references == {
        "ssg": ("package_telnet_removed",),
        "anssi": ("R62",),
        "cis": ("2.2.4",),
    }


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ("{framework: anssi_bp28, level: level_1_server}", "not a level of anssi_bp28"),
        ("{framework: cis_debian12, level: high}", "not a level of cis_debian12"),
        ("{framework: anssi_bp28, level: high, also: [no.such]}", "select.also names 'no.such'"),
    ],
)
def test_bad_selection_is_an_error(tmp_path: Path, select: str, message: str) -> None:
    d = _profile(tmp_path, select)
    with pytest.raises(BaselineError) as e:
        resolve(Catalogue([d]), "p")
    assert message in e.value.diagnostics()


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        ("{anssi: [R99]}", "not an ANSSI-BP-028 v2.0 recommendation: R99"),
        ("{cis: ['9.9.9']}", "not a CIS Debian Linux 12 recommendation id: 9.9.9"),
        ("{ssg: ['bad id']}", "references.ssg"),
    ],
)
def test_unknown_reference_ids_are_rejected(tmp_path: Path, refs: str, message: str) -> None:
    d = tmp_path / "bl"
    d.mkdir()
    (d / "lib.yaml").write_text(_LIB.replace("references: {anssi: [R36]}", f"references: {refs}"))
    with pytest.raises(BaselineError) as e:
        resolve(Catalogue([d]), "lib")
    assert message in e.value.diagnostics() and "a.enhanced" in e.value.diagnostics()


def test_cis_ids_in_two_places_must_agree(tmp_path: Path) -> None:
    d = tmp_path / "bl"
    d.mkdir()
    (d / "lib.yaml").write_text(
        _LIB.replace("references: {anssi: [R36]}", "references: {cis: ['2.2.4']}")
    )
    with pytest.raises(BaselineError) as e:
        resolve(Catalogue([d]), "lib")
    assert "disagree" in e.value.diagnostics()
