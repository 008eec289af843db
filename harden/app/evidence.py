"""The auditor's evidence bundle (`harden evidence`): collect, then write atomically."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden.app.context import Context
from harden.attest.keys import PublicKey
from harden.baseline.resolve import Catalogue
from harden.evidence import Bundle

__all__ = ["Bundle", "EvidenceWritten", "evidence"]


@dataclass(frozen=True)
class EvidenceWritten:
    bundle: Bundle
    directory: Path  # holds index.html and evidence.json


def evidence(
    directory: Path,
    catalogue: Catalogue,
    trusted: Sequence[PublicKey],
    ctx: Context,
    *,
    outdir: Path,
    since: dt.datetime | None = None,
    controls: Sequence[str] = (),
) -> EvidenceWritten:
    """Collect the evidence for the golden images defined in ``directory`` and write the bundle
    to ``outdir`` (replaced atomically). A bundle with problems is a result (``bundle.ok``)."""
    from harden.evidence import OciRegistryView, collect, load_definitions, read_audit, write_bundle

    bundle = collect(
        load_definitions(directory),
        catalogue,
        OciRegistryView(ctx.registry),
        read_audit(ctx.audit, since, trusted),
        trusted,
        ctx.clock,
        images_dir=str(directory),
        since=since,
        controls=controls,
        pending=_pending_fixes(directory, catalogue, trusted, ctx),
    )
    return EvidenceWritten(bundle, write_bundle(bundle, outdir))


def _pending_fixes(
    directory: Path, catalogue: Catalogue, trusted: Sequence[PublicKey], ctx: Context
) -> dict[str, list[dict[str, Any]]]:
    """Per image: the pending security fixes `harden status` finds (its signed SBOM against its
    archive), each with the CVE/DSA/DLA ids and the date Debian published it."""
    from harden.app.status import make_inventory, tracked_definitions
    from harden.lifecycle import fix_json

    inventory = make_inventory(catalogue, trusted, ctx, jobs=8)
    out: dict[str, list[dict[str, Any]]] = {}
    for facts in inventory.facts(tracked_definitions(directory, ctx)):
        if facts.pending_updates is None:
            continue
        out[facts.name] = [
            {
                "package": u.name,
                "installed": u.installed,
                "candidate": u.candidate,
                "suite": u.suite,
                **fix_json(facts.fixes, u),
            }
            for u in facts.pending_updates
            if u.security
        ]
    return out
