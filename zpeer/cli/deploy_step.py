"""`d deployStep STEP`: one step of THIS peer's deploy recipe, run on the target by the origin's
remotePull, remoteBd and remoteDeployDaemon (see zpeer.recipes for the recipe itself)."""
import json
import os
import shlex
import sys

import click

from zpeer import config
from zpeer.cli.common import CONTEXT
from zpeer.errors import ZpeerError
from zpeer.recipes import STEPS, refuse, remember_head, repo_changed, resolve
from zpeer.wire.ipc import Client


def _daemon_call(op, **args):
    """One request to this peer's daemon (the one that runs this step)."""
    client = Client()
    try:
        return client.call(op, **args)
    except ZpeerError as err:
        refuse(f"{op}: {err.message}")
    finally:
        client.close()


def run_step(step):
    """Run one step of this peer's recipe; pull and build exec the command (its output, status)."""
    cfg = config.load()
    recipe = resolve(cfg)
    peer = cfg.get("id") or config.default_peer_id()
    repo = recipe["repo"]
    if step == "status":
        status = _daemon_call("status", timeout_s=5)
        print(json.dumps({k: status.get(k) for k in ("id", "version", "pid", "started_at")}),
              flush=True)
        return
    if step == "restart":
        args = {"after_job": os.environ.get("ZPEER_JOB"), "cmd": recipe["restart_cmd"],
                "dir": repo if repo and os.path.isdir(repo) else None}
        changed = repo_changed(repo)
        reply = _daemon_call("restart", timeout_s=5, **args)
        sys.stderr.write(f"+ restart: {reply['how']}\n")
        info = {k: reply.get(k) for k in ("how", "version", "pid", "started_at")}
        print(json.dumps(dict(info, changed=changed)), flush=True)
        return
    if not repo:
        refuse(f"No repo configured on {peer}: zpeer does not run from a checkout there; "
             f"set one with `d setPeerConfig --repo DIR` on {peer}")
    if not os.path.isdir(repo):
        refuse(f"Repo not found on {peer}: {repo}")
    cmd = recipe[f"{step}_cmd"]
    if step == "pull":
        remember_head(repo)
    sys.stderr.write(f"+ cd {shlex.quote(repo)} && {cmd}\n")
    sys.stderr.flush()
    os.chdir(repo)
    _wait_read(sys.stderr.fileno())
    os.execv("/bin/bash", ["/bin/bash", "-c", cmd])


def _wait_read(fd, limit_s=1.0):
    """Wait (bounded) until the daemon has read what we wrote to a pipe: the `+ cd` line then
    reaches the user before the command's own stdout, as it was written (stdout and stderr are
    separate pipes, read in whatever order the daemon finds them ready)."""
    import fcntl
    import termios
    import time
    from array import array

    deadline = time.monotonic() + limit_s
    pending = array("i", [0])
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(fd, termios.FIONREAD, pending, True)
        except OSError:
            return  # not a pipe (a terminal, a file): nothing to wait for
        if pending[0] == 0:
            return
        time.sleep(0.001)


@click.command("deployStep", hidden=True, context_settings=CONTEXT)
@click.argument("step", type=click.Choice(STEPS))
def deploy_step(step):
    """Run one step of THIS peer's recipe (what remotePull & co. run on the target)."""
    run_step(step)
