"""`harden audit verify|show`: the local, hash-chained audit log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from harden.audit import GENESIS, AuditLog
from harden.cli.common import (
    context,
    dump_json,
    emit,
    output_option,
    plain_table,
    progress,
    trusted_keys_option,
)
from harden.clock import parse_utc
from harden.errors import ExitCode, UsageError
from harden.report.formats import clean_line
from harden.results import rfc3339


def _log() -> AuditLog:
    return context().audit


def _parse_since(text: str) -> dt.datetime:
    try:
        return parse_utc(text)
    except ValueError as e:
        raise UsageError(
            f"--since {text!r} is not a date",
            hint="use 2025-03-01 or 2025-03-01T12:00:00Z (a date without a zone is UTC)",
        ) from e


def _parse_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise UsageError(
            f"--expect-head {text!r} is not SEQ:HASH",
            hint="copy it from `harden audit show --format json` (the head field)",
        )
    return int(seq), digest.lower()


@click.group()
def audit() -> None:
    """The local audit log of build, verify, attest, promote, deny, revoke and rebuild.

    The log is append-only and hash-chained, in $HARDEN_HOME/audit.db (default
    ~/.local/state/harden), or in the PostgreSQL database $HARDEN_DB names
    (postgresql://USER:PASSWORD@HOST:PORT/DATABASE), shared by many CI runners.
    `harden audit verify` detects changed, deleted, inserted and reordered entries.
    """


@audit.command()
@click.option(
    "--expect-head",
    metavar="SEQ:HASH",
    default=None,
    help="A head recorded earlier (e.g. in a CI log); fail if it is no longer in the chain.",
)
@trusted_keys_option(
    "Trusted public key for the signed checkpoints at $HARDEN_AUDIT_ANCHOR; repeatable."
)
@click.pass_context
def verify(ctx: click.Context, expect_head: str | None, keys: tuple[Path, ...]) -> None:
    """Check the hash chain; exit 1 and list each problem when the log was tampered with.

    With HARDEN_AUDIT_ANCHOR set, the log is also checked against the latest signed checkpoint
    there (--key): a cut tail or an entry appended without the audit key is detected."""
    from harden.attest.checkpoint import verify_log
    from harden.attest.keys import load_public_key

    anchor = _parse_head(expect_head) if expect_head else None
    log = _log()
    problems = verify_log(log, [load_public_key(k) for k in keys])
    if anchor is not None:
        problems += [p for p in log.verify(expected_head=anchor) if p not in problems]
    if problems:
        emit("\n".join(problems), None)
        progress(f"audit log TAMPERED: {len(problems)} problem(s) in {log.location}")
        ctx.exit(int(ExitCode.POLICY))
    seq, head = log.head()
    progress(f"audit log intact: {seq} entries, head {seq}:{head}")


@audit.command()
@click.option("--since", default=None, metavar="DATE", help="Only entries at or after DATE.")
@click.option("--image", default=None, metavar="REF", help="Only entries for this image.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@output_option
def show(since: str | None, image: str | None, fmt: str, output: Path | None) -> None:
    """Show audit log entries, oldest first."""
    log = _log()
    entries = log.entries(since=_parse_since(since) if since else None, image=image)
    if fmt == "json":
        seq, head = log.head()
        doc = {
            "schema_version": 1,
            "head": {"seq": seq, "hash": head} if head != GENESIS else None,
            "entries": [e.to_json() for e in entries],
        }
        emit(dump_json(doc), output)
    else:
        rows = [
            [
                str(e.seq),
                rfc3339(e.at),
                e.action,
                clean_line(e.image),
                clean_line(e.digest or "-")[:19],
                clean_line(e.outcome),
            ]
            for e in entries
        ]
        emit(plain_table(["SEQ", "AT", "ACTION", "IMAGE", "DIGEST", "OUTCOME"], rows), output)
    progress(f"{len(entries)} audit entries")
