"""`d execOnPeer`: run a command line on peers, their output streamed here, their status ours.

`run_exec` is the glue between a command line and the exec client: what stdin does, which sink
shows the events, what Ctrl-C and a lost daemon mean, and the exit status. remotePull and
remoteBd run through it too.
"""
import os
import signal
import sys

import click

from zpeer.cli.common import (
    CONTEXT,
    ESCAPE_HELP,
    Seconds,
    client,
    escape_char,
    exclude_option,
    peer_option,
)
from zpeer.cli.exec_client import ExecClient
from zpeer.cli.renderer import Renderer
from zpeer.cli.stdio import report, widen_pipe
from zpeer.errors import FailedToConnect, OutputFailed, ZpeerError
from zpeer.targets import many_peers


# (to say: quote CMD)
@click.command("execOnPeer", context_settings=dict(CONTEXT, allow_extra_args=True))
@peer_option
@exclude_option
@click.option("--directory", metavar="PATH",
              help="Working directory on the peer (default: home; `~/x` and relative paths start "
                   "there).")
@click.option("--shellCmd", "shell_cmd", required=True, metavar="CMD",
              help="Command line run with /bin/bash -c.")
@click.option("--timeout", type=Seconds(0.001), metavar="SECONDS",
              help="Kill the remote process group after this long (exit 124).")
@click.option("--user", metavar="NAME",
              help="Run as this user (the target daemon must run as root).")
@click.option("--batch", type=click.IntRange(1), metavar="N",
              help="Run on at most N peers at a time.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines events (start/stdout/stderr/exit/error).")
@click.option("-n", "--no-stdin", is_flag=True,
              help="Do not forward stdin, as ssh -n (a `while read` loop keeps its input).")
@click.option("-b", "--gather", is_flag=True,
              help="Print each distinct stdout once, under the peers that printed it, at the end "
                   "(as clush -b).")
@click.option("-t", "--tty", is_flag=True,
              help="Run CMD in a pseudo-terminal (one peer; stdout and stderr merged, stdin "
                   "forwarded even from a terminal, as ssh -t).")
@click.option("-e", "--escape", metavar="CHAR|none", callback=escape_char,
              help="With -t: " + ESCAPE_HELP)
@click.pass_context
def exec_on_peer(ctx, peers, exclude, directory, shell_cmd, timeout, user, batch, as_json, no_stdin,
                 gather, tty, escape):
    """Run CMD on peers; remote stdout/stderr stream here byte-exact; exit = remote status.

    \b
    Examples:
      d execOnPeer --peer vps --directory /opt/app --shellCmd 'git pull'
      d execOnPeer --peer all --shellCmd 'uptime'
      tar c . | d execOnPeer --peer laptop --directory /tmp --shellCmd 'tar x'
      d listPeers --ids | while read p; do d execOnPeer -n --peer "$p" --shellCmd uptime; done
      d execOnPeer -t --peer vps --shellCmd top
    """
    if ctx.args:  # `--shellCmd echo hi`: ssh would have joined the words, bash -c would run `echo`
        import shlex

        ctx.fail(f"Got unexpected extra argument{'s' if len(ctx.args) > 1 else ''} "
                 f"({' '.join(ctx.args)}): --shellCmd takes the whole command line as one "
                 f"argument; quote it: --shellCmd {shlex.quote(' '.join([shell_cmd, *ctx.args]))}")
    if gather and as_json:
        ctx.fail("--gather and --json do not mix: --json already keeps each peer's output apart")
    if tty:
        clash = [flag for flag, used in (("--json", as_json), ("--gather", gather),
                                         ("--batch", batch), ("--exclude", exclude)) if used]
        if many_peers(peers) or clash:
            ctx.fail("-t runs on one peer: " + (f"it does not mix with {', '.join(clash)}" if clash
                                                else f"not on {','.join(peers)}"))
        from zpeer.cli.terminal import run_tty

        sys.exit(run_tty(peers[0].strip(), shell_cmd, directory, user, escape, timeout=timeout,
                         no_stdin=no_stdin))
    sys.exit(run_exec(client(), list(peers), shell_cmd, directory, timeout, user, batch, as_json,
                      no_stdin, exclude, gather))


class _LeaveNow(Exception):
    """A second Ctrl-C (or SIGTERM, SIGHUP): stop waiting for the remote side."""


def run_exec(client, peers, cmd, directory, timeout, user, batch, as_json, no_stdin=False,
             exclude=(), gather=False):
    """Run a command on peers through the local daemon; returns the exit status. Local stdin
    goes to the command when it is not a terminal, unless `no_stdin` (the command gets EOF);
    `gather` prints identical stdouts once, at the end (zpeer.cli.gather)."""
    stdin_fd = sys.stdin.fileno() if sys.stdin is not None and not no_stdin else None
    if stdin_fd is not None and os.isatty(stdin_fd):
        stdin_fd = None
    if stdin_fd is not None:
        widen_pipe(stdin_fd)
    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)
        if len(interrupted) > 1:  # a second Ctrl-C leaves now, as ssh's `~.`
            raise _LeaveNow

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    session = ExecClient(client, interrupted=interrupted)
    try:
        targets = session.open(peers, cmd, directory, timeout, user, batch, exclude, stdin_fd)
    except ZpeerError as err:
        _restore(old)
        return report(err)
    except _LeaveNow:
        _restore(old)
        return 130
    if gather:
        from zpeer.cli.gather import Gatherer

        sink = Gatherer()
    else:
        sink = Renderer(len(targets) > 1 or many_peers(peers), as_json)
    try:
        session.follow(sink)
    except BrokenPipeError:
        session.cancel()
        os._exit(141)  # like a process killed by SIGPIPE
    except OutputFailed as err:  # the output has nowhere to go: stop the remote side too
        session.cancel()
        return report(err)
    except FailedToConnect:
        return report(FailedToConnect(
            "Failed to connect: the local daemon stopped answering mid-command"))
    except ZpeerError as err:
        return report(err)
    except _LeaveNow:
        return 130
    finally:
        session.close()
        _restore(old)
        try:
            sink.release()  # (gathered output is printed even when the run ends early)
        except (OutputFailed, BrokenPipeError):
            pass
    if interrupted:
        return 130
    try:
        sink.summary(targets)
    except OutputFailed:
        pass  # stderr itself fails: the exit status still tells how it went
    return sink.status(targets)


def _restore(handlers):
    """Put back the signal handlers run_exec replaced."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


class _PassThrough(click.Command):
    """Hands its arguments over untouched (`--` included): ssh's parser reads them, not click's."""

    def parse_args(self, ctx, args):
        """Every argument, as given; only a first `--help` is click's."""
        if args[:1] == ["--help"]:
            return super().parse_args(ctx, args)
        ctx.params["args"] = tuple(args)
        ctx.args = []
        return []


@click.command("ssh", cls=_PassThrough, options_metavar="", add_help_option=False,
               context_settings=CONTEXT)
@click.help_option("--help")  # its own, so -h stays ssh's (which has none): not CONTEXT's
@click.argument("args", nargs=-1, type=click.UNPROCESSED,
                metavar="[SSH-OPTIONS] [USER@]PEER [COMMAND [ARG...]]")
def ssh(args):
    """Run a command on a peer with ssh's command line (the same program as zpeer-ssh).

    OpenSSH's options are parsed as ssh parses them; the command runs in the remote user's shell
    in their home, as sshd runs it; the exit status is the remote command's (255: zpeer's own
    failure). Tools that speak ssh take `zpeer-ssh` as their ssh: see docs/ssh-tools.md.

    \b
    Examples:
      d ssh laptop uname -a
      d ssh -l root vps 'systemctl status zpeer'
      rsync -a -e zpeer-ssh ./site/ vps:/srv/site/
    """
    from zpeer.cli.ssh import main

    sys.exit(main(list(args)))
