"""Real nodes for the tests: each a daemon subprocess with its own ZPEER_HOME, driven through the
real `d` CLI; clusters of them on loopback (the leader on 127.0.0.1, workers from 127.0.0.2,
127.0.0.4, ...), and the polling every test waits with.
"""
import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # bench/ (its polling and port helpers) is not installed

from bench import cluster as bench_cluster  # noqa: E402
from bench.cluster import free_port  # noqa: E402,F401  (tests import it from here)

# 3 intervals of silence make a peer offline: 1.5 s lets a daemon on a machine whose 2 cores run
# three test workers at once be starved for a second without its link flapping
TEST_HEARTBEAT_S = 0.5


def run_python(code):
    """Run code in a fresh interpreter with this checkout importable (for code that changes the
    process it runs in); the CompletedProcess, text output."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def d_command():
    """The installed `d` console script next to this interpreter, else bin/d of the checkout."""
    installed = os.path.join(os.path.dirname(sys.executable), "d")
    return [installed] if os.path.exists(installed) else [sys.executable,
                                                          os.path.join(ROOT, "bin", "d")]


def zpeer_ssh_command():
    """The installed `zpeer-ssh` console script next to this interpreter, else bin/zpeer-ssh."""
    installed = os.path.join(os.path.dirname(sys.executable), "zpeer-ssh")
    return [installed] if os.path.exists(installed) else [sys.executable,
                                                          os.path.join(ROOT, "bin", "zpeer-ssh")]


def pid_alive(pid):
    """True while a process with that pid exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll predicate until it returns a truthy value; fail the test at the deadline."""
    return bench_cluster.wait_for(predicate, timeout, interval, what, error=AssertionError)


class Node:
    """One zpeer node: a state directory, its daemon process and a CLI runner."""

    def __init__(self, base, name, source_ip=None):
        self.name = name
        self.home = os.path.join(str(base), name)
        self.source_ip = source_ip
        self.proc = None
        self.log_path = os.path.join(str(base), f"{name}.log")
        self.env = dict(os.environ, ZPEER_HOME=self.home, PYTHONUNBUFFERED="1")
        self.command = d_command()  # the `d` this node runs (a test may run another install's)

    def d(self, *args, input=None, timeout=30, check=None):
        """Run `d ARGS` for this node (an argument may be bytes: a file name that is not UTF-8);
        returns CompletedProcess with bytes output."""
        argv = self.command + [a if isinstance(a, bytes) else str(a) for a in args]
        proc = subprocess.run(argv, env=self.env, input=input,
                              capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout[-2000:],
                                              proc.stderr[-2000:])
        return proc

    def start(self, **popen_kw):
        """Start `d daemon` (Popen keywords: what its launcher hands it); wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command + ["daemon", "--log-level", "DEBUG"],
                                     env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     **popen_kw)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or self.d("getPeerStatus", "--json").stdout
                 .find(b'"daemon": "running"') >= 0, what=f"daemon {self.name} to serve")
        assert self.proc.poll() is None, self.log()
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stop the daemon (by its own handle) and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self):
        """SIGKILL the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def full_log(self):
        """The daemon's whole log so far ("" before it wrote one)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def events(self, lines=40):
        """The last lines of the daemon's log without the SQL it ran (for a failed test's
        report)."""
        return "\n".join([line for line in self.full_log().splitlines()
                          if " DEBUG peewee: " not in line][-lines:])

    def log(self):
        """The daemon's log so far (for assertion messages)."""
        return self.full_log()[-5000:]


class Nodes:
    """What every cluster of test daemons does: ask its leader who is online, stop them all."""

    nodes = vps = None

    def online(self, name, via=None):
        """True if `via` (the leader by default) lists `name` as online."""
        out = (via or self.vps).d("listPeers", "--ids", "--online")
        return out.returncode == 0 and name in out.stdout.decode().split()

    def stop(self):
        """Stop every daemon this cluster started."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)  # a suspended one must hear its SIGTERM
            node.stop()


class Cluster(Nodes):
    """A leader `vps` on 127.0.0.1 and workers (desktop on 127.0.0.2, laptop on 127.0.0.4)."""

    def __init__(self, base):
        self.base = base
        self.port = free_port()
        self.nodes = {}

    def leader(self, name="vps"):
        """Create and start the leader."""
        node = Node(self.base, name, "127.0.0.1")
        node.d("setPeerConfig", "--role", "leader", "--id", name, "--bind",
               f"127.0.0.1:{self.port}", "--heartbeat", TEST_HEARTBEAT_S, check=0)
        # before start(): a daemon that starts too slowly is still stopped
        self.nodes[name] = self.vps = node
        node.start()
        return node

    def token(self):
        """A fresh join token from the leader."""
        return self.vps.d("joinToken", check=0).stdout.decode().strip()

    def worker(self, name, source_ip, start=True, register=True):
        """Create a worker, start its daemon and enrol it with a token."""
        node = Node(self.base, name, source_ip)
        node.d("setPeerConfig", "--heartbeat", TEST_HEARTBEAT_S, check=0)
        self.nodes[name] = node
        if start:
            node.start()
            if register:
                out = node.d("registerWorker", "--id", name, "--token", self.token(), "--source-ip",
                             source_ip, check=0)
                assert b"Registered" in out.stdout, out
        return node



def status(node):
    """`d getPeerStatus --json` of a node, as a dict."""
    return json.loads(node.d("getPeerStatus", "--json", check=0).stdout)
