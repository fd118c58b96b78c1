"""Where one exec's time goes, hop by hop: `python bench/timeline.py [--runs N] [--cmd CMD]`.

Starts a leader and a worker with ZPEER_TRACE (see zpeer/trace.py), runs the command through a
persistent client (as api_exec_true does), and lines up the marks every process wrote on the
shared monotonic clock. Prints the median of each segment of the path:

  client call -> leader gets the request -> exec leaves the leader -> the worker gets it ->
  bash started -> the worker's loop wakes after the command -> exit leaves the worker ->
  the leader gets it -> reply leaves the leader -> the client has it

Segments between two processes are the transport: the send (libzmq hands the message to its I/O
thread, which on 2 cores often runs at once, inside the send), the kernel and the scheduler, and
the receive. Segments inside one process are zpeer's own code, and the spawn. A process marks a
message before sending it: the receiver may run before send() returns.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import cluster  # noqa: E402
from bench.measure import api_exec  # noqa: E402

# (mark, what the segment that ends at it is); the path of a command with no output
PATH = [
    ("call", None),
    ("request", "client call -> the leader has the request (IPC)"),
    ("lead.send:exec", "leader: request in -> exec ready (zpeer)"),
    ("work.recv:exec", "exec leader -> worker (CurveZMQ over TCP)"),
    ("spawn", "worker: exec in -> spawn (zpeer)"),
    ("spawned", "posix_spawn: vfork, bash's execve (the kernel)"),
    ("woke", "bash runs and exits; the worker's loop wakes"),
    ("work.send:exit", "worker: wake -> exit ready, incl. exit wait (zpeer)"),
    ("lead.recv:exit", "exit worker -> leader (CurveZMQ over TCP)"),
    ("reply", "leader: exit in -> reply ready (zpeer)"),
    ("done", "reply leader -> client (IPC)"),
]


def collect(directory):
    """Every mark of every process, (ns, name), in time order."""
    marks = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            for line in f:
                label, _, ns = line.rpartition(" ")
                marks.append((int(ns), label))
    marks.sort()
    return marks


def segments(marks):
    """Per exec (from a "call" mark to its "done"), the time of each PATH segment in us, and
    how many times the worker's loop woke between the spawn and the exit."""
    result, current = [], None
    for ns, label in marks:
        if label == "call":
            current = [(ns, label)]
        elif current is not None:
            current.append((ns, label))
            if label == "done":
                result.append(_one(current))
                current = None
    return [r for r in result if r is not None]


def _one(marks):
    """The PATH segments of one exec, or None when a mark is missing."""
    first = {}
    wakes = 0
    for ns, label in marks:
        if label == "woke" and "spawned" in first and "work.send:exit" not in first:
            wakes += 1
        if label == "reply":
            first[label] = ns  # the last one: the reply that carried the exit
        first.setdefault(label, ns)
    if any(name not in first for name, _ in PATH):
        return None
    times = [first[name] for name, _ in PATH]
    if times != sorted(times):
        return None
    return [(b - a) / 1000 for a, b in zip(times, times[1:])], wakes


def run(runs, cmd):
    """Trace `runs` execs of cmd; returns their segments (see `segments`)."""
    base = tempfile.mkdtemp(prefix="zpeer-timeline-")
    traces = os.path.join(base, "trace")
    os.mkdir(traces)
    c = cluster.Cluster(base=os.path.join(base, "nodes"), env={"ZPEER_TRACE": traces})
    try:
        lead = c.start_leader()
        c.start_worker("w1", "127.0.0.2")
        client = lead.client()
        try:
            for _ in range(max(20, runs // 10)):
                api_exec(client, "w1", cmd)  # warm caches and code paths
            with open(os.path.join(traces, "client"), "w") as out:
                for _ in range(runs):
                    out.write(f"call {time.monotonic_ns()}\n")
                    api_exec(client, "w1", cmd)
                    out.write(f"done {time.monotonic_ns()}\n")
        finally:
            client.close()
    finally:
        c.stop()
    found = segments(collect(traces))
    shutil.rmtree(base, ignore_errors=True)
    return found


def table(found):
    """The printed report: one line per segment, medians, and the sum of the zpeer ones."""
    lines = [f"{'segment':58s} {'median us':>10s} {'p25':>8s} {'p75':>8s}"]
    cols = list(zip(*[f[0] for f in found]))
    for (_, what), values in zip(PATH[1:], cols):
        q = statistics.quantiles(values, n=4)
        lines.append(f"{what:58s} {statistics.median(values):10.1f} {q[0]:8.1f} {q[2]:8.1f}")
    totals = [sum(f[0]) for f in found]
    lines.append(f"{'total (client call to reply in hand)':58s} {statistics.median(totals):10.1f}")
    own = [sum(v for (_, what),
               v in zip(PATH[1:], f[0]) if what.endswith("(zpeer)")) for f in found]
    wakes = statistics.median(f[1] for f in found)
    lines.append(f"{len(found)} execs; zpeer's own segments sum to {statistics.median(own):.1f} us "
                 f"(median); the worker's loop woke {wakes:g} time(s) between the spawn and the "
                 "exit")
    return "\n".join(lines)


def main(argv=None):
    """Trace and print."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--cmd", default="true")
    args = p.parse_args(argv)
    found = run(args.runs, args.cmd)
    if not found:
        print("no complete exec in the traces", file=sys.stderr)
        return 1
    print(table(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
