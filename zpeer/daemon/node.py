"""`d daemon`: one event loop serving the CLI socket, the peer link and local child processes.

The Daemon owns the node's state (config, keys, registry, audit, its link by role, the origin
sessions and target jobs) and is the one place that sends: handlers and cores return actions
(zpeer.daemon.actions) and `dispatch` carries them out. Timers live in the loop: the poll
timeout is the time to the next deadline. A message for this node goes to its cores; any other
goes to the link, which routes it by its "to" field (the leader to the peer, a worker to its
leader).
"""
import logging
import os
import signal
import time
from collections import deque

import zmq

from zpeer import config, trace
from zpeer.daemon import leftovers, memory, silence
from zpeer.daemon.actions import Send
from zpeer.daemon.audit import AuditLog
from zpeer.daemon.inherited import prepare_spawning
from zpeer.daemon.leader import LeaderLink
from zpeer.daemon.links import NullLink
from zpeer.daemon.origin import OriginSessions
from zpeer.daemon.peers_cache import PeersCache
from zpeer.daemon.registry import open_registry
from zpeer.daemon.requests import Requests
from zpeer.daemon.target import TargetJobs
from zpeer.daemon.worker import WorkerLink
from zpeer.daemon.zap import start_authenticator
from zpeer.errors import ZpeerError
from zpeer.logsetup import RateLimited
from zpeer.version import full_version
from zpeer.wire import keys, messages, multipart
from zpeer.wire.ipc import bind_cli_socket, reply_frames, socket_access

log = logging.getLogger(__name__)
_LIMITER = RateLimited()  # for logs about hostile peer input

DRAIN_BUDGET = 500  # messages read from one socket per loop turn (fairness between sockets)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enums cost a call each
STOP_DRAIN_S = 1.0      # on SIGTERM, local CLIs get this long to read "interrupted"
STOP_LINGER_MS = 500    # and queued reports to peers this long to leave
# then the loop serves this much longer: a reply sent just before a ROUTER is closed can be lost
# despite its linger (the restarter serves on likewise)
STOP_FLUSH_S = 0.1
# settings whose change rebuilds the link, unless the link adopts them in place
LINK_SETTINGS = ("role", "id", "bind", "advertise", "leader", "leader_key", "source_ip",
                 "heartbeat_s", "heartbeat_budget")
INTERRUPTED_HINT = "the command was killed; run it again once the daemon is back (`d listPeers`)"


class Daemon:
    """A node: leader, worker or not yet configured."""

    def __init__(self, home=None, ctx=None):
        self.home = config.ensure_home(home or config.home_dir())
        config.check_home_is_ours(self.home)
        self.lock_fd = config.lock_home(self.home)
        self.ctx = ctx or zmq.Context()
        self.cfg = config.load(self.home)
        self.version = full_version()
        self.public, self.secret = keys.load_or_create_keypair(self.home)
        self.registry = open_registry(config.path_in_home(config.DB_FILE, self.home),
                                      disposable=self.cfg.get("role") == "worker")
        self.audit = AuditLog(self.registry)
        if self.cfg.get("role") == "leader":
            self.audit.end_interrupted(self.cfg.get("id"))  # before this process audits any
        self.heartbeat_s = float(self.cfg["heartbeat_s"])
        self.id = None
        self.link = NullLink(None)
        leftovers.end_leftovers(self.home)  # commands a SIGKILLed predecessor could not end
        self.targets = TargetJobs(None, self.home)
        self.sessions = OriginSessions(None, self.heartbeat_s)
        self.local = deque()  # (from_peer, header, data) for messages addressed to ourselves
        self.requests = Requests(self)
        self.peers_cache = PeersCache(config.path_in_home(config.PEERS_CACHE_FILE, self.home))
        self.next_beat = time.monotonic()
        self.stopping, self.wake_r, self.auth = False, None, None
        self._poller = self._poller_key = None  # reused while the polled set stays the same
        self.trimmer = memory.Trimmer()  # the heap back to the OS when idle (memory.tune: run())
        self.ipc = bind_cli_socket(self.ctx, self.home, self.cfg.get("group"))
        self._build_link(self.cfg)
        self.audit.keep_history(self.cfg["history_rows"])
        self.audit.record_sessions(self.cfg["record_sessions"])

    # --- setup --------------------------------------------------------------------------
    def apply_config(self, cfg):
        """Start, stop or rebuild the peer link to match the configuration."""
        old, self.cfg = self.cfg, cfg
        self.audit.keep_history(cfg["history_rows"])
        self.audit.record_sessions(cfg["record_sessions"])
        if old.get("group") != cfg.get("group"):
            socket_access(self.home, config.socket_path(self.home), cfg.get("group"))
        changed = {k for k in LINK_SETTINGS if old.get(k) != cfg.get(k)}
        if self.link.adopt(cfg, changed):
            self._set_heartbeat(float(cfg["heartbeat_s"]))
            return
        self.link.close()
        self.link = NullLink(self.id)
        try:
            self._build_link(cfg)
        except ZpeerError as exc:
            # a live change that cannot work (its --bind is taken): keep serving as before
            log.error("cannot apply the new settings (%s): back to the previous ones", exc.message)
            self.cfg = old
            self._build_link(old)
            raise

    def _build_link(self, cfg):
        """The link a configuration asks for (a NullLink when it names no role yet)."""
        self.id = cfg.get("id")
        self.targets.node_id = self.sessions.node_id = self.id
        self._set_heartbeat(float(cfg["heartbeat_s"]))
        role = cfg.get("role")
        if role == "leader" and self.id:
            if self.auth is None:
                self.auth = start_authenticator(self.ctx)
            self.link = LeaderLink(self.ctx, self.auth, cfg, self.public, self.secret,
                                   self.registry, self.audit, self.version)
            log.info("leader %s listening on %s", self.id, cfg["bind"])
        elif role == "worker" and self.id and cfg.get("leader") and cfg.get("leader_key"):
            self.link = WorkerLink(self.ctx, cfg, self.public, self.secret, self.version)
            log.info("worker %s connecting to %s", self.id, cfg["leader"])
        else:
            self.link = NullLink(self.id)
            log.info("no role configured yet: serving the CLI only")
        self.targets.hops = self.link  # how much output its targets read, per origin's hop
        self.sessions.relay = self.link.role == "worker"
        self.peers_cache.forget()

    def _set_heartbeat(self, heartbeat_s):
        """The node's heartbeat interval: keepalives, the silence limit of its sessions, and
        when its targets send again what an origin lacks (zpeer.daemon.resend)."""
        self.heartbeat_s = self.sessions.heartbeat_s = heartbeat_s
        self.targets.resend_after_s = silence.resend_after_s(heartbeat_s)

    @property
    def role(self):
        """'leader', 'worker' or None."""
        return self.link.role

    # --- sending: the one place ---------------------------------------------------------
    def dispatch(self, actions):
        """Carry out actions: messages to peers (this node included), replies to CLIs."""
        for action in actions:
            if type(action) is Send:
                header = action.header
                if not self.route(header, action.data) and header["t"] == "exec":
                    self._undeliverable(header)
            else:
                self.reply(*action)

    def route(self, header, data=None):
        """Send a peer message towards header["to"]; False if it cannot go now."""
        self.link.witness(header, data)
        if header["to"] == self.id:
            self.local.append((self.id, header, data))
            return True
        return self.link.send_toward(header, data)

    def _undeliverable(self, header):
        """An exec that cannot leave this node: fail it at once (never run it late)."""
        err = self.link.refusal(header["to"]).to_reply()
        self.local.append((header["to"], messages.error(header["job"], self.id, err), None))

    def reply(self, identity, rid, payload, data_frames=()):
        """Answer a CLI request (output bytes, if any, as raw frames after the map)."""
        try:
            frames = reply_frames(identity, rid, payload, data_frames)
            trace.mark("reply")
            multipart.send(self.ipc, frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the CLI went away

    def handle_peer(self, from_peer, header, data):
        """A channel message addressed to this node: to its origin sessions or its target jobs."""
        mtype = header["t"]
        if mtype == "error" and self.targets.runs(from_peer, header["job"]):
            # the job's origin (or the leader for it: its data did not fit) gives up on it
            self.targets.abandon(from_peer, header["job"], header["err"])
        elif mtype in ("started", "out", "exit", "error", "stdin_ack"):
            self.dispatch(self.sessions.on_message(from_peer, header, data))
        elif mtype == "alive" and header.get("side") != "origin":
            self.dispatch(self.sessions.on_alive(from_peer, header["jobs"],
                                                 header.get("stdin_got")))
        else:
            self.dispatch(self.targets.handle(from_peer, header, data))

    def interrupt_all(self, verb):
        """Report every job running here or for a local CLI as interrupted (the daemon `verb`:
        stopped, restarted)."""
        where = self.id or "this node"
        message = f"Interrupted: the daemon on {where} {verb} while the command ran"
        self.dispatch(self.targets.interrupt(message, INTERRUPTED_HINT))
        self.dispatch(self.sessions.interrupt(message, INTERRUPTED_HINT, self.id))

    def lost(self, peer):
        """A peer's link is gone (None: this worker's link to its leader): fail what waited on
        it, here and on this node's targets."""
        if peer is None:
            self.dispatch(self.sessions.peer_lost(None, "Lost the leader: {peer} unreachable "
                                                        "{when}", exclude=self.id))
            self.targets.fail_others(self.id)
        else:
            self.dispatch(self.sessions.peer_lost(peer, "Peer {peer} disconnected mid-command"))
            self.targets.fail_origin(peer)

    # --- loop ---------------------------------------------------------------------------
    def run(self):
        """Serve until SIGTERM/SIGINT, or SIGHUP (its terminal closed) unless started under
        nohup."""
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
        log.info("stopping: reporting %d running jobs as interrupted", len(self.targets.jobs))
        self.interrupt_all("stopped")
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
                     link.next_deadline(), self.audit.due()]
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
            self._drain(self.ipc, self.requests.on_frames)
        if link is self.link and link.sock is not None:
            if link.monitor in ready:
                link.on_monitor()
            if link.sock in ready:
                self._drain(link.sock, self._on_link_message)
        if self.wake_r in ready:
            os.read(self.wake_r, 512)
        fds = {k for k in ready if isinstance(k, int)}
        if fds:
            self.dispatch(self.targets.on_ready(fds))
        while self.local:
            self.handle_peer(*self.local.popleft())
        self.dispatch(self.sessions.wake_pending())
        if link is self.link:
            link.release_bulk(time.monotonic())
        self.timers(time.monotonic())
        if self.sessions.verdicts:  # what this node's CLIs were told, for the audit
            for header in self.sessions.take_verdicts():
                self.link.witness(header)

    def _poller_for(self, link, items):
        """The poller for this turn, rebuilt only when what must be polled changed."""
        # the socket itself, not its id(): a replaced link's id could be reused by the new one
        key = (link.sock, self.wake_r, tuple(items))
        if self._poller is not None and key == self._poller_key:
            return self._poller
        poller = zmq.Poller()
        poller.register(self.ipc, zmq.POLLIN)
        if self.wake_r is not None:
            poller.register(self.wake_r, zmq.POLLIN)
        for sock in (link.sock, link.monitor) if link.sock is not None else ():
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
        """One message from the peer link: the link deals with it, or hands it to this node."""
        try:
            got = self.link.receive()
            if got is not None:
                self.handle_peer(*got)
        except zmq.Again:
            raise
        except Exception:  # one bad message from a peer must never stop the daemon
            if _LIMITER.allow("handler"):
                log.exception("dropped a message from the peer link: handling it failed")

    def timers(self, now):
        """Heartbeats, liveness, timeouts, cache refresh."""
        origin_timeout = 3 * self.heartbeat_s + 1.0
        self.dispatch(self.targets.on_timer(now, origin_timeout))
        self.dispatch(self.sessions.on_timer(now))
        self.requests.tick(now)
        self.targets.forget_finished()
        self.audit.flush()
        self.trimmer.tick(now, bool(self.targets.jobs or self.sessions.sessions))
        for peer in self.link.tick(now):
            self.lost(peer)
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_s
            self.dispatch(self.sessions.keepalives())
            self.dispatch(self.targets.keepalives())
            self.link.refresh_cache(self.peers_cache)

    def close(self, linger_ms=0):
        """Stop children, close sockets (letting queued messages out for linger_ms), flush,
        unlock."""
        log.info("daemon stopping")
        self.targets.shutdown()
        self.link.close(linger_ms)
        if self.auth is not None:
            self.auth.stop()
        if not self.ipc.closed:
            self.ipc.close(linger_ms)
        try:
            os.unlink(config.socket_path(self.home))
        except OSError:
            pass
        self.audit.close()
        self.registry.close()
        self.ctx.term()
        os.close(self.lock_fd)
