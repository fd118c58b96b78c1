"""What every `d` command shares: click settings, option help, duration type, error exits,
and the connection to the local daemon."""
import math
import sys

import click

from zpeer.errors import EXIT_USAGE, ZpeerError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PEER_HELP = ("Target peer; repeat, give a list (commas or blanks), a range (web[1-3]), "
             "a pattern ('web*'), or `all`.")
EXCLUDE_HELP = ("Leave these peers out of the ones --peer selects (as pdsh -x): "
                "`--peer all --exclude vps`.")
# the peers a command runs on, as execOnPeer, the recipes and the file copies take them
peer_option = click.option("--peer", "peers", multiple=True, required=True,
                           metavar="ID[,ID...]|all", help=PEER_HELP)
exclude_option = click.option("--exclude", multiple=True, metavar="ID[,ID...]", help=EXCLUDE_HELP)
ESCAPE_HELP = "Escape character after a newline (default ~), or `none` (as ssh -e)."


def escape_char(ctx, param, value):
    """--escape: one character, `none`, or ^X for a control character (as ssh's -e)."""
    from zpeer.cli.terminal import escape_of

    if value is None:
        return "~"
    try:
        return escape_of(value)
    except ValueError:
        raise click.BadParameter("one character, ^X, or `none`", ctx, param) from None


class Seconds(click.FloatRange):
    """A duration option: a FloatRange that also refuses nan (which passes any range) and inf."""

    def convert(self, value, param, ctx):
        """The number of seconds, or a usage error."""
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return seconds


def fail(err):
    """Print a ZpeerError as SPEC says (message, then hint) and exit with its code."""
    click.echo(err.message, err=True)
    if err.hint:
        click.echo(f"  hint: {err.hint}", err=True)
    sys.exit(err.exit_code)


def usage_error(message):
    """A mistake in the command line: exit 2."""
    click.echo(message, err=True)
    sys.exit(EXIT_USAGE)


def client():
    """A connection to this node's daemon."""
    from zpeer.wire.ipc import Client

    return Client()


def call(op, **args):
    """One request to the local daemon; ZpeerErrors become SPEC messages and exit codes."""
    c = client()
    try:
        return c.call(op, **args)
    except ZpeerError as err:
        fail(err)
    finally:
        c.close()
