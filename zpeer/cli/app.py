"""The `d` command group: its commands, their --help order, and the entry point.

Every command lives in a module of its own concern and is imported when it runs (`d execOnPeer`
loads only the exec path); `main` is the one boundary that turns what a command did not handle
into an exit status.
"""
import errno
import importlib
import os
import sys

import click

from zpeer.cli.common import CONTEXT, fail
from zpeer.errors import OutputFailed, ZpeerError

COMMANDS = {
    "daemon": "zpeer.cli.node:daemon",
    "setPeerConfig": "zpeer.cli.enrol:set_peer_config",
    "getPeerStatus": "zpeer.cli.node:get_peer_status",
    "registerWorker": "zpeer.cli.enrol:register_worker",
    "joinToken": "zpeer.cli.enrol:join_token",
    "listPeers": "zpeer.cli.peers:list_peers",
    "acceptPeer": "zpeer.cli.enrol:accept_peer",
    "removePeer": "zpeer.cli.enrol:remove_peer",
    "getPeerIdByIp": "zpeer.cli.peers:get_peer_id_by_ip",
    "dbSanityCheck": "zpeer.cli.node:db_sanity_check",
    "execOnPeer": "zpeer.cli.execute:exec_on_peer",
    "shell": "zpeer.cli.shell:shell",
    "ssh": "zpeer.cli.execute:ssh",
    "pushFile": "zpeer.cli.files:push_file",
    "pullFile": "zpeer.cli.files:pull_file",
    "history": "zpeer.cli.peers:history",
    "policy": "zpeer.cli.policy:policy",
    "demo": "zpeer.cli.demo:demo",
    "completion": "zpeer.cli.completion:completion",
    "install-completion": "zpeer.cli.completion_install:install_completion",
    "remotePull": "zpeer.cli.deploy:remote_pull",
    "remoteBd": "zpeer.cli.deploy:remote_bd",
    "remoteDeployDaemon": "zpeer.cli.deploy:remote_deploy_daemon",
    "restartDaemon": "zpeer.cli.deploy:restart_daemon",
    "deployStep": "zpeer.cli.deploy_step:deploy_step",
}  # in --help order


class Group(click.Group):
    """Lists COMMANDS in their order and imports each one's module when it is first used."""

    def list_commands(self, ctx):
        """Command names in --help order."""
        return list(COMMANDS)

    def get_command(self, ctx, name):
        """The command `name`, importing its module on first use."""
        if name not in self.commands and name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return self.commands.get(name)


def all_commands():
    """{name: command} of every subcommand, all loaded (for help and the meta-tests)."""
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
    """Flush and leave without the interpreter's teardown (a noticeable part of a short command's
    time)."""
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
