"""Daemon side of `d restartDaemon` and of deploy's restart step: restart without losing reports.

A restart is asked for by a job (deploy's restart step) or by the local CLI. It waits until that
job's exit has left this node (and, for a local CLI, was read by it), then reports every job
still running as interrupted, and either re-executes the daemon in place (same pid, same
command line, new code) or runs the restart command detached from this daemon (own session,
or a transient systemd unit) so the command outlives the daemon it stops.
"""
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time

from zpeer.daemon.inherited import reignore_signals
from zpeer.errors import Busy

log = logging.getLogger(__name__)

LINGER_MS = 1000       # how long closing sockets may take to hand queued reports to the kernel
REPORT_WAIT_MAX_S = 10.0  # a local CLI that never reads its step's exit does not block the restart
DRAIN_MAX_S = 1.0      # time given to local CLIs to read the "interrupted" reports
# then serve a moment more: libzmq's linger alone sometimes drops the last replies
FLUSH_S = 0.1
RESTART_LOG = "restart.log"
# what a restart command run by systemd-run keeps of ours (+ ZPEER_HOME)
UNIT_ENV = ("PATH", "LANG")


def service_unit(invocation_id, parent_comm, cgroup):
    """(unit, user_manager) for a process with this $INVOCATION_ID, parent name and
    /proc/self/cgroup text when it is a systemd service, else None."""
    if not invocation_id:
        return None
    # started by hand from a shell inside a service: not ours to restart
    if parent_comm != "systemd":
        return None
    units = [part for line in cgroup.splitlines() for part in line.strip().split("/")
             if part.endswith(".service")]
    # no unit in sight (a cgroup namespace hides it): the name contrib/zpeer.service installs
    unit = units[-1] if units and not units[-1].startswith("user@") else "zpeer.service"
    return unit, "/user@" in cgroup


def systemd_unit():
    """(unit, user_manager) when this process is a systemd service, else None."""
    invocation_id = os.environ.get("INVOCATION_ID")
    if not invocation_id:
        return None
    try:
        with open(f"/proc/{os.getppid()}/comm", encoding="utf-8") as f:
            parent = f.read().strip()
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            cgroup = f.read()
    except OSError:
        return None
    return service_unit(invocation_id, parent, cgroup)


def restart_for(found):
    """The restart for a daemon that is the service `found` (or None), as (how, cmd or None)."""
    if found:
        unit, user = found
        # quoted: escaped unit names carry backslashes (zpeer@wg\x2d0.service) that bash would eat
        cmd = f"systemctl {'--user ' if user else ''}restart {shlex.quote(unit)}"
        return cmd, cmd
    return "re-exec", None


def default_restart():
    """The restart a daemon does when no restart command is configured, as (how, cmd or None)."""
    return restart_for(systemd_unit())


def spawn_argv(cmd, found, systemd_run, cwd=None, env=None):
    """The argv that runs a restart command; under systemd (found) through systemd-run if any."""
    argv = ["/bin/bash", "-c", cmd]
    if found and systemd_run:
        # stopping the unit kills its whole cgroup: the command runs outside it, in a transient
        # unit, which starts in the manager's directory and environment: hand it the daemon's
        extra = [f"--working-directory={cwd}"] if cwd else []
        extra += [f"--setenv={name}={value}" for name, value in sorted((env or {}).items())]
        manager = ["--user"] if found[1] else []
        argv = [systemd_run, "--quiet", "--collect"] + manager + extra + argv
    return argv


def reexec_argv():
    """The daemon's own command line, run again by the same interpreter."""
    main = sys.argv[0] if sys.argv else ""
    if os.path.basename(main) == "__main__.py" or not os.path.isfile(main):
        return [sys.executable, "-m", "zpeer"] + sys.argv[1:]
    return [sys.executable, os.path.abspath(main)] + sys.argv[1:]


class Restarter:
    """One scheduled restart of the daemon it belongs to."""

    def __init__(self, daemon):
        self.d = daemon
        self.plan = None      # {"job", "cmd", "dir", "how", "state", "since"}
        self.spawned = None   # Popen of a restart command that has not stopped us (yet)

    def request(self, after_job=None, cmd=None, directory=None):
        """Schedule a restart once `after_job` is reported; returns what will happen."""
        if self.plan is not None or (self.spawned is not None and self.spawned.poll() is None):
            raise Busy("A restart of this daemon is already under way")
        how = cmd
        if not cmd:
            how, cmd = default_restart()
        self.plan = {"job": after_job, "cmd": cmd, "dir": directory, "how": how, "state": "waiting",
                     "since": time.monotonic()}
        log.info("restart scheduled (%s) after job %s", how, after_job or "-")
        return {"how": how, "version": self.d.version, "pid": os.getpid()}

    def tick(self, now):
        """Move the scheduled restart on; called from the daemon's timers."""
        if self.spawned is not None and self.spawned.poll() is not None:
            if self.spawned.args[0] != "/bin/bash" and self.spawned.returncode == 0:
                # systemd-run returns once the transient unit started; the command's output is in
                # the journal
                log.info("restart command handed to systemd in a transient unit")
            else:
                log.warning("restart command exited %s and this daemon still runs: see %s",
                            self.spawned.returncode, os.path.join(self.d.home, RESTART_LOG))
            self.spawned = None
        plan = self.plan
        if plan is None:
            return
        if plan["state"] == "waiting":
            if not self._reported(plan["job"]) and now - plan["since"] < REPORT_WAIT_MAX_S:
                return
            # the command stops us: nothing to drain, only the step's report to flush
            if plan["cmd"]:
                plan["state"], plan["since"] = "flushing", now
            else:
                self._interrupt_all()
                plan["state"], plan["since"] = "draining", now
        if plan["state"] == "draining":
            if self.d.sessions.sessions and now - plan["since"] < DRAIN_MAX_S:
                return  # local CLIs still have reports to read
            plan["state"], plan["since"] = "flushing", now
        if now - plan["since"] < FLUSH_S:
            return
        if plan["cmd"]:
            self.plan = None
            self._spawn(plan["cmd"], plan["dir"])
        else:
            self._reexec()

    def _reported(self, job):
        """True once the job ended and its exit left this node (or was read by the local CLI)."""
        if job is None:
            return True
        return self.d.targets.reported(job) and self.d.sessions.reported(job)

    def _spawn(self, cmd, directory):
        """Run the restart command in its own session (or systemd unit): it outlives this daemon."""
        cwd = directory if directory and os.path.isdir(directory) else self.d.home
        env = {name: os.environ[name] for name in UNIT_ENV if name in os.environ}
        env["ZPEER_HOME"] = self.d.home
        argv = spawn_argv(cmd, systemd_unit(), shutil.which("systemd-run"), cwd, env)
        path = os.path.join(self.d.home, RESTART_LOG)
        with open(path, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} restart: {cmd}\n".encode())
            out.flush()
            self.spawned = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=out, start_new_session=True, close_fds=True)
        log.info("restart command started (pid %d): %s", self.spawned.pid, cmd)

    def _interrupt_all(self):
        """Report every job that is still running, here or for a local CLI, as interrupted."""
        self.d.interrupt_all("restarted")

    def _reexec(self):
        """Close everything (letting queued reports out), then exec the daemon's command line."""
        d = self.d
        argv = reexec_argv()
        self._interrupt_all()  # jobs that started while we drained (e.g. probes of this restart)
        log.info("re-executing the daemon: %s", " ".join(argv))
        # kills our children, lets the sockets' queued reports out, closes the database
        d.close(linger_ms=LINGER_MS)
        for handler in logging.getLogger().handlers:
            handler.flush()
        reignore_signals()
        try:
            os.execv(argv[0], argv)
        except OSError:
            log.exception("re-exec failed: exiting so a supervisor can start the daemon again")
            os._exit(75)
