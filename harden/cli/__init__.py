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
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harden")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Turn base container images and VM templates into hardened, verified, signed golden images.

    \b
    Typical flow:
      harden baseline list                 the rule catalogue
      harden build images/debian12.yaml    build, verify and push a golden image
      harden verify debian:12              check any image against a baseline
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(
        os.environ.get("HARDEN_DEBUG")
    )
    signals.install()  # SIGTERM/SIGHUP take Ctrl-C's clean-up path
    try:
        rc = cli.main(args=argv, prog_name="harden", standalone_mode=False)
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
