"""The d(1) man page, written from the click command tree: `python -m zpeer.cli.manpage --write`
regenerates man/d.1, which the package installs (share/man/man1) and a test keeps in step."""
import os
import sys

import click

from zpeer import __version__

EXIT_STATUS = (
    ("0", "Success; for execOnPeer, every remote command exited 0."),
    ("1-123", "execOnPeer: the remote command's own status (the largest of them in a fan-out); "
              "getPeerIdByIp: no peer has that IP; dbSanityCheck: a check failed; "
              "remoteDeployDaemon: a peer came back with its old version."),
    ("2", "A usage error: an unknown flag, a missing or invalid value; nothing was run."),
    ("124", "execOnPeer --timeout: the remote process group was killed."),
    ("128+N", "The remote command died of signal N."),
    ("130", "Interrupted (Ctrl-C, SIGTERM, SIGHUP): the remote process groups were killed."),
    ("255", "zpeer's own failure (as ssh): the message on stderr says which, e.g. "
            "Peer not found: ID, Peer offline: ID (last seen ...), Failed to connect, "
            "Not connected to leader."),
)
ENVIRONMENT = (
    ("ZPEER_HOME", "The node's state directory (daemon and CLI alike); default /var/lib/zpeer "
                   "for root, else ${XDG_STATE_HOME:-~/.local/state}/zpeer."),
    ("ZPEER_VERSION_FILE", "A file whose first line replaces the version a daemon reports."),
)
FILES = (
    ("$ZPEER_HOME/config.json", "The node's settings (d setPeerConfig)."),
    ("$ZPEER_HOME/d.sock", "The CLI's socket to its daemon."),
    ("$ZPEER_HOME/zpeer.db", "The registry and audit log (SQLite) on the leader."),
    ("$ZPEER_HOME/curve.key, curve.pub", "The node's CURVE key pair."),
    ("$ZPEER_HOME/peers.cache", "Peer ids, one per line, for completion and scripts."),
)


def roff(text):
    """Text safe for roff: backslashes, dashes and a leading dot or quote escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _paragraphs(help_text):
    """roff lines for a click help text: \\b blocks verbatim, other paragraphs filled."""
    lines = []
    for block in (help_text or "").strip().split("\n\n"):
        block = block.strip("\n")
        if block.lstrip().startswith("\b"):
            body = [line for line in block.split("\n")[1:]]
            indent = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
            lines += [".PP", ".nf", ".RS 4"] + [roff(x[indent:]) for x in body] + [".RE", ".fi"]
        else:
            lines += [".PP", roff(" ".join(x.strip() for x in block.split("\n")))]
    return lines


def _options(cmd, ctx):
    """roff lines for a command's options and arguments."""
    lines = []
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if isinstance(param, click.Argument):
            lines += [".TP", f".I {roff(param.make_metavar(ctx))}", "An argument."]
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f".B {roff(names)}", roff(help_text)]
    return lines


def render(group=None):
    """The man page of `group` (by default the running CLI's) as roff text."""
    if group is None:
        from zpeer.cli.app import cli as group
    ctx = click.Context(group, info_name="d", **group.context_settings)
    out = [f'.TH D 1 "" "zpeer {__version__}" "zpeer manual"', ".SH NAME",
           "d \\- run commands on the peers of a fleet through the zpeer daemon",
           ".SH SYNOPSIS", ".B d", ".I COMMAND", ".RI [ OPTIONS ]", ".SH DESCRIPTION"]
    out += _paragraphs(group.help)
    out += [".SH COMMANDS"]
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, parent=ctx, info_name=name, **cmd.context_settings)
        usage = " ".join(cmd.collect_usage_pieces(sub))
        out += [f'.SS "d {roff(name)} {roff(usage)}"'] + _paragraphs(cmd.help)
        out += _options(cmd, sub)
    for title, rows in (("EXIT STATUS", EXIT_STATUS), ("ENVIRONMENT", ENVIRONMENT),
                        ("FILES", FILES)):
        out.append(f".SH {title}")
        for term, text in rows:
            out += [".TP", f".B {roff(term)}", roff(text)]
    out += [".SH SEE ALSO", "The guide: README.md and docs/ of the zpeer source tree;",
            ".BR ssh (1)."]
    return "\n".join(out) + "\n"


def main(argv=None):
    """`python -m zpeer.cli.manpage --write`: regenerate man/d.1 of this checkout."""
    if (sys.argv[1:] if argv is None else argv) != ["--write"]:
        sys.stderr.write("usage: python -m zpeer.cli.manpage --write\n")
        return 2
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(checkout, "man", "d.1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
