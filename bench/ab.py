"""A/B: the same measurement through two zpeer trees at once, interleaved, so both see the same
machine: `python bench/ab.py OTHER_TREE [--rounds N] [--what exec|stream|fanout|idle] [--cmd CMD]`.

On a shared 2-core machine a row moves by ±20 % between runs, more than most changes move it;
two clusters measured in alternating batches in one run do not drift apart. A is OTHER_TREE
(for example `git worktree add --detach /tmp/base main`), B is this checkout. Each tree gets its
own leader and worker daemons (`python -m zpeer` with that tree first on PYTHONPATH) and its own
client; `fanout` adds swarm workers up to --peers and times `d execOnPeer --peer all` with the
leader's CPU (each tree's swarm processes run that tree's own bench/swarm.py and worker code);
`idle` adds them too and measures both leaders' CPU over the same windows.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import cluster  # noqa: E402
from bench.cluster import cpu_seconds  # noqa: E402
from bench.measure import MB, api_exec, timed_api_exec  # noqa: E402

BATCH = 40  # execs per tree per round
IDLE_WINDOW_S = 5.0  # idle: one round


def _which(tree):
    """The zpeer that `python -m zpeer` imports with this tree on PYTHONPATH (the tree's own)."""
    out = subprocess.run([sys.executable, "-c",
                          "import zpeer, os; "
                          "print(os.path.dirname(os.path.dirname(zpeer.__file__)))"],
                         env=dict(os.environ, PYTHONPATH=tree), cwd="/", capture_output=True,
                         text=True, check=True)
    return os.path.realpath(out.stdout.strip())


def start(tree, source_ip, swarm_ips=(), peers=0):
    """A leader and a worker running the zpeer of `tree` (and swarm workers from swarm_ips up
    to `peers`); (cluster, leader, worker, client)."""
    if _which(tree) != os.path.realpath(tree):
        raise SystemExit(f"{tree}: `python -m zpeer` would not import this tree's zpeer")
    c = cluster.Cluster(env={"PYTHONPATH": tree},
                        swarm_script=os.path.join(tree, "bench", "swarm.py"))
    try:
        lead = c.start_leader()
        worker = c.start_worker("w1", source_ip)
        left = peers - 2
        for i, first_ip in enumerate(swarm_ips):
            count = left // (len(swarm_ips) - i)
            c.start_swarm(count, first_ip, f"s{i}")
            left -= count
    except BaseException:
        c.stop()
        raise
    return c, lead, worker, lead.client()


def main(argv=None):
    """Run the rounds and print one line per tree."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("other", help="the A tree (a zpeer checkout)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--what", choices=("exec", "stream", "fanout", "idle"), default="exec",
                   help=f"exec: --cmd, {BATCH} per round (ms, CPU ms per exec); stream: 256 MB "
                        "(MB/s); fanout: `--peer all` running `true` (s, leader CPU s); idle: the "
                        f"leader's CPU %% with --peers connected, {IDLE_WINDOW_S:g} s per round")
    p.add_argument("--peers", type=int, default=1000,
                   help="fanout, idle: peers per tree, leader included")
    p.add_argument("--cmd", default="true",
                   help="exec: the command (default true; `hostname` adds output)")
    args = p.parse_args(argv)
    os.chdir("/")  # `python -m` puts the cwd first on sys.path: it must hold no zpeer
    cluster.d_command = lambda: [sys.executable, "-m", "zpeer"]
    trees = {"A": os.path.abspath(args.other), "B": ROOT}
    nodes, results, cpu = {}, {k: [] for k in trees}, {k: [0.0, 0.0, 0] for k in trees}
    try:
        for name, ip, swarm_ips in (("A", "127.0.0.2", ("127.0.1.1", "127.0.3.1")),
                                    ("B", "127.0.0.4", ("127.0.5.1", "127.0.7.1"))):
            fan = args.what in ("fanout", "idle")
            nodes[name] = start(trees[name], ip, swarm_ips if fan else (), args.peers if fan else 0)
        for _ in range(args.rounds):
            if args.what == "idle":  # both leaders idle at once: one window measures both
                before = {name: cpu_seconds(n[1].pid) for name, n in nodes.items()}
                time.sleep(IDLE_WINDOW_S)  # not a wait for state: the window being measured
                for name, n in nodes.items():
                    used_s = cpu_seconds(n[1].pid) - before[name]
                    results[name].append(used_s / IDLE_WINDOW_S * 100)
                continue
            for name, (_c, lead, worker, client) in nodes.items():
                if args.what == "fanout":
                    before, started = cpu_seconds(lead.pid), time.perf_counter()
                    lead.d("execOnPeer", "--peer", "all", "--shellCmd", "true")
                    results[name].append(time.perf_counter() - started)
                    cpu[name][0] += cpu_seconds(lead.pid) - before
                    cpu[name][2] += 1
                    continue
                if args.what == "stream":
                    results[name].append(256 / timed_api_exec(client, "w1",
                                                              f"head -c {256 * MB} /dev/zero"))
                    continue
                for _ in range(5):
                    api_exec(client, "w1", args.cmd)  # warm-up after the other tree's batch
                before = cpu_seconds(lead.pid), cpu_seconds(worker.pid)
                for _ in range(BATCH):
                    results[name].append(timed_api_exec(client, "w1", args.cmd) * 1000)
                cpu[name][0] += cpu_seconds(lead.pid) - before[0]
                cpu[name][1] += cpu_seconds(worker.pid) - before[1]
                cpu[name][2] += BATCH
    finally:
        for c, _lead, _worker, client in nodes.values():
            client.close()
            c.stop()
    for name, tree in trees.items():
        values = results[name]
        unit = {"exec": "ms", "stream": "MB/s", "fanout": "s", "idle": "% leader CPU"}[args.what]
        line = f"{name} {tree}: median {statistics.median(values):.3f} {unit}"
        if args.what == "fanout":
            line += f", leader CPU s per fan-out {cpu[name][0] / cpu[name][2]:.3f}"
        if args.what == "exec":
            n = cpu[name][2]
            line += (f", p25 {statistics.quantiles(values, n=4)[0]:.3f} ms, CPU ms per exec: "
                     f"leader {cpu[name][0] / n * 1000:.3f}, worker {cpu[name][1] / n * 1000:.3f}")
        print(line)
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f}s)")
    sys.exit(code)
