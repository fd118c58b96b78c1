"""File copy rows: `python bench/files.py [--mb 256] [--runs 3] [--fan-peers 100] [--fan-mb 100]`.

push_mb_s / pull_mb_s: `d pushFile` / `d pullFile` of one file of --mb MB between the leader's
CLI and a worker daemon (127.0.0.2), each run into an empty directory, against scp and rsync
to a private sshd on loopback and CurveZMQ alone, measured in the same run (alternating);
peak RSS of the leader and the worker. fanout_push: the file of --fan-mb MB pushed to
--fan-peers peers (a swarm: in-process workers that run the file agent for real) against the
time of one push to one of them, times the number of peers.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import baselines  # noqa: E402
from bench.cluster import Cluster, d_command, print_json, rss_kb  # noqa: E402
from bench.measure import MB, median, run_timed  # noqa: E402


def fresh(path):
    """An empty directory at path."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def timed(argv, env=None):
    """Seconds of a command that must succeed."""
    seconds, _ = run_timed(argv, env=env)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fan-peers", type=int, default=100)
    parser.add_argument("--fan-mb", type=int, default=100)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    rows = {}
    cl = Cluster()
    ssh = baselines.LocalSsh()
    try:
        lead = cl.start_leader()
        w1 = cl.start_worker("w1", "127.0.0.2")
        work = cl.base
        src = os.path.join(work, "src.bin")
        with open(src, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(MB))
        d = d_command()
        pulled_src = os.path.join(work, "remote")  # what pulls read (the worker's copy)
        fresh(pulled_src)
        shutil.copy(src, pulled_src)
        have_ssh = ssh.start()
        opts = ssh.base()[1:]  # ssh's options without the program name
        scp_opts = [o if o != "-p" else "-P" for o in opts]
        rsh = " ".join(shlex.quote(a) for a in ssh.base())
        target = ssh.target()
        tools = {
            "push": lambda dst: timed(d + ["pushFile", "--peer", "w1", "--dest", dst, src],
                                      lead.env),
            "pull": lambda dst: timed(d + ["pullFile", "--peer", "w1", "--dest", dst,
                                           os.path.join(pulled_src, "src.bin")], lead.env),
        }
        if have_ssh:
            tools.update({
                "scp_push": lambda dst: timed(["scp", "-q", "-O"] + scp_opts
                                              + [src, f"{target}:{dst}/"]),
                "scp_pull": lambda dst: timed(["scp", "-q", "-O"] + scp_opts
                                              + [f"{target}:{pulled_src}/src.bin", dst + "/"]),
                "rsync_push": lambda dst: timed(["rsync", "-a", "-e", rsh, src,
                                                 f"{target}:{dst}/"]),
                "rsync_pull": lambda dst: timed(["rsync", "-a", "-e", rsh,
                                                 f"{target}:{pulled_src}/src.bin", dst + "/"]),
            })
        times = {name: [] for name in tools}
        for run in range(args.runs + 1):  # the first round warms up
            for name, tool in tools.items():
                seconds = tool(fresh(os.path.join(work, "dst")))
                if run:
                    times[name].append(seconds)
        curve = baselines.curve_mb_s(args.mb * MB)
        peaks = {"leader": rss_kb(lead.pid)[1] * 1024 / MB,
                 "worker": rss_kb(w1.pid)[1] * 1024 / MB}
        for name, values in times.items():
            rows[name + "_mb_s"] = round(args.mb / median(values), 1)
        rows["curve_mb_s"] = round(curve, 1)
        rows["peak_rss_mb"] = {k: round(v, 1) for k, v in peaks.items()}
        for way in ("push", "pull"):
            rate = rows[f"{way}_mb_s"]
            best = max([rows.get(f"scp_{way}_mb_s", 0), rows.get(f"rsync_{way}_mb_s", 0)])
            rows[f"{way}_vs_best_ssh"] = round(rate / best, 2) if best else None
            rows[f"{way}_vs_curve"] = round(rate / curve, 2)
        if args.fan_peers:
            fan_src = os.path.join(work, "fan.bin")
            with open(fan_src, "wb") as f:
                for _ in range(args.fan_mb):
                    f.write(os.urandom(MB))
            cl.start_swarm(args.fan_peers - 1, "127.0.1.1", "f")  # w1 and the swarm
            # from a worker: its bytes go once to the leader, which copies them to each peer
            one = median([timed(d + ["pushFile", "--peer", "lead", "--dest",
                                     fresh(os.path.join(work, "fan1")), fan_src], w1.env)
                          for _ in range(args.runs)])
            started = time.perf_counter()
            out = subprocess.run(d + ["pushFile", "--peer", "all", "--exclude", "w1", "--dest",
                                      fresh(os.path.join(work, "fanall")), fan_src], env=w1.env,
                                 capture_output=True)
            fan_s = time.perf_counter() - started
            rows["fanout_push_s"] = round(fan_s, 2)
            rows["fanout_push_rc"] = out.returncode
            rows["one_push_s"] = round(one, 3)
            rows["fanout_vs_serial"] = round(fan_s / (one * args.fan_peers), 3)
            rows["fanout_peak_rss_mb"] = {"leader": round(rss_kb(lead.pid)[1] * 1024 / MB, 1),
                                          "worker": round(rss_kb(w1.pid)[1] * 1024 / MB, 1)}
            if out.returncode:
                rows["fanout_errors"] = out.stderr.decode(errors="replace")[-500:]
    finally:
        ssh.close()
        cl.stop()
    print_json(rows, args.json)


if __name__ == "__main__":
    main()
