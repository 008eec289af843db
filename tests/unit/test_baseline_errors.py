"""Every way a baseline can be wrong gives a clean BaselineError (exit 3) naming file, line, rule.

The line each error must name is marked in the YAML text with a ``# <`` comment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harden.baseline.model import Waiver
from harden.baseline.resolve import Catalogue, Overrides, lint_file, resolve
from harden.errors import BaselineError, ExitCode
from harden.yamlio import load_file

PARENT = """\
id: t-common
version: 1.0.0
title: common
platforms: [{family: debian, versions: ["12"]}]
targets: [container, vm]
parameters:
  umask: {type: string, default: "027", description: umask}
  pkgs: {type: list, default: [telnet], description: packages}
  uid_min: {type: integer, default: 1000, description: first uid}
rules:
  - id: pkg.telnet
    title: no telnet
    controls: {iso27017: [CLD.9.5.2]}
    package_absent: {packages: "${pkgs}"}
  - id: login.umask
    title: umask
    controls: {iso27017: [CLD.9.5.2]}
    config_line: {path: /etc/login.defs, key: UMASK, value: "${umask}", match: last}
"""

# the head of a valid child of t-common; cases append to it
CHILD = """\
id: t-child
version: 1.0.0
title: child
extends: [t-common]
platforms: [{family: debian}]
targets: [container, vm]
"""

# a valid standalone head
ALONE = """\
id: t-alone
version: 1.0.0
title: alone
platforms: [{family: debian}]
targets: [container, vm]
parameters:
  umask: {type: string, default: "027", description: umask}
"""


def rule(rid: str, body: str, *, marker_on: str = "") -> str:
    """A rule list item; ``marker_on`` names the line ("id", "kind") that gets the ``# <``."""
    mark = {"id": "", "kind": ""}
    if marker_on:
        mark[marker_on] = "  # <"
    return (
        f"  - id: {rid}{mark['id']}\n"
        "    title: a rule\n"
        "    controls: {iso27017: [CLD.9.5.2]}\n"
        f"    {body}{mark['kind']}\n"
    )


def marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("# <")]
    assert len(lines) == 1, "each case marks exactly one line"
    return lines[0]


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    d = tmp_path / "lib"
    d.mkdir()
    (d / "common.yaml").write_text(PARENT)
    return d


def lint_error(lib: Path, name: str, text: str) -> BaselineError:
    path = lib.parent / name
    path.write_text(text)
    with pytest.raises(BaselineError) as info:
        lint_file(path, Catalogue([lib]))
    err = info.value
    assert err.exit_code == ExitCode.INVALID_INPUT
    assert int(err.exit_code) == 3
    assert name in str(err)
    return err


def check(
    lib: Path, text: str, *, rule_id: str | None = None, contains: str = "", name: str = "b.yaml"
) -> BaselineError:
    err = lint_error(lib, name, text)
    message = str(err)
    assert f"{name}:{marked_line(text)}:" in message, message
    if rule_id is not None:
        assert err.rule_id == rule_id
        assert f"rule {rule_id}:" in message
    assert contains.lower() in message.lower(), message
    assert "Traceback" not in err.diagnostics()
    assert err.diagnostics().startswith("error: ")
    return err


# ---------------------------------------------------------------- the file itself


@pytest.mark.parametrize(
    "text",
    [
        "id: t-x\nrules: [\n  - a  # <\n",
        "id: t-x\ntitle: 'open quote  # <\n",
        "id: t-x\n  version: 1  # <\n",
        "id: t-x\ntitle: a\n\tversion: 1  # <\n",
        "id: t-x\nid: t-y  # <\n",
        "a: 1\n---  # <\nb: 2\n",
        "id: t-x\ntitle: !!python/object/apply:os.system [id]  # <\n",
        "id: t-x\ntitle: !custom {a: 1}  # <\n",
        "a: &x {b: 1}\nc: {<<: *x}  # <\n",
    ],
    ids=[
        "flow",
        "quote",
        "indent",
        "tab",
        "dup-key",
        "two-docs",
        "python-tag",
        "local-tag",
        "merge-key",
    ],
)
def test_invalid_yaml(lib: Path, text: str) -> None:
    check(lib, text)


def test_control_character_is_invalid_yaml(lib: Path) -> None:
    check(lib, "id: t-x\ntitle: a\x00b  # <\n", contains="U+0000")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(lib: Path, text: str) -> None:
    err = lint_error(lib, "b.yaml", text)
    assert "b.yaml:1:" in str(err)
    assert "empty" in str(err)


@pytest.mark.parametrize(
    "text", ["- id: a  # <\n- id: b\n", "just text  # <\n", "42  # <\n", "~  # <\n"]
)
def test_top_level_not_a_mapping(lib: Path, text: str) -> None:
    check(lib, text, contains="top level must be a mapping")


def test_not_utf8(lib: Path) -> None:
    path = lib.parent / "b.yaml"
    path.write_bytes(b"id: t-x\ntitle: \xff\xfe\n")
    with pytest.raises(BaselineError, match=r"b\.yaml: not UTF-8") as info:
        lint_file(path, Catalogue([lib]))
    assert info.value.exit_code == 3


def test_missing_file(lib: Path) -> None:
    with pytest.raises(BaselineError, match=r"nope\.yaml: no such file") as info:
        lint_file(lib.parent / "nope.yaml", Catalogue([lib]))
    assert info.value.exit_code == 3


# ---------------------------------------------------------------- schema


def test_unknown_rule_kind(lib: Path) -> None:
    text = ALONE + "rules:\n" + rule("x.frob", "frobnicate: {a: 1}", marker_on="id")
    check(lib, text, rule_id="x.frob", contains="unknown key(s): frobnicate")


def test_two_rule_kinds(lib: Path) -> None:
    text = (
        ALONE
        + "rules:\n"
        + rule("x.two", "package_absent: {packages: [a]}", marker_on="id")
        + "    package_present: {packages: [b]}\n"
    )
    check(lib, text, rule_id="x.two", contains="exactly one kind")


@pytest.mark.parametrize(
    ("text", "rule_id", "field"),
    [
        (
            ALONE + "rules:\n  - id: x.notitle  # <\n    controls: {iso27017: [A.1]}\n"
            "    package_absent: {packages: [a]}\n",
            "x.notitle",
            "title",
        ),
        (
            ALONE + "rules:\n" + rule("x.nopk", "package_absent: {}", marker_on="kind"),
            "x.nopk",
            "packages",
        ),
        (
            ALONE
            + "rules:\n"
            + rule("x.nomode", "file_permissions: {paths: [/etc/a]}", marker_on="kind"),
            "x.nomode",
            "max_mode",
        ),
        (
            ALONE
            + "rules:\n  - id: x.noctl  # <\n    title: t\n    package_absent: {packages: [a]}\n",
            "x.noctl",
            "controls",
        ),
        (
            ALONE.replace("title: alone\n", "").replace("id: t-alone", "id: t-alone  # <"),
            None,
            "title",
        ),
    ],
    ids=["rule-title", "spec-field", "spec-field-2", "controls", "top-level-title"],
)
def test_missing_required_field(lib: Path, text: str, rule_id: str | None, field: str) -> None:
    # a missing key has no line of its own: the error names the mapping that lacks it
    err = check(lib, text, rule_id=rule_id, contains="required field is missing")
    assert field in str(err)


@pytest.mark.parametrize(
    ("text", "rule_id"),
    [
        (
            ALONE
            + "rules:\n"
            + rule("x.mask", "service_disabled: {units: [a], mask: maybe}", marker_on="kind"),
            "x.mask",
        ),
        (
            ALONE + "rules:\n" + rule("x.pk", "package_absent: {packages: 5}", marker_on="kind"),
            "x.pk",
        ),
        (ALONE + "rules:\n" + rule("x.kind", "package_absent: [a, b]", marker_on="kind"), "x.kind"),
        (
            ALONE
            + "rules:\n  - id: x.sev\n    title: t\n    severity: 5  # <\n"
            + "    controls: {iso27017: [A.1]}\n    package_absent: {packages: [a]}\n",
            "x.sev",
        ),
        (
            ALONE
            + "rules:\n  - id: x.tg\n    title: t\n    controls: {iso27017: [A.1]}\n"
            + "    applies_to: {targets: [toaster]}  # <\n    package_absent: {packages: [a]}\n",
            "x.tg",
        ),
        (ALONE + "rules: 5  # <\n", None),
        (ALONE + "rules:\n  - 5  # <\n", None),
        (ALONE.replace("targets: [container, vm]", "targets: container  # <"), None),
        (ALONE.replace("version: 1.0.0", "version: [1]  # <"), None),
    ],
    ids=[
        "bool",
        "list",
        "spec-mapping",
        "severity",
        "target",
        "rules-list",
        "rule-mapping",
        "targets-list",
        "version-str",
    ],
)
def test_wrong_type(lib: Path, text: str, rule_id: str | None) -> None:
    check(lib, text, rule_id=rule_id)


def test_rule_without_iso27017_control(lib: Path) -> None:
    text = (
        ALONE + "rules:\n  - id: x.cis\n    title: t\n    controls: {cis_debian12: ['1.1']}  # <\n"
        "    package_absent: {packages: [a]}\n"
    )
    check(lib, text, rule_id="x.cis", contains="iso27017")


def test_unknown_top_level_field(lib: Path) -> None:
    check(lib, ALONE + "colour: blue  # <\n", contains="colour: unknown field")


def test_duplicate_rule_id_in_one_file(lib: Path) -> None:
    text = (
        ALONE
        + "rules:\n"
        + rule("x.same", "package_absent: {packages: [a]}")
        + rule("x.same", "package_absent: {packages: [b]}", marker_on="id")
    )
    check(lib, text, rule_id="x.same", contains="duplicate rule id (first defined at line 9)")


def test_duplicate_rule_id_of_a_parent_without_override(lib: Path) -> None:
    text = (
        CHILD + "rules:\n" + rule("pkg.telnet", "package_absent: {packages: [a]}", marker_on="id")
    )
    check(lib, text, rule_id="pkg.telnet", contains="override: true")


# ---------------------------------------------------------------- extends


def test_extends_unknown_parent(lib: Path) -> None:
    text = CHILD.replace("extends: [t-common]", "extends:\n  - t-common\n  - t-nope  # <")
    check(lib, text, contains="unknown baseline 't-nope'")


def test_extends_itself(lib: Path) -> None:
    text = ALONE.replace("title: alone", "title: alone\nextends: [t-alone]  # <")
    check(lib, text, contains="extends cycle: t-alone -> t-alone")


def test_extends_cycle_through_two_files(lib: Path) -> None:
    (lib / "a.yaml").write_text(
        ALONE.replace("id: t-alone", "id: t-a").replace("title: alone", "title: a\nextends: [t-b]")
    )
    text = CHILD.replace("id: t-child", "id: t-b").replace("[t-common]", "[t-common, t-a]  # <")
    (lib.parent / "b.yaml").write_text(text)
    with pytest.raises(BaselineError) as info:
        lint_file(lib.parent / "b.yaml", Catalogue([lib]))
    # the cycle is found when t-a (in lib/a.yaml) names t-b again
    assert "extends cycle: t-b -> t-a -> t-b" in str(info.value)
    assert f"{lib / 'a.yaml'}:4:" in str(info.value)
    assert info.value.exit_code == 3


# ---------------------------------------------------------------- parameters


def test_unknown_parameter_in_set_parameters(lib: Path) -> None:
    text = CHILD + "set_parameters:\n  umask: '077'\n  nope: 1  # <\n"
    check(lib, text, contains="unknown parameter 'nope' (declared: pkgs, uid_min, umask)")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("5", "expected string, got int"),
        ("[a]", "expected string, got list"),
        ("yes", "expected string, got bool"),
    ],
)
def test_parameter_override_of_the_wrong_type(lib: Path, value: str, problem: str) -> None:
    text = CHILD + f"set_parameters:\n  umask: {value}  # <\n"
    check(lib, text, contains=f"parameter 'umask': {problem}")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("uid_min: true", "expected an integer, got a boolean"),
        ("uid_min: '1000'", "expected integer, got str"),
        ("pkgs: telnet", "expected list, got str"),
        ("pkgs: [telnet, {a: 1}]", "a list parameter holds strings or integers"),
        ("pkgs: [telnet, no]", "a list parameter holds strings or integers"),
    ],
)
def test_parameter_override_of_the_wrong_type_other_types(
    lib: Path, line: str, problem: str
) -> None:
    check(lib, CHILD + f"set_parameters:\n  {line}  # <\n", contains=problem)


def test_parameter_default_of_the_wrong_type(lib: Path) -> None:
    text = ALONE + "  depth: {type: integer, default: deep, description: d}  # <\n"
    check(lib, text, contains="default: expected integer, got str")


def test_parameter_declared_twice_in_the_chain(lib: Path) -> None:
    text = CHILD + "parameters:\n  umask: {type: string, default: '077', description: u}  # <\n"
    check(lib, text, contains="already declared by t-common")


def test_rule_uses_undefined_parameter(lib: Path) -> None:
    text = (
        ALONE
        + "rules:\n"
        + rule("x.undef", "package_absent: {packages: '${nope}'}", marker_on="kind")
    )
    check(lib, text, rule_id="x.undef", contains="undefined parameter 'nope'")


def test_rule_uses_undefined_parameter_in_a_nested_field(lib: Path) -> None:
    text = (
        ALONE
        + "rules:\n  - id: x.undef2\n    title: t\n    controls: {iso27017: [A.1]}\n"
        + "    config_line:\n      path: /etc/login.defs\n      key: UMASK\n"
        + "      value: ${nope}  # <\n      separator: space\n"
    )
    check(lib, text, rule_id="x.undef2", contains="undefined parameter 'nope'")


def test_parameter_reference_inside_a_list_is_not_allowed(lib: Path) -> None:
    # ${...} stands for a whole field value; list items are names, checked as such
    text = (
        ALONE
        + "rules:\n  - id: x.inlist\n    title: t\n    controls: {iso27017: [A.1]}\n"
        + "    file_absent:\n      paths:\n        - /etc/a\n        - ${umask}  # <\n"
    )
    check(lib, text, rule_id="x.inlist", contains="paths.1")


def test_parameter_value_of_the_wrong_type_for_the_rule(lib: Path) -> None:
    # pkgs is a list parameter; a list item is a package name, not a list
    text = CHILD + "set_parameters:\n  pkgs: [telnet, 'rsh-server; reboot']\n"
    (lib.parent / "b.yaml").write_text(text)
    with pytest.raises(BaselineError) as info:
        lint_file(lib.parent / "b.yaml", Catalogue([lib]))
    err = info.value
    # the bad value lands in the parent's rule, reported where it uses ${pkgs}; the hint says
    # which file set the value
    assert f"{lib / 'common.yaml'}:14: rule pkg.telnet:" in str(err)
    assert err.rule_id == "pkg.telnet"
    assert err.exit_code == 3
    assert err.hint is not None
    assert "${pkgs} is ['telnet', 'rsh-server; reboot'], set at" in err.hint
    assert "b.yaml:8" in err.hint


# ---------------------------------------------------------------- waivers


def test_waiver_without_expires(lib: Path) -> None:
    text = CHILD + "waivers:\n  - {rule: pkg.telnet, reason: r, owner: me}  # <\n"
    check(lib, text, contains="waivers.0.expires: required field is missing")


@pytest.mark.parametrize(
    "value",
    [
        "2026-13-45",
        "2026-02-30",
        "tomorrow",
        "'2026-01-01T10:00:00'",
        "0",
        "20270101",
        "yes",
        "[2027-01-01]",
    ],
)
def test_waiver_with_a_malformed_date(lib: Path, value: str) -> None:
    text = (
        CHILD
        + "waivers:\n  - rule: pkg.telnet\n    reason: r\n    owner: me\n"
        + f"    expires: {value}  # <\n"
    )
    check(lib, text, contains="waivers.0.expires")


def test_waiver_for_an_unknown_rule(lib: Path) -> None:
    text = (
        CHILD
        + "waivers:\n  - rule: pkg.nope  # <\n"
        + "    reason: r\n    owner: me\n    expires: 2027-01-01\n"
    )
    check(lib, text, contains="waiver for unknown rule 'pkg.nope'")


def test_waiver_for_an_excluded_rule(lib: Path) -> None:
    text = (
        CHILD
        + "exclude_rules: [pkg.telnet]\n"
        + "waivers:\n  - {rule: pkg.telnet, reason: r, owner: me, expires: 2027-01-01}  # <\n"
    )
    check(lib, text, contains="waiver for unknown rule 'pkg.telnet'")


# ---------------------------------------------------------------- override and exclude


def test_override_without_a_parent_rule(lib: Path) -> None:
    text = (
        CHILD + "rules:\n  - id: x.fresh\n    title: t\n    override: true  # <\n"
        "    controls: {iso27017: [A.1]}\n    package_absent: {packages: [a]}\n"
    )
    check(lib, text, rule_id="x.fresh", contains="no parent baseline defines this rule")


def test_exclude_rules_names_an_unknown_rule(lib: Path) -> None:
    text = CHILD + "exclude_rules:\n  - pkg.telnet\n  - pkg.nope  # <\n"
    check(lib, text, contains="exclude_rules names 'pkg.nope'")


# ---------------------------------------------------------------- shell metacharacters


@pytest.mark.parametrize(
    ("rid", "body"),
    [
        ("x.pkg", "package_absent: {packages: ['telnet; rm -rf /']}"),
        ("x.pkg2", "package_present: {packages: ['curl && reboot']}"),
        ("x.unit", "service_disabled: {units: ['cron$(reboot).service']}"),
        ("x.unit2", "service_disabled: {units: ['a|b']}"),
        ("x.path", "file_absent: {paths: ['/etc/with space']}"),
        ("x.path2", "file_absent: {paths: ['/etc/`id`']}"),
        ("x.path3", "file_permissions: {paths: ['/etc/$HOME'], max_mode: '0644'}"),
        ("x.path4", 'file_absent: {paths: ["/etc/a\'b"]}'),
        ("x.path5", "config_line: {path: '/etc/a;b', key: K, value: v}"),
        ("x.sysctl", "sysctl: {key: 'net.ipv4.ip_forward;reboot', value: 0}"),
        ("x.sysctl2", "sysctl: {key: 'kernel.x', value: \"1\\nreboot\"}"),
        ("x.key", "config_line: {path: /etc/a, key: 'K $(id)', value: v}"),
        ("x.owner", "file_permissions: {paths: [/etc/a], owner: 'root;id', max_mode: '0644'}"),
        ("x.mode", "file_permissions: {paths: [/etc/a], max_mode: '0644; chmod 777 /'}"),
        ("x.mod", "kernel_module_disabled: {modules: ['usb-storage /bin/true']}"),
        ("x.mnt", "mount_option: {mountpoint: /tmp, options: ['nodev;exec']}"),
        ("x.user", "accounts: {check: uid0_only_root, allow_login: ['root`id`']}"),
    ],
)
def test_shell_metacharacters_are_rejected(lib: Path, rid: str, body: str) -> None:
    text = ALONE + "rules:\n" + rule(rid, body, marker_on="kind")
    check(lib, text, rule_id=rid)


def test_shell_metacharacters_through_a_parameter(lib: Path) -> None:
    text = (
        ALONE.replace('default: "027"', 'default: "$(reboot)"')
        + "rules:\n"
        + rule(
            "x.mode", "file_permissions: {paths: [/etc/a], max_mode: '${umask}'}", marker_on="kind"
        )
    )
    check(lib, text, rule_id="x.mode", contains="max_mode")


# ---------------------------------------------------------------- pathological YAML


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (billion_laughs(), "after alias expansion"),
        (
            "k: &k "
            + "{a: 1, b: 2, c: 3}\n"
            + "\n".join(f"k{i}: [{', '.join(['*k'] * 50)}]" for i in range(2000))
            + "\n",
            "after alias expansion",
        ),
        ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper than"),
        ("a: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", "nested deeper than"),
        (
            "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "leaf: 1\n",
            "nested deeper than",
        ),
        ("- " * 40 + "x\n", "nested deeper than"),
    ],
    ids=[
        "billion-laughs",
        "wide-aliases",
        "deep-flow-seq",
        "deep-flow-map",
        "deep-block-map",
        "deep-block-seq",
    ],
)
def test_pathological_yaml_is_refused_by_its_limits(lib: Path, text: str, problem: str) -> None:
    """Refused by the node and depth limits (the work is bounded by them, not by a clock: a
    timed assertion here failed under load; the speed of the refusal is not what is tested)."""
    path = lib.parent / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(BaselineError) as info:
        lint_file(path, Catalogue([lib]))
    assert info.value.exit_code == 3
    assert problem in str(info.value)
    assert "bomb.yaml:" in str(info.value)


def test_file_larger_than_the_limit(lib: Path) -> None:
    path = lib.parent / "big.yaml"
    path.write_text("a: " + "x" * (1 << 20) + "\n")
    with pytest.raises(BaselineError, match=r"big\.yaml: file larger than"):
        lint_file(path, Catalogue([lib]))


# ---------------------------------------------------------------- image-definition overrides

IMAGE_DEF = """\
name: web
base: debian:12
baseline:
  id: t-common
  parameters:
    umask: "077"
    {param_line}
  exclude_rules:
    - {exclude}
  waivers:
    - rule: {waived}
      reason: accepted
      owner: me
      expires: 2027-01-01
"""


def overrides_from(tmp_path: Path, **fields: str) -> Overrides:
    values = {"param_line": "uid_min: 500", "exclude": "login.umask", "waived": "pkg.telnet"}
    values.update(fields)
    path = tmp_path / "image.yaml"
    path.write_text(IMAGE_DEF.format(**values))
    loaded = load_file(path, BaselineError)
    section = loaded.data["baseline"]
    return Overrides(
        parameters=section["parameters"],
        waivers=tuple(Waiver.model_validate(w) for w in section["waivers"]),
        exclude_rules=tuple(section["exclude_rules"]),
        lines=loaded.lines,
        prefix=("baseline",),
    )


def test_overrides_are_valid_as_written(lib: Path) -> None:
    r = resolve(Catalogue([lib]), "t-common", overrides_from(lib.parent))
    assert r.parameters["umask"] == "077"
    assert r.parameters["uid_min"] == 500
    assert [x.id for x in r.rules] == ["pkg.telnet"]
    assert set(r.waivers) == {"pkg.telnet"}


@pytest.mark.parametrize(
    ("fields", "line", "problem"),
    [
        ({"param_line": "nope: 1"}, 7, "unknown parameter 'nope'"),
        ({"param_line": "uid_min: many"}, 7, "parameter 'uid_min': expected integer, got str"),
        ({"exclude": "pkg.nope"}, 9, "exclude_rules names 'pkg.nope'"),
        ({"waived": "pkg.nope"}, 11, "waiver for unknown rule 'pkg.nope'"),
    ],
)
def test_bad_overrides(lib: Path, fields: dict[str, str], line: int, problem: str) -> None:
    overrides = overrides_from(lib.parent, **fields)
    with pytest.raises(BaselineError) as info:
        resolve(Catalogue([lib]), "t-common", overrides)
    assert info.value.exit_code == 3
    assert f"image.yaml:{line}:" in str(info.value)
    assert problem in str(info.value)


# ---------------------------------------------------------------- through the real CLI


def run_lint(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"HARDEN_BASELINES", "HARDEN_DEBUG"}}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "baseline",
            "lint",
            *map(str, args),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("id: [\n", "invalid YAML"),
        ("", "the file is empty"),
        (CHILD + "set_parameters:\n  nope: 1  # <\n", "unknown parameter 'nope'"),
        (
            ALONE
            + "rules:\n"
            + rule("x.pkg", "package_absent: {packages: ['telnet; rm -rf /']}", marker_on="kind"),
            "rule x.pkg:",
        ),
        (billion_laughs(), "after alias expansion"),
    ],
    ids=["invalid-yaml", "empty", "unknown-param", "shell", "alias-bomb"],
)
def test_cli_lint_exits_3_without_traceback(lib: Path, text: str, needle: str) -> None:
    path = lib.parent / "bad.yaml"
    path.write_text(text)
    proc = run_lint(path.name, "--baselines", lib, cwd=lib.parent)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "bad.yaml:" in proc.stderr
    assert needle in proc.stderr
    if "# <" in text:
        assert f"bad.yaml:{marked_line(text)}:" in proc.stderr


def test_cli_lint_of_a_valid_file_exits_0(lib: Path) -> None:
    path = lib.parent / "child.yaml"
    path.write_text(CHILD)
    proc = run_lint(path.name, "--baselines", lib, cwd=lib.parent)
    assert proc.returncode == 0, proc.stderr
    assert "ok: child.yaml: t-child 1.0.0, 2 rules resolved" in proc.stderr


def test_cli_lint_several_files_reports_each(lib: Path) -> None:
    (lib.parent / "good.yaml").write_text(CHILD)
    (lib.parent / "bad.yaml").write_text(CHILD + "exclude_rules: [pkg.nope]\n")
    proc = run_lint("bad.yaml", "good.yaml", "--baselines", lib, cwd=lib.parent)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: bad.yaml:7: exclude_rules names 'pkg.nope'")
    assert "ok: good.yaml" in proc.stderr
    assert "error: 1 of 2 baseline file(s) invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
