"""Many real zpeer workers in one process, so a 2-core machine can hold 1,000 peers.

Each swarm worker is the daemon's own worker code: a `zpeer.daemon.worker.WorkerLink` (its own CURVE
DEALER socket, peer id, key pair and source address in 127.0.0.0/8) plus a
`zpeer.daemon.target.TargetJobs` that really spawns `/bin/bash -c CMD`. Workers enrol with one join
token each, through the protocol (hello + token), like `d registerWorker --token`.

One event loop serves them all: it reads every ready socket at once (so heartbeats are never
late), handles routed messages from per-worker backlogs within a time budget per turn (a burst
of 1,000 spawns must not stall the heartbeats of the other 999), and sweeps all timers in one
pass. The routing in `SwarmWorker.on_message` mirrors the target side of
`zpeer.daemon.node.Daemon.handle_peer` (exec/credit/stdin/cancel/alive).

As a program: `python bench/swarm.py --first-ip 127.0.1.1 --prefix s` reads one join token per
line on stdin (each names the leader's address and key, as for `d registerWorker --token`),
prints `{"ready": N}` once every worker is registered, and runs until SIGTERM/SIGINT or stdin
closes.
"""
import argparse
import ipaddress
import json
import logging
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from collections import deque

import zmq

from zpeer.daemon.target import TargetJobs
from zpeer.daemon.worker import WorkerLink
from zpeer.version import full_version
from zpeer.wire import keys

log = logging.getLogger("zpeer.bench.swarm")

TIMER_STEP_S = 0.05  # all workers' timers are swept together at most this often
SWEEP_S = 0.1  # monitors and missed socket signals are checked this often
WORK_BUDGET_S = 0.05  # routed work (spawns) per turn: one process must not starve its heartbeats


def source_ips(first, count):
    """`count` consecutive usable loopback addresses from `first` (skipping .0 and .255)."""
    addr = ipaddress.IPv4Address(first)
    out = []
    while len(out) < count:
        if not addr.is_loopback:
            raise ValueError(f"{addr} left 127.0.0.0/8")
        if addr.packed[3] not in (0, 255):
            out.append(str(addr))
        addr += 1
    return out


class SwarmWorker:
    """One worker: the daemon's WorkerLink and TargetJobs, routed like Daemon.handle_peer."""

    def __init__(self, ctx, peer_id, source_ip, token, heartbeat_s, home, version):
        public, secret = zmq.curve_keypair()
        parsed = keys.parse_token(token)  # what `d registerWorker --token` takes from it
        cfg = {"id": peer_id, "leader": parsed["address"], "leader_key": parsed["leader_key"],
               "source_ip": source_ip, "heartbeat_s": heartbeat_s}
        token = parsed["secret"]
        self.id = peer_id
        self.heartbeat_s = heartbeat_s
        self.link = WorkerLink(ctx, cfg, public, secret, version, token=token)
        home = os.path.join(home, peer_id)  # a home of its own, as each daemon has (jobs.journal)
        os.mkdir(home, 0o700)
        self.targets = TargetJobs(peer_id, home)
        self.next_alive = time.monotonic() + heartbeat_s
        self.backlog = deque()  # routed messages read but not handled yet, in arrival order
        self.queued = False  # in Swarm.backlogged
        self.sent = False  # a send may swallow the ZMQ_FD signal of a message that came in

    def send(self, messages):
        """Route messages from TargetJobs to their origin through the leader (Daemon.dispatch)."""
        for header, data in messages:
            self.link.send(header, data)
            self.sent = True

    def on_message(self, from_peer, header, data):
        """A routed message for this worker: the same TargetJobs.handle the daemon uses."""
        if header["t"] != "alive" or header.get("side") == "origin":
            self.send(self.targets.handle(from_peer, header, data))

    def drain(self):
        """Read what the link socket has; routed messages wait in the backlog (see Swarm.turn)."""
        for _ in range(100):
            try:
                got = self.link.receive()  # hb/welcome/rpc replies are handled here, at once
            except zmq.Again:
                return
            if got is not None:
                self.backlog.append(got)

    def work(self, deadline):
        """Handle backlogged messages in order until the deadline."""
        while self.backlog:
            self.on_message(*self.backlog.popleft())
            if time.monotonic() >= deadline:
                break

    def tick(self, now):
        """Heartbeats, job timers and target-side keepalives (Daemon.timers for a worker)."""
        beat = self.link.next_beat
        if self.link.tick(now):  # its leader was lost
            self.targets.fail_others(self.id)
        self.sent = self.sent or beat != self.link.next_beat  # the link sent a heartbeat
        if self.targets.jobs or self.backlog:
            self.send(self.targets.on_timer(now, 3 * self.heartbeat_s + 1.0))
            if now >= self.next_alive:
                self.next_alive = now + self.heartbeat_s
                # execs received but spawned later (see Swarm.turn) are ours already
                self.send(self.targets.keepalives((origin, header["job"]) for origin, header,
                                                  _ in self.backlog
                                                  if header["t"] == "exec"))

    def close(self):
        """Kill its children and close its sockets."""
        self.targets.shutdown()
        self.link.close()


class Swarm:
    """The workers and the one loop that serves them."""

    def __init__(self, tokens, first_ip="127.0.1.1", prefix="s", heartbeat_s=1.0, io_threads=1):
        count = len(tokens)
        self.ctx = zmq.Context(io_threads)
        self.ctx.max_sockets = 4 * count + 64  # a link is a DEALER + its monitor pair
        self.home = tempfile.mkdtemp(prefix="zpeer-swarm-")
        version = full_version()
        # zmq_poll costs microseconds per socket per call: with 1,000 links that is the whole
        # budget. Instead one epoll watches each socket's ZMQ_FD (a "state changed" signal).
        self.epoll = select.epoll()
        self.workers = []
        self.by_fd = {}
        for i, (token, ip) in enumerate(zip(tokens, source_ips(first_ip, count))):
            w = SwarmWorker(self.ctx, f"{prefix}{i:04d}", ip, token, heartbeat_s, self.home,
                            version)
            self.workers.append(w)
            fd = w.link.sock.getsockopt(zmq.FD)
            self.epoll.register(fd, select.EPOLLIN)
            self.by_fd[fd] = w
        self.backlogged = deque()  # workers with routed messages waiting, served round-robin
        self.next_timers = self.next_sweep = 0.0
        self.stop_fd = None
        self.stopping = False

    def registered(self):
        """How many workers the leader accepted and hears."""
        return sum(1 for w in self.workers if w.link.connected())

    def _read(self, w):
        """Drain a worker's socket; queue it for work if routed messages arrived."""
        w.drain()
        self._enqueue(w)

    def _enqueue(self, w):
        """Put a worker with a backlog in the round-robin queue (once)."""
        if w.backlog and not w.queued:
            w.queued = True
            self.backlogged.append(w)

    def _after_send(self, w):
        """ZMQ_FD is edge-like: a send can consume the signal of a message that arrived meanwhile,
        so after sending, ask the socket itself (ZMQ_EVENTS) whether something waits."""
        if w.sent:
            w.sent = False
            if w.link.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._read(w)

    def turn(self):
        """One loop iteration: wait, read every signalled socket, spend the work budget, timers."""
        fds = {}
        for w in self.workers:
            if w.targets.jobs:
                for fd, write in w.targets.poll_items():
                    fds[fd] = (w, select.POLLOUT if write else select.POLLIN)
        waiter = select.poll()  # rebuilt each turn: a closed child fd number may come back reused
        waiter.register(self.epoll.fileno(), select.POLLIN)
        if self.stop_fd is not None:
            waiter.register(self.stop_fd, select.POLLIN)
        for fd, entry in fds.items():
            waiter.register(fd, entry[1])
        if self.backlogged:
            wait_ms = 0
        else:
            wait_ms = int(max(0.0, self.next_timers - time.monotonic()) * 1000) + 1
        by_worker = {}
        for fd, _ in waiter.poll(wait_ms):
            if fd == self.epoll.fileno():
                for sock_fd, _ in self.epoll.poll(0):
                    self._read(self.by_fd[sock_fd])
            elif fd == self.stop_fd:
                self.stopping = self.stopping or not os.read(fd, 4096)
            elif fd in fds:
                by_worker.setdefault(fds[fd][0], set()).add(fd)
        for w, ready_fds in by_worker.items():
            w.send(w.targets.on_ready(ready_fds))
            self._after_send(w)
        deadline = time.monotonic() + WORK_BUDGET_S
        for _ in range(len(self.backlogged)):
            w = self.backlogged.popleft()
            w.queued = False
            w.work(deadline)
            self._after_send(w)
            self._enqueue(w)
            if time.monotonic() >= deadline:
                break
        now = time.monotonic()
        if now >= self.next_timers:
            self.next_timers = now + TIMER_STEP_S
            sweep = now >= self.next_sweep
            if sweep:
                self.next_sweep = now + SWEEP_S
            for w in self.workers:
                w.tick(now)
                if sweep:  # monitors are not in the epoll (they only matter on (re)connect)
                    w.link.on_monitor()
                    w.sent = True  # and a hello it sent is not seen by w.send
                self._after_send(w)

    def run_until(self, predicate, timeout_s):
        """Serve until predicate() is true; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not self.stopping and time.monotonic() < deadline:
            if predicate():
                return True
            self.turn()
        return predicate()

    def serve(self, stop_fd=None):
        """Serve until stopping (a signal) or stop_fd reaches EOF (the parent closed our stdin)."""
        self.stop_fd = stop_fd
        while not self.stopping:
            self.turn()

    def close(self):
        """Stop every worker, then the context."""
        for w in self.workers:
            w.close()
        self.epoll.close()
        self.ctx.term()
        shutil.rmtree(self.home, ignore_errors=True)


def _raise_fd_limit(need):
    """A link costs a TCP socket plus ZeroMQ mailboxes: raise RLIMIT_NOFILE to what we need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (min(need, hard) if hard != resource.RLIM_INFINITY
                                                    else need, hard))


def main(argv=None):
    """Entry point: tokens on stdin, `{"ready": N}` on stdout, serve until told to stop."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--first-ip", default="127.0.1.1", help="first source address (127.0.0.0/8)")
    p.add_argument("--prefix", default="s", help="peer id prefix")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--ready-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens = []
    while True:  # tokens until an empty line; stdin then stays open as our stop signal
        line = sys.stdin.readline()
        if not line.strip():
            break
        tokens.append(line.strip())
    _raise_fd_limit(8 * len(tokens) + 256)
    swarm = Swarm(tokens, args.first_ip, args.prefix, args.heartbeat)

    def stop(_signum, _frame):
        swarm.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        started = time.monotonic()
        ok = swarm.run_until(lambda: swarm.registered() == len(tokens), args.ready_timeout)
        print(json.dumps({"ready": swarm.registered(), "of": len(tokens), "ok": ok,
                          "seconds": round(time.monotonic() - started, 3)}), flush=True)
        swarm.serve(stop_fd=sys.stdin.fileno())
    finally:
        swarm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
