"""Helpers for the chaos suite: many daemons at once, streamed CLI calls, process probes.

Built on tests/helpers/nodes.py (Node, Cluster, wait_for). Nothing here mocks zpeer: daemons are
real `d daemon` processes and every command goes through the real `d` CLI.
"""
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from helpers.nodes import TEST_HEARTBEAT_S, Node, d_command, pid_alive, status, wait_for  # noqa: F401 (pid_alive: for the chaos tests)
from proxy import ChaosProxy

DETECT_LIMIT_S = 3 * TEST_HEARTBEAT_S + 1.0  # 3 heartbeat intervals + slack for 2 busy cores


def run_parallel(calls, timeout=60):
    """Run several `d` commands at once: calls = [(node, args)]; returns CompletedProcess list."""
    procs = [subprocess.Popen(d_command() + [str(a) for a in args], env=node.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for node, args in calls]
    results = []
    for proc, (_, args) in zip(procs, calls):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def start_daemons(nodes):
    """Start many daemons at once and wait until each serves its socket (cheap: no CLI polling)."""
    for node in nodes:
        log = open(node.log_path, "ab")
        node.proc = subprocess.Popen(d_command() + ["daemon", "--log-level", "DEBUG"], env=node.env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
    # the log line comes once the loop serves (cheaper than polling with the CLI)
    for node in nodes:
        wait_for(lambda node=node: node.proc.poll() is not None
                 or b"daemon serving" in open(node.log_path, "rb").read(),
                 what=f"{node.name} serving")
        assert node.proc.poll() is None, node.log()


def add_workers(cluster, names_ips, leader_address=None):
    """Create, start and enrol many workers in parallel; leader_address overrides the token's."""
    nodes = [Node(cluster.base, name, ip) for name, ip in names_ips]
    for node, out in zip(nodes,
                         run_parallel([(n, ["setPeerConfig", "--heartbeat", TEST_HEARTBEAT_S])
                                              for n in nodes])):
        assert out.returncode == 0, out
        cluster.nodes[node.name] = node
    start_daemons(nodes)
    asked = run_parallel([(cluster.vps, ["joinToken"])] * len(nodes))
    tokens = [o.stdout.decode().strip() for o in asked]
    calls = []
    for node, token in zip(nodes, tokens):
        args = ["registerWorker", "--id", node.name, "--token", token, "--source-ip",
                node.source_ip]
        if leader_address:
            args += ["--leader", leader_address]
        calls.append((node, args))
    for out in run_parallel(calls):
        assert out.returncode == 0 and b"Registered" in out.stdout, out
    return nodes


def online_ids(node):
    """Ids the leader lists as online (asked through `node`), or None if it cannot answer."""
    out = node.d("listPeers", "--ids", "--online")
    return set(out.stdout.decode().split()) if out.returncode == 0 else None



class Stream:
    """A `d execOnPeer` call running in the background; stdout lines are collected as they come."""

    def __init__(self, node, *args):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(d_command() + ["execOnPeer"] + [str(a) for a in args],
                                     env=node.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines = []
        self.stderr = b""
        self.ended = None
        self._out = threading.Thread(target=self._read, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def events(self):
        """Parsed JSON Lines events so far (for --json calls)."""
        return [json.loads(line) for line in list(self.lines)]

    def wait_for_lines(self, predicate, timeout=10, what="output"):
        """Wait until predicate(lines) is true."""
        return wait_for(lambda: predicate(list(self.lines)), timeout=timeout, what=what)

    def wait(self, timeout):
        """Wait for the CLI to exit; returns (rc, seconds since start)."""
        rc = self.proc.wait(timeout)
        self.ended = time.monotonic()
        self._out.join(5)
        self._err.join(5)
        return rc

    def kill(self):
        """SIGKILL the CLI (by its own handle)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self._out.join(5)
        self._err.join(5)


def kill_group(pid):
    """Best-effort SIGKILL of a process group a test left behind (orphans of a SIGKILLed daemon)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def open_fds(pid):
    """Number of open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid):
    """Resident set size of a process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def report(name, **numbers):
    """Print what a scenario measured (shown with -s or -rA)."""
    text = ", ".join(f"{k}={v:.3f}s" if isinstance(v, float) else f"{k}={v}" for k,
                     v in numbers.items())
    print(f"\n[chaos] {name}: {text}")


@pytest.fixture
def chaos_proxy():
    """Factory for proxies; every proxy made is stopped after the test."""
    made = []

    def make(upstream_port, upstream_host="127.0.0.1"):
        proxy = ChaosProxy(upstream_host, upstream_port).start()
        made.append(proxy)
        return proxy
    yield make
    for proxy in made:
        proxy.stop()
