"""The command line. Parses, calls one core function, renders, picks an exit code.

Subcommands live in their own modules and are imported only when used, so ``harden --help`` and
``harden baseline list`` never pay for docker, paramiko or cryptography imports.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from harden import __version__, signals
from harden.errors import ExitCode, HardenError

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "audit": "harden.cli.audit_cmd:audit",
    "baseline": "harden.cli.baseline_cmd:baseline",
    "keygen": "harden.cli.keys_cmd:keygen",
    "verify": "harden.cli.verify_cmd:verify",
    "build": "harden.cli.build_cmd:build",
    "attest": "harden.cli.attest_cmd:attest",
    "attestation": "harden.cli.attest_cmd:attestation",
    "promote": "harden.cli.promote_cmd:promote",
    "evidence": "harden.cli.evidence_cmd:evidence",
    "status": "harden.cli.status_cmd:status",
    "rebuild": "harden.cli.rebuild_cmd:rebuild",
    "plan": "harden.cli.rebuild_cmd:plan",
    "revoke": "harden.cli.revoke_cmd:revoke",
    "revocations": "harden.cli.revocations_cmd:revocations",
    "completion": "harden.cli.completion_cmd:completion",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        name_envvars(cmd, f"HARDEN_{cmd_name.upper()}")
        return cmd


def name_envvars(cmd: click.Command, prefix: str) -> None:
    """Every option reads HARDEN_<COMMAND>_<OPTION> (spelt as its long flag, e.g.
    HARDEN_VERIFY_FAIL_ON), between the config file and the flags in precedence."""
    for param in cmd.params:
        if isinstance(param, click.Option) and param.envvar is None:
            longs = [o for o in param.opts if o.startswith("--")]
            if longs:
                param.envvar = f"{prefix}_{longs[0][2:].upper().replace('-', '_')}"
    if isinstance(cmd, click.Group) and not isinstance(cmd, LazyGroup):
        for name, sub in cmd.commands.items():
            name_envvars(sub, f"{prefix}_{name.upper().replace('-', '_')}")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harden")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--quiet", "-q", is_flag=True, help="No progress or summary lines on stderr (errors stay)."
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Turn base container images and VM templates into hardened, verified, signed golden images.

    \b
    Settings, lowest to highest precedence: a config file (the first of $HARDEN_CONFIG,
    ./harden.toml, ~/.config/harden/config.toml, /etc/xdg/harden/config.toml), then
    HARDEN_<COMMAND>_<OPTION> variables (HARDEN_VERIFY_FORMAT=sarif), then flags.

    \b
    Typical flow:
      harden baseline list                 the rule catalogue
      harden build images/debian12.yaml    build, verify and push a golden image
      harden verify debian:12              check any image against a baseline
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    from harden.cli.common import set_quiet

    set_quiet(quiet)


name_envvars(cli, "HARDEN")


def _close_progress() -> None:
    common = sys.modules.get("harden.cli.common")  # not imported: no progress line is open
    if common is not None:
        common.close_progress()


def main(argv: list[str] | None = None) -> Any:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(
        os.environ.get("HARDEN_DEBUG")
    )
    signals.install()  # SIGTERM/SIGHUP take Ctrl-C's clean-up path
    try:
        from harden.cli.config import default_map

        try:
            rc = cli.main(
                args=argv,
                prog_name="harden",
                standalone_mode=False,
                default_map=default_map(cli),
            )
        finally:
            _close_progress()  # the open progress line ends before the error, abort or exit
    except HardenError as e:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(e.diagnostics(), err=True)
        sys.exit(int(e.exit_code))
    except click.exceptions.Abort as e:
        click.echo("aborted", err=True)
        sys.exit(signals.exit_status(e))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(int(ExitCode.USAGE))
    except KeyboardInterrupt as e:
        click.echo("interrupted", err=True)
        sys.exit(signals.exit_status(e))
    sys.exit(rc if isinstance(rc, int) else 0)
