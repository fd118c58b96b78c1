"""The attack figures of docs/security.md, measured: what hostile clients can make a live leader
hold, and how long and how many the limits let them.

`python bench/attacks.py [--json FILE] [--quick]` starts its own leader and two workers on
loopback (temp ZPEER_HOMEs) and attacks the leader with hand-written pyzmq/msgpack clients (a
DEALER with a fresh CURVE key, or a bare TCP socket), as tests/test_security.py does; it prints
one table row per figure and writes them as JSON. Nothing is asserted: the rows say what
happened on this machine, next to what the page states.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import msgpack  # noqa: E402
import zmq  # noqa: E402
from zmq.utils.monitor import recv_monitor_message  # noqa: E402

from bench.cluster import Cluster, close_monitored, d_command, rss_kb, wait_for  # noqa: E402
from zpeer.daemon import leader  # noqa: E402
from zpeer.daemon.admission import UNVERIFIED_GRACE_S, UNVERIFIED_PER_IP_MAX  # noqa: E402
from zpeer.daemon.enrolment import MAX_PENDING  # noqa: E402
from zpeer.daemon.leader import HANDSHAKE_MS, OPEN_JOBS_PER_PEER_MAX  # noqa: E402
from zpeer.wire import keys, protocol  # noqa: E402
from zpeer.wire.channel import WINDOW_MAX_BYTES  # noqa: E402

MIB = 1 << 20
HEARTBEAT_S = 0.3  # short, as the tests run: a peer that stops beating is soon offline
ZMTP_CURVE_GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0")
                       + b"\0" + b"\0" * 31)


class Raw:
    """A hand-driven DEALER to the leader with its own CURVE key pair."""

    def __init__(self, cluster, name, source_ip, rcvhwm=None):
        self.ctx = zmq.Context()
        self.name = name
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.IDENTITY, protocol.route_identity(name))
        sock.setsockopt(zmq.SNDHWM, 0)
        if rcvhwm is not None:  # a peer that stops reading: its buffers fill, then the leader's
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.RCVBUF, 1 << 16)
        sock.curve_serverkey = cluster.leader_key.encode()
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                               | zmq.EVENT_DISCONNECTED)
        sock.connect(f"tcp://{source_ip}:0;{cluster.address}")
        self.sock = sock

    def send(self, header, data=None):
        """One message: signature, msgpack header, optional data frame."""
        self.sock.send_multipart(protocol.encode(header, data))

    def hello(self, token=None, peer_id=None):
        """Say hello (with a join token's secret: enrolled at once)."""
        header = {"t": "hello", "rid": os.urandom(4).hex(), "id": peer_id or self.name,
                  "hostname": "x", "version": "x", "role": "worker", "pid": 1}
        if token:
            header["token"] = keys.parse_token(token)["secret"]
        self.send(header)

    def barrier(self, timeout=20.0):
        """Wait until the leader has handled all we sent (a wrong-id hello's welcome comes back
        last); returns the other headers it sent us meanwhile."""
        rid = os.urandom(8).hex()
        self.send({"t": "hello", "rid": rid, "id": "not-me", "hostname": "x", "version": "x",
                   "role": "worker", "pid": 1})
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(50):
                header = msgpack.unpackb(self.sock.recv_multipart()[1], raw=False)
                if header.get("rid") == rid and header.get("t") == "welcome":
                    return got
                got.append(header)
        raise RuntimeError(f"{self.name}: the leader did not answer the barrier")

    def close(self):
        """Close the sockets and the context."""
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


def exec_header(to, cmd, job, credit=1 << 20, stdin=False):
    """A schema-valid exec, as a worker sends it."""
    return {"t": "exec", "rid": job[:64], "job": job, "to": to, "cmd": cmd, "dir": None,
            "user": None, "timeout": None, "stdin": stdin, "credit": credit, "ttl": 60.0}


def enrolled(cluster, name, source_ip, rcvhwm=None):
    """A raw peer enrolled with a join token."""
    raw = Raw(cluster, name, source_ip, rcvhwm)
    raw.hello(cluster.token())
    welcome = [h for h in raw.barrier() if h.get("t") == "welcome"]
    if not welcome or welcome[-1]["status"] != "accepted":
        raise RuntimeError(f"{name} not accepted: {welcome}")
    return raw


def leader_mib(cluster):
    """The leader's resident set now, in MiB."""
    return rss_kb(cluster.leader.pid)[0] / 1024


def unauthenticated_frames(cluster, connections=5, announced=60 * MIB, sent=16 * MIB):
    """Raw TCP connections that announce a huge CURVE handshake frame and send part of it."""
    before = leader_mib(cluster)
    socks, cut = [], 0
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", cluster.port), timeout=5)
            socks.append(s)
            try:
                s.sendall(ZMTP_CURVE_GREETING + b"\x06" + announced.to_bytes(8, "big")
                          + b"H" * sent)
            except OSError:
                cut += 1
        grown = leader_mib(cluster) - before
    finally:
        for s in socks:
            s.close()
    return {"name": "unauth_frame_mib", "value": round(grown / connections, 2), "unit": "MiB/conn",
            "stated": "at most one 2 MiB frame per connection",
            "note": f"{connections} connections announcing {announced // MIB} MiB frames, "
                    f"{sent // MIB} MiB sent each: leader +{grown:.1f} MiB, {cut} cut while "
                    "sending"}


def handshake_timer(cluster):
    """How long the leader keeps a TCP connection that sends its greeting and nothing more."""
    s = socket.create_connection(("127.0.0.1", cluster.port), timeout=HANDSHAKE_MS / 1000 + 10)
    start = time.monotonic()
    try:
        s.sendall(ZMTP_CURVE_GREETING)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        held = time.monotonic() - start
    finally:
        s.close()
    return {"name": "handshake_timeout_s", "value": round(held, 2), "unit": "s",
            "stated": f"closed within {HANDSHAKE_MS / 1000:g} s"}


def unproven_connections(cluster, count=40, source_ip="127.0.0.9"):
    """Connections from one address that finish CURVE with fresh keys and never say hello."""
    ctx = zmq.Context()
    idle = []
    first = time.monotonic()
    try:
        for _ in range(count):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.setsockopt(zmq.RECONNECT_IVL, -1)
            sock.curve_serverkey = cluster.leader_key.encode()
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                              | zmq.EVENT_DISCONNECTED)
            idle.append((sock, monitor))
            sock.connect(f"tcp://{source_ip}:0;{cluster.address}")
            if not monitor.poll(5000):
                raise RuntimeError("no CURVE handshake")
            recv_monitor_message(monitor)
        opened = time.monotonic()
        ended, first_end = set(), None
        deadline = opened + UNVERIFIED_GRACE_S + 5
        while len(ended) < count - UNVERIFIED_PER_IP_MAX and time.monotonic() < deadline:
            for n, (_, monitor) in enumerate(idle):
                if n not in ended and monitor.poll(0) and \
                        recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    ended.add(n)
                    first_end = first_end or time.monotonic() - first
            time.sleep(0.05)
        time.sleep(1.0)  # any more that would go
        for n, (_, monitor) in enumerate(idle):
            while monitor.poll(0):
                if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    ended.add(n)
    finally:
        close_monitored(idle)
        ctx.term()
    return {"name": "unproven_per_address", "value": count - len(ended), "unit": "conns",
            "stated": f"at most {UNVERIFIED_PER_IP_MAX} open past {UNVERIFIED_GRACE_S:g} s",
            "note": f"{count} from {source_ip}; the first ended "
                    f"{first_end if first_end is None else round(first_end, 2)} s after the "
                    "first opened"}


def pending_flood(cluster, count=100):
    """Hellos with fresh keys under new ids, no token: how many requests the leader keeps."""
    raws = []
    try:
        for n in range(count):
            raw = Raw(cluster, f"asker{n}", f"127.0.3.{1 + n % 250}")
            raws.append(raw)
            raw.hello()
        for raw in raws:
            raw.barrier()
        out = cluster.leader.d("listPeers", "--pending", "--ids")
        kept = len(out.stdout.split())
    finally:
        for raw in raws:
            raw.close()
    return {"name": "pending_cap", "value": kept, "unit": "requests",
            "stated": f"at most {MAX_PENDING}", "note": f"{count} hellos"}


def frame_limit(cluster):
    """The largest data frame an enrolled peer may send the leader."""
    result, taken = {}, 0
    for label, size in (("2 MiB - 64 KiB", 2 * MIB - 64 * 1024), ("2 MiB + 1", 2 * MIB + 1)):
        raw = enrolled(cluster, f"framer{len(result)}", f"127.0.0.{90 + len(result)}")
        try:
            while raw.monitor.poll(0):  # its handshake
                recv_monitor_message(raw.monitor)
            raw.send({"t": "hb", "rid": "b"}, b"x" * size)
            result[label] = "taken"
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # a closed connection is seen within this
                if raw.monitor.poll(50) and recv_monitor_message(raw.monitor)["event"] \
                        == zmq.EVENT_DISCONNECTED:
                    result[label] = "connection closed"
                    break
            if result[label] == "taken":
                taken = max(taken, size)
        finally:
            raw.close()
        cluster.leader.d("removePeer", f"framer{len(result) - 1}", check=False)
    return {"name": "leader_frame_cap", "value": round(taken / MIB, 2), "unit": "MiB taken",
            "stated": "2 MiB for anything the leader takes",
            "note": ", ".join(f"{k}: {v}" for k, v in result.items())}


def open_jobs(cluster):
    """A peer opens execs on a peer that never answers them: which one is refused."""
    hoarder = enrolled(cluster, "hoarder", "127.0.0.81")
    sink = enrolled(cluster, "sink", "127.0.0.82")
    before = leader_mib(cluster)
    start = time.monotonic()
    refused_at = None
    try:
        def keep_up():
            for raw in (hoarder, sink):
                raw.send({"t": "hb", "rid": "b"})
            while sink.sock.poll(0):
                sink.sock.recv_multipart()

        for n in range(OPEN_JOBS_PER_PEER_MAX + 1):
            hoarder.send(exec_header("sink", "true", f"hoard.{n}"))
            if n % 500 == 0:
                keep_up()
        deadline = time.monotonic() + 30
        while refused_at is None and time.monotonic() < deadline:
            keep_up()
            if hoarder.sock.poll(50):
                header = msgpack.unpackb(hoarder.sock.recv_multipart()[1], raw=False)
                if header.get("t") == "error" and header["err"]["err"] == "too_many_jobs":
                    refused_at = int(header["job"].split(".")[1]) + 1
        took = time.monotonic() - start
        grown = leader_mib(cluster) - before
    finally:
        hoarder.close()
        sink.close()
    for name in ("hoarder", "sink"):
        cluster.leader.d("removePeer", name, check=False)
    return {"name": "open_jobs_cap", "value": refused_at, "unit": "th exec refused",
            "stated": f"at most {OPEN_JOBS_PER_PEER_MAX:,} commands running per peer",
            "note": f"leader +{grown:.0f} MiB for {OPEN_JOBS_PER_PEER_MAX:,} open execs, "
                    f"{took:.1f} s"}


def credit_clamp(cluster, target="w1"):
    """An exec that claims 2**62 bytes of credit and never reads: what comes before it stops."""
    raw = enrolled(cluster, "greedy", "127.0.0.83", rcvhwm=None)
    worker = cluster.nodes[target]
    before_l, before_w = leader_mib(cluster), rss_kb(worker.pid)[0] / 1024
    received = 0
    try:
        raw.send(exec_header(target, "exec cat /dev/zero", "greedy.0", credit=1 << 62))
        last_change = time.monotonic()
        while time.monotonic() - last_change < 2.0:
            raw.send({"t": "hb", "rid": "b"})
            # an origin's alive keeps the job (the target hears its origin), with no credit
            raw.send({"t": "alive", "rid": "a", "to": target, "jobs": ["greedy.0"],
                      "side": "origin"})
            while raw.sock.poll(100):
                frames = raw.sock.recv_multipart()
                if len(frames) == 3:
                    received += len(frames[2])
                    last_change = time.monotonic()
        grown_l = leader_mib(cluster) - before_l
        grown_w = rss_kb(worker.pid)[0] / 1024 - before_w
        raw.send({"t": "cancel", "rid": "c", "job": "greedy.0", "to": target})
        raw.barrier()
    finally:
        raw.close()
    cluster.leader.d("removePeer", "greedy", check=False)
    return {"name": "credit_clamp_mib", "value": round(received / MIB, 2), "unit": "MiB",
            "stated": f"no more than {WINDOW_MAX_BYTES // MIB} MiB of credit, whatever an exec "
                      "claims",
            "note": f"credit 2**62, never given back: leader +{grown_l:.1f} MiB, target "
                    f"+{grown_w:.1f} MiB"}


def queue_flood(cluster, total=1 << 30, chunk=MIB, per_job=4, batch=32):
    """A peer opens jobs on a peer that stops reading and sends stdin for each, while a real
    stream crosses the leader: what the leader holds, and whether the stream arrives exact."""
    flooder = enrolled(cluster, "flooder", "127.0.0.85")
    stalled = enrolled(cluster, "stalled", "127.0.0.86", rcvhwm=1)
    lines = 400_000
    expected = b"".join(b"%d\n" % i for i in range(1, lines + 1)) * 20
    w2 = cluster.nodes["w2"]
    stream = subprocess.Popen(
        d_command() + ["execOnPeer", "--peer", "w1", "--shellCmd",
                       f"for i in $(seq 20); do seq {lines}; sleep 0.05; done"],
        env=w2.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    before = leader_mib(cluster)
    peak = 0.0
    sent = job = 0
    failed = set()
    data = b"f" * chunk
    start = time.monotonic()
    try:
        while sent < total:
            for n in range(batch):
                if n % per_job == 0:
                    job += 1
                    flooder.send(exec_header("stalled", "cat >/dev/null", f"flood.{job}",
                                             stdin=True))
                flooder.send({"t": "stdin", "rid": "s", "job": f"flood.{job}", "to": "stalled",
                              "eof": False}, data)
                sent += chunk
            for raw in (flooder, stalled):
                raw.send({"t": "hb", "rid": "b"})
            failed.update(h["job"] for h in flooder.barrier() if h.get("t") == "error"
                          and h["err"]["err"] == "queue_full")
            peak = max(peak, leader_mib(cluster) - before)
        took = time.monotonic() - start
        out, err = stream.communicate(timeout=120)
        exact = stream.returncode == 0 and out == expected
        if not exact:
            exact_note = (f"NOT exact (rc {stream.returncode}, {len(out)} of {len(expected)} "
                          f"bytes, {err.decode(errors='replace').strip()[:200]!r})")
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
        flooder.close()
        stalled.close()
    for name in ("flooder", "stalled"):
        cluster.leader.d("removePeer", name, check=False)
    cap = getattr(leader, "DEST_QUEUE_MAX_BYTES", None)  # a tree from before it (A/B) has none
    return {"name": "queue_cap_mib", "value": round(peak, 1), "unit": "MiB leader growth",
            "stated": f"at most {cap // MIB} MiB queued for one peer" if cap else "no cap",
            "note": f"{sent // MIB} MiB of stdin in {job} jobs to a peer that reads nothing, "
                    f"{took:.1f} s: {len(failed)} jobs failed (queue_full); a "
                    f"{len(expected) / 1e6:.1f} MB stream w1 -> w2 meanwhile "
                    f"{'exact' if exact else exact_note}"}


ROW_NAMES = {"unauthenticated_frames": "unauth_frame_mib", "handshake_timer": "handshake_timeout_s",
             "unproven_connections": "unproven_per_address", "pending_flood": "pending_cap",
             "frame_limit": "leader_frame_cap", "credit_clamp": "credit_clamp_mib",
             "open_jobs": "open_jobs_cap", "queue_flood": "queue_cap_mib"}


def main(argv=None):
    """Run the attacks, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--quick", action="store_true",
                        help="skip the 20,000-exec and the 1 GiB attacks")
    parser.add_argument("--only", action="append", metavar="ROW",
                        help="run only the attack of this row (again for more)")
    args = parser.parse_args(argv)
    cluster = Cluster(heartbeat_s=HEARTBEAT_S)
    rows = []
    try:
        cluster.start_leader()
        cluster.start_worker("w1", "127.0.0.2")
        cluster.start_worker("w2", "127.0.0.3")
        cluster.leader_key = cluster.leader.call("status")["public_key"]
        wait_for(lambda: cluster.online_count() >= 2, what="the workers online")
        steps = [unauthenticated_frames, handshake_timer, unproven_connections, pending_flood,
                 frame_limit, credit_clamp]
        if not args.quick:
            steps += [open_jobs, queue_flood]
        if args.only:
            steps = [step for step in steps[:6] + [open_jobs, queue_flood]
                     if step.__name__ in args.only or ROW_NAMES.get(step.__name__) in args.only]
        for step in steps:
            row = step(cluster)
            row["leader_alive"] = cluster.leader.proc.poll() is None
            rows.append(row)
            print(f"{row['name']:<22} {row['value']!s:>8} {row['unit']:<18} "
                  f"stated: {row['stated']}; {row.get('note', '')}", flush=True)
    finally:
        cluster.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "when": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                           time.gmtime())}, f, indent=1)
    return 0 if all(r["leader_alive"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
