"""Stdin path rows: `python bench/stdin.py [--mb 256] [--runs 3] [--other TREE]`.

stdin_mb_s    --mb MB piped (`cat FILE |`) into `d execOnPeer --peer w1 --shellCmd 'cat >/dev/null'`
              from the leader's CLI
stdout_mb_s   the other way for comparison: `d execOnPeer --peer w1 --shellCmd 'cat FILE'` into
              /dev/null
push_mb_s     `d pushFile --peer w1` of the same file into an empty directory (checked with cmp)
Each row is the median of --runs after one warm-up, alternating; CPU seconds of the leader,
the worker and the CLI per run, and every process's peak RSS (the CLI's, the daemons', and
that of whatever the worker spawned: the command, the file agent), are printed beside them. With
--other TREE (another checkout, e.g. `git archive main | tar -x -C /tmp/base`), that tree gets a
leader and a worker of its own (its zpeer first on PYTHONPATH) and both are measured in
alternation in the same run, as bench/ab.py does.
"""
import argparse
import filecmp
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.cluster import Cluster, cpu_seconds, d_command, print_json, rss_kb  # noqa: E402
from bench.measure import MB, median  # noqa: E402


def timed_shell(script, env):
    """(seconds, CLI CPU seconds, CLI peak RSS MB) of a bash script that must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(["/bin/bash", "-c", script], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{script[:200]} -> {status}: {err.decode(errors='replace')[-800:]}")
    # (children's usage: the d CLI is the biggest of bash's children)
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


class Tree:
    """One checkout's leader and worker, and the scripts of its rows."""

    def __init__(self, label, tree, mb):
        self.label = label
        self.cl = Cluster(env={"PYTHONPATH": tree} if tree else None)
        self.lead = self.cl.start_leader()
        self.w1 = self.cl.start_worker("w1", "127.0.0.2")
        self.src = os.path.join(self.cl.base, "src.bin")
        with open(self.src, "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(MB))
        d = " ".join(shlex.quote(a) for a in d_command())
        q = shlex.quote(self.src)
        self.dst = os.path.join(self.cl.base, "dst")
        self.scripts = {
            "stdin": f"cat {q} | {d} execOnPeer --peer w1 --shellCmd 'cat >/dev/null'",
            "stdout": f"{d} execOnPeer --peer w1 --shellCmd {shlex.quote('cat ' + q)} "
                      ">/dev/null",
            "push": f"{d} pushFile --peer w1 --dest {shlex.quote(self.dst)} {q}",
        }

    def run(self, name):
        """(seconds, (leader, worker, CLI) CPU seconds, CLI peak RSS MB) of one row's run."""
        shutil.rmtree(self.dst, ignore_errors=True)
        os.makedirs(self.dst)
        before = (cpu_seconds(self.lead.pid), cpu_seconds(self.w1.pid))
        children = ChildPeaks(self.w1.pid)
        seconds, cli_cpu, rss = timed_shell(self.scripts[name], self.lead.env)
        self.child_peak_mb = max(getattr(self, "child_peak_mb", 0.0), children.done())
        after = (cpu_seconds(self.lead.pid), cpu_seconds(self.w1.pid))
        if name == "push" and not filecmp.cmp(self.src, os.path.join(self.dst, "src.bin"),
                                              shallow=False):
            raise RuntimeError("pushed file differs")
        return seconds, (after[0] - before[0], after[1] - before[1], cli_cpu), rss


def descendants(pid):
    """The pids below a process (its children's children too), from /proc."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
        except OSError:
            continue
    return found


class ChildPeaks:
    """The peak RSS (VmHWM, MB) of every process below the worker daemon while a row runs (the
    command or file agent it spawned), sampled every 20 ms."""

    def __init__(self, pid):
        self.pid, self.peak_mb, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.02):
            for child in descendants(self.pid):
                try:
                    self.peak_mb = max(self.peak_mb, rss_kb(child)[1] / 1024)
                except (OSError, ValueError):
                    pass

    def done(self):
        """Stop sampling; the peak seen."""
        self.stop.set()
        self.thread.join()
        return self.peak_mb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", default="stdin,stdout,push")
    parser.add_argument("--other", metavar="TREE", help="another checkout, measured alongside")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    wanted = args.rows.split(",")
    trees = []
    results = {}
    try:
        if args.other:
            trees.append(Tree("other", os.path.abspath(args.other), args.mb))
        trees.append(Tree("this", None, args.mb))
        got = {(t.label, name): [] for t in trees for name in wanted}
        for run in range(args.runs + 1):  # the first round warms up
            for name in wanted:
                for tree in trees:
                    measured = tree.run(name)
                    if run:
                        got[tree.label, name].append(measured)
        for tree in trees:
            rows = results[tree.label] = {}
            for name in wanted:
                runs = got[tree.label, name]
                rows[f"{name}_mb_s"] = round(args.mb / median([r[0] for r in runs]), 1)
                rows[f"{name}_cpu_s"] = {k: round(median([r[1][i] for r in runs]), 2)
                                         for i, k in enumerate(("leader", "worker", "cli"))}
                rows[f"{name}_cli_peak_rss_mb"] = round(max(r[2] for r in runs), 1)
            rows["peak_rss_mb"] = {"leader": round(rss_kb(tree.lead.pid)[1] / 1024, 1),
                                   "worker": round(rss_kb(tree.w1.pid)[1] / 1024, 1),
                                   "worker_children": round(tree.child_peak_mb, 1)}
    finally:
        for tree in trees:
            tree.cl.stop()
    print_json(results, args.json)


if __name__ == "__main__":
    main()
