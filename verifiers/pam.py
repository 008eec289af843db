"""Whether a PAM module's configuration file is in force (tables: ``harden/baseline/pam.py``).

A module line's own ``key=value`` arguments override the file, so they are the effective value
where present. Pure: reads the gathered ``/etc/pam.d`` files only.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from harden.verifiers.facts import Facts

from harden.baseline.pam import PAM_EFFECT

PAM_DIR = "/etc/pam.d"
MAX_INCLUDE_DEPTH = 8


@dataclass(frozen=True)
class PamLine:
    file: str
    ptype: str
    control: str
    module: str
    args: tuple[str, ...]

    def render(self) -> str:
        return (
            f"{self.file}: {self.ptype} {self.control} {self.module} {' '.join(self.args)}".rstrip()
        )


def _tokens(raw: str) -> list[str]:
    line = raw.split("#", 1)[0].replace("\t", " ").strip()
    out: list[str] = []
    while line:
        if line.startswith("["):  # a bracketed control ([success=1 default=ignore]) is one token
            end = line.find("]")
            end = len(line) - 1 if end < 0 else end
            out.append(line[: end + 1])
            line = line[end + 1 :].strip()
        else:
            head, _, line = line.partition(" ")
            out.append(head)
            line = line.strip()
    return out


def stack(facts: Facts, name: str, depth: int = 0) -> list[PamLine]:
    """The lines of PAM file ``name``, with ``@include``, ``include`` and ``substack`` expanded."""
    path = name if name.startswith("/") else posixpath.join(PAM_DIR, name)
    text = facts.file(path)
    if text is None or depth > MAX_INCLUDE_DEPTH:
        return []
    lines: list[PamLine] = []
    for raw in text.splitlines():
        tok = _tokens(raw)
        if not tok:
            continue
        if tok[0] == "@include" and len(tok) >= 2:
            lines.extend(stack(facts, tok[1], depth + 1))
            continue
        if len(tok) < 3:
            continue
        ptype = tok[0].lstrip("-")
        control, module = tok[1], tok[2]
        if control in ("include", "substack"):
            lines.extend(x for x in stack(facts, module, depth + 1) if x.ptype == ptype)
            continue
        lines.append(PamLine(path, ptype, control, posixpath.basename(module), tuple(tok[3:])))
    return lines


@dataclass(frozen=True)
class Effect:
    in_force: bool
    evidence: tuple[str, ...]
    # key=value arguments of the module lines, which override the configuration file
    args: dict[str, tuple[str, PamLine]]
    # why the module does not read the file on this system (only its arguments count), or None
    file_ignored: str | None = None


def _file_ignored(facts: Facts, config_path: str) -> str | None:
    need = PAM_EFFECT[config_path]
    osr = facts.os_release()
    family = osr.get("ID", "")
    since = need.reads_file_since.get(family)
    if since is None:
        return None
    try:
        major = int(osr.get("VERSION_ID", "").split(".")[0])
    except ValueError:
        return None  # a testing/unstable release without VERSION_ID: a new Linux-PAM
    if major >= since:
        return None
    return (
        f"{need.module} of {family} {major} does not read {config_path} (it does from "
        f"{family} {since}): only arguments on the {need.module} line count"
    )


def effect(facts: Facts, config_path: str) -> Effect | None:
    """Whether ``config_path`` is read by a module in its PAM stacks; None: not a PAM file."""
    need = PAM_EFFECT.get(config_path)
    if need is None:
        return None
    missing: list[str] = []
    found: list[str] = []
    args: dict[str, tuple[str, PamLine]] = {}
    for n in need.needs:
        lines = [
            x
            for x in stack(facts, n.stack)
            if x.ptype == n.ptype and x.module == need.module and x.control != "optional"
        ]
        hit = [x for x in lines if all(a in x.args for a in n.args)]
        what = f"{n.ptype} {need.module}" + (f" {' '.join(n.args)}" if n.args else "")
        if not hit:
            if facts.file(posixpath.join(PAM_DIR, n.stack)) is None:
                missing.append(f"{PAM_DIR}/{n.stack} does not exist, so no {what}")
            else:
                missing.append(f"no '{what}' line in {PAM_DIR}/{n.stack} (includes followed)")
            continue
        found.append(hit[0].render())
        for x in hit:
            for a in x.args:
                k, sep, v = a.partition("=")
                if sep:
                    args[k.lower()] = (v, x)
    ignored = _file_ignored(facts, config_path)
    if missing:
        why = f"{config_path} has no effect: {need.module} is not in the PAM stack"
        return Effect(False, (why, *missing), args, ignored)
    return Effect(True, tuple(found), args, ignored)
