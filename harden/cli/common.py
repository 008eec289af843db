"""Helpers shared by the CLI modules: output files, baseline options, plain tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from harden.baseline.resolve import Catalogue
from harden.files import write_atomic

if TYPE_CHECKING:
    from harden.app.context import Context
    from harden.attest.keys import PublicKey, Signer

DEFAULT_DIR = Path("images")  # where status, rebuild, plan, revoke and evidence look

baselines_option = click.option(
    "--baselines",
    "baseline_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of baseline YAML files (searched before the shipped ones; "
    "also $HARDEN_BASELINES).",
)


F = TypeVar("F", bound=Callable[..., Any])


def trusted_keys_option(help: str, *, required: bool = False) -> Callable[[F], F]:
    """``--key PUB`` (repeatable) -> ``keys``: the trusted public keys a command checks with."""
    return click.option(
        "--key",
        "keys",
        multiple=True,
        required=required,
        type=click.Path(dir_okay=False, path_type=Path),
        help=help,
    )


output_option = click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE (atomically) instead of stdout.",
)


def duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """click callback: '12h', '30d', '4w' -> timedelta (None stays None)."""
    if value is None:
        return None
    from harden.imagedef import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


def catalogue(dirs: Sequence[Path]) -> Catalogue:
    return Catalogue.from_search_path(dirs)


def emit(text: str, output: Path | None) -> None:
    """Data to stdout, or atomically to ``output`` (opened only once there is something)."""
    if not text.endswith("\n"):
        text += "\n"
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(output, text.encode())


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def progress(message: str) -> None:
    """Human progress goes to stderr."""
    click.echo(message, err=True)


def context() -> Context:
    """The use cases' collaborators for this command: $HARDEN_NOW or the system clock, the
    audit log under $HARDEN_HOME, registry clients with docker config credentials, progress on
    stderr."""
    from harden.app.context import Context

    return Context.from_environment(progress)


def load_signer_from_uri(uri: str) -> Signer:
    """The signer for ``--key URI``; the password from $HARDEN_KEY_PASSWORD or a prompt."""
    from harden.attest import keys

    def prompt() -> str:
        value: str = click.prompt("Key password", hide_input=True, err=True)
        return value

    return keys.load_signer(uri, keys.password_from_env_or_prompt(prompt))


def load_trusted(keys: Sequence[Path]) -> list[PublicKey]:
    from harden.attest.keys import load_public_key

    return [load_public_key(k) for k in keys]


def compliance_state(compliant: bool) -> str:
    """How a table shows a verification outcome."""
    return "compliant" if compliant else "NOT compliant"
