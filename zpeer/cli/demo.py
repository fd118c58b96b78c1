"""`d demo`: a leader and two workers on loopback in a temporary directory, shown at work.

Everything runs as real daemons (subprocesses), exactly as on a fleet; the demo prints each
command before its output and stops every process it started, even on Ctrl-C.
"""
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import click

from zpeer.cli.common import CONTEXT

NODES = (("vps", "127.0.0.1"), ("desktop", "127.0.0.2"), ("laptop", "127.0.0.4"))
START_TIMEOUT_S = 15.0


def _free_port():
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    """The demo cluster and its processes."""

    def __init__(self, keep=False):
        self.base = tempfile.mkdtemp(prefix="zpeer-demo-")
        self.keep = keep
        self.procs = []
        self.port = _free_port()

    def env(self, name):
        """Environment of a node's daemon and CLI."""
        return dict(os.environ, ZPEER_HOME=os.path.join(self.base, name))

    def d(self, name, *args, show=True, stdin=None):
        """Run `d ARGS` on a node, echoing the command like a terminal transcript."""
        if show:
            print(f"\n[{name}]$ d {' '.join(shlex.quote(a) for a in args)}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "zpeer", *args], env=self.env(name),
                              input=stdin, stdout=None if show else subprocess.PIPE, text=True)
        return proc

    def start(self, name):
        """Start a node's daemon and wait until it serves its socket."""
        log = open(os.path.join(self.base, f"{name}.log"), "w")
        proc = subprocess.Popen([sys.executable, "-m", "zpeer", "daemon"], env=self.env(name),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.d(name, "getPeerStatus", show=False).stdout.find("daemon: running") < 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon {name} did not start: see {self.base}/{name}.log")
            time.sleep(0.05)

    def run(self):
        """The scripted tour."""
        print(f"zpeer demo: three nodes on loopback, state in {self.base}")
        leader, leader_ip = NODES[0]
        self.d(leader, "setPeerConfig", "--role", "leader", "--id", leader, "--bind",
               f"{leader_ip}:{self.port}", show=False)
        self.start(leader)
        for name, ip in NODES[1:]:
            self.start(name)
            token = self.d(leader, "joinToken", "--ttl", "60", show=False).stdout.strip()
            print(f"\n[{leader}]$ d joinToken --ttl 60\n{token[:40]}…")
            if self.d(name, "registerWorker", "--id", name, "--token", token, "--source-ip",
                      ip).returncode:
                return 1
        self.d(leader, "listPeers")
        self.d("laptop", "listPeers", "--json")
        self.d("desktop", "execOnPeer", "--peer", "laptop", "--directory", "/tmp", "--shellCmd",
               "echo \"hello from $(hostname) as $USER in $PWD\"")
        self.d(leader, "execOnPeer", "--peer", "all", "--shellCmd",
               "echo up; echo oops >&2; exit 0")
        rc = self.d("laptop", "execOnPeer", "--peer", "desktop", "--shellCmd", "exit 7").returncode
        print(f"(exit status {rc}: the remote one)")
        self.d("desktop", "execOnPeer", "--peer", "vps", "--shellCmd", "wc -c",
               stdin="piped stdin\n")
        self.d(leader, "history", "--limit", "5")
        return 0

    def stop(self):
        """Stop every daemon the demo started and remove its directory."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def run_demo(keep=False):
    """Run the demo; returns an exit status."""
    demo = Demo(keep)
    # a closed terminal (SIGHUP) or SIGTERM cleans up as Ctrl-C does: the daemons run in sessions
    # of their own, so nothing else would stop them (a SIGHUP that nohup ignored stays ignored)
    stops = [signal.SIGTERM] + ([signal.SIGHUP]
                                if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL else [])
    previous = {signum: signal.signal(signum, signal.default_int_handler) for signum in stops}
    try:
        rc = demo.run()
        if keep:
            pids = " ".join(str(p.pid) for p in demo.procs)
            print(f"\nLeft running (--keep): ZPEER_HOME={demo.base}/NAME d …; stop with: kill "
                  f"{pids}")
            return rc
        print("\ndemo done: stopping the three daemons")
        return rc
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the demo daemons", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not keep:
            demo.stop()


@click.command(context_settings=CONTEXT)
@click.option("--keep", is_flag=True,
              help="Leave the demo cluster running (prints how to stop it).")
def demo(keep):
    """Start a leader and two workers on loopback, show them working, then stop them.

    \b
    Example:
      d demo
    """
    sys.exit(run_demo(keep=keep))
