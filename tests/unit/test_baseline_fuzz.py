"""Whatever a baseline file contains, loading and resolving it fails only with BaselineError.

Hypothesis feeds random text, random bytes, random nesting and valid baselines with fields
dropped, retyped or poisoned through ``load_doc`` + ``resolve``; any other exception is a bug.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harden.baseline.resolve import Catalogue, load_doc, resolve
from harden.errors import BaselineError, ExitCode
from harden.yamlio import walk_paths

PARENT: dict[str, Any] = {
    "id": "t-common",
    "version": "1.0.0",
    "title": "common",
    "platforms": [{"family": "debian", "versions": ["12"]}],
    "targets": ["container", "vm"],
    "parameters": {
        "umask": {"type": "string", "default": "027", "description": "umask"},
        "pkgs": {"type": "list", "default": ["telnet"], "description": "packages"},
        "uid_min": {"type": "integer", "default": 1000, "description": "first uid"},
    },
    "rules": [
        {
            "id": "pkg.telnet",
            "title": "no telnet",
            "controls": {"iso27017": ["CLD.9.5.2"]},
            "package_absent": {"packages": "${pkgs}"},
        },
        {
            "id": "login.umask",
            "title": "umask",
            "controls": {"iso27017": ["CLD.9.5.2"], "cis_debian12": ["5.4.3"]},
            "applies_to": {"targets": ["vm"], "when": [{"file_exists": "/etc/login.defs"}]},
            "config_line": {"path": "/etc/login.defs", "key": "UMASK", "value": "${umask}"},
        },
        {
            "id": "kernel.usb",
            "title": "no usb storage",
            "controls": {"iso27017": ["CLD.9.5.2"]},
            "kernel_module_disabled": {"modules": ["usb-storage"]},
        },
    ],
}

CHILD: dict[str, Any] = {
    "id": "t-child",
    "version": "1.0.0",
    "title": "child",
    "extends": ["t-common"],
    "platforms": [{"family": "debian"}],
    "targets": ["container"],
    "set_parameters": {"umask": "077", "uid_min": 500},
    "exclude_rules": ["kernel.usb"],
    "rules": [
        {
            "id": "pkg.telnet",
            "title": "no telnet or rsh",
            "override": True,
            "controls": {"iso27017": ["CLD.9.5.2"]},
            "package_absent": {"packages": ["telnet", "rsh-client"]},
        },
        {
            "id": "svc.cron",
            "title": "no cron",
            "controls": {"iso27017": ["CLD.12.1.2"]},
            "service_disabled": {"units": ["cron.service"], "mask": False},
        },
    ],
    "waivers": [{"rule": "svc.cron", "reason": "needed", "owner": "ops", "expires": "2027-01-01"}],
}

INTERESTING = [
    "${umask}",
    "${pkgs}",
    "${nope}",
    "${uid_min}",
    "2026-13-45",
    "tomorrow",
    "telnet; rm -rf /",
    "$(reboot)",
    "/etc/a b",
    "/etc/`id`",
    "net.ipv4.a;b",
    "0644",
    "t-common",
    "t-child",
    "pkg.telnet",
    "kernel.usb",
    "container",
    "vm",
    "list",
    "integer",
    "",
    "~",
    "&a",
    "*a",
]
FIELD_NAMES = sorted(
    {p for path in walk_paths(PARENT) for p in path if isinstance(p, str)}
    | {p for path in walk_paths(CHILD) for p in path if isinstance(p, str)}
    | {"override", "package_present", "sysctl", "mount_option", "file_permissions", "command"}
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(INTERESTING),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


def _parent_of(doc: Any, path: tuple[str | int, ...]) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


@st.composite
def mutated_baselines(draw: st.DrawFn) -> str:
    """A valid baseline with one to four fields dropped, retyped, poisoned or added."""
    doc: Any = copy.deepcopy(draw(st.sampled_from([PARENT, CHILD])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = [p for p in walk_paths(doc) if p]
        if not paths or not isinstance(doc, dict):
            break
        path = draw(st.sampled_from(paths))
        holder = _parent_of(doc, path)
        key = path[-1]
        op = draw(st.sampled_from(["drop", "retype", "poison", "add", "dup"]))
        if op == "drop":
            del holder[key]
        elif op == "retype":
            holder[key] = draw(values)
        elif op == "poison":
            holder[key] = draw(st.sampled_from(INTERESTING))
        elif op == "add" and isinstance(holder[key], dict):
            holder[key][draw(st.sampled_from(FIELD_NAMES))] = draw(values)
        elif op == "dup" and isinstance(holder[key], list) and holder[key]:
            holder[key].append(copy.deepcopy(holder[key][0]))
    return yaml.safe_dump(doc, sort_keys=draw(st.booleans()), allow_unicode=True)


yaml_tokens = st.sampled_from([*list("ab01:-[]{},&*!|>'\"#%@`$ \n\t?.~"), "${x}", "<<: ", "\\"])
random_yaml_text = st.one_of(
    st.text(max_size=200),
    st.lists(yaml_tokens, max_size=120).map("".join),
    st.lists(st.sampled_from(FIELD_NAMES + INTERESTING), max_size=20).map(
        lambda words: "\n".join(f"{w}: {w}" for w in words)
    ),
)
random_nesting = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=60,
).map(lambda v: yaml.safe_dump(v, default_flow_style=None))
deep_nesting = st.tuples(st.integers(min_value=1, max_value=80), st.sampled_from("[{-")).map(
    lambda t: {"[": "[" * t[0] + "]" * t[0], "{": "{a: " * t[0] + "1" + "}" * t[0]}.get(
        t[1], "".join("  " * i + "- \n" for i in range(t[0]))
    )
)

documents = st.one_of(
    mutated_baselines(),
    mutated_baselines(),  # the most interesting strategy gets drawn twice as often
    random_yaml_text,
    random_nesting,
    deep_nesting,
    st.binary(max_size=100),
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="harden-fuzz-") as d:
        lib = Path(d) / "lib"
        lib.mkdir()
        (lib / "common.yaml").write_text(yaml.safe_dump(PARENT))
        yield Path(d)


def load_and_resolve(path: Path, lib: Path) -> None:
    loaded = load_doc(path)
    catalogue = Catalogue([lib])
    catalogue.add(loaded)
    resolve(catalogue, loaded.doc.id)


def test_the_seed_documents_are_valid(workdir: Path) -> None:
    # the mutations start from valid baselines, so a failure below is the mutation's doing
    path = workdir / "child.yaml"
    path.write_text(yaml.safe_dump(CHILD))
    load_and_resolve(path, workdir / "lib")


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(document=documents)
def test_malformed_documents_raise_only_baseline_error(
    workdir: Path, document: str | bytes
) -> None:
    path = workdir / "doc.yaml"
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        path.write_text(document, encoding="utf-8", errors="surrogatepass")
    try:
        load_and_resolve(path, workdir / "lib")
    except BaselineError as e:
        assert e.exit_code == ExitCode.INVALID_INPUT
        assert "doc.yaml" in str(e) or "common.yaml" in str(e)
        assert e.diagnostics().startswith("error: ")
