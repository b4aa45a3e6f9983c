"""``tokendealer completion bash|zsh|fish``: print the shell's completion script.

Click completes by itself: the script a shell sources calls ``tokendealer``
back with ``_TOKENDEALER_COMPLETE=<shell>_complete`` and the words typed so
far. This command prints that script, made by click's own ``shell_completion``
classes, so it is byte for byte what ``_TOKENDEALER_COMPLETE=<shell>_source
tokendealer`` prints, and needs no settings, database or key set.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

__all__ = ["completion"]

#: The installed command the script completes, and the variable click reads for it.
PROG_NAME = "tokendealer"
COMPLETE_VAR = "_TOKENDEALER_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  tokendealer completion bash > ~/.local/share/bash-completion/completions/tokendealer
    zsh:   tokendealer completion zsh > ~/.zfunc/_tokendealer   (~/.zfunc in fpath, then compinit)
    fish:  tokendealer completion fish > ~/.config/fish/completions/tokendealer.fish

    Or evaluate it in the shell's start-up file: eval "$(tokendealer completion bash)".
    """
    complete_class = get_completion_class(shell)
    assert complete_class is not None  # click ships all three
    # The name is fixed, not the one this run was called by: under `python -m tokendealer`
    # click's name would be "python -m tokendealer", which no shell completes.
    script = complete_class(ctx.find_root().command, {}, PROG_NAME, COMPLETE_VAR).source()
    click.echo(script.encode(), nl=False)  # bytes, as click writes it (no newline translation)
