"""Promote an image from staging to production through the gate (`harden promote`).

The gate and the copy are :func:`harden.promote.promote` (which writes the PROMOTE/DENY audit
entries); this use case only picks the registry clients from the context."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from harden.app.context import Context
from harden.attest.keys import PublicKey
from harden.promote import PromoteResult
from harden.promote import promote as run_promote

__all__ = ["PromoteResult", "promote"]


def promote(
    src: str,
    dst: str,
    trusted: Sequence[PublicKey],
    ctx: Context,
    *,
    max_age: dt.timedelta | None = dt.timedelta(days=30),
    baselines: Sequence[str] = (),
    min_scan_score: float | None = None,
    dry_run: bool = False,
) -> PromoteResult:
    """Decide (always audited) and, when allowed and not ``dry_run``, copy SRC to DST by digest.
    A denial is a result (``allowed`` False); registry and key problems raise.
    ``min_scan_score`` also requires a signed OpenSCAP scan with at least that score."""
    from harden.oci.types import parse_reference

    src_ref, dst_ref = parse_reference(src), parse_reference(dst)
    src_client = ctx.client(src_ref)
    dst_client = src_client if dst_ref.registry == src_ref.registry else ctx.client(dst_ref)
    return run_promote(
        src_client,
        src_ref,
        dst_client,
        dst_ref,
        trusted,
        ctx.clock,
        ctx.audit,
        max_age=max_age,
        baselines=baselines,
        min_scan_score=min_scan_score,
        dry_run=dry_run,
        progress=ctx.progress,
    )
