"""`d shell`: a login shell on a peer, in a pseudo-terminal (zpeer.cli.terminal)."""
import sys

import click

from zpeer.cli.common import CONTEXT, ESCAPE_HELP, escape_char


@click.command("shell", context_settings=CONTEXT)
@click.option("--peer", required=True, metavar="ID", help="The peer to open a shell on.")
@click.option("--directory", metavar="DIR",
              help="Start in this directory (default: the user's home).")
@click.option("--user", metavar="NAME",
              help="Log in as this user (the target daemon must run as root).")
@click.option("-e", "--escape", metavar="CHAR|none", callback=escape_char, help=ESCAPE_HELP)
def shell(peer, directory, user, escape):
    """A login shell on a peer in a pseudo-terminal; exit = the shell's.

    \b
    After Enter: ~. ends the session (255), ~^Z suspends it, ~? lists the escapes, ~~ sends ~.
    Examples:
      d shell --peer laptop
      d shell --peer vps --user root --directory /etc
    """
    from zpeer.cli.common import usage_error
    from zpeer.cli.terminal import run_tty
    from zpeer.targets import many_peers

    if many_peers([peer]):
        usage_error(f"d shell runs on one peer, not {peer!r}")
    sys.exit(run_tty(peer.strip(), None, directory, user, escape))
