"""Settings from a TOML file, turned into click's ``default_map``.

Precedence, lowest to highest: the config file, then ``HARDEN_<COMMAND>_<OPTION>`` environment
variables (click's ``auto_envvar_prefix``), then flags. The config file is the first that exists
of ``$HARDEN_CONFIG``, ``./harden.toml``, ``$XDG_CONFIG_HOME/harden/config.toml`` (default
``~/.config/harden/config.toml``) and ``DIR/harden/config.toml`` for each of
``$XDG_CONFIG_DIRS`` (default ``/etc/xdg``). One table per command, keys spelt as the long
option without dashes::

    quiet = true            # top level: the options of `harden` itself

    [verify]
    format = "sarif"
    fail-on = "high"

    [baseline.list]         # a subcommand of a group
    format = "json"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import click

from harden.errors import InputError, Location


def config_path() -> Path | None:
    explicit = os.environ.get("HARDEN_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(
                f"HARDEN_CONFIG names {path}, which is not a file",
                hint="unset HARDEN_CONFIG or point it at a harden.toml",
            )
        return path
    candidates = [Path("harden.toml")]
    xdg_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidates.append(Path(xdg_home) / "harden" / "config.toml")
    for d in (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":"):
        if d:
            candidates.append(Path(d) / "harden" / "config.toml")
    return next((p for p in candidates if _readable_file(p)), None)


def _readable_file(path: Path) -> bool:
    """An unreadable place (a working directory the user may not list) holds no config."""
    try:
        return path.is_file()
    except OSError:
        return False


def default_map(cli: click.Group) -> dict[str, Any] | None:
    """click's default_map for ``cli`` from the config file (None when there is none)."""
    path = config_path()
    if path is None:
        return None
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"cannot read the config file: {e}", location=Location(str(path))) from e
    with click.Context(cli, info_name="harden") as ctx:
        return _translate(ctx, cli, doc, path, "harden")


def _translate(
    ctx: click.Context, cmd: click.Command, table: dict[str, Any], path: Path, where: str
) -> dict[str, Any]:
    """Option spellings ("fail-on") -> click parameter names ("fail_on"); subcommand tables
    recurse; anything unknown is an error naming the file and the key (no silent typo)."""
    by_spelling: dict[str, str] = {}
    for param in cmd.params:
        if param.name is None:
            continue
        by_spelling[param.name] = param.name
        by_spelling[param.name.replace("_", "-")] = param.name
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("--"):
                by_spelling[opt[2:]] = param.name
                by_spelling[opt[2:].replace("-", "_")] = param.name
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(cmd, click.Group):
            sub = cmd.get_command(ctx, key)
            if sub is None:
                raise InputError(f"[{where} {key}]: no such command", location=Location(str(path)))
            with click.Context(sub, parent=ctx, info_name=key) as subctx:
                out[key] = _translate(subctx, sub, value, path, f"{where} {key}")
            continue
        name = by_spelling.get(key)
        if name is None:
            known = sorted(k for k in by_spelling if "_" not in k)
            raise InputError(
                f"`{where}` has no option {key!r}",
                location=Location(str(path)),
                hint="options: " + ", ".join(known),
            )
        out[name] = value
    return out
