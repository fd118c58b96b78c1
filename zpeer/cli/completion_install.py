"""`d install-completion`: put the completion script (zpeer.cli.completion) where the user's shell
finds it without root, and say what, if anything, to add to the shell's startup file."""
import os

import click

from zpeer.cli.completion import SHELLS, render
from zpeer.errors import ZpeerError


def install_path(shell):
    """Where the user's shell finds a completion script without root, per shell convention."""
    home = os.path.expanduser("~")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    if shell == "bash":  # bash-completion >= 2 loads this directory lazily
        user_dir = (os.environ.get("BASH_COMPLETION_USER_DIR")
                    or os.path.join(data, "bash-completion"))
        return os.path.join(user_dir, "completions", "d")
    if shell == "zsh":  # no standard user dir: ~/.zfunc is the common convention
        return os.path.join(os.environ.get("ZDOTDIR") or home, ".zfunc", "_d")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(config, "fish", "completions", "d.fish")


RC_HINTS = {"bash": "bash-completion loads it by itself; without that package add to ~/.bashrc:\n"
                    "    source {path}",
            "zsh": "Add to ~/.zshrc, before compinit (skip lines you already have):\n"
                   "    fpath=({dir} $fpath)\n    autoload -Uz compinit && compinit",
            "fish": "fish loads it by itself; nothing to add."}


@click.command("install-completion")
@click.option("--shell", type=click.Choice(SHELLS),
              help="Shell to install for (default: from $SHELL).")
def install_completion(shell):
    """Install tab completion for your shell in its standard user location.

    \b
    Example:
      d install-completion
      d install-completion --shell fish
    """
    shell = shell or os.path.basename(os.environ.get("SHELL", ""))
    if shell not in SHELLS:
        raise click.UsageError("cannot tell your shell from "
                               f"SHELL={os.environ.get('SHELL', '')!r}; use --shell "
                               f"{'|'.join(SHELLS)}")
    path = install_path(shell)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(render(shell))
    except OSError as exc:  # a home that does not exist or is not ours (nobody's /nonexistent)
        raise ZpeerError(f"Cannot install the completion in {path}: {exc.strerror}",
                         hint=f"`d completion {shell}` prints it: save it where your shell "
                              "reads it") from None
    hint = RC_HINTS[shell].format(path=path, dir=os.path.dirname(path))
    click.echo(f"Installed {shell} completion for d in {path}\n{hint}\nOpen a new shell to use it.")
