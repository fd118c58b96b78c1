"""Timing primitives of the benchmarks: CLI runs, the persistent API client, streams, CPU.

Every CLI run is a new `d` process with a pseudo-terminal on stdin, as when a user types the
command (a non-terminal stdin would be forwarded to the remote command, which is another path).
"""
import os
import statistics
import subprocess
import time

from bench.cluster import cpu_seconds, d_command

MB = 1_000_000


class Row:
    """One line of the results table."""

    def __init__(self, name, value, unit, runs=1, target=None, ok=None, note="", extra=None):
        self.name, self.value, self.unit, self.runs = name, value, unit, runs
        self.target, self.ok, self.note = target, ok, note
        self.extra = extra or {}

    def as_dict(self):
        """JSON form."""
        return {"name": self.name, "median": self.value, "unit": self.unit, "runs": self.runs,
                "target": self.target, "pass": self.ok, "note": self.note, **self.extra}


def median(values):
    """Median of a non-empty list."""
    return statistics.median(values)


def repeat(fn, runs, warmup=1):
    """Call fn() warmup + runs times; the results of the measured runs."""
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(runs)]


class Terminal:
    """A pseudo-terminal whose slave side is the CLI's stdin."""

    def __init__(self):
        self.master, self.slave = os.openpty()

    def close(self):
        """Close both sides."""
        os.close(self.master)
        os.close(self.slave)


def run_timed(argv, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True):
    """Run a program; returns (seconds, peak RSS in KiB) measured by wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)[:200]} -> {proc.returncode}: "
                           f"{err.decode(errors='replace')[-800:]}")
    return elapsed, usage.ru_maxrss


def cli(node, args, tty, stdout=subprocess.DEVNULL):
    """Seconds of one `d ARGS` run for node (a new CLI process), and its peak RSS."""
    return run_timed(d_command() + [str(a) for a in args], env=node.env, stdin=tty.slave,
                     stdout=stdout)


def api_exec(client, peer, cmd="true"):
    """One exec through a persistent IPC client, as zpeer.cli.exec_client.ExecClient drives it
    (output as raw frames, dropped); returns rc."""
    reply = client.call("exec_open", targets=[peer], cmd=cmd, dir=None, user=None, timeout=None,
                        batch=0, stdin=False, pid=os.getpid(), ouser="bench", wait_s=0.5, raw=True,
                        timeout_s=10.5)
    sid, rc = reply["sid"], None
    while True:
        for event in reply["events"]:
            if event[1] == "x":
                rc = event[2]
            elif event[1] == "f":
                raise RuntimeError(f"exec failed on {event[0]}: {event[3]}")
        if reply["done"]:
            return rc
        reply = client.call("exec_poll", sid=sid, stdin=None, eof=False, wait_s=0.5,
                            need_room=False, raw=True, timeout_s=10.5)


def timed_api_exec(client, peer, cmd="true"):
    """Seconds of one api_exec."""
    start = time.perf_counter()
    rc = api_exec(client, peer, cmd)
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"api exec on {peer} -> rc {rc}")
    return elapsed


def cpu_ms_per_call(fn, calls, pids):
    """CPU milliseconds per fn() call, of each process in pids and of this one (the client)."""
    before = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
    for _ in range(calls):
        fn()
    after = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
    return [round((b - a) * 1000 / calls, 3) for a, b in zip(before, after)]


def idle_cpu_percent(pid, seconds):
    """CPU use of a process over a window, in % of one core."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # a measurement window, not a wait for state
    return 100.0 * (cpu_seconds(pid) - before) / (time.monotonic() - start)
