"""Real zpeer daemons for the benchmarks: temp ZPEER_HOMEs, loopback ports, enrolment by token.

Each node is a `d daemon` subprocess stopped by its own handle. Readiness and tokens go through
the same IPC client the CLI uses (`zpeer.wire.ipc.Client`), so waiting costs no extra processes.
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from zpeer.errors import ZpeerError
from zpeer.wire.ipc import Client

HEARTBEAT_S = 1.0  # the default a real fleet runs with: idle CPU is measured at it
SWARM_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swarm.py")


def d_command():
    """The `d` console script next to this interpreter, else `python -m zpeer`."""
    installed = os.path.join(os.path.dirname(sys.executable), "d")
    return [installed] if os.path.exists(installed) else [sys.executable, "-m", "zpeer"]


def free_port(host="127.0.0.1"):
    """A TCP port free on host right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, interval=0.02, what="condition", error=RuntimeError):
    """Poll predicate until truthy and return its value; `error` at the deadline (the tests'
    conftest raises AssertionError through this same loop)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def print_json(rows, path=None):
    """Print a bench's rows as JSON, and write them to path when one is given."""
    print(json.dumps(rows, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)


def close_monitored(pairs):
    """Close (socket, its monitor socket) pairs at once, whatever state they are in."""
    for sock, monitor in pairs:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def rss_kb(pid):
    """(current, peak) resident set of a live process in KiB, from /proc."""
    cur = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cur, peak


def cpu_seconds(pid):
    """User + system CPU time of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Node:
    """One node: its state directory, its daemon process and a CLI runner."""

    def __init__(self, base, name, env=None):
        self.name = name
        self.home = os.path.join(base, name)
        os.makedirs(self.home, mode=0o700)
        self.env = dict(os.environ, **(env or {}), ZPEER_HOME=self.home)
        self.log_path = os.path.join(base, f"{name}.log")
        self.proc = None

    def d(self, *args, check=True, **kw):
        """Run `d ARGS` for this node; CompletedProcess with bytes output."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.run(d_command() + [str(a) for a in args], env=self.env,
                              capture_output=True, timeout=kw.pop("timeout", 60), **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"d {' '.join(map(str, args))} -> {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-800:]}")
        return proc

    def client(self):
        """A persistent IPC client to this node's daemon (what the CLI uses)."""
        return Client(self.home)

    def call(self, op, **args):
        """One IPC request to the daemon."""
        c = self.client()
        try:
            return c.call(op, **args)
        finally:
            c.close()

    def _answers(self):
        """True once the daemon serves its socket."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon {self.name} exited: {self.log()[-1500:]}")
        try:
            self.call("ping", timeout_s=1)
            return True
        except ZpeerError:
            return False

    def start(self, log_level="WARNING"):
        """Start `d daemon` and wait until it answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(d_command() + ["daemon", "--log-level", log_level],
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        wait_for(self._answers, what=f"daemon {self.name} to serve")
        return self

    @property
    def pid(self):
        """The daemon's pid."""
        return self.proc.pid

    def stop(self):
        """SIGTERM the daemon and reap it (SIGKILL if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self):
        """The daemon's log (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class Cluster:
    """A leader on 127.0.0.1 and workers connecting from their own 127.0.0.x."""

    def __init__(self, heartbeat_s=HEARTBEAT_S, base=None, env=None, swarm_script=SWARM_SCRIPT):
        self.base = base or tempfile.mkdtemp(prefix="zpeer-bench-")
        self.env = dict(env or {})  # added to the environment of every process it starts
        self.swarm_script = swarm_script  # a tree's own: its worker code, as that tree writes it
        self.own_base = base is None
        self.heartbeat_s = heartbeat_s
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes = {}
        self.leader = None
        self.swarms = []
        self.expected_online = 0

    def start_leader(self, name="lead"):
        """Configure and start the leader."""
        node = Node(self.base, name, self.env)
        node.d("setPeerConfig", "--role", "leader", "--id", name, "--bind", self.address,
               "--heartbeat", self.heartbeat_s)
        self.nodes[name] = self.leader = node  # before start(): a slow start is still stopped
        node.start()
        return node

    def token(self):
        """A one-time join token from the leader (the IPC op behind `d joinToken`)."""
        return self.leader.call("join_token", ttl=3600)["token"]

    def start_worker(self, name, source_ip):
        """Start a worker daemon and enrol it with `d registerWorker --token`."""
        node = Node(self.base, name, self.env)
        node.d("setPeerConfig", "--heartbeat", self.heartbeat_s)
        self.nodes[name] = node
        node.start()
        out = node.d("registerWorker", "--id", name, "--token", self.token(), "--source-ip",
                     source_ip)
        if b"Registered" not in out.stdout:
            raise RuntimeError(f"worker {name} not registered: {out.stdout!r}")
        self.expected_online += 1
        return node

    def start_swarm(self, count, first_ip, prefix, timeout=180.0):
        """A swarm process of `count` workers, one join token each; returns it once registered."""
        tokens = [self.token() for _ in range(count)]
        log = open(os.path.join(self.base, f"swarm-{prefix}.log"), "ab")
        proc = subprocess.Popen([sys.executable, self.swarm_script, "--first-ip", first_ip,
                                 "--prefix", prefix, "--heartbeat", str(self.heartbeat_s),
                                 "--ready-timeout", str(timeout)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                env=dict(os.environ, **self.env))
        log.close()
        self.swarms.append(proc)
        proc.stdin.write(("\n".join(tokens) + "\n\n").encode())
        proc.stdin.flush()
        if not select.select([proc.stdout], [], [], timeout + 10)[0]:
            raise RuntimeError(f"swarm {prefix} did not report within {timeout}s")
        line = proc.stdout.readline()
        ready = json.loads(line or b"{}")
        if not ready.get("ok"):
            raise RuntimeError(f"swarm {prefix} not ready: {ready or 'exited'}")
        wait_for(lambda: self.online_count() >= self.expected_online + count, timeout=30,
                 what=f"the leader to list swarm {prefix} online")
        self.expected_online += count
        ready["proc"] = proc
        return ready

    def online_count(self):
        """How many peers (besides the leader) the leader holds online."""
        return self.leader.call("status")["peers_online"]

    def stop_swarms(self):
        """Stop every swarm process started here (its workers leave the leader's fleet)."""
        for proc in self.swarms:
            if proc.poll() is None:
                proc.stdin.close()  # EOF: the swarm stops its workers and exits
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            proc.stdout.close()
        self.swarms = []

    def stop(self):
        """Stop every swarm and daemon started here, then remove the temp tree."""
        self.stop_swarms()
        for node in self.nodes.values():
            node.stop()
        if self.own_base:
            shutil.rmtree(self.base, ignore_errors=True)
