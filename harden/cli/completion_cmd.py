"""`harden completion bash|zsh|fish`: the shell completion script (click's)."""

from __future__ import annotations

import click


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; it completes commands, options, baseline ids
    (--baseline) and image definition files.

    \b
      eval "$(harden completion bash)"     # ~/.bashrc
      eval "$(harden completion zsh)"      # ~/.zshrc
      harden completion fish > ~/.config/fish/completions/harden.fish
    """
    from click.shell_completion import get_completion_class

    root = ctx.find_root().command
    cls = get_completion_class(shell)
    assert cls is not None  # the Choice above lists only shells click supports
    click.echo(cls(root, {}, "harden", "_HARDEN_COMPLETE").source())
