"""The import layering of docs/architecture.md, read from the source with ``ast``.

Every import counts: module level, inside functions (lazy imports) and under ``TYPE_CHECKING``,
because each one is a dependency of the file. The rules:

- nothing below the CLI imports ``harden.cli``; CLI modules import only the shared helpers
  (``harden.cli.common``, ``harden.cli.output``) of the CLI, never another command;
- ``harden.builder`` and ``harden.verifiers`` (the repository's ``builder/`` and ``verifiers/``
  folders) never import the use-case layer ``harden.app``;
- the core (``harden`` outside ``harden.app``, ``harden.cli``, ``harden.builder`` and
  ``harden.verifiers``) never imports ``harden.builder`` or ``harden.verifiers``;
- ``harden.verifiers`` never imports builder's build modules;
- nothing imports ``builder`` or ``verifiers`` as top-level packages (the wheel has only
  ``harden``);
- only the CLI imports click;
- no import cycle between files.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder in the repository -> its import package (harden/builder and harden/verifiers are
# symlinks to the top-level folders in a checkout; rglob does not follow them)
PACKAGES = {"harden": "harden", "builder": "harden.builder", "verifiers": "harden.verifiers"}
BUILDER, VERIFIERS = PACKAGES["builder"], PACKAGES["verifiers"]
CLI_HELPERS = frozenset({"harden.cli", "harden.cli.common", "harden.cli.output"})
ENTRY_POINTS = frozenset({"harden.pytest_plugin"})  # the pytest11 plugin (pytest --harden-target)
BUILD_MODULES = frozenset(
    f"{BUILDER}.{m}" for m in ("container_build", "vm_build", "vm_verify", "render")
)

Graph = Mapping[str, frozenset[str]]


def module_files(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            name = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
            out[name] = path
    return out


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module that ``name`` (a module or ``module.attribute``) lives in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(tree: ast.AST, modules: Mapping[str, Path]) -> Iterator[str]:
    """The module every import statement anywhere in ``tree`` reads (``from M import a``: M.a
    when that is a project module, else M)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                yield sub if sub in modules else node.module


def import_graph(root: Path) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """(project module -> project modules it imports, project module -> every module it
    imports, project or not)."""
    modules = module_files(root)
    edges: dict[str, frozenset[str]] = {}
    names: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found = set(imported_modules(tree, modules)) - {name}
        names[name] = frozenset(found)
        targets = {_owner(n, modules) for n in found}
        edges[name] = frozenset(t for t in targets if t is not None and t != name)
    return edges, names


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one file (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(edges: Graph, names: Graph) -> list[str]:
    out: list[str] = []
    for src, targets in sorted(names.items()):
        cli, app = _in(src, "harden.cli"), _in(src, "harden.app")
        plugin = src in ENTRY_POINTS  # interfaces like the CLI: they call the use-case layer
        lower = _in(src, BUILDER) or _in(src, VERIFIERS)
        core = _in(src, "harden") and not (cli or app or plugin or lower)
        for dst in sorted(targets):
            if _in(dst, "builder") or _in(dst, "verifiers"):
                out.append(f"{src} imports {dst}, not a package of the wheel (harden.{dst})")
            if _in(dst, "harden.cli") and not cli:
                out.append(f"{src} imports the CLI ({dst})")
            if cli and _in(dst, "harden.cli") and dst not in CLI_HELPERS and src != "harden.cli":
                out.append(f"{src} imports another command ({dst})")
            if _in(dst, "harden.app") and (lower or core):
                out.append(f"{src} imports the use-case layer ({dst})")
            if core and (_in(dst, BUILDER) or _in(dst, VERIFIERS)):
                out.append(f"core module {src} imports {dst}")
            if _in(src, VERIFIERS) and dst in BUILD_MODULES:
                out.append(f"{src} imports builder's build module {dst}")
        if not cli and any(_in(n, "click") for n in targets):
            out.append(f"{src} imports click (only the CLI may)")
    out += ["import cycle: " + " <-> ".join(c) for c in cycles(edges)]
    return out


def test_the_project_keeps_its_layers() -> None:
    edges, names = import_graph(ROOT)
    assert (
        "harden.app.build" in edges and "harden.verifiers.refs" in edges
    )  # the walk found the tree
    assert violations(edges, names) == []


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for folder in PACKAGES:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"harden/schemas.py": "from harden.cli.common import write_atomic\n"},
            "harden.schemas imports the CLI (harden.cli.common)",
        ),
        (
            {"builder/x.py": "def f():\n    import harden.cli.build_cmd\n"},
            "harden.builder.x imports the CLI (harden.cli.build_cmd)",
        ),
        (
            {
                "harden/cli/revoke_cmd.py": "from harden.cli.status_cmd import tracked\n",
                "harden/cli/status_cmd.py": "",
            },
            "harden.cli.revoke_cmd imports another command (harden.cli.status_cmd)",
        ),
        (
            {
                "verifiers/refs.py": (
                    "def f():\n    from harden.builder.vm_verify import verify_template\n"
                ),
                "builder/vm_verify.py": "",
            },
            "harden.verifiers.refs imports builder's build module harden.builder.vm_verify",
        ),
        (
            {
                "harden/gate.py": "from harden.verifiers.runner import verify\n",
                "verifiers/runner.py": "",
            },
            "core module harden.gate imports harden.verifiers.runner",
        ),
        (
            {"harden/app/verify.py": "import click\n"},
            "harden.app.verify imports click (only the CLI may)",
        ),
        (
            {
                "verifiers/runner.py": "from harden.app.context import Context\n",
                "harden/app/context.py": "",
            },
            "harden.verifiers.runner imports the use-case layer (harden.app.context)",
        ),
        (
            {
                "harden/oci/client.py": "from harden.oci.model import Reference\n",
                "harden/oci/model.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from harden.oci.client import RegistryClient\n"
                ),
            },
            "import cycle: harden.oci.client <-> harden.oci.model",
        ),
        (
            {
                "builder/a.py": "from harden.builder import b\n",
                "builder/b.py": "def f():\n    from harden.builder.c import x\n",
                "builder/c.py": "import harden.builder.a\n",
            },
            "import cycle: harden.builder.a <-> harden.builder.b <-> harden.builder.c",
        ),
        (
            {"harden/app/build.py": "from builder.container_build import build_container\n"},
            "harden.app.build imports builder.container_build, not a package of the wheel "
            "(harden.builder.container_build)",
        ),
    ],
)
def test_each_rule_fails_on_a_violation(
    tmp_path: Path, files: Mapping[str, str], expected: str
) -> None:
    edges, names = import_graph(_tree(tmp_path, files))
    assert expected in violations(edges, names)


def test_allowed_imports_pass(tmp_path: Path) -> None:
    files = {
        "harden/cli/build_cmd.py": "from harden.cli.common import emit\nimport click\n",
        "harden/cli/common.py": "import click\n",
        "harden/app/build.py": "from harden.builder.container_build import build_container\n",
        "builder/container_build.py": "from harden.verifiers.runner import verify\n",
        "verifiers/runner.py": "from harden.results import VerifyReport\n",
        "harden/results.py": "",
    }
    edges, names = import_graph(_tree(tmp_path, files))
    assert violations(edges, names) == []
