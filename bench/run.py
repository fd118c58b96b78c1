"""zpeer benchmarks: `python bench/run.py [--quick] [--json FILE]`.

Starts its own daemons on loopback (a leader on 127.0.0.1, two worker daemons from 127.0.0.2
and 127.0.0.3, then swarms of in-process workers from 127.0.1.x ... to reach 100 and 1,000
peers), measures every row with warm-up and repeated runs, and prints medians next to the
baselines of the same run and the issue's targets.
"""
import argparse
import json
import os
import platform
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import baselines, sshtools  # noqa: E402
from bench.cluster import Cluster, d_command, rss_kb  # noqa: E402
from bench.measure import (  # noqa: E402
    MB,
    Row,
    Terminal,
    cli,
    cpu_ms_per_call,
    idle_cpu_percent,
    median,
    repeat,
    run_timed,
    timed_api_exec,
)
from bench.swarm import TIMER_STEP_S as SWARM_TIMER_STEP_S  # noqa: E402

SPAWN_TRUE = ["/bin/bash", "-c", "true"]  # the spawn floor: what every remote `true` costs
PROFILES = {  # runs of the quick rows, stream size, idle window, swarm sizes
    "full": {"runs": 10, "api_runs": 200, "fan_runs": 5, "big_runs": 3, "stream_mb": 1024,
             "stream_runs": 3, "idle_s": 30.0, "swarm": 1000, "ssh": True},
    "quick": {"runs": 3, "api_runs": 30, "fan_runs": 2, "big_runs": 1, "stream_mb": 128,
              "stream_runs": 1, "idle_s": 3.0, "swarm": 1000, "ssh": True},
}
B64_INPUT_BYTES = 10_000_000  # base64 of it with line breaks: the 13.5 MB output of the issue
B64_OUTPUT_BYTES = B64_INPUT_BYTES * 4 // 3 * 77 // 76


def mb(kib):
    """KiB -> MB (10^6 bytes)."""
    return round(kib * 1024 / MB, 1)


def check(value, limit, op="<="):
    """pass/fail of value against a limit (None when either is unknown)."""
    if value is None or limit is None:
        return None
    return value <= limit if op == "<=" else value >= limit


class Bench:
    """One benchmark run: the cluster, the rows and the baselines."""

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.rows, self.base = [], {}
        self.started = time.monotonic()
        self.cluster = Cluster()
        self.tty = Terminal()

    def add(self, row):
        """Record a row and show progress."""
        self.rows.append(row)
        self.log(f"  [{time.monotonic() - self.started:5.1f}s] {row.name}: {fmt(row.value)} "
                 f"{row.unit}")

    # --- baselines -------------------------------------------------------------------------
    def baselines(self):
        """Spawn, interpreter and ssh floors of this machine, now."""
        c = self.cfg
        for name, values in baselines.spawn_rows(c["runs"]):
            self.base[name] = median(values)
            self.add(Row(name, median(values), "s", len(values), note="baseline"))
        ssh = baselines.ssh_rows(c["runs"]) if c["ssh"] else [
            ("ssh_true", None, "skipped (--no-ssh)"), ("ssh_cm_true", None, "skipped (--no-ssh)")]
        for name, values, note in ssh:
            self.base[name] = median(values) if values else None
            self.add(Row(name, self.base[name], "s", len(values or []), note=f"baseline: {note}"))

    # --- three real daemons ------------------------------------------------------------------
    def small_cluster(self):
        """Leader + two worker daemons: latency, streams, RSS."""
        c, cl = self.cfg, self.cluster
        lead = cl.start_leader()
        w1 = cl.start_worker("w1", "127.0.0.2")
        cl.start_worker("w2", "127.0.0.3")
        self.idle_rss = (rss_kb(lead.pid)[0], rss_kb(w1.pid)[0])
        runs = c["runs"]
        help_s = repeat(lambda: cli(lead, ["--help"], self.tty)[0], runs, warmup=2)
        self.add(Row("cli_import_s", median(help_s), "s", runs,
                     note=f"`d --help`; {median(help_s) / self.base['import_floor']:.2f}x import "
                          "floor"))
        # interleaved with the import floor, so both see the same machine (a shared box is noisy)
        floors, t = [], []
        for i in range(runs + 2):
            f = run_timed([sys.executable, "-c", "import zmq, msgpack, click"])[0]
            e = cli(lead, ["execOnPeer", "--peer", "w1", "--shellCmd", "true"], self.tty)[0]
            if i >= 2:
                floors.append(f)
                t.append(e)
        floor, ssh = median(floors), self.base.get("ssh_true")
        ok = check(median(t), 1.3 * floor)
        if ok and ssh is not None:
            ok = check(median(t), 0.35 * ssh)
        ratios = (f"{median(t) / floor:.2f}x import floor ({floor:.4f}s, interleaved)"
                  + (f", {median(t) / ssh:.2f}x ssh" if ssh else ""))
        self.add(Row("cli_exec_true", median(t), "s", runs, "<= 1.3x import floor and <= 0.35x ssh",
                     ok, ratios))
        self.api_exec(lead, w1)
        t = repeat(lambda: cli(lead, ["execOnPeer", "--peer", "all", "--shellCmd", "true"],
                               self.tty)[0],
                   runs, warmup=1)
        self.add(Row("fanout_3", median(t), "s", runs, note="leader + 2 worker daemons"))
        for row in sshtools.per_call_rows(lead, "w1", runs, self.tty):
            self.add(row)
        if c["ssh"]:
            transfers = sshtools.transfer_rows(lead, "w1", c["big_runs"], log=self.log)
        else:
            transfers = [Row(name, None, "MB/s", 0, note="skipped (--no-ssh)")
                         for name in sshtools.TRANSFER_ROWS]
        for row in transfers:
            self.add(row)
        self.stream(lead, w1)
        self.stdin_stream(lead)
        self.stream_13mb(lead)
        self.pty_echo(lead)
        lead_kib, w_kib = self.idle_rss
        self.add(Row("daemon_rss", mb(w_kib), "MB", 1, "worker <= 40 MB", check(mb(w_kib), 40.0),
                     f"idle after start + enrolment: worker {mb(w_kib)} MB, leader {mb(lead_kib)} "
                     "MB",
                     {"leader_mb": mb(lead_kib), "worker_mb": mb(w_kib)}))

    def api_exec(self, lead, w1):
        """api_exec_true, measured in rounds interleaved with the parts of its floor (a shared
        machine's speed drifts within a run: each side of the ratio must see the same drift)."""
        runs = self.cfg["api_runs"]
        rounds = max(1, runs // 10)
        client, echo, chain = lead.client(), baselines.CurveEcho(), baselines.BareChain()
        parts = {"bash": [], "ipc": [], "curve": [], "bare": [], "api": []}
        try:
            repeat(lambda: timed_api_exec(client, "w1"), 0, warmup=10)
            for _ in range(rounds):
                parts["bash"] += repeat(lambda: baselines.posix_spawn_s(SPAWN_TRUE), 10, warmup=0)
                parts["ipc"] += repeat(lambda: _timed(lambda: client.call("ping")), 10, warmup=0)
                parts["curve"] += repeat(echo.rtt, 10, warmup=0)
                parts["bare"] += repeat(chain.exec_s, 10, warmup=0)
                parts["api"] += repeat(lambda: timed_api_exec(client, "w1"), 10, warmup=0)
            cpu = cpu_ms_per_call(lambda: timed_api_exec(client, "w1"), runs, [lead.pid, w1.pid])
        finally:
            client.close()
            echo.close()
            chain.close()
        bash, rtt, hop, bare, t = (median(parts[k])
                                   for k in ("bash", "ipc", "curve", "bare", "api"))
        self.add(Row("ipc_rtt", rtt * 1000, "ms", len(parts["ipc"]),
                     note="baseline: one request to the local daemon and its reply"))
        self.add(Row("curve_rtt", hop * 1000, "ms", len(parts["curve"]),
                     note="baseline: a 100-byte CurveZMQ round trip to another process on "
                          "loopback, no zpeer"))
        self.add(Row("bare_exec_true", bare * 1000, "ms", len(parts["bare"]),
                     note="baseline: the same 3 processes and 4 hops with no zpeer (REQ -> IPC -> "
                          "relay -> CurveZMQ -> posix_spawn `bash -c true`, waitpid -> back)"))
        floor = bash + rtt + hop
        self.add(Row("api_exec_true", t * 1000, "ms", len(parts["api"]), "<= 2 ms", check(t, 0.002),
                     f"bare_exec_true + {(t - bare) * 1000:.2f} ms; sum of parts `bash -c true` "
                     f"(posix_spawn, as a worker) + ipc_rtt + curve_rtt = {bash * 1000:.2f} + "
                     f"{rtt * 1000:.2f} + {hop * 1000:.2f} = {floor * 1000:.2f} ms (all "
                     f"interleaved); CPU ms per exec: leader {cpu[0]}, worker {cpu[1]}, client "
                     f"{cpu[2]} (+ bash) on {os.cpu_count()} cores",
                     {"cpu_ms": {"leader": cpu[0], "worker": cpu[1], "client": cpu[2]},
                      "floor_ms": round(floor * 1000, 3), "bare_ms": round(bare * 1000, 3)}))

    def pty_echo(self, lead):
        """pty_echo_ms: keystroke to echo through `d shell --peer w1` from the leader, and
        through `ssh -tt` to a private sshd on loopback, alternating."""
        from bench import pty_echo

        ssh = baselines.LocalSsh() if self.cfg["ssh"] else None
        try:
            ssh_argv = ssh.base() + ["-tt", ssh.target()] if ssh and ssh.start() else None
            times = pty_echo.measure(d_command() + ["shell", "--peer", "w1"],
                                     dict(lead.env, TERM="xterm"), ssh_argv,
                                     self.cfg["runs"] * 20)
        finally:
            if ssh is not None:
                ssh.close()
        d_ms = median(times["d"]) * 1000
        ssh_ms = median(times["ssh"]) * 1000 if "ssh" in times else None
        why_not = "skipped (--no-ssh)" if ssh is None else f"skipped ({ssh.reason})"
        self.add(Row("ssh_pty_echo_ms", ssh_ms, "ms", len(times.get("ssh", [])),
                     note="baseline: the same through `ssh -tt` to a private sshd on loopback"
                     if ssh_ms is not None else why_not))
        self.add(Row("pty_echo_ms", d_ms, "ms", len(times["d"]), "<= 1.0x ssh",
                     check(d_ms, ssh_ms), "keystroke to echo of a remote `cat` through `d shell "
                     "--peer w1` from the leader (2 daemons, 1 CurveZMQ hop)"
                     + (f"; {d_ms / ssh_ms:.2f}x ssh -tt" if ssh_ms else ""),
                     {"p90_ms": round(sorted(times["d"])[int(len(times["d"]) * 0.9)] * 1000, 3)}))

    def stream(self, lead, w1):
        """stream_mb_s: N MB of stdout from w1 through the leader to a CLI on the leader."""
        size = self.cfg["stream_mb"] * MB
        cmd = f"head -c {size} /dev/zero"
        results = repeat(lambda: cli(lead, ["execOnPeer", "--peer", "w1", "--shellCmd", cmd],
                                     self.tty),
                         self.cfg["stream_runs"], warmup=0)
        secs = median([r[0] for r in results])
        rates = sorted(size / MB / r[0] for r in results)
        peaks = {"leader": mb(rss_kb(lead.pid)[1]), "worker": mb(rss_kb(w1.pid)[1]),
                 "cli": mb(max(r[1] for r in results))}
        ok = check(median(rates), 300.0, ">=")
        if ok is not None:
            ok = ok and max(peaks.values()) < 100.0
        curve = baselines.curve_mb_s(min(size, 512 * MB))
        self.base["curve_mb_s"] = curve
        self.add(Row("curve_mb_s", curve, "MB/s", 1,
                     note="baseline: CurveZMQ DEALER -> ROUTER on loopback, "
                                                           "one process, no zpeer (the link's "
                                                           "ceiling)"))
        self.add(Row("stream_mb_s", median(rates), "MB/s", len(results),
                     ">= 300 MB/s, every process < 100 MB RSS", ok,
                     f"{median(rates) / curve:.2f}x curve_mb_s; {self.cfg['stream_mb']} MB in "
                     f"{secs:.2f}s; peak RSS MB " +
                     ", ".join(f"{k} {v}" for k, v in peaks.items()), {"peak_rss_mb": peaks}))

    def stdin_stream(self, lead):
        """stdin_mb_s: a quarter of the stream size piped into a CLI on the leader, to `wc -c` on
        w1 (#7 sets no target: it shows what `tar c . | d execOnPeer ... 'tar x'` gets)."""
        size = max(1, self.cfg["stream_mb"] // 4) * MB
        d = " ".join(shlex.quote(a) for a in d_command())
        local = repeat(lambda: run_timed(["/bin/bash", "-c",
                                          f"head -c {size} /dev/zero | wc -c"])[0],
                       self.cfg["stream_runs"], warmup=1)
        remote = repeat(lambda: run_timed(["/bin/bash", "-c",
                                           f"head -c {size} /dev/zero | {d} execOnPeer "
                                           "--peer w1 --shellCmd 'wc -c'"], env=lead.env)[0],
                        self.cfg["stream_runs"], warmup=1)
        rate, pipe = size / MB / median(remote), size / MB / median(local)
        self.add(Row("stdin_mb_s", rate, "MB/s", len(remote),
                     note=f"{size // MB} MB piped into `d execOnPeer "
                     f"--peer w1 --shellCmd 'wc -c'`; a local pipe to wc: {pipe:.0f} MB/s"))

    def stream_13mb(self, lead):
        """stream_13mb: base64 of 10 MB of random bytes, remote vs a local pipe of that command."""
        path = os.path.join(self.cluster.base, "random.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(B64_INPUT_BYTES))
        runs = max(3, self.cfg["runs"] // 2)
        local = repeat(lambda: run_timed(["/bin/bash", "-c", f"base64 {path} | cat"])[0], runs,
                       warmup=1)
        self.base["local_pipe_13mb"] = median(local)
        self.add(Row("local_pipe_13mb", median(local), "s", runs,
                     note="baseline: bash -c 'base64 FILE | cat'"))
        remote = repeat(lambda: cli(lead,
                                    ["execOnPeer", "--peer", "w1", "--shellCmd", f"base64 {path}"],
                                    self.tty)[0], runs, warmup=1)
        ratio = median(remote) / median(local)
        # the CLI must start, and the command must run (as long as the whole pipe, at least)
        floor = (self.base["import_floor"] + median(local)) / median(local)
        self.add(Row("stream_13mb", median(remote), "s", runs, "<= 2x local pipe",
                     check(ratio, 2.0),
                     f"{ratio:.2f}x local pipe; the CLI's import floor plus the command's own run "
                     f"is {floor:.2f}x",
                     {"ratio": round(ratio, 3), "floor_ratio": round(floor, 3)}))
        client = lead.client()
        try:
            api = repeat(lambda: timed_api_exec(client, "w1", f"base64 {path}"), runs, warmup=1)
        finally:
            client.close()
        curve_s = B64_OUTPUT_BYTES / MB / self.base["curve_mb_s"]
        self.add(Row("api_stream_13mb", median(api), "s", runs, "<= 2x local pipe",
                     check(median(api) / median(local), 2.0),
                     f"{median(api) / median(local):.2f}x local pipe: the same transfer through a "
                     f"persistent client (no CLI start); CurveZMQ alone needs {curve_s:.4f}s for "
                     "these bytes"))

    # --- swarms ------------------------------------------------------------------------------
    def swarms(self):
        """fanout_100 and fanout_1000 with swarm workers; idle leader CPU with 1,000 peers."""
        c, cl = self.cfg, self.cluster
        lead = cl.leader
        total = c["swarm"]
        fan = lambda: cli(lead, ["execOnPeer", "--peer", "all", "--shellCmd", "true"], self.tty)[0]  # noqa: E731
        phases = [(97, "127.0.1.1", "a"), (total - 100, "127.0.2.1", "b")] if total > 100 else \
            [(total - 3, "127.0.1.1", "a")]
        for count, first_ip, prefix in phases:
            started = time.monotonic()
            cl.start_swarm(count, first_ip, prefix)
            peers = cl.online_count() + 1
            self.log(f"  (swarm of {count} enrolled in {time.monotonic() - started:.1f}s: {peers} "
                     "peers)")
            last = prefix == phases[-1][2]
            if last:
                floor = baselines.spawn_many(peers)
                self.base["bash_spawn"] = floor
                self.add(Row(f"bash_spawn_{peers}", floor, "s", 1,
                             note=f"baseline: one process starts and reaps {peers} `bash -c true`"))
            t = repeat(fan, c["big_runs"] if peers > 100 else c["fan_runs"], warmup=1)
            limit = {100: 0.5, 1000: 3.0}.get(peers)
            note = f"leader + 2 daemons + {peers - 3} swarm workers"
            if last:
                note += f"; {median(t) / self.base['bash_spawn']:.2f}x the spawn floor"
            self.add(Row(f"fanout_{peers}", median(t), "s", len(t),
                         f"<= {limit} s" if limit else None, check(median(t), limit), note))
        self.settle()
        cpu = idle_cpu_percent(lead.pid, c["idle_s"])
        # as stretched for this many peers (--heartbeat-budget)
        beat_s = lead.call("status")["heartbeat_s"]
        rss = mb(rss_kb(lead.pid)[0])
        cl.stop_swarms()  # the floor's own heartbeats must not share the cores with theirs
        # the swarms send the heartbeats due at each timer sweep; hosts of a real fleet, each at its
        # own time
        floor, spread = baselines.heartbeat_floor_percent(
            peers, beat_s, [(c["idle_s"], SWARM_TIMER_STEP_S / len(phases)), (c["idle_s"] / 2, 0)])
        self.add(Row(f"heartbeat_floor_{peers}", floor, "%", 1,
                     note="baseline: CPU of a CurveZMQ ROUTER echo (Python, no zpeer) answering "
                          f"{peers} DEALERs' heartbeats every {beat_s}s, sent in bursts as the "
                          f"swarms send them; {spread:.2f} % when each comes at its own time "
                          "(independent hosts)",
                     extra={"spread_pct": round(spread, 3)}))
        big = peers == 1000
        self.add(Row(f"leader_idle_cpu_{peers}", cpu, "%", 1, "<= 3 %" if big else None,
                     check(cpu, 3.0) if big else None,
                     f"{c['idle_s']:.0f}s window, heartbeat every {beat_s}s, leader RSS {rss} MB"
                     + (f"; {cpu / floor:.2f}x heartbeat_floor_{peers}" if floor else "")))

    def settle(self):
        """Let the leader finish the fan-out's leftovers (audit flushes, alive traffic)."""
        # not a wait for state: a quiet period before measuring
        time.sleep(min(2.0, self.cfg["idle_s"]))

    def close(self):
        """Stop everything this run started."""
        self.cluster.stop()
        self.tty.close()


def _timed(fn):
    """Seconds of one fn() call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fmt(value):
    """A number for the table."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def table(rows):
    """The results as aligned text."""
    lines = [f"{'row':<22} {'median':>10} {'unit':<5} {'runs':>4}  {'target':<42} {'result':<6} "
             "note"]
    for r in rows:
        result = {True: "PASS", False: "FAIL", None: ""}[r.ok]
        lines.append(f"{r.name:<22} {fmt(r.value):>10} {r.unit:<5} {r.runs:>4}  "
                     f"{r.target or '':<42} {result:<6} {r.note}")
    return "\n".join(lines)


def main(argv=None):
    """Run the benchmarks; exit 0 when they ran (targets are reported, not enforced)."""
    p = argparse.ArgumentParser(description="zpeer benchmarks on loopback (see bench/README.md)")
    p.add_argument("--quick", action="store_true",
                   help="fewer runs, 128 MB stream, 3 s idle window (< 60 s)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--runs", type=int, help="runs of the quick rows (overrides the profile)")
    p.add_argument("--stream-mb", type=int, help="size of the stream_mb_s stream")
    p.add_argument("--swarm", type=int, help="total peers for the big fan-out rows (default 1000)")
    p.add_argument("--idle-s", type=float, help="idle CPU window in seconds")
    p.add_argument("--no-ssh", action="store_true", help="skip the ssh baselines")
    args = p.parse_args(argv)
    cfg = dict(PROFILES["quick" if args.quick else "full"])
    for key, value in (("runs", args.runs), ("stream_mb", args.stream_mb), ("swarm", args.swarm),
                       ("idle_s", args.idle_s)):
        if value is not None:
            cfg[key] = value
    if args.runs is not None:
        cfg.update(api_runs=max(5, 10 * args.runs), fan_runs=args.runs, big_runs=args.runs,
                   stream_runs=max(1, args.runs // 3))
    cfg["ssh"] = cfg["ssh"] and not args.no_ssh
    started = time.monotonic()
    bench = Bench(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        bench.baselines()
        bench.small_cluster()
        bench.swarms()
    finally:
        bench.close()
    print(table(bench.rows))
    took = time.monotonic() - started
    print(f"({took:.0f}s on {os.cpu_count()} cores, {platform.python_implementation()} "
          f"{platform.python_version()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [r.as_dict() for r in bench.rows], "config": cfg,
                       "seconds": round(took, 1), "cpus": os.cpu_count(),
                       "python": platform.python_version()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
