"""Worker role: a CURVE DEALER whose identity is `ID/SECRET`, connected to the pinned leader.

It says hello on every (re)connect (seen through the socket monitor), heartbeats every
interval, redials a leader silent for 2 intervals, and carries RPCs to the leader. libzmq
reconnects by itself with exponential back-off (RECONNECT_IVL/_MAX) while connecting is refused;
a connection that dies before its CURVE handshake (leader down behind a TCP forwarder, wrong
key) would be retried every RECONNECT_IVL forever, so the link backs off itself, with jitter.
No process-global state: many WorkerLinks can live in one process (bench swarm).
"""
import errno
import logging
import os
import random
import socket
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from zpeer import config, trace
from zpeer.daemon import tcp_state
from zpeer.daemon.audit_copies import AuditCopies
from zpeer.daemon.links import Link
from zpeer.daemon.pacing import CHUNK_MAX_BYTES, Pacer
from zpeer.daemon.silence import JOBS_SILENCE_BEATS, REDIAL_SILENCE_BEATS
from zpeer.daemon.stamps import boot_s, spend, transit_s
from zpeer.errors import (
    KeyMismatch,
    NotAuthorized,
    NotConnected,
    RequestTimeout,
    from_reply,
)
from zpeer.wire import ipc, messages, multipart, protocol

log = logging.getLogger(__name__)

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
BACKOFF_MAX_S = 5.0  # our own back-off after connections that die before the handshake
HWM = 20000
# A link silent for REDIAL_SILENCE_BEATS intervals is redialled, and again every REDIAL_RETRY_S
# until a connection is up (a fresh SYN, not the kernel's backed-off retry of the last one)
REDIAL_RETRY_S = 0.5
AUDIT_TYPES = ("exec", "exit", "error")  # what the leader's audit records of a job
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)


class WorkerLink(Link):
    """The worker's connection to its leader and its registration state."""

    role = "worker"
    holds_fleet_data = False

    def __init__(self, ctx, cfg, public, secret, version, token=None):
        super().__init__(cfg["id"])
        self.version = version
        self.cfg = cfg
        self.heartbeat_s = float(cfg["heartbeat_s"])
        self.leader_address = cfg["leader"]
        self.token = token or cfg.get("token")
        host, port = config.split_host_port(cfg["leader"])
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.IDENTITY, protocol.route_identity(self.id))  # ID/SECRET: see protocol
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a link that is not up: no late execs
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        # No ZMTP pings: our heartbeats already cross the link each interval, and tick() redials a
        # link that stays silent (half-open: the leader's host vanished without a FIN); pings on
        # top would wake the leader once more per peer and interval.
        sock.curve_serverkey = cfg["leader_key"].encode()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        self.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        endpoint = config.tcp_endpoint(host, port)
        if cfg.get("source_ip"):
            endpoint = f"tcp://{cfg['source_ip']}:0;{config.join_host_port(host, port)}"
        sock.connect(endpoint)
        self.sock, self.endpoint = sock, endpoint
        self.failures = 0  # connections in a row that died before a completed handshake
        self.retries = 0  # connection attempts that failed (refused, unreachable), ever
        self.reconnect_at = None  # set while the endpoint is down for our back-off
        self.redial_at = 0.0  # a silent link is redialled at most once per silence limit
        self.redialled_at = None  # the last redial, while no connection is up since
        self.state = "connecting"  # registered | pending | rejected | key_mismatch | removed
        self.reason = ""
        self.handshake_ok = False
        self.last_rx = None
        self.gen = None
        self.next_beat = time.monotonic()
        self.rpcs = {}  # rid -> (deadline, callback(result, error))
        # the leader's last stamp and when it came (zpeer.daemon.stamps), on this host's clock
        self.leader_tx = self.leader_tx_at = None
        self.beat_sent_at = None  # when the last heartbeat left (its reply gives the round trip)
        self.clock_offset_s = None  # this host's wall clock less the leader's (shown only)
        self.audit_copies = AuditCopies()  # of the jobs this worker runs on itself
        self.leader_acks_audit = False  # a leader from before acknowledgments takes each copy once
        self.pacer = Pacer()  # our bulk to the leader (zpeer.daemon.pacing)
        self.held_jobs = False

    def close(self, linger_ms=0):
        """Close the socket and its monitor (queued messages get linger_ms to leave)."""
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger_ms)

    # --- state ------------------------------------------------------------------------
    def connected(self, now=None):
        """Registered and heard from the leader within 3 heartbeat intervals."""
        now = now or time.monotonic()
        return (self.state == "registered" and self.last_rx is not None
                and now - self.last_rx <= 3 * self.heartbeat_s)

    def usable(self, now=None):
        """Connected and the link handshaken right now: what new work (and getPeerStatus) needs.
        connected() alone keeps a dropped link alive for its grace, so running jobs survive a
        flap; a send while it is down fails at once (IMMEDIATE), so new work must not be told
        "connected"."""
        return self.handshake_ok and self.connected(now)

    def shown_reason(self, now=None):
        """getPeerStatus's link_reason: the leader's word on this peer, or, for a registered
        link that is not usable now, how long the leader has been silent."""
        now = now or time.monotonic()
        if self.state != "registered" or self.usable(now):
            return self.reason
        if self.last_rx is None:
            return "no answer from the leader yet"
        return f"no answer from the leader for {now - self.last_rx:.0f} s"

    def link_error(self):
        """The error a request gets while the link is not usable."""
        if self.state == "key_mismatch":
            return KeyMismatch(f"Leader key mismatch: the leader at {self.leader_address} does not "
                               "have the key this worker pinned")
        if self.state == "pending":
            return NotAuthorized(f"Not accepted by the leader yet: {self.id} is pending",
                                 hint=f"run `d acceptPeer {self.id}` on the leader, or register "
                                      "with a token from `d joinToken`")
        if self.state == "removed":  # removal revoked our key: no token can bring it back
            return NotAuthorized(f"Refused by the leader: {self.reason}",
                                 hint="removal revokes this node's key: to enrol again, delete "
                                      "curve.key and curve.pub in ZPEER_HOME, restart the daemon "
                                      "and `d registerWorker --token` with a new token")
        if self.state == "rejected":
            return NotAuthorized(f"Refused by the leader: {self.reason}")
        return NotConnected(hint=f"leader {self.leader_address}: "
                                 "check `d getPeerStatus`, `wg show`, `ping` the leader")

    # --- sending ----------------------------------------------------------------------
    def send(self, header, data=None, force=False):
        """Send to the leader; False when the link is down (nothing is queued for later)."""
        if not force and not self.connected():
            return False
        header["tx"] = boot_s()
        try:
            frames = protocol.encode(header, data)
            trace.mark("work.send", header["t"])
            multipart.send(self.sock, frames, zmq.NOBLOCK)
            self.pacer.handing(frames, time.monotonic())
            return True
        except zmq.ZMQError:
            return False

    def hello(self):
        """Introduce ourselves (on every connect and when the leader asks)."""
        self.send(messages.hello(self.id, socket.gethostname(), self.version, os.getpid(),
                                 ipc.user_name(os.geteuid()), self.token), force=True)

    def ask_again(self):
        """A pending or refused worker asks the leader once more (registerWorker, perhaps with a
        new token)."""
        if self.state in ("rejected", "pending"):
            self.state = "connecting"
            self.hello()

    def rpc(self, op, args, callback, timeout_s=5.0):
        """Ask the leader; callback(result, error) exactly once."""
        if not self.connected():
            callback(None, self.link_error())
            return
        header = messages.rpc(op, args)
        rid = header["rid"]
        self.rpcs[rid] = (time.monotonic() + timeout_s, callback)
        if not self.send(header):
            self.rpcs.pop(rid)
            callback(None, self.link_error())

    # --- receiving --------------------------------------------------------------------
    def on_monitor(self):
        """Connection events: hello on every handshake, key mismatch on failed ones."""
        while self.monitor.poll(0):
            message = recv_monitor_message(self.monitor)
            event = message["event"]
            reset = int(message["value"]) == errno.ECONNRESET
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and reset:
                # closed before the leader's greeting came: something that is not a zpeer leader
                # (a TCP forwarder whose upstream is down) answered; a CURVE leader refusing our
                # pinned key closes after our HELLO instead (EPIPE, or a protocol error)
                self.handshake_ok = False
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_ok = True
                self.redialled_at = None
                self.failures = 0
                if self.state == "key_mismatch":
                    self.state = "connecting"
                self.pacer.detach()  # a new connection: its fd comes with its first message
                self.hello()
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                           zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                # the leader answered but could not complete CURVE with our pinned key
                self.handshake_ok = False
                if self.state != "key_mismatch":
                    log.error("leader %s: CURVE handshake failed: Leader key mismatch",
                              self.leader_address)
                self.state = "key_mismatch"
                self.reason = self.link_error().message  # getPeerStatus shows it as link_reason
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.handshake_ok = False
                log.debug("leader %s refused our key at the handshake", self.leader_address)
                if self.state != "removed":  # keep the leader's own words when its bye came first
                    self.state, self.reason = "removed", "this peer's key was revoked on the leader"
            elif event == zmq.EVENT_DISCONNECTED:
                self.pacer.detach(int(message["value"]))
                if not self.handshake_ok:
                    self._back_off()
                self.handshake_ok = False
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self.retries += 1

    def _back_off(self):
        """Take the endpoint down and reconnect later: exponential delay, randomised by half."""
        self.failures += 1
        delay = min(BACKOFF_MAX_S, RECONNECT_IVL_MS / 1000.0 * 2 ** min(self.failures, 16))
        if self.reconnect_at is None:
            try:
                self.sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass
        self.reconnect_at = time.monotonic() + delay * random.uniform(0.5, 1.0)

    def receive(self):
        """Read one message; returns (from_peer, header, data) for routed ones, else None."""
        # the first message on a connection names its fd, which the pacer watches
        meta_at = 0 if self.pacer.fd is None else None
        frames = multipart.recv(self.sock, zmq.NOBLOCK, data_from=2, meta_at=meta_at,
                                max_frames=3)
        if meta_at is not None:
            self._attach(frames[0])
        try:
            header, data = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            log.warning("dropped malformed message from the leader: %s", exc)
            return None
        self.last_rx = time.monotonic()
        now = boot_s()
        if isinstance(header.get("tx"), (int, float)):
            self.leader_tx, self.leader_tx_at = header["tx"], now
        mtype = header["t"]
        trace.mark("work.recv", mtype)
        if mtype == "welcome":
            self._welcome(header)
        elif mtype == "hb":
            self.gen = header.get("gen", self.gen)
            self._adopt_interval(header)
            self._clock(header, now)
        elif mtype == "rehello":
            self.hello()
        elif mtype == "bye":
            self.state, self.reason = "removed", header["reason"]
            log.error("leader says bye: %s", header["reason"])
        elif mtype == "rpc_reply" and header["rid"] in self.audit_copies.in_flight:
            self.audit_copies.acknowledged(header["rid"])
        elif mtype == "rpc_reply":
            pending = self.rpcs.pop(header["rid"], None)
            if pending:
                if header["ok"]:
                    pending[1](header.get("result"), None)
                else:
                    pending[1](None, from_reply(header.get("error") or {}))
        elif mtype in protocol.ROUTED_TYPES and isinstance(header.get("from"), str):
            if data is not None:
                data = data.buffer
            if mtype == "exec":  # its last leg: from the leader to here
                spend(header, transit_s(header.get("echo"), header.get("held"), now))
            return header["from"], header, data
        return None

    def _clock(self, header, now):
        """The wall clocks' difference, from a heartbeat's reply (for people: nothing depends
        on it)."""
        wall = header.get("wall")
        if isinstance(wall, (int, float)) and self.beat_sent_at is not None:
            round_trip_s = now - self.beat_sent_at
            self.clock_offset_s = time.time() - round_trip_s / 2 - wall

    def _welcome(self, header):
        """The leader's answer to hello."""
        status = header["status"]
        previous = self.state
        self.reason = str(header.get("reason", ""))
        self._adopt_interval(header)
        self.gen = header.get("gen")
        self.leader_acks_audit = header.get("acks") is True
        if status == "accepted":
            self.state = "registered"
            self.token = None  # one-time: the key is bound now
        elif status == "pending":
            self.state = "pending"
        else:
            self.state = "rejected"
        if self.state != previous:
            log.info("leader %s: %s (%s)", header.get("leader"), self.state, self.reason)
        if self.state == "registered":  # what waited for the leader goes now
            self._send_audit_copies(time.monotonic())

    def _adopt_interval(self, header):
        """Beat as often as the leader asks (it stretches the interval for big fleets)."""
        beat_s = header.get("hb")
        valid = isinstance(beat_s, (int, float)) and 0.01 <= beat_s <= 3600
        if valid and beat_s != self.heartbeat_s:
            self.next_beat += beat_s - self.heartbeat_s
            self.heartbeat_s = float(beat_s)

    def holds_jobs(self, now):
        """Registered and heard from within JOBS_SILENCE_BEATS intervals: the jobs across the
        link are kept."""
        return (self.state == "registered" and self.last_rx is not None
                and now - self.last_rx <= JOBS_SILENCE_BEATS * self.heartbeat_s)

    def _redial_at(self):
        """When a silent link is redialled: after REDIAL_SILENCE_BEATS intervals, before its
        jobs are lost, so that a peer whose address changed (roaming) or whose connection went
        half-open is back in time to keep them; then every REDIAL_RETRY_S while none is up."""
        if self.reconnect_at is not None or self.last_rx is None:
            return None
        if self.handshake_ok:
            return max(self.last_rx + REDIAL_SILENCE_BEATS * self.heartbeat_s, self.redial_at)
        if self.redialled_at is not None and self.holds_jobs(time.monotonic()):
            return self.redialled_at + REDIAL_RETRY_S
        return None

    def _leader_host_answers(self):
        """True if the leader's kernel has acknowledged all we wrote (our last heartbeat too):
        the path works and its daemon is only slow, which a new connection would not mend."""
        state = tcp_state.read(self.pacer.fd)
        return state is not None and state.unacked == 0 and state.notsent == 0

    def _redial_if_silent(self, now):
        """A link silent for REDIAL_SILENCE_BEATS intervals: connect again (and again). Before
        the silence limit only if the path itself is silent (a roamed address, a dead route):
        a redial's own gap would make a slow leader lose us."""
        redial_at = self._redial_at()
        if redial_at is not None and now >= redial_at:
            limit_at = self.last_rx + JOBS_SILENCE_BEATS * self.heartbeat_s
            if self.handshake_ok and now < limit_at - self.heartbeat_s \
                    and self._leader_host_answers():
                self.redial_at = limit_at - self.heartbeat_s  # the old rule: at 3 intervals
                return
            if self.handshake_ok:
                log.warning("leader %s silent for %.1fs: reconnecting", self.leader_address,
                            now - self.last_rx)
            self.redial_at = now + REDIAL_SILENCE_BEATS * self.heartbeat_s
            self.redialled_at = now
            self.handshake_ok = False
            try:
                self.sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass
            self.sock.connect(self.endpoint)

    def tick(self, now):
        """Heartbeats, re-hello while pending, expired RPCs; returns [None] when the leader was
        just lost (its jobs are)."""
        if self.reconnect_at is not None and now >= self.reconnect_at:
            self.reconnect_at = None
            self.sock.connect(self.endpoint)
        # messages not read yet (this process was stopped, or busy): the link is not silent,
        # we are late, and a redial would drop them unread
        unread = bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        if not unread:
            self._redial_if_silent(now)
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_s
            if self.handshake_ok and self.state == "registered":
                self.beat_sent_at = boot_s()
                self.send(messages.heartbeat(self.clock_offset_s), force=True)
                self._send_audit_copies(now)
            elif self.handshake_ok and self.state in ("pending", "connecting"):
                self.hello()
        for rid, (deadline, callback) in list(self.rpcs.items()):
            if now >= deadline or not self.connected(now):
                del self.rpcs[rid]
                callback(None, RequestTimeout("The leader did not answer in time")
                         if self.connected(now) else self.link_error())
        up = self.holds_jobs(now) or (unread and self.held_jobs)
        lost = self.held_jobs and not up
        if lost:
            log.warning("lost the leader at %s", self.leader_address)
            self.pacer.clear()
        self.held_jobs = up
        return [None] if lost else []

    def next_deadline(self):
        """When tick() next has work."""
        lost_at = self.next_beat
        if self.held_jobs and self.last_rx is not None:  # the leader's loss is said on time
            lost_at = self.last_rx + JOBS_SILENCE_BEATS * self.heartbeat_s + 0.001
        return min(self.next_beat, self.reconnect_at or self.next_beat,
                   self.pacer.next_deadline() or self.next_beat,
                   self._redial_at() or self.next_beat, lost_at)

    # --- what a worker's role does (zpeer.daemon.links) ----------------------------------
    def adopt(self, cfg, changed):
        """A new token is used at once (a new hello); anything else needs a new link."""
        changed = changed - {"heartbeat_budget"}  # only a leader hands out intervals
        if changed:
            return False
        if cfg.get("token") and cfg.get("token") != self.cfg.get("token"):
            self.token = cfg["token"]
            self.hello()
        self.cfg = cfg
        return True

    def send_toward(self, header, data=None):
        """Everything goes through the leader, bulk paced; an exec carries the leader's last
        stamp."""
        if header["t"] == "exec" and self.leader_tx is not None:
            header["echo"], header["held"] = self.leader_tx, boot_s() - self.leader_tx_at
        return self._send_paced(self.pacer.push(header, data), header)

    def _send_paced(self, ready, header=None):
        """Send what the pacer released; False if `header` was among them and could not go."""
        ok = True
        for item, data in ready:
            sent = self.send(item, data)
            if item is header:
                ok = sent
        return ok

    def _attach(self, frame):
        """Pace on the connection this frame came over."""
        try:
            self.pacer.attach(frame.get(zmq.SRCFD))
        except zmq.ZMQError:
            pass

    def release_bulk(self, now):
        """The bulk that has room on the connection now goes."""
        if self.pacer.due(now):
            self._send_paced(self.pacer.release(now))

    def chunk_bytes(self, to):
        """The output chunk for peer `to`: its hop is the leader's, unless it is this node."""
        return CHUNK_MAX_BYTES if to == self.id else self.pacer.chunk_bytes()

    def backlogged(self, to):
        """True while bulk for peer `to` waits on the hop: read no more output for it now."""
        return to != self.id and self.pacer.backlogged()

    def witness(self, header, data=None):
        """The leader keeps the audit: an exec this worker runs on itself never crosses it, so
        the worker tells it (exec, exit, error of such a job), until the leader took it."""
        if header["to"] != self.id or header["t"] not in AUDIT_TYPES:
            return
        if not self.leader_acks_audit:
            self.send(messages.rpc("audit", {"header": dict(header)}))
            return
        self.audit_copies.add(header)
        self._send_audit_copies(time.monotonic())

    def _send_audit_copies(self, now):
        """Send the audit copies that are due (new ones, and again the ones not acknowledged)."""
        if not self.audit_copies.jobs or not self.connected(now):
            return
        for job, part, header in self.audit_copies.due(now):
            rpc = messages.rpc("audit", {"header": header})
            if not self.send(rpc):
                return
            self.audit_copies.sent(rpc["rid"], job, part, now)

    def refusal(self, to):
        """The link's state is why nothing leaves."""
        return self.link_error()

    def ask(self, op, args, done):
        """Fleet queries go to the leader."""
        self.rpc(op, args, done)

    def known_ids(self, done):
        """The leader's peer list."""
        def ids(result, error):
            done(None if error else [r["id"] for r in result["peers"]], error)
        self.rpc("peers", {}, ids)

    def refresh_cache(self, cache):
        """Ask the leader for its peer list when the generation it announces moved."""
        if not self.connected() or not cache.moved(self.gen):
            return

        def done(result, error):
            if error is None:
                cache.write([r["id"] for r in result["peers"]])
            else:
                cache.forget()
        self.rpc("peers", {}, done)

    def status(self):
        """getPeerStatus's worker fields."""
        cfg = self.cfg
        return {"leader": cfg.get("leader"), "leader_key": cfg.get("leader_key"),
                "source_ip": cfg.get("source_ip"), "connected": self.usable(),
                "link": self.state, "link_reason": self.shown_reason(),
                "heartbeat_s": self.heartbeat_s, "clock_offset_s": _rounded(self.clock_offset_s)}

    def as_worker(self):
        """This link: worker-only commands run here."""
        return self


def _rounded(seconds):
    """A clock difference as shown: tenths of a second, or None when not measured yet."""
    return None if seconds is None else round(seconds, 1)
