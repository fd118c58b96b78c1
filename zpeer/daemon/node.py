"""`d daemon`: one event loop serving the CLI socket, the peer link and local child processes.

Timers live in the loop: the poll timeout is the time to the next deadline. Peer messages
are routed by their "to" field: to this node -> handled here; otherwise the leader sends them
to the peer by identity and a worker hands them to its leader.
"""
import logging
import os
import signal
import time
import uuid
from collections import deque

import zmq

from zpeer import config, trace
from zpeer.daemon import leftovers, memory
from zpeer.daemon.api import Api
from zpeer.daemon.leader import LeaderLink
from zpeer.daemon.origin import OriginSessions
from zpeer.daemon.process import prepare_spawning
from zpeer.daemon.registry import open_registry
from zpeer.daemon.target import TargetJobs
from zpeer.daemon.worker import WorkerLink
from zpeer.errors import NotConfigured, NotConnected, ZpeerError
from zpeer.logsetup import RateLimited
from zpeer.peerinfo import PeersCache
from zpeer.version import full_version
from zpeer.wire import keys, multipart, protocol
from zpeer.wire.ipc import bind_cli_socket, reply_frames, socket_access
from zpeer.wire.keys import start_authenticator

log = logging.getLogger(__name__)
_LIMITER = RateLimited()  # for logs about hostile peer input

DRAIN_BUDGET = 500  # messages read from one socket per loop turn (fairness between sockets)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enums cost a call each
AUDIT_TYPES = ("exec", "exit", "error")
STOP_DRAIN_S = 1.0      # on SIGTERM, local CLIs get this long to read "interrupted"
STOP_LINGER_MS = 500    # and queued reports to peers this long to leave
# then the loop serves this much longer: a reply sent just before a ROUTER is closed was lost
# now and then despite its linger (1 in 8 stops under load; the restarter serves on likewise)
STOP_FLUSH_S = 0.1


class Daemon:
    """A node: leader, worker or not yet configured."""

    def __init__(self, home=None, ctx=None):
        self.home = config.ensure_home(home or config.home_dir())
        self.lock_fd = config.lock_home(self.home)
        self.ctx = ctx or zmq.Context()
        self.cfg = config.load(self.home)
        self.version = full_version()
        self.public, self.secret = keys.load_or_create_keypair(self.home)
        self.registry = open_registry(config.path_in_home(config.DB_FILE, self.home),
                                      disposable=self.cfg.get("role") == "worker")
        if self.cfg.get("role") == "leader":
            self.registry.end_interrupted_execs(self.cfg.get("id"))  # before this process audits any
        self.heartbeat_s = float(self.cfg["heartbeat_s"])
        self.link = self.id = None
        leftovers.end_leftovers(self.home)  # commands a SIGKILLed predecessor could not end
        self.targets = TargetJobs(None, self.home)
        self.sessions = OriginSessions(None, self.heartbeat_s)
        self.local = deque()  # (from_peer, header, data) for messages addressed to ourselves
        self.api = Api(self)
        self.peers_cache = PeersCache(config.path_in_home(config.PEERS_CACHE_FILE, self.home))
        self.next_beat = time.monotonic()
        self.stopping, self.wake_r, self.auth = False, None, None
        self._poller = self._poller_key = None  # reused while the polled set stays the same
        self.trimmer = memory.Trimmer()  # the heap back to the OS when idle (memory.tune: run())
        self.ipc = bind_cli_socket(self.ctx, self.home, self.cfg.get("group"))
        self.apply_config(self.cfg)

    # --- setup --------------------------------------------------------------------------
    def apply_config(self, cfg):
        """Start, stop or rebuild the peer link to match the configuration."""
        old = self.cfg
        self.cfg = cfg
        self.registry.keep_history(cfg["history_rows"])
        key = ("role", "id", "bind", "advertise", "leader", "leader_key", "source_ip", "heartbeat_s",
               "heartbeat_budget")
        if old.get("group") != cfg.get("group"):
            socket_access(self.home, config.socket_path(self.home), cfg.get("group"))
        changed = {k for k in key if old.get(k) != cfg.get(k)}
        if self.role != "leader":
            changed.discard("heartbeat_budget")  # only a leader hands out intervals
        if self.link is not None and not changed:
            if cfg.get("token") and cfg.get("token") != old.get("token"):
                self.link.token = cfg["token"]
                self.link.hello()
            return
        if self.role == "leader" and changed <= {"advertise", "heartbeat_s", "heartbeat_budget"}:
            self.heartbeat_s = self.sessions.heartbeat_s = float(cfg["heartbeat_s"])
            self.link.reconfigure(cfg)  # keep the bound socket and every connection
            return
        had_link = self.link is not None
        if had_link:
            self.link.close()
            self.link = None
        try:
            self._build_link(cfg)
        except ZpeerError as exc:
            if not had_link:  # at start, or nothing worked before: nothing to go back to
                raise
            # a live change that cannot work (its --bind is taken): keep serving as before
            log.error("cannot apply the new settings (%s): back to the previous ones", exc.message)
            self.cfg = old
            self._build_link(old)
            raise

    def _build_link(self, cfg):
        """The peer link a configuration asks for (none when it names no role yet)."""
        self.id = cfg.get("id")
        self.heartbeat_s = float(cfg["heartbeat_s"])
        self.targets.node_id = self.sessions.node_id = self.id
        self.sessions.heartbeat_s = self.heartbeat_s
        role = cfg.get("role")
        if role == "leader" and self.id:
            if self.auth is None:
                self.auth = start_authenticator(self.ctx)
            self.link = LeaderLink(self.ctx, self.auth, cfg, self.public, self.secret, self.registry,
                                   self.version)
            log.info("leader %s listening on %s", self.id, cfg["bind"])
        elif role == "worker" and self.id and cfg.get("leader") and cfg.get("leader_key"):
            self.link = WorkerLink(self.ctx, cfg, self.public, self.secret, self.version)
            log.info("worker %s connecting to %s", self.id, cfg["leader"])
        else:
            log.info("no role configured yet: serving the CLI only")
        self.peers_cache.forget()

    @property
    def role(self):
        """'leader', 'worker' or None."""
        if isinstance(self.link, LeaderLink):
            return "leader"
        return "worker" if isinstance(self.link, WorkerLink) else None

    # --- routing ------------------------------------------------------------------------
    def route(self, header, data=None):
        """Send a peer message towards header["to"]; False if it cannot go now."""
        to = header["to"]
        if self.role == "leader":
            self.api.observe(self.id, header)
        if to == self.id:
            self.local.append((self.id, header, data))
            if self.role == "worker" and header["t"] in AUDIT_TYPES:
                self._audit_copy(header)
            return True
        if self.role == "leader":
            header.setdefault("from", self.id)
            return self.link.send(to, header, data)
        if self.role == "worker":
            return self.link.send(header, data)
        return False

    def _audit_copy(self, header):
        """Tell the leader about an exec a worker ran on itself (the leader keeps the audit)."""
        self.link.send({"t": "rpc", "rid": uuid.uuid4().hex[:16], "op": "audit",
                        "args": {"header": dict(header)}})

    def forward(self, from_peer, header, data):
        """Leader: a routed message from a worker, to us or on to its destination."""
        header["from"] = from_peer
        self.api.observe(from_peer, header)
        to = header["to"]
        if to == self.id:
            self.handle_peer(from_peer, header, data)
            return
        # new work only for a connected peer; a running job's messages (credit, stdin, cancel)
        # are still tried while a peer that dropped its link may come back (its route may be up)
        usable = self.link.online(to) if header["t"] == "exec" else self.link.may_return(to)
        if usable and self.link.send(to, header, data):
            return
        if header["t"] == "exec":
            reply = {"t": "error", "job": header["job"], "to": from_peer, "from": to,
                     "rid": header["rid"], "err": self.refusal(to).to_reply()}
            self.api.observe(to, reply)
            self.link.send(from_peer, reply)
        elif header["t"] == "alive" and header.get("side") == "origin" and not self.link.may_return(to):
            # the origin still waits on jobs of a peer we saw go offline: tell it now, rather than
            # let it wait out its own silence limit (an origin on a worker sees no sweep)
            for job in header["jobs"][:1000]:
                if isinstance(job, str):
                    reply = {"t": "error", "job": job, "to": from_peer, "from": to, "rid": job[:64],
                             "err": {"err": "peer_lost", "msg": f"Peer {to} disconnected mid-command"}}
                    self.link.send(from_peer, reply)  # not audited: a worker names these job ids

    def refusal(self, to):
        """Why a message for peer `to` cannot leave this node now."""
        if self.role == "worker":
            return self.link.link_error()
        if self.role is None:
            return NotConfigured("This node has no role yet")
        try:
            self.link.check_target(to)
        except ZpeerError as exc:
            return exc
        return NotConnected(f"Cannot reach peer {to} now (its link is congested or closing)")

    def handle_peer(self, from_peer, header, data):
        """A routed message addressed to this node."""
        mtype = header["t"]
        if mtype in ("started", "out", "exit", "error", "stdin_ack"):
            self.dispatch(self.sessions.on_message(from_peer, header, data))
        elif mtype == "alive" and header.get("side") != "origin":
            self.dispatch(self.sessions.on_alive(from_peer, [j for j in header["jobs"] if isinstance(j, str)]))
        else:
            self.dispatch(("peer", h, d) for h, d in self.targets.handle(from_peer, header, data))

    def dispatch(self, actions):
        """Carry out handler actions."""
        for action in actions:
            if action[0] == "peer":
                header = action[1]
                header.setdefault("rid", header.get("job", "x")[:64])
                if not self.route(header, action[2]) and header["t"] == "exec":
                    self._undeliverable(header)
            else:
                self.reply(*action[1:])

    def _undeliverable(self, header):
        """An exec that cannot leave this node: fail it at once (never run it late)."""
        self.local.append((header["to"], {"t": "error", "job": header["job"], "to": self.id,
                                          "rid": header["rid"], "err": self.refusal(header["to"]).to_reply()},
                           None))

    def reply(self, identity, rid, payload, data_frames=()):
        """Answer a CLI request (output bytes, if any, as raw frames after the map)."""
        try:
            frames = reply_frames(identity, rid, payload, data_frames)
            trace.mark("reply")
            multipart.send(self.ipc, frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the CLI went away

    # --- loop ---------------------------------------------------------------------------
    def run(self):
        """Serve until SIGTERM/SIGINT, or SIGHUP (its terminal closed) unless started under nohup."""
        def stop(signum, _frame):
            self.stopping = True

        prepare_spawning()  # (after it, a SIGHUP that nohup ignored has a do-nothing handler)
        memory.tune()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signum != signal.SIGHUP or signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, stop)
        # a signal writes a byte here, so poll() returns at once instead of at its timeout
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        log.info("zpeer %s daemon serving %s", self.version, config.socket_path(self.home))
        try:
            while not self.stopping:
                self.turn()
            self._wind_down()
        finally:
            self.close(linger_ms=STOP_LINGER_MS)

    def _wind_down(self):
        """SIGTERM: report running jobs as interrupted and let local CLIs read that, briefly."""
        if not self.targets.jobs and not self.sessions.sessions:
            return
        from zpeer.daemon.restarter import interrupt_all

        log.info("stopping: reporting %d running jobs as interrupted", len(self.targets.jobs))
        interrupt_all(self, "stopped")
        deadline = time.monotonic() + STOP_DRAIN_S
        while self.sessions.sessions and time.monotonic() < deadline:
            self.turn(max_wait_s=0.05)
        flushed = time.monotonic() + STOP_FLUSH_S
        while time.monotonic() < flushed:
            self.turn(max_wait_s=STOP_FLUSH_S / 5)

    def turn(self, max_wait_s=1.0):
        """One loop iteration: poll, then handle sockets, fds and timers."""
        link = self.link
        items = self.targets.poll_items()
        poller = self._poller_for(link, items)
        now = time.monotonic()
        deadlines = [self.next_beat, self.targets.next_deadline(), self.sessions.next_deadline(),
                     link.next_deadline() if self.role == "worker" else None, self.registry.audit_due()]
        wait = min(d for d in deadlines if d is not None) - now
        timeout_ms = 0 if self.local else max(0, min(int(max_wait_s * 1000), int(wait * 1000) + 1))
        try:
            ready = dict(poller.poll(timeout_ms))
            if self.targets.jobs:
                trace.mark("woke")
        except zmq.ZMQError as exc:
            if exc.errno == getattr(zmq, "EINTR", 4):
                return
            raise
        if self.ipc in ready:
            self._drain(self.ipc, self.api.on_frames)
        if link is not None and link is self.link:
            if link.monitor in ready:
                link.on_monitor()
            if link.sock in ready:
                self._drain(link.sock, self._on_link_message)
        if self.wake_r in ready:
            os.read(self.wake_r, 512)
        fds = {k for k in ready if isinstance(k, int)}
        if fds:
            self.dispatch(("peer", h, d) for h, d in self.targets.on_ready(fds))
        while self.local:
            self.handle_peer(*self.local.popleft())
        self.dispatch(self.sessions.wake_pending())
        self.timers(time.monotonic())

    def _poller_for(self, link, items):
        """The poller for this turn, rebuilt only when what must be polled changed."""
        # the socket itself, not its id(): a replaced link's id could be reused by the new one
        key = (link.sock if link is not None else None, self.wake_r, tuple(items))
        if self._poller is not None and key == self._poller_key:
            return self._poller
        poller = zmq.Poller()
        poller.register(self.ipc, zmq.POLLIN)
        if self.wake_r is not None:
            poller.register(self.wake_r, zmq.POLLIN)
        for sock in (link.sock, link.monitor) if link is not None else ():
            poller.register(sock, zmq.POLLIN)
        for fd, want_write in items:
            poller.register(fd, zmq.POLLOUT if want_write else zmq.POLLIN)
        self._poller, self._poller_key = poller, key
        return poller

    def _drain(self, sock, handler):
        """Read what a socket poll() found readable, bounded per turn."""
        for i in range(DRAIN_BUDGET):
            # the first read is sure (poll said POLLIN); later ones ask first (zmq.Again costs more)
            if i and not sock.getsockopt(_EVENTS) & _POLLIN:
                return
            try:
                handler(sock)
            except zmq.Again:
                return

    def _on_link_message(self, _sock):
        """One message from the peer link."""
        got = self.link.receive()
        if got is None:
            return
        from_peer, header, data = got
        try:
            if self.role == "leader":
                if header["t"] == "rpc":
                    self.api.leader_rpc(from_peer, header)
                elif header["t"] in protocol.ROUTED_TYPES:
                    self.forward(from_peer, header, data)
            else:
                self.handle_peer(from_peer, header, data)
        except Exception:  # one bad message from a peer must never stop the daemon
            if _LIMITER.allow(("handler", from_peer)):
                log.exception("dropped %s from %s: handling it failed", header.get("t"), from_peer)

    def timers(self, now):
        """Heartbeats, liveness, timeouts, cache refresh."""
        origin_timeout = 3 * self.heartbeat_s + 1.0
        self.dispatch(("peer", h, d) for h, d in self.targets.on_timer(now, origin_timeout))
        self.dispatch(self.sessions.on_timer(now))
        self.api.tick(now)
        self.targets.forget_finished()
        self.registry.flush_audit()
        self.trimmer.tick(now, bool(self.targets.jobs or self.sessions.sessions))
        if self.role == "worker":
            change = self.link.tick(now)
            if change == "lost":
                self.dispatch(self.sessions.peer_lost(None, "Lost the leader: {peer} unreachable {when}",
                                                      exclude=self.id))
                self.targets.fail_others(self.id)
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_s
            self.dispatch(self.sessions.keepalives())
            self.dispatch(("peer", h, d) for h, d in self.targets.keepalives())
            if self.role == "leader":
                for peer in self.link.sweep(now):
                    self.dispatch(self.sessions.peer_lost(peer, "Peer {peer} disconnected mid-command"))
                    self.targets.fail_origin(peer)
                    self.registry.lost_target(peer)
            self.peers_cache.refresh(self.role, self.registry, self.link)

    def close(self, linger_ms=0):
        """Stop children, close sockets (letting queued messages out for linger_ms), flush, unlock."""
        log.info("daemon stopping")
        self.targets.shutdown()
        if self.link is not None:
            self.link.close(linger_ms)
        if self.auth is not None:
            self.auth.stop()
        if not self.ipc.closed:
            self.ipc.close(linger_ms)
        try:
            os.unlink(config.socket_path(self.home))
        except OSError:
            pass
        self.registry.close()
        self.ctx.term()
        os.close(self.lock_fd)

