"""`d remotePull`, `d remoteBd`, `d remoteDeployDaemon`, `d restartDaemon`: deploy across the fleet.

Each target runs its own recipe (zpeer.recipes); the CLI side only chooses steps and peers
(zpeer.cli.rollout). Imports stay lean: no zmq or peewee until a command runs.
"""
import sys
import time

import click

from zpeer.cli.common import (
    CONTEXT,
    Seconds,
    client,
    exclude_option,
    fail,
    peer_option,
    usage_error,
)
from zpeer.errors import EXIT_ZPEER_FAILURE, FailedToConnect, ZpeerError
from zpeer.recipes import step_command
from zpeer.targets import many_peers

timeout_option = click.option("--timeout", type=Seconds(0.001), metavar="SECONDS",
                              help="Kill the step's remote process group after this long (exit "
                                   "124).")


def recipe_step_options(func):
    """The flags remotePull and remoteBd share with execOnPeer's fan-out."""
    for option in reversed([
            peer_option, exclude_option, timeout_option,
            click.option("--batch", type=click.IntRange(1), metavar="N",
                         help="Run on at most N peers at a time."),
            click.option("--json", "as_json", is_flag=True,
                         help="JSON Lines events (start/stdout/stderr/exit/error).")]):
        func = option(func)
    return func


def _recipe_step(step, peers, exclude, timeout, batch, as_json):
    """Run one recipe step on peers with execOnPeer's contract; exits with its status."""
    from zpeer.cli.execute import run_exec

    # a recipe step reads no input: a `while read` loop around it keeps its own
    sys.exit(run_exec(client(), list(peers), step_command(step), None, timeout, None, batch,
                      as_json, no_stdin=True, exclude=exclude))


@click.command("remotePull", context_settings=CONTEXT)
@recipe_step_options
def remote_pull(peers, exclude, timeout, batch, as_json):
    """Run each peer's own pull recipe (default `git pull --ff-only` in its repo); exit = status.

    \b
    Examples:
      d remotePull --peer desktop
      d remotePull --peer all
    """
    _recipe_step("pull", peers, exclude, timeout, batch, as_json)


@click.command("remoteBd", context_settings=CONTEXT)
@recipe_step_options
def remote_bd(peers, exclude, timeout, batch, as_json):
    """Run each peer's own build recipe in its repo (default: reinstall zpeer); exit = its status.

    \b
    Examples:
      d remoteBd --peer laptop
      d remoteBd --peer desktop,laptop
    """
    _recipe_step("build", peers, exclude, timeout, batch, as_json)


def _rollout(peers, exclude, steps, batch, keep_going, wait, timeout):
    """Deploy or restart peers batch by batch, the leader last; exits with the worst status."""
    from zpeer.cli.rollout import Rollout, plan_batches

    c = client()
    try:
        batches = plan_batches(c, list(peers), batch, exclude)
    except ZpeerError as err:
        fail(err)
    finally:
        c.close()
    if not batches:
        fail(ZpeerError("No peers to deploy to", hint="`d listPeers` shows the registered peers"))
    roll = Rollout(steps, keep_going=keep_going, wait_s=wait, timeout=timeout,
                   multi=many_peers(peers))
    sys.exit(roll.run(batches))


wait_option = click.option("--wait", type=Seconds(1), default=120, show_default=True,
                           metavar="SECONDS",
                           help="How long a restarted peer may take to come back.")


@click.command("remoteDeployDaemon", context_settings=CONTEXT)
@peer_option
@exclude_option
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, metavar="N",
              help="Deploy N peers at a time (the leader always last, alone).")
@click.option("--keep-going", is_flag=True, help="Go on with the other peers after a failure.")
@wait_option
@timeout_option
def remote_deploy_daemon(peers, exclude, batch, keep_going, wait, timeout):
    """Pull, build, restart each peer's daemon, and wait until it runs the new version.

    Prints `ID: deployed VERSION (was OLD) in N.Ns`, or which step failed (a failed pull or
    build leaves the old daemon running). Exit: 0, or the worst failure's status.

    \b
    Examples:
      d remoteDeployDaemon --peer desktop
      d remoteDeployDaemon --peer all --batch 5
    """
    _rollout(peers, exclude, ("pull", "build", "restart"), batch, keep_going, wait, timeout)


@click.command("restartDaemon", context_settings=CONTEXT)
@click.option("--peer", "peers", multiple=True, metavar="ID[,ID...]|all",
              help="Peer(s) whose daemon to restart (default: this node's).")
@exclude_option
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, metavar="N",
              help="Restart N peers at a time (the leader always last, alone).")
@wait_option
def restart_daemon(peers, exclude, batch, wait):
    """Restart a daemon in place (re-exec, or its restart recipe); running jobs end interrupted.

    \b
    Examples:
      d restartDaemon
      d restartDaemon --peer laptop
    """
    if peers:
        _rollout(peers, exclude, ("restart",), batch, False, wait, None)
    if exclude:
        usage_error("--exclude leaves peers out of --peer: give --peer too")
    sys.exit(_restart_local(wait))


def _status(timeout_s=2):
    """This node's daemon status, or None while it does not answer."""
    c = client()
    try:
        return c.call("status", timeout_s=timeout_s)
    except ZpeerError:
        return None
    finally:
        c.close()


def _restart_local(wait):
    """Restart this node's daemon and wait until a new one answers; returns the exit status."""
    start = time.monotonic()
    c = client()
    try:
        before = c.call("status", timeout_s=5)
        plan = c.call("restart", timeout_s=5)
    except ZpeerError as err:
        fail(err)
    finally:
        c.close()
    name = before.get("id") or "this node"
    click.echo(f"{name}: restarting ({plan['how']}), was {plan['version']}", err=True)
    deadline = start + wait
    patience_s = 0.25  # the first probes may reach the old daemon just before it goes: short ones
    while time.monotonic() < deadline:
        now = _status(timeout_s=patience_s)
        if now is not None and now.get("started_at") != before.get("started_at"):
            click.echo(f"{name}: restarted {now['version']} in {time.monotonic() - start:.1f}s")
            return 0
        patience_s = min(2.0, patience_s * 2)  # then longer, for a new daemon that is slow to start
        time.sleep(0.1)  # pacing between probes of a daemon that is starting
    err = FailedToConnect(f"{name}: the daemon did not come back within {wait:g}s")
    click.echo(err.message, err=True)
    click.echo(f"  hint: {err.hint}", err=True)
    return EXIT_ZPEER_FAILURE
