"""The `d` command: parse with click, call the local daemon, render. Nothing else lives here.

Imports stay lean (no peewee, no daemon code) because `d` starts once per command.
"""
import errno
import importlib
import json
import math
import os
import sys

import click

from zpeer import config
from zpeer.errors import (
    EXIT_USAGE,
    BadDatabase,
    FailedToConnect,
    OutputFailed,
    ZpeerError,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PEER_HELP = "Target peer; repeat, give a list (commas or blanks), a range (web[1-3]), a pattern ('web*'), or `all`."
EXCLUDE_HELP = "Leave these peers out of the ones --peer selects (as pdsh -x): `--peer all --exclude vps`."


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


# Commands in modules of their own, imported only when used: `d execOnPeer` loads none of them.
LAZY_COMMANDS = {
    "setPeerConfig": "zpeer.cli.enrol:set_peer_config",
    "registerWorker": "zpeer.cli.enrol:register_worker",
    "joinToken": "zpeer.cli.enrol:join_token",
    "acceptPeer": "zpeer.cli.enrol:accept_peer",
    "removePeer": "zpeer.cli.enrol:remove_peer",
    "completion": "zpeer.cli.completion:completion",
    "install-completion": "zpeer.cli.completion_install:install_completion",
    "remotePull": "zpeer.cli.deploy:remote_pull",
    "remoteBd": "zpeer.cli.deploy:remote_bd",
    "remoteDeployDaemon": "zpeer.cli.deploy:remote_deploy_daemon",
    "restartDaemon": "zpeer.cli.deploy:restart_daemon",
    "deployStep": "zpeer.cli.deploy:deploy_step",
}


HELP_ORDER = ("daemon", "setPeerConfig", "getPeerStatus", "registerWorker", "joinToken", "listPeers",
              "acceptPeer", "removePeer", "getPeerIdByIp", "dbSanityCheck", "execOnPeer", "history", "demo")


class Group(click.Group):
    """Keeps commands in the order they are declared in --help; loads LAZY_COMMANDS on use."""

    def list_commands(self, ctx):
        """Command names in --help order, lazy ones included."""
        names = list(self.commands) + [name for name in LAZY_COMMANDS if name not in self.commands]
        return sorted(names, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(HELP_ORDER))

    def get_command(self, ctx, name):
        """The command `name`, importing a lazy one's module on first use."""
        if name not in self.commands and name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return self.commands.get(name)


def all_commands():
    """{name: command} of every subcommand, lazy ones loaded (for help and the meta-tests)."""
    ctx = click.Context(cli, info_name="d")
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="zpeer", prog_name="zpeer")
def cli():
    """zpeer: run commands on the peers of your fleet through the zpeer daemon (never raw ssh).

    \b
    Example:
      d listPeers
      d execOnPeer --peer vps --directory /srv/app --shellCmd 'git pull'
    """


@cli.command(context_settings=CONTEXT)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log verbosity (logs go to stderr).")
def daemon(log_level):
    """Run this node's daemon in the foreground (what systemd starts).

    \b
    Example:
      ZPEER_HOME=/var/lib/zpeer d daemon
    """
    from zpeer import logsetup
    from zpeer.daemon.node import Daemon

    logsetup.configure(log_level)
    try:
        node = Daemon()
    except ZpeerError as err:
        fail(err)
    node.run()


@cli.command("getPeerStatus", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def get_peer_status(as_json):
    """Show this node's config and state: role, id, leader, link, version, public key.

    \b
    Example:
      d getPeerStatus --json
    """
    from zpeer.cli.render import status_lines
    from zpeer.wire import keys

    try:
        c = client()
        status = c.call("status", timeout_s=3)
        c.close()
        status["daemon"] = "running"
    except FailedToConnect:
        cfg = config.load()
        status = {"role": cfg["role"], "id": cfg["id"], "leader": cfg["leader"], "bind": cfg["bind"],
                  "connected": False, "link": "daemon not running", "daemon": "not running",
                  "public_key": keys.read_public_key(), "home": config.home_dir(),
                  "recipes": {k: cfg[k] for k in ("repo", "pull_cmd", "build_cmd", "restart_cmd")}}
        from zpeer import __version__
        status["version"] = __version__
    except ZpeerError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(status_lines(status)))


@cli.command("listPeers", context_settings=CONTEXT)
@click.option("--ids", is_flag=True, help="Only peer ids, one per line (for scripts).")
@click.option("--online", is_flag=True, help="Only peers that are online.")
@click.option("--json", "as_json", is_flag=True, help="JSON array of {id, ip, role, online, last_seen, version}.")
@click.option("--pending", is_flag=True, help="Leader: peers waiting for `d acceptPeer`.")
def list_peers(ids, online, as_json, pending):
    """List the peers registered with the leader (asks the leader from any node).

    \b
    Examples:
      d listPeers
      for p in $(d listPeers --ids --online); do d execOnPeer --peer "$p" --shellCmd uptime; done
    """
    from zpeer.cli.render import peer_table

    result = call("peers", pending=pending)
    peers = [p for p in result["peers"] if p["online"] or not online]
    if ids:
        for p in peers:
            click.echo(p["id"])
    elif as_json:
        keys_ = ("id", "ip", "role", "online", "last_seen", "version")
        click.echo(json.dumps([{k: p[k] for k in keys_} for p in peers], indent=2))
    else:
        click.echo(peer_table(peers, result.get("leader_version"), 0 if pending else result.get("waiting", 0)))


@cli.command("getPeerIdByIp", context_settings=CONTEXT)
@click.argument("ip", metavar="IP")
def get_peer_id_by_ip(ip):
    """Print the id of the peer whose connection comes from IP (exit 1 if none).

    \b
    Example:
      d getPeerIdByIp 10.0.0.2
    """
    c = client()
    try:
        ids = c.call("peer_by_ip", ip=ip)["ids"]
    except ZpeerError as err:
        if err.code == "peer_not_found":
            click.echo(f"No peer found with IP: {ip}", err=True)
            click.echo("  hint: `d listPeers` shows the IP each peer connects from", err=True)
            sys.exit(1)
        fail(err)
    finally:
        c.close()
    click.echo("\n".join(ids))


@cli.command("dbSanityCheck", context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Report what would be changed, change nothing.")
def db_sanity_check(dry_run):
    """Check the local database (integrity, schema); on a worker delete leader-only data.

    \b
    Example:
      d dbSanityCheck --dry-run
    """
    c = client()
    try:
        result = c.call("db_check", dry_run=dry_run, timeout_s=60)
    except FailedToConnect:
        from zpeer.daemon.registry import Registry

        # a dry run writes nothing, not even the audit rows a killed daemon left in its journal
        try:
            registry = Registry(config.path_in_home(config.DB_FILE, config.ensure_home()), replay=not dry_run)
        except BadDatabase as err:
            click.echo(f"integrity: FAILED: {err.reason}")
            click.echo(f"  hint: {err.hint}", err=True)
            sys.exit(1)
        ok, lines = registry.sanity_check(worker=config.load()["role"] == "worker", dry_run=dry_run)
        registry.close()
        result = {"ok": ok, "lines": lines + ["(daemon not running: checked the file directly)"]}
    except ZpeerError as err:
        fail(err)
    finally:
        c.close()
    click.echo("\n".join(result["lines"]))
    sys.exit(0 if result["ok"] else 1)


@cli.command("execOnPeer", context_settings=dict(CONTEXT, allow_extra_args=True))  # (to say: quote CMD)
@click.option("--peer", "peers", multiple=True, required=True, metavar="ID[,ID...]|all", help=PEER_HELP)
@click.option("--exclude", multiple=True, metavar="ID[,ID...]", help=EXCLUDE_HELP)
@click.option("--directory", metavar="PATH",
              help="Working directory on the peer (default: home; `~/x` and relative paths start there).")
@click.option("--shellCmd", "shell_cmd", required=True, metavar="CMD", help="Command line run with /bin/bash -c.")
@click.option("--timeout", type=Seconds(0.001), metavar="SECONDS",
              help="Kill the remote process group after this long (exit 124).")
@click.option("--user", metavar="NAME", help="Run as this user (the target daemon must run as root).")
@click.option("--batch", type=click.IntRange(1), metavar="N", help="Run on at most N peers at a time.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines events (start/stdout/stderr/exit/error).")
@click.option("-n", "--no-stdin", is_flag=True,
              help="Do not forward stdin, as ssh -n (a `while read` loop keeps its input).")
@click.option("-b", "--gather", is_flag=True,
              help="Print each distinct stdout once, under the peers that printed it, at the end (as clush -b).")
@click.pass_context
def exec_on_peer(ctx, peers, exclude, directory, shell_cmd, timeout, user, batch, as_json, no_stdin, gather):
    """Run CMD on peers; remote stdout/stderr stream here byte-exact; exit = remote status.

    \b
    Examples:
      d execOnPeer --peer vps --directory /opt/app --shellCmd 'git pull'
      d execOnPeer --peer all --shellCmd 'uptime'
      tar c . | d execOnPeer --peer laptop --directory /tmp --shellCmd 'tar x'
      d listPeers --ids | while read p; do d execOnPeer -n --peer "$p" --shellCmd uptime; done
    """
    if ctx.args:  # `--shellCmd echo hi`: ssh would have joined the words, bash -c would run `echo`
        import shlex

        ctx.fail(f"Got unexpected extra argument{'s' if len(ctx.args) > 1 else ''} ({' '.join(ctx.args)}): "
                 f"--shellCmd takes the whole command line as one argument; quote it: "
                 f"--shellCmd {shlex.quote(' '.join([shell_cmd, *ctx.args]))}")
    if gather and as_json:
        ctx.fail("--gather and --json do not mix: --json already keeps each peer's output apart")
    from zpeer.cli.streaming import run_exec

    sys.exit(run_exec(client(), list(peers), shell_cmd, directory, timeout, user, batch, as_json, no_stdin, exclude,
                      gather))


@cli.command(context_settings=CONTEXT)
@click.option("--peer", metavar="ID", help="Only execs that ran on (or came from) this peer.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON array.")
def history(peer, limit, as_json):
    """Show the leader's audit log of executed commands, newest first.

    \b
    Example:
      d history --peer laptop --limit 5
    """
    from zpeer.cli.render import history_table

    rows = call("history", peer=peer, limit=limit)["rows"]
    click.echo(json.dumps(rows, indent=2) if as_json else history_table(rows))


@cli.command(context_settings=CONTEXT)
@click.option("--keep", is_flag=True, help="Leave the demo cluster running (prints how to stop it).")
def demo(keep):
    """Start a leader and two workers on loopback, show them working, then stop them.

    \b
    Example:
      d demo
    """
    from zpeer.cli.demo import run_demo

    sys.exit(run_demo(keep=keep))


def main():
    """Entry point of `d` and `python -m zpeer`."""
    try:
        cli(prog_name="d")
    except KeyboardInterrupt:
        code = 130
    except ZpeerError as err:  # one boundary for what a command did not turn into its own message
        try:
            fail(err)
        except SystemExit as exc:
            code = exc.code
    except SystemExit as exc:
        code = exc.code
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        code = _output_failed(exc)
    else:
        code = 0
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    code = 0 if code is None else code
    if sys.getprofile() or sys.gettrace() or (sys.argv[1:2] and sys.argv[1] in ("daemon", "demo")):
        sys.exit(code)  # a profiler or coverage writes its data at exit; daemons log until the end
    _fast_exit(code)


# what a write to a full disk, a closed descriptor or a failing device raises
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF})


def _output_failed(exc):
    """Say that the output could not be written (like cat's "write error"); returns 255."""
    try:
        sys.stderr.write(OutputFailed(exc.strerror).message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    return 255


def _fast_exit(code):
    """Flush and leave without the interpreter's teardown (it cost a short command ~10 ms)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `d listPeers --ids | head -1`: quiet, as a tool killed by SIGPIPE
        code = code or 141
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            code = code or _output_failed(exc)
    except (ValueError, AttributeError):  # AttributeError: started without stdout
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: started without stderr (`2>&-`)
        pass
    os._exit(code)

