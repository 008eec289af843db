"""Find baselines on a search path, load them with line-accurate errors, and resolve ``extends``.

Resolution merges parents first (in ``extends`` order), applies parameter overrides, drops
excluded rules, substitutes ``${param}`` references and validates every rule kind's spec with the
final values. The result is a frozen :class:`ResolvedBaseline` with a content digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harden.baseline.frameworks import (
    ANSSI_BP28_LEVEL,
    ANSSI_LEVELS,
    CIS_DEBIAN12_LEVEL,
    CIS_LEVELS,
)
from harden.baseline.kinds import (
    CONTAINER_ONLY_KINDS,
    KIND_MODELS,
    PARAM_REF,
    VM_ONLY_KINDS,
    RuleKind,
    Spec,
)
from harden.baseline.model import (
    BaselineDoc,
    Condition,
    Framework,
    Parameter,
    Platform,
    RuleDoc,
    Selection,
    Severity,
    Target,
    Waiver,
    check_param_value,
)
from harden.errors import BaselineError, InputError, Location
from harden.paths import shipped_baselines_dir
from harden.yamlio import LineMap, PathKey, load_file

_PARAM_RE = re.compile(PARAM_REF)


# ---------------------------------------------------------------- validation errors -> lines


def raise_validation(
    e: ValidationError,
    lines: LineMap,
    prefix: PathKey = (),
    error: type[InputError] = BaselineError,
    rule_ids: Mapping[int, str] | None = None,
    doc: Any = None,
    hint: str | None = None,
) -> None:
    """Turn the first pydantic error into an InputError naming file, line and rule id."""
    messages = []
    first_loc: PathKey = ()
    for i, err in enumerate(e.errors(include_url=False)):
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        if i == 0:
            first_loc = loc
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        messages.append(f"{where}: {msg}")
        if len(messages) >= 3:
            break
    path = (*prefix, *first_loc)
    rule_id = None
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        if rule_ids is not None:
            rule_id = rule_ids.get(path[1])
        elif isinstance(doc, dict):
            rules = doc.get("rules")
            if (
                isinstance(rules, list)
                and path[1] < len(rules)
                and isinstance(rules[path[1]], dict)
            ):
                rid = rules[path[1]].get("id")
                rule_id = rid if isinstance(rid, str) else None
    more = len(e.errors()) - len(messages)
    text = "; ".join(messages) + (f" (and {more} more)" if more > 0 else "")
    raise error(text, location=lines.location(path), rule_id=rule_id, hint=hint) from e


def _is_union_tag(p: str | int) -> bool:
    # pydantic puts the union member's type name into loc (e.g. 'list[...]', 'function-after[...]')
    return isinstance(p, str) and ("[" in p or p in {"str", "int", "bool", "constrained-str"})


# ---------------------------------------------------------------- loading files


@dataclass(frozen=True)
class LoadedDoc:
    doc: BaselineDoc
    lines: LineMap
    path: Path
    sha256: str


def load_doc(path: Path) -> LoadedDoc:
    loaded = load_file(path, BaselineError)
    if not isinstance(loaded.data, dict):
        raise BaselineError(
            "the top level must be a mapping (id, version, title, platforms, targets, rules, ...)",
            location=loaded.lines.location(),
        )
    try:
        doc = BaselineDoc.model_validate(loaded.data)
    except ValidationError as e:
        raise_validation(e, loaded.lines, doc=loaded.data)
        raise  # pragma: no cover
    seen: dict[str, int] = {}
    for i, rule in enumerate(doc.rules):
        if rule.id in seen:
            raise BaselineError(
                f"duplicate rule id (first defined at line {loaded.lines.line_of(('rules', seen[rule.id]))})",
                location=loaded.lines.location(("rules", i, "id")),
                rule_id=rule.id,
            )
        seen[rule.id] = i
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedDoc(doc, loaded.lines, path, digest)


def search_path(extra: Sequence[Path] = ()) -> list[Path]:
    """Directories searched for baselines: ``--baselines`` dirs, ``$HARDEN_BASELINES``, shipped."""
    dirs = list(extra)
    env = os.environ.get("HARDEN_BASELINES", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(shipped_baselines_dir())
    return dirs


@dataclass
class Catalogue:
    """Every baseline found on a search path, indexed by id; earlier directories win."""

    dirs: list[Path]
    _by_id: dict[str, LoadedDoc] | None = None
    extra_docs: list[LoadedDoc] = field(default_factory=list)

    @classmethod
    def from_search_path(cls, extra: Sequence[Path] = ()) -> Catalogue:
        return cls(search_path(extra))

    def add(self, loaded: LoadedDoc) -> None:
        """Make a file given on the command line take precedence over the search path."""
        self.extra_docs.append(loaded)
        if self._by_id is not None:
            self._by_id[loaded.doc.id] = loaded

    def _index(self) -> dict[str, LoadedDoc]:
        if self._by_id is None:
            index: dict[str, LoadedDoc] = {}
            for d in reversed(self.dirs):  # later dirs first, so earlier ones overwrite
                if not d.is_dir():
                    continue
                here: dict[str, Path] = {}
                for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                    loaded = load_doc(p)
                    if loaded.doc.id in here:
                        raise BaselineError(
                            f"baseline id {loaded.doc.id!r} is also defined in {here[loaded.doc.id]}",
                            location=loaded.lines.location(("id",)),
                        )
                    here[loaded.doc.id] = p
                    index[loaded.doc.id] = loaded
            for loaded in self.extra_docs:
                index[loaded.doc.id] = loaded
            self._by_id = index
        return self._by_id

    def ids(self) -> list[str]:
        return sorted(self._index())

    def get(self, baseline_id: str) -> LoadedDoc | None:
        return self._index().get(baseline_id)


# ---------------------------------------------------------------- the resolved model


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    rationale: str
    severity: Severity
    kind: RuleKind
    spec: Spec
    controls: Mapping[str, tuple[str, ...]]
    targets: frozenset[Target]
    platforms: tuple[Platform, ...]
    when: tuple[Condition, ...]
    baseline: str
    source: str
    # ssg / anssi / cis ids (empty tuples when the rule names none)
    references: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"ssg": (), "anssi": (), "cis": ()}
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "title": self.title,
            "severity": self.severity.value,
            "targets": sorted(t.value for t in self.targets),
            "platforms": [p.model_dump(mode="json") for p in self.platforms],
            "when": [c.describe() for c in self.when],
            "controls": {k: list(v) for k, v in sorted(self.controls.items())},
            "references": {k: list(v) for k, v in sorted(self.references.items())},
            "spec": self.spec.model_dump(mode="json"),
            "rationale": self.rationale,
            "baseline": self.baseline,
        }


@dataclass(frozen=True)
class ResolvedBaseline:
    id: str
    version: str
    title: str
    description: str
    targets: frozenset[Target]
    platforms: tuple[Platform, ...]
    parameters: Mapping[str, Any]
    rules: tuple[Rule, ...]
    waivers: Mapping[str, Waiver]
    chain: tuple[str, ...]
    digest: str = ""

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def body(self) -> dict[str, Any]:
        """The stable JSON of ``baseline show --resolved`` (without the digest)."""
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "targets": sorted(t.value for t in self.targets),
            "platforms": [p.model_dump(mode="json") for p in self.platforms],
            "extends_chain": list(self.chain),
            "parameters": dict(sorted(self.parameters.items())),
            "rules": [r.to_json() for r in self.rules],
            "waivers": [{**w.model_dump(mode="json")} for _, w in sorted(self.waivers.items())],
        }

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, **self.body(), "digest": self.digest}


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- overrides from outside


@dataclass(frozen=True)
class Overrides:
    """Parameter values, waivers and excluded rules an image definition adds to a baseline."""

    parameters: Mapping[str, Any] = field(default_factory=dict)
    waivers: tuple[Waiver, ...] = ()
    exclude_rules: tuple[str, ...] = ()
    lines: LineMap | None = None
    prefix: PathKey = ()


# ---------------------------------------------------------------- resolution


@dataclass
class _RuleEntry:
    doc: RuleDoc
    loaded: LoadedDoc
    index: int


@dataclass
class _State:
    params: dict[str, Parameter] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    param_origin: dict[str, str] = field(default_factory=dict)
    value_where: dict[str, Location] = field(default_factory=dict)  # where each value was set
    rules: dict[str, _RuleEntry] = field(default_factory=dict)
    waivers: list[tuple[Waiver, LineMap, PathKey]] = field(default_factory=list)


def _merge(state: _State, loaded: LoadedDoc) -> None:
    doc, lines = loaded.doc, loaded.lines
    for name, p in doc.parameters.items():
        if name in state.params and state.param_origin[name] != doc.id:
            raise BaselineError(
                f"parameter {name!r} is already declared by {state.param_origin[name]}; "
                "set its value with set_parameters",
                location=lines.location(("parameters", name)),
            )
        state.params[name] = p
        state.values[name] = p.default
        state.value_where[name] = lines.location(("parameters", name, "default"))
        state.param_origin[name] = doc.id
    for name, value in doc.set_parameters.items():
        _set_param(state, name, value, lines.location(("set_parameters", name)))
    for i, rid in enumerate(doc.exclude_rules):
        if rid not in state.rules:
            raise BaselineError(
                f"exclude_rules names {rid!r}, which no parent baseline defines",
                location=lines.location(("exclude_rules", i)),
            )
        del state.rules[rid]
    if doc.select is not None:
        _apply_selection(state, doc.select, loaded)
    for i, rule in enumerate(doc.rules):
        if rule.id in state.rules and not rule.override:
            parent = state.rules[rule.id].loaded
            raise BaselineError(
                f"duplicate rule id: {parent.doc.id} ({parent.path}) defines it already; "
                "add 'override: true' to replace it",
                location=lines.location(("rules", i, "id")),
                rule_id=rule.id,
            )
        if rule.override and rule.id not in state.rules:
            raise BaselineError(
                "override: true, but no parent baseline defines this rule",
                location=lines.location(("rules", i, "override")),
                rule_id=rule.id,
            )
        state.rules[rule.id] = _RuleEntry(rule, loaded, i)
    for i, w in enumerate(doc.waivers):
        state.waivers.append((w, lines, ("waivers", i)))


def cis_ids(doc: RuleDoc) -> tuple[str, ...]:
    """A rule's CIS Debian 12 ids: ``references.cis``, or the older ``controls.cis_debian12``."""
    return tuple(doc.references.cis or doc.controls.get("cis_debian12", ()))


def selected(doc: RuleDoc, sel: Selection) -> bool:
    """Whether a profile selecting ``sel`` keeps the rule ``doc``."""
    if doc.id in sel.also:
        return True
    if sel.framework is Framework.ANSSI_BP28:
        levels = [ANSSI_LEVELS.index(ANSSI_BP28_LEVEL[r]) for r in doc.references.anssi]
        wanted = ANSSI_LEVELS.index(sel.level)
    else:
        # an id missing from the level table (a legacy controls entry) counts as Level 1
        levels = [CIS_DEBIAN12_LEVEL.get(c, 1) - 1 for c in cis_ids(doc)]
        wanted = CIS_LEVELS.index(sel.level)
    if not levels:
        return sel.unmapped == "keep"
    return min(levels) <= wanted


def _apply_selection(state: _State, sel: Selection, loaded: LoadedDoc) -> None:
    for i, rid in enumerate(sel.also):
        if rid not in state.rules:
            raise BaselineError(
                f"select.also names {rid!r}, which no parent baseline defines",
                location=loaded.lines.location(("select", "also", i)),
            )
    for rid in [r for r, e in state.rules.items() if not selected(e.doc, sel)]:
        del state.rules[rid]


def _set_param(state: _State, name: str, value: Any, where: Location) -> None:
    if name not in state.params:
        known = ", ".join(sorted(state.params)) or "none"
        raise BaselineError(f"unknown parameter {name!r} (declared: {known})", location=where)
    problem = check_param_value(state.params[name].type, value)
    if problem:
        raise BaselineError(f"parameter {name!r}: {problem}", location=where)
    state.values[name] = value
    state.value_where[name] = where


def _linearize(
    catalogue: Catalogue,
    baseline_id: str,
    stack: tuple[str, ...],
    where: Location | None,
    chain: list[str],
) -> None:
    """Append ``baseline_id`` after its parents (depth first, in ``extends`` order), each once."""
    loaded = catalogue.get(baseline_id)
    if loaded is None:
        known = ", ".join(catalogue.ids()) or "none"
        raise BaselineError(
            f"unknown baseline {baseline_id!r} (known: {known})",
            location=where,
            hint="add a directory with --baselines DIR or HARDEN_BASELINES",
        )
    for i, parent in enumerate(loaded.doc.extends):
        ploc = loaded.lines.location(("extends", i))
        if parent in (*stack, baseline_id):
            cycle = " -> ".join((*stack, baseline_id, parent))
            raise BaselineError(f"extends cycle: {cycle}", location=ploc)
        if parent not in chain:
            _linearize(catalogue, parent, (*stack, baseline_id), ploc, chain)
    chain.append(baseline_id)


def _collect(
    catalogue: Catalogue, baseline_id: str, stack: tuple[str, ...], where: Location | None
) -> tuple[_State, list[str]]:
    # Every baseline of the chain is merged exactly once, parents first. (Merging each parent's
    # separately resolved state lost a diamond's settings: with a extends [b, c], both extending
    # d, c's copy of d's defaults overwrote b's set_parameters, and a rule id defined by both b
    # and c was silently taken from b.)
    chain: list[str] = []
    _linearize(catalogue, baseline_id, stack, where, chain)
    state = _State()
    for bid in chain:
        loaded = catalogue.get(bid)
        assert loaded is not None
        _merge(state, loaded)
    return state, chain


def _substitute(
    value: Any, values: Mapping[str, Any], lines: LineMap, path: PathKey, rule_id: str
) -> Any:
    if isinstance(value, str) and _PARAM_RE.match(value):
        name = value[2:-1]
        if name not in values:
            raise BaselineError(
                f"uses undefined parameter {name!r}", location=lines.location(path), rule_id=rule_id
            )
        return values[name]
    if isinstance(value, dict):
        return {k: _substitute(v, values, lines, (*path, k), rule_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, lines, (*path, i), rule_id) for i, v in enumerate(value)]
    return value


def _finish_rule(
    entry: _RuleEntry, values: Mapping[str, Any], where: Mapping[str, Location] | None = None
) -> Rule:
    doc, loaded = entry.doc, entry.loaded
    kind = doc.kind
    base_path: PathKey = ("rules", entry.index, kind.value)
    raw = doc.spec.model_dump(mode="python", exclude_unset=True)
    substituted = _substitute(raw, values, loaded.lines, base_path, doc.id)
    try:
        spec = KIND_MODELS[kind].model_validate(substituted)
    except ValidationError as e:
        # a bad value may come from a parameter set in another file: say where
        used = sorted({v[2:-1] for v in _strings(raw) if _PARAM_RE.match(v)})
        hint = "; ".join(
            f"${{{n}}} is {values[n]!r}" + (f", set at {where[n]}" if where and n in where else "")
            for n in used
            if n in values
        )
        raise_validation(
            e, loaded.lines, base_path, rule_ids={entry.index: doc.id}, hint=hint or None
        )
        raise  # pragma: no cover
    leftover = [v for v in _strings(spec.model_dump()) if _PARAM_RE.match(v)]
    if leftover:
        raise BaselineError(
            f"parameter value {leftover[0]!r} is itself a reference",
            location=loaded.lines.location(base_path),
            rule_id=doc.id,
        )
    targets = set(doc.applies_to.targets or loaded.doc.targets)
    if kind in VM_ONLY_KINDS:
        targets &= {Target.VM}
    if kind in CONTAINER_ONLY_KINDS:
        targets &= {Target.CONTAINER}
    if not targets:
        raise BaselineError(
            f"a {kind.value} rule cannot apply to {', '.join(t.value for t in doc.applies_to.targets or loaded.doc.targets)}",
            location=loaded.lines.location(("rules", entry.index)),
            rule_id=doc.id,
        )
    return Rule(
        id=doc.id,
        title=doc.title,
        rationale=doc.rationale,
        severity=doc.severity,
        kind=kind,
        spec=spec,
        controls=_controls(doc),
        targets=frozenset(targets),
        platforms=tuple(doc.applies_to.platforms or loaded.doc.platforms),
        when=tuple(doc.applies_to.when),
        baseline=loaded.doc.id,
        source=str(loaded.lines.location(("rules", entry.index))),
        references={
            "ssg": tuple(doc.references.ssg),
            "anssi": tuple(doc.references.anssi),
            "cis": cis_ids(doc),
        },
    )


def _controls(doc: RuleDoc) -> dict[str, tuple[str, ...]]:
    """The control mapping, with the CIS and ANSSI ids of ``references`` as frameworks too."""
    controls = {k: tuple(v) for k, v in doc.controls.items()}
    if cis_ids(doc):
        controls["cis_debian12"] = cis_ids(doc)
    if doc.references.anssi:
        controls["anssi_bp28"] = tuple(doc.references.anssi)
    return controls


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def resolve(
    catalogue: Catalogue, baseline_id: str, overrides: Overrides | None = None
) -> ResolvedBaseline:
    """Resolve ``baseline_id`` with its parents and the optional overrides."""
    state, chain = _collect(catalogue, baseline_id, (), None)
    leaf = catalogue.get(baseline_id)
    assert leaf is not None
    if overrides is not None:
        olines = overrides.lines or LineMap("<overrides>")
        for name, value in overrides.parameters.items():
            _set_param(state, name, value, olines.location((*overrides.prefix, "parameters", name)))
        for i, rid in enumerate(overrides.exclude_rules):
            if rid not in state.rules:
                raise BaselineError(
                    f"exclude_rules names {rid!r}, which {baseline_id} does not define",
                    location=olines.location((*overrides.prefix, "exclude_rules", i)),
                )
            del state.rules[rid]
        for i, w in enumerate(overrides.waivers):
            state.waivers.append((w, olines, (*overrides.prefix, "waivers", i)))
    rules = tuple(_finish_rule(e, state.values, state.value_where) for e in state.rules.values())
    ids = {r.id for r in rules}
    waivers: dict[str, Waiver] = {}
    for w, lines, path in state.waivers:
        if w.rule not in ids:
            raise BaselineError(
                f"waiver for unknown rule {w.rule!r}", location=lines.location((*path, "rule"))
            )
        waivers[w.rule] = w
    doc = leaf.doc
    resolved = ResolvedBaseline(
        id=doc.id,
        version=doc.version,
        title=doc.title,
        description=doc.description,
        targets=frozenset(doc.targets),
        platforms=tuple(doc.platforms),
        parameters=dict(state.values),
        rules=rules,
        waivers=waivers,
        chain=tuple(chain),
    )
    digest = "sha256:" + hashlib.sha256(canonical_json(resolved.body())).hexdigest()
    return ResolvedBaseline(**{**resolved.__dict__, "digest": digest})


def lint_file(path: Path, catalogue: Catalogue) -> ResolvedBaseline:
    """Load one file, check it resolves (with its parents from the catalogue)."""
    loaded = load_doc(path)
    catalogue.add(loaded)
    return resolve(catalogue, loaded.doc.id)


def today_utc(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()
