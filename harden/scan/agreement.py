"""The "no false pass" agreement between harden and OpenSCAP (pure, no I/O).

For every harden rule that names SCAP Security Guide rule ids, on the same artefact: where harden
says ``passed``, OpenSCAP must not say ``fail`` (nor ``error``/``unknown``: a rule the scanner
could not read does not confirm a pass) for any of them, unless the pair is listed, with the
reason and the proof, in ``docs/scanner-agreement.md``.

Where the SSG ids come from: ``references.ssg`` of the rule (the field of the rule library),
else a ``ssg`` entry in its ``controls`` (the older spelling some baselines used).

Rules of the ``sysctl`` and ``kernel_config`` families are not judged from a chroot scan (the
scanner reads the scanning host's kernel there): they are listed apart, never as agreement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harden.errors import InputError
from harden.scan.model import Family, ScanResult, XccdfResult, family_of

MAX_DOC_BYTES = 1024 * 1024
_ID = r"[a-z0-9][a-z0-9_.\-]*"
# | `harden.rule` | `ssg_rule` | container | reason | proof |
_ROW = re.compile(
    rf"^\|\s*`(?P<rule>{_ID})`\s*\|\s*`(?P<ssg>{_ID})`\s*\|\s*(?P<artefact>container|vm|both)\s*"
    r"\|(?P<reason>[^|]+)\|(?P<proof>[^|]+)\|\s*$"
)
NOT_PASSING = frozenset({XccdfResult.FAIL, XccdfResult.ERROR, XccdfResult.UNKNOWN})


def ssg_ids(rule: Any) -> tuple[str, ...]:
    """The SSG rule ids a (resolved or document) rule carries."""
    refs = getattr(rule, "references", None)
    ids: Iterable[str] = ()
    if isinstance(refs, Mapping):
        ids = refs.get("ssg") or ()
    elif refs is not None:
        ids = getattr(refs, "ssg", None) or ()
    if not ids:
        controls = getattr(rule, "controls", None) or {}
        ids = controls.get("ssg") or ()
    return tuple(str(i) for i in ids)


def mapping_of(rules: Iterable[Any]) -> dict[str, tuple[str, ...]]:
    """harden rule id -> its SSG ids, for the rules that have any."""
    return {r.id: ids for r in rules if (ids := ssg_ids(r))}


@dataclass(frozen=True)
class KnownDisagreement:
    rule: str  # harden rule id
    ssg: str  # short SSG rule id
    artefact: str  # container | vm | both
    reason: str
    proof: str

    def applies_to(self, artefact: str) -> bool:
        return self.artefact in ("both", artefact)


def parse_known(text: str) -> list[KnownDisagreement]:
    """The table rows of docs/scanner-agreement.md (rows that do not parse are an error)."""
    if len(text.encode("utf-8")) > MAX_DOC_BYTES:
        raise InputError("docs/scanner-agreement.md is larger than 1 MiB")
    out: list[KnownDisagreement] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("| `"):
            continue
        m = _ROW.match(line)
        if m is None:
            raise InputError(
                f"docs/scanner-agreement.md:{n}: a disagreement row needs "
                "| `harden.rule` | `ssg_rule` | container/vm/both | reason | proof |"
            )
        reason, proof = m["reason"].strip(), m["proof"].strip()
        if not reason or not proof:
            raise InputError(f"docs/scanner-agreement.md:{n}: reason and proof are required")
        out.append(KnownDisagreement(m["rule"], m["ssg"], m["artefact"], reason, proof))
    return out


@dataclass(frozen=True)
class Pair:
    rule: str
    ssg: str
    harden: str  # harden's status
    openscap: str  # OpenSCAP's result, or "absent" when the scan has no such rule


@dataclass
class Agreement:
    artefact: str
    confirmed: list[Pair] = field(default_factory=list)  # harden passed, OpenSCAP passed
    false_passes: list[Pair] = field(default_factory=list)  # harden passed, OpenSCAP did not
    explained: list[tuple[Pair, KnownDisagreement]] = field(default_factory=list)
    stricter: list[Pair] = field(default_factory=list)  # harden failed, OpenSCAP passed
    not_judged: list[Pair] = field(default_factory=list)  # n/a, notselected, other families
    unknown_ids: list[Pair] = field(default_factory=list)  # ids the data stream does not define
    stale_entries: list[KnownDisagreement] = field(default_factory=list)  # listed, not seen

    def lines(self) -> list[str]:
        out = [
            f"{self.artefact}: {len(self.confirmed)} confirmed, {len(self.false_passes)} false "
            f"pass(es), {len(self.explained)} explained, {len(self.stricter)} stricter in "
            f"harden, {len(self.not_judged)} not judged, {len(self.unknown_ids)} unknown SSG ids"
        ]
        out += [
            f"  FALSE PASS {p.rule} vs {p.ssg}: OpenSCAP {p.openscap}" for p in self.false_passes
        ]
        out += [f"  unknown SSG id {p.ssg} (rule {p.rule})" for p in self.unknown_ids]
        return out


def compare(
    artefact: str,
    harden_status: Mapping[str, str],
    mapping: Mapping[str, Sequence[str]],
    scan: ScanResult,
    known: Sequence[KnownDisagreement],
    defined: frozenset[str] | None = None,
) -> Agreement:
    """Pair each mapped harden rule with each of its SSG rules on one artefact.

    ``harden_status``: rule id -> harden's status (``passed``, ``failed``, ...), from a verify
    report of the same artefact. ``defined``: the SSG ids the data stream defines (to tell a
    typo from a rule the profile did not select).
    """
    results = scan.by_short_id()
    listed = {(k.rule, k.ssg): k for k in known if k.applies_to(artefact)}
    used: set[tuple[str, str]] = set()
    out = Agreement(artefact)
    for rule, ids in sorted(mapping.items()):
        status = harden_status.get(rule)
        if status is None:
            continue  # not in this baseline (e.g. a vm rule on a container)
        for ssg in ids:
            outcome = results.get(ssg)
            pair = Pair(rule, ssg, status, outcome.result.value if outcome else "absent")
            if outcome is None:
                if defined is not None and ssg not in defined:
                    out.unknown_ids.append(pair)
                else:
                    out.not_judged.append(pair)
                continue
            if family_of(outcome.rule_id) is not Family.FILE:
                out.not_judged.append(pair)
                continue
            if outcome.result in NOT_PASSING:
                if status == "passed":
                    if (rule, ssg) in listed:
                        used.add((rule, ssg))
                        out.explained.append((pair, listed[(rule, ssg)]))
                    else:
                        out.false_passes.append(pair)
                continue
            if outcome.result in (XccdfResult.PASS, XccdfResult.FIXED):
                if status == "passed":
                    out.confirmed.append(pair)
                elif status == "failed":
                    out.stricter.append(pair)
                continue
            out.not_judged.append(pair)
    out.stale_entries = [k for key, k in listed.items() if key not in used]
    return out
