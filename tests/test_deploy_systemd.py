"""The default restart under systemd: which command a daemon chooses, and that choice run for real.

systemd is not PID 1 here (a container), so `systemctl` cannot run. The decision is a pure
function of $INVOCATION_ID, the parent's name and /proc/self/cgroup (`service_unit`), tested on
the texts systemd produces. End to end, a real daemon is started the way systemd starts one: by a
parent process named `systemd` (a small stand-in manager, made here) that gives it an
INVOCATION_ID, with stand-ins for `systemd-run` and `systemctl` first on its PATH. The stand-in
`systemctl restart` does what systemd would: stop the daemon (SIGTERM) and start a new one.
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers.nodes import TEST_HEARTBEAT_S, Cluster, Node, d_command, pid_alive, status, wait_for

from zpeer.daemon.restarter import restart_for, service_unit, spawn_argv

SUPERVISED_IP = "127.0.0.8"

SYSTEM = "0::/system.slice/zpeer.service\n"
HYBRID = ("12:pids:/system.slice/zpeer.service\n4:memory:/system.slice/zpeer.service\n"
          "1:name=systemd:/system.slice/zpeer.service\n0::/system.slice/zpeer.service\n")
USER = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/zpeer.service\n"
INSTANCE = "0::/system.slice/system-zpeer.slice/zpeer@wg\\x2d0.service\n"  # `systemd-escape wg-0`
DELEGATED = "0::/system.slice/zpeer.service/payload\n"  # Delegate=yes: a sub-cgroup of the unit's
HIDDEN = "0::/\n"  # a cgroup namespace shows nothing above the process (as in this container)
USER_MANAGER_ONLY = "0::/user.slice/user-1000.slice/user@1000.service\n"


@pytest.mark.parametrize("invocation_id, parent, cgroup, expected", [
    ("3f1c", "systemd", SYSTEM, ("zpeer.service", False)),
    ("3f1c", "systemd", HYBRID, ("zpeer.service", False)),
    ("3f1c", "systemd", USER, ("zpeer.service", True)),
    ("3f1c", "systemd", INSTANCE, ("zpeer@wg\\x2d0.service", False)),
    ("3f1c", "systemd", DELEGATED, ("zpeer.service", False)),
    ("3f1c", "systemd", HIDDEN, ("zpeer.service", False)),
    ("3f1c", "systemd", USER_MANAGER_ONLY, ("zpeer.service", True)),
    ("3f1c", "bash", SYSTEM, None),  # `d daemon` typed in a shell that runs inside a service
    ("3f1c", "sudo", USER, None),
    (None, "systemd", SYSTEM, None),  # not a service: systemd sets INVOCATION_ID for each start
    ("", "systemd", SYSTEM, None),
], ids=["system", "cgroup-v1-hybrid", "user", "escaped-instance", "delegated", "unit-hidden",
        "user-manager-only", "by-hand-in-service", "by-hand-sudo", "no-invocation-id",
        "empty-invocation-id"])
def test_service_unit_reads_what_systemd_sets(invocation_id, parent, cgroup, expected):
    assert service_unit(invocation_id, parent, cgroup) == expected


def test_restart_command_for_each_kind_of_daemon():
    assert restart_for(None) == ("re-exec", None)
    assert restart_for(("zpeer.service", False)) == ("systemctl restart zpeer.service",) * 2
    assert restart_for(("zpeer.service", True)) == ("systemctl --user restart zpeer.service",) * 2
    how, cmd = restart_for(("zpeer@wg\\x2d0.service", False))
    assert how == cmd
    # bash must hand systemctl the unit name as systemd wrote it, backslash included
    shell = subprocess.run(["/bin/bash", "-c", 'systemctl() { printf "%s\\n" "$@"; }; ' + cmd],
                           capture_output=True, text=True, timeout=10, check=True)
    assert shell.stdout == "restart\nzpeer@wg\\x2d0.service\n"


def test_restart_command_runs_outside_the_unit_through_systemd_run():
    cmd = "systemctl restart zpeer.service"
    assert spawn_argv(cmd, None, "/usr/bin/systemd-run") == ["/bin/bash", "-c", cmd]
    assert spawn_argv(cmd, ("zpeer.service", False), None) == ["/bin/bash", "-c", cmd]
    assert spawn_argv(cmd, ("zpeer.service", False), "/usr/bin/systemd-run") == [
        "/usr/bin/systemd-run", "--quiet", "--collect", "/bin/bash", "-c", cmd]
    assert spawn_argv(cmd, ("zpeer.service", True), "/usr/bin/systemd-run") == [
        "/usr/bin/systemd-run", "--quiet", "--collect", "--user", "/bin/bash", "-c", cmd]
    # a configured restart command keeps the repo as its directory and the daemon's home
    assert spawn_argv("./restart.sh", ("zpeer.service", False), "/usr/bin/systemd-run", "/srv/app",
                      {"ZPEER_HOME": "/var/lib/zpeer", "PATH": "/usr/bin"}) == [
        "/usr/bin/systemd-run", "--quiet", "--collect", "--working-directory=/srv/app",
        "--setenv=PATH=/usr/bin", "--setenv=ZPEER_HOME=/var/lib/zpeer", "/bin/bash", "-c",
                                                                                "./restart.sh"]


# The stand-ins. Each is a script run by this interpreter; the kernel names a process after the
# script it executes, so the manager's children see a parent called `systemd`.
FAKE_SYSTEMD = '''\
"""Stand-in service manager: runs ARGV as a service; SIGHUP restarts it, SIGTERM stops it."""
import os, signal, subprocess, sys, uuid
SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD}
signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

def note(name, value):
    with open(os.path.join(STATE, name + ".tmp"), "w") as f:
        f.write(str(value))
    os.replace(os.path.join(STATE, name + ".tmp"), os.path.join(STATE, name))

def start():
    child = subprocess.Popen(sys.argv[1:], env=dict(os.environ, INVOCATION_ID=uuid.uuid4().hex),
                             preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS))
    note("service.pid", child.pid)
    return child

def stop(child):
    child.terminate()
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()

note("systemd.pid", os.getpid())
child = start()
while True:
    sig = signal.sigwait(SIGNALS)
    if sig == signal.SIGHUP:
        stop(child)
        child = start()
    elif sig == signal.SIGTERM:
        stop(child)
        sys.exit(0)
    elif child.poll() is not None:  # the service ended by itself: so does this stand-in
        sys.exit(child.returncode)
'''

FAKE_SYSTEMD_RUN = '''\
"""Stand-in systemd-run: records its argv, starts the command detached, returns at once."""
import json, os, sys
with open(os.path.join(STATE, "systemd-run.log"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
env, cwd = {"PATH": "/usr/bin:/bin"}, "/"  # a transient unit starts from the manager's, not ours
while args and args[0].startswith("-"):
    option = args.pop(0)
    if option.startswith("--working-directory="):
        cwd = option.split("=", 1)[1]
    elif option.startswith("--setenv="):
        name, value = option.split("=", 1)[1].split("=", 1)
        env[name] = value
if os.fork() == 0:
    os.setsid()
    os.chdir(cwd)
    os.execvpe(args[0], args, env)
'''

FAKE_SYSTEMCTL = '''\
"""Stand-in systemctl: records its argv; `restart zpeer.service` asks the stand-in manager."""
import json, os, signal, sys
with open(os.path.join(STATE, "systemctl.log"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:] != ["restart", "zpeer.service"]:
    sys.exit("stand-in systemctl knows only `restart zpeer.service`")
with open(os.path.join(STATE, "systemd.pid")) as f:
    os.kill(int(f.read()), signal.SIGHUP)
'''


def write_stand_ins(bin_dir, state):
    """The three stand-ins in bin_dir, executable, writing what they saw to state."""
    os.makedirs(bin_dir)
    for name, body in (("systemd", FAKE_SYSTEMD), ("systemd-run", FAKE_SYSTEMD_RUN),
                       ("systemctl", FAKE_SYSTEMCTL)):
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(f"#!{sys.executable}\nSTATE = {state!r}\n{body}")
        os.chmod(path, 0o755)


def parent_pid(pid):
    """The parent of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


class SupervisedNode(Node):
    """A node whose daemon runs under the stand-in manager, with the stand-ins first on its PATH."""

    def __init__(self, base, name, source_ip):
        super().__init__(base, name, source_ip)
        self.state = os.path.join(str(base), "systemd-state")
        self.bin = os.path.join(str(base), "systemd-bin")
        os.makedirs(self.state)
        write_stand_ins(self.bin, self.state)
        self.env["PATH"] = self.bin + os.pathsep + self.env.get("PATH", os.defpath)
        self.env.pop("INVOCATION_ID", None)

    def service_pid(self):
        """The daemon's pid as the stand-in manager last started it."""
        with open(os.path.join(self.state, "service.pid")) as f:
            return int(f.read())

    def recorded(self, name):
        """The argv lists a stand-in recorded, in order."""
        try:
            with open(os.path.join(self.state, f"{name}.log")) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def start(self):
        """Start the stand-in manager with `d daemon` as its service; wait until it answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([os.path.join(self.bin, "systemd")] + d_command()
                                         + ["daemon", "--log-level", "DEBUG"], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for(lambda: self.proc.poll() is not None
                 or b'"daemon": "running"' in self.d("getPeerStatus",
                 "--json").stdout, what=f"daemon {self.name} to serve")
        assert self.proc.poll() is None, self.log()
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stop the manager (which stops the daemon); no daemon it started may be left."""
        super().stop(sig, timeout)
        try:
            pid = self.service_pid()
        except (OSError, ValueError):
            return
        if pid_alive(pid) and parent_pid(pid) in (self.proc.pid, 1):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path):
    """A leader and worker `svc` whose daemon runs as a (stand-in) systemd service."""
    cluster = Cluster(tmp_path)
    try:
        cluster.leader()
        svc = SupervisedNode(tmp_path, "svc", SUPERVISED_IP)
        cluster.nodes["svc"] = svc
        svc.d("setPeerConfig", "--heartbeat", TEST_HEARTBEAT_S, check=0)
        svc.start()
        out = svc.d("registerWorker", "--id", "svc", "--token", cluster.token(), "--source-ip",
                    SUPERVISED_IP, check=0)
        assert b"Registered" in out.stdout, out
        yield cluster, svc
    finally:
        cluster.stop()



def test_a_systemd_service_is_restarted_with_systemctl_outside_its_unit(supervised):
    cluster, svc = supervised
    before = status(svc)
    # the daemon's parent is the `systemd` stand-in
    assert parent_pid(before["pid"]) == svc.proc.pid
    version = before["version"]

    out = cluster.vps.d("restartDaemon", "--peer", "svc", check=0)
    said = f"svc: restarting (systemctl restart zpeer.service), was {version}\n"
    assert out.stderr == said.encode()
    assert re.fullmatch(rf"svc: restarted {re.escape(version)} in \d+\.\ds\n",
                        out.stdout.decode()), out
    cmd = "systemctl restart zpeer.service"
    (run,) = svc.recorded("systemd-run")
    assert run[:2] == ["--quiet", "--collect"] and run[-3:] == ["/bin/bash", "-c", cmd], run
    options = run[2:-3]
    assert f"--setenv=ZPEER_HOME={svc.home}" in options
    assert any(o.startswith("--setenv=PATH=/") for o in options)
    assert [o for o in options if o.startswith("--working-directory=/")], options
    assert svc.recorded("systemctl") == [["restart", "zpeer.service"]]
    after = status(svc)
    # stopped and started again by its manager: a new process (a re-exec would have kept the pid)
    assert after["pid"] == svc.service_pid() != before["pid"] and not pid_alive(before["pid"])
    assert parent_pid(after["pid"]) == svc.proc.pid and after["started_at"] > before["started_at"]
    wait_for(lambda: cluster.online("svc"), what="svc back online")

    # the local form goes the same way
    out = svc.d("restartDaemon", check=0)
    said = f"svc: restarting (systemctl restart zpeer.service), was {version}\n"
    assert out.stderr == said.encode()
    assert re.fullmatch(rf"svc: restarted {re.escape(version)} in \d+\.\ds\n",
                        out.stdout.decode()), out
    assert svc.recorded("systemctl") == [["restart", "zpeer.service"]] * 2
    assert status(svc)["pid"] == svc.service_pid() != after["pid"]
    with open(os.path.join(svc.home, "restart.log")) as f:
        assert f.read().count(f" restart: {cmd}\n") == 2
    with open(svc.log_path) as f:
        assert "still runs" not in f.read()  # systemd-run returning at once is no failed restart


def test_a_daemon_started_by_hand_inside_a_service_re_executes_itself(tmp_path):
    # INVOCATION_ID leaks into every shell a service starts; the parent is what tells them apart
    node = Node(tmp_path, "byhand")
    node.env["INVOCATION_ID"] = "0123456789abcdef0123456789abcdef"
    try:
        before = status(node.start())
        out = node.d("restartDaemon", check=0)
        assert out.stderr == f"this node: restarting (re-exec), was {before['version']}\n".encode()
        after = status(node)
        assert after["pid"] == before["pid"] == node.proc.pid
        assert after["started_at"] > before["started_at"]
    finally:
        node.stop()
