"""Where the time goes: `python bench/profile.py [api|cli|stream|idle] [--top N]`.

Runs the leader and one worker daemon under cProfile (`python -m cProfile -m zpeer daemon`),
drives one hot path, stops the daemons with SIGTERM (cProfile then writes its stats) and prints
the top functions of each process by internal time. `cli` and `stream` profile the CLI too;
`stdin` pipes --stream-mb MB into `cat >/dev/null` on the worker, `push` pushes a file of as
many MB to it with `d pushFile` (the CLI profiled too);
`idle` profiles the leader holding --peers swarm workers for --idle-s seconds.
"""
import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import cluster  # noqa: E402
from bench.measure import MB, Terminal, timed_api_exec  # noqa: E402


class ProfiledNode(cluster.Node):
    """A node whose daemon runs under cProfile."""

    def start(self, log_level="WARNING"):
        """Start `python -m cProfile -o HOME.prof -m zpeer daemon`."""
        self.prof = self.home + ".prof"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", self.prof, "-m",
                                          "zpeer", "daemon", "--log-level", log_level],
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        cluster.wait_for(self._answers, what=f"daemon {self.name} to serve")
        return self


def show(title, path, top):
    """Print a profile's top functions by internal time."""
    print(f"\n===== {title} =====")
    stats = pstats.Stats(path)
    stats.sort_stats(os.environ.get("SORT", "tottime")).print_stats(top)


def main(argv=None):
    """Profile one path and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", choices=("api", "cli", "stream", "stdin", "push", "idle"))
    p.add_argument("--runs", type=int, default=300, help="execs for api/cli")
    p.add_argument("--stream-mb", type=int, default=512)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--peers", type=int, default=1000, help="idle: connected peers")
    p.add_argument("--idle-s", type=float, default=20.0, help="idle: seconds to profile")
    args = p.parse_args(argv)
    cluster.Node = ProfiledNode  # Cluster builds its nodes through this name
    base = tempfile.mkdtemp(prefix="zpeer-profile-")
    c = cluster.Cluster(base=base)
    tty = Terminal()
    cli_prof = os.path.join(c.base, "cli.prof")
    try:
        lead = c.start_leader()
        w1 = c.start_worker("w1", "127.0.0.2")
        started = time.perf_counter()
        if args.path == "idle":
            for count, first_ip, prefix in ((args.peers - 1) // 2, "127.0.1.1", "a"), \
                    ((args.peers - 1) - (args.peers - 1) // 2, "127.0.3.1", "b"):
                c.start_swarm(count, first_ip, prefix)
            time.sleep(args.idle_s)  # not a wait for state: the idle window being profiled
        elif args.path == "api":
            client = lead.client()
            for _ in range(args.runs):
                timed_api_exec(client, "w1")
            client.close()
        elif args.path == "stdin":
            feed = subprocess.Popen(["head", "-c", str(args.stream_mb * MB), "/dev/zero"],
                                    stdout=subprocess.PIPE)
            subprocess.run([sys.executable, "-m", "cProfile", "-o", cli_prof, "-m", "zpeer",
                            "execOnPeer", "--peer", "w1", "--shellCmd", "cat >/dev/null"],
                           env=lead.env, stdin=feed.stdout, stdout=subprocess.DEVNULL, check=True)
            feed.stdout.close()
            feed.wait()
        elif args.path == "push":
            src, dst = os.path.join(c.base, "push.bin"), os.path.join(c.base, "pushed")
            with open(src, "wb") as f:
                for _ in range(args.stream_mb):
                    f.write(os.urandom(MB))
            os.makedirs(dst)
            subprocess.run([sys.executable, "-m", "cProfile", "-o", cli_prof, "-m", "zpeer",
                            "pushFile", "--peer", "w1", "--dest", dst, src],
                           env=lead.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           check=True)
        else:
            cmd = "true" if args.path == "cli" else f"head -c {args.stream_mb * MB} /dev/zero"
            runs = args.runs if args.path == "cli" else 1
            for i in range(runs):
                prof = ["-m", "cProfile", "-o", cli_prof] if i == runs - 1 else []
                subprocess.run([sys.executable, *prof, "-m", "zpeer", "execOnPeer", "--peer", "w1",
                                "--shellCmd", cmd],
                               env=lead.env, stdin=tty.slave, stdout=subprocess.DEVNULL, check=True)
        print(f"{args.path}: {time.perf_counter() - started:.2f}s under the profiler")
        c.stop()  # SIGTERM: the profiled daemons write their stats as they exit
        show("leader daemon", lead.prof, args.top)
        show("worker daemon w1", w1.prof, args.top)
        if args.path in ("cli", "stream", "stdin", "push"):
            show("CLI (last run)", cli_prof, args.top)
    finally:
        c.stop()
        tty.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
