"""zpeer on real links: `python bench/wan.py [--runs N] [--json FILE]` (root, /dev/net/tun).

Each run builds network namespaces with the tests' lab (tests/helpers/netlab.py): a leader in
one, each worker behind its own link (a kernel token bucket for a slow uplink, a userspace relay
for delay), real TCP between them, all removed afterwards. Rows, medians over the runs:

- `wan_stream_1mbit`: `seq 1 120000` (763 KB) from a worker on a 1 Mbit/s uplink to the
  leader's CLI, against the line rate and a plain CurveZMQ stream over the same link;
- `wan_probe_s`: `echo probe` to that worker from another peer, again and again while it
  streams (median and max of every probe);
- `wan_relay_100ms`: 5 MB from a peer behind a 100 ms round trip to another peer through the
  leader, against a plain CurveZMQ stream over the same link.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from helpers import curve_stream, netlab  # noqa: E402
from helpers.wan import WanCluster  # noqa: E402

from bench.measure import Row  # noqa: E402
from bench.run import table  # noqa: E402

SLOW_UPLINK_MBIT = 1
STREAM_LINES = 120000
RELAY_BYTES = 5_000_000
RELAY_ONE_WAY_MS = 50
HEARTBEAT_S = 1.0


def seq_bytes(n):
    """What `seq 1 N` prints."""
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


@contextlib.contextmanager
def lab_cluster(base, **laptop_link):
    """A lab with a leader, a laptop behind the link asked for and a desktop behind a plain
    one: (lab, cluster, laptop, desktop); all of it stopped and removed afterwards."""
    with netlab.Lab() as lab:
        cluster = WanCluster(base, lab, heartbeat_s=HEARTBEAT_S)
        try:
            cluster.leader()
            yield lab, cluster, cluster.worker("laptop", **laptop_link), cluster.worker("desktop")
        finally:
            cluster.stop()


def slow_uplink_run(base):
    """One stream over a 1 Mbit/s uplink with probes alongside; (stream s, curve s, probes)."""
    with lab_cluster(base, uplink_mbit=SLOW_UPLINK_MBIT) as (lab, cluster, laptop, desktop):
        expected = seq_bytes(STREAM_LINES)
        curve_s = curve_stream.baseline_s(lab, laptop.link, len(expected), base)
        started = time.monotonic()
        stream = subprocess.Popen(
            cluster.vps.command + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                   f"seq 1 {STREAM_LINES}"],
            env=cluster.vps.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        probes = []
        reader = _Reader(stream.stdout)
        while stream.poll() is None:
            probe_started = time.monotonic()
            probe = desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo probe")
            if probe.returncode == 0:
                probes.append(time.monotonic() - probe_started)
        took_s = time.monotonic() - started
        got = reader.join()
        if stream.returncode != 0 or got != expected:
            raise RuntimeError(f"the stream failed: rc {stream.returncode}, "
                               f"{len(got)} of {len(expected)} bytes")
        return took_s, curve_s, probes


def relay_run(base):
    """5 MB from a peer 100 ms away through the leader; (zpeer s, curve s)."""
    with lab_cluster(base, delay_ms=RELAY_ONE_WAY_MS) as (lab, _, laptop, desktop):
        payload = os.urandom(RELAY_BYTES)
        path = os.path.join(str(base), "payload.bin")
        with open(path, "wb") as f:
            f.write(payload)
        curve_s = curve_stream.baseline_s(lab, laptop.link, len(payload), base)
        started = time.monotonic()
        got = desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", f"cat {path}",
                        timeout=120)
        took_s = time.monotonic() - started
        if got.returncode != 0 or got.stdout != payload:
            raise RuntimeError(f"the relay failed: rc {got.returncode}")
        return took_s, curve_s


class _Reader:
    """Reads a pipe to its end in a thread (the stream's stdout while probes run)."""

    def __init__(self, pipe):
        self.chunks = []
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe):
        for chunk in iter(lambda: pipe.read(65536), b""):
            self.chunks.append(chunk)
        pipe.close()

    def join(self):
        """Everything the pipe carried."""
        self.thread.join(60)
        return b"".join(self.chunks)


def rows(runs, log):
    """Measure `runs` times each; the rows."""
    streams, curves, probes, relays, relay_curves = [], [], [], [], []
    for number in range(runs):
        with tempfile.TemporaryDirectory(prefix="zpeer-wan-") as base:
            took_s, curve_s, probe_s = slow_uplink_run(base)
            streams.append(took_s)
            curves.append(curve_s)
            probes.extend(probe_s)
            log(f"run {number + 1}: 1 Mbit/s stream {took_s:.2f} s (CurveZMQ {curve_s:.2f} s), "
                f"{len(probe_s)} probes, median {statistics.median(probe_s):.3f} s")
        with tempfile.TemporaryDirectory(prefix="zpeer-wan-") as base:
            took_s, curve_s = relay_run(base)
            relays.append(took_s)
            relay_curves.append(curve_s)
            log(f"run {number + 1}: 5 MB via the leader {took_s:.2f} s (CurveZMQ {curve_s:.2f} s)")
    line_s = len(seq_bytes(STREAM_LINES)) * 8 / (SLOW_UPLINK_MBIT * 1e6)
    stream_s, curve_s = statistics.median(streams), statistics.median(curves)
    relay_s, relay_curve_s = statistics.median(relays), statistics.median(relay_curves)
    probe_median_s = statistics.median(probes)
    return [
        Row("wan_stream_1mbit", stream_s, "s", runs, note=f"line rate {line_s:.2f} s, CurveZMQ "
            f"{curve_s:.2f} s ({stream_s / curve_s:.2f}x, incl. the CLI's start)",
            extra={"curve_s": curve_s, "line_rate_s": line_s}),
        Row("wan_probe_s", probe_median_s, "s", len(probes), target="<= 1 s",
            ok=probe_median_s <= 1.0, note=f"max {max(probes):.2f} s",
            extra={"max_s": max(probes)}),
        Row("wan_relay_100ms", relay_s, "s", runs, target="<= 2x CurveZMQ",
            ok=relay_s <= 2 * relay_curve_s,
            note=f"CurveZMQ {relay_curve_s:.2f} s: {relay_s / relay_curve_s:.2f}x, "
                 "incl. the CLI's start and the exec's round trip",
            extra={"curve_s": relay_curve_s}),
    ]


def main(argv=None):
    """Run the WAN rows; exit 0 when they ran (targets are reported, not enforced)."""
    p = argparse.ArgumentParser(description="zpeer on real links (see bench/README.md)")
    p.add_argument("--runs", type=int, default=3, help="runs of each row (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    why_not = netlab.unavailable()
    if why_not:
        print(f"bench/wan.py: {why_not}", file=sys.stderr)
        return 2
    started = time.monotonic()
    measured = rows(args.runs, lambda line: print(line, file=sys.stderr, flush=True))
    print(table(measured))
    took = time.monotonic() - started
    print(f"({took:.0f}s on {os.cpu_count()} cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [r.as_dict() for r in measured], "runs": args.runs,
                       "seconds": round(took, 1), "cpus": os.cpu_count(),
                       "python": platform.python_version()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
