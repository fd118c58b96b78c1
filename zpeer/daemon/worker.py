"""Worker role: a CURVE DEALER whose identity is `ID/SECRET`, connected to the pinned leader.

It says hello on every (re)connect (seen through the socket monitor), heartbeats every
interval, notices a silent leader within 3 intervals, and carries RPCs to the leader. libzmq
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
import uuid

import zmq
from zmq.utils.monitor import recv_monitor_message

from zpeer import config, trace
from zpeer.errors import (
    KeyMismatch,
    NotAuthorized,
    NotConnected,
    RequestTimeout,
    from_reply,
)
from zpeer.wire import multipart, protocol

log = logging.getLogger(__name__)

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
BACKOFF_MAX_S = 5.0  # our own back-off after connections that die before the handshake
HWM = 20000
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)


class WorkerLink:
    """The worker's connection to its leader and its registration state."""

    def __init__(self, ctx, cfg, public, secret, version, token=None):
        self.id, self.version = cfg["id"], version
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
        # link that stays silent (half-open: the leader's host vanished without a FIN). At 1,000
        # peers the pings were half of the leader's idle CPU.
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
        self.status = "connecting"  # registered | pending | rejected | key_mismatch | removed
        self.reason = ""
        self.handshake_ok = False
        self.last_rx = None
        self.gen = None
        self.next_beat = time.monotonic()
        self.rpcs = {}  # rid -> (deadline, callback(result, error))
        self.was_connected = False

    def close(self, linger_ms=0):
        """Close the socket and its monitor (queued messages get linger_ms to leave)."""
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger_ms)

    # --- state ------------------------------------------------------------------------
    def connected(self, now=None):
        """Registered and heard from the leader within 3 heartbeat intervals."""
        now = now or time.monotonic()
        return (self.status == "registered" and self.last_rx is not None
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
        if self.status != "registered" or self.usable(now):
            return self.reason
        if self.last_rx is None:
            return "no answer from the leader yet"
        return f"no answer from the leader for {now - self.last_rx:.0f} s"

    def link_error(self):
        """The error a request gets while the link is not usable."""
        if self.status == "key_mismatch":
            return KeyMismatch(f"Leader key mismatch: the leader at {self.leader_address} does not "
                               "have the key this worker pinned")
        if self.status == "pending":
            return NotAuthorized(f"Not accepted by the leader yet: {self.id} is pending",
                                 hint=f"run `d acceptPeer {self.id}` on the leader, or register "
                                      "with a token from `d joinToken`")
        if self.status == "removed":  # removal revoked our key: no token can bring it back
            return NotAuthorized(f"Refused by the leader: {self.reason}",
                                 hint="removal revokes this node's key: to enrol again, delete curve.key "
                                      "and curve.pub in ZPEER_HOME, restart the daemon and "
                                      "`d registerWorker --token` with a new token")
        if self.status == "rejected":
            return NotAuthorized(f"Refused by the leader: {self.reason}")
        return NotConnected(hint=f"leader {self.leader_address}: "
                                 "check `d getPeerStatus`, `wg show`, `ping` the leader")

    # --- sending ----------------------------------------------------------------------
    def send(self, header, data=None, force=False):
        """Send to the leader; False when the link is down (nothing is queued for later)."""
        if not force and not self.connected():
            return False
        try:
            frames = protocol.encode(header, data)
            trace.mark("work.send", header["t"])
            multipart.send(self.sock, frames, zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def hello(self):
        """Introduce ourselves (on every connect and when the leader asks)."""
        header = {"t": "hello", "rid": uuid.uuid4().hex[:16], "id": self.id,
                  "hostname": socket.gethostname(), "version": self.version, "role": "worker",
                  "pid": os.getpid()}
        if self.token:
            header["token"] = self.token
        self.send(header, force=True)

    def rpc(self, op, args, callback, timeout_s=5.0):
        """Ask the leader; callback(result, error) exactly once."""
        if not self.connected():
            callback(None, self.link_error())
            return
        rid = uuid.uuid4().hex[:16]
        self.rpcs[rid] = (time.monotonic() + timeout_s, callback)
        if not self.send({"t": "rpc", "rid": rid, "op": op, "args": args}):
            self.rpcs.pop(rid)
            callback(None, self.link_error())

    # --- receiving --------------------------------------------------------------------
    def on_monitor(self):
        """Connection events: hello on every handshake, key mismatch on failed ones."""
        while self.monitor.poll(0):
            message = recv_monitor_message(self.monitor)
            event = message["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and int(message["value"]) == errno.ECONNRESET:
                # closed before the leader's greeting came: something that is not a zpeer leader
                # (a TCP forwarder whose upstream is down) answered; a CURVE leader refusing our
                # pinned key closes after our HELLO instead (EPIPE, or a protocol error)
                self.handshake_ok = False
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_ok = True
                self.failures = 0
                if self.status == "key_mismatch":
                    self.status = "connecting"
                self.hello()
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                # the leader answered but could not complete CURVE with our pinned key
                self.handshake_ok = False
                if self.status != "key_mismatch":
                    log.error("leader %s: CURVE handshake failed: Leader key mismatch", self.leader_address)
                self.status = "key_mismatch"
                self.reason = self.link_error().message  # getPeerStatus shows it as link_reason
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.handshake_ok = False
                log.debug("leader %s refused our key at the handshake", self.leader_address)
                if self.status != "removed":  # keep the leader's own words when its bye came first
                    self.status, self.reason = "removed", "this peer's key was revoked on the leader"
            elif event == zmq.EVENT_DISCONNECTED:
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
        frames = multipart.recv(self.sock, zmq.NOBLOCK, data_from=2, max_frames=3)
        try:
            header, data = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            log.warning("dropped malformed message from the leader: %s", exc)
            return None
        self.last_rx = time.monotonic()
        mtype = header["t"]
        trace.mark("work.recv", mtype)
        if mtype == "welcome":
            self._welcome(header)
        elif mtype == "hb":
            self.gen = header.get("gen", self.gen)
            self._adopt_interval(header)
        elif mtype == "rehello":
            self.hello()
        elif mtype == "bye":
            self.status, self.reason = "removed", header["reason"]
            log.error("leader says bye: %s", header["reason"])
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
            return header["from"], header, data
        return None

    def _welcome(self, header):
        """The leader's answer to hello."""
        status = header["status"]
        previous = self.status
        self.reason = str(header.get("reason", ""))
        self._adopt_interval(header)
        self.gen = header.get("gen")
        if status == "accepted":
            self.status = "registered"
            self.token = None  # one-time: the key is bound now
        elif status == "pending":
            self.status = "pending"
        else:
            self.status = "rejected"
        if self.status != previous:
            log.info("leader %s: %s (%s)", header.get("leader"), self.status, self.reason)

    def _adopt_interval(self, header):
        """Beat as often as the leader asks (it stretches the interval for big fleets)."""
        beat_s = header.get("hb")
        if isinstance(beat_s, (int, float)) and 0.01 <= beat_s <= 3600 and beat_s != self.heartbeat_s:
            self.next_beat += beat_s - self.heartbeat_s
            self.heartbeat_s = float(beat_s)

    def _redial_if_silent(self, now):
        """A handshaken link silent for 3 intervals may be half-open: drop it and connect again."""
        limit = 3 * self.heartbeat_s
        if (self.handshake_ok and self.reconnect_at is None and self.last_rx is not None
                and now - self.last_rx > limit and now >= self.redial_at):
            log.warning("leader %s silent for %.1fs: reconnecting", self.leader_address, limit)
            self.redial_at = now + limit
            self.handshake_ok = False
            try:
                self.sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass
            self.sock.connect(self.endpoint)

    def tick(self, now):
        """Heartbeats, re-hello while pending, expired RPCs; returns 'lost'/'up' transitions."""
        if self.reconnect_at is not None and now >= self.reconnect_at:
            self.reconnect_at = None
            self.sock.connect(self.endpoint)
        self._redial_if_silent(now)
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_s
            if self.handshake_ok and self.status == "registered":
                self.send({"t": "hb", "rid": uuid.uuid4().hex[:16]}, force=True)
            elif self.handshake_ok and self.status in ("pending", "connecting"):
                self.hello()
        for rid, (deadline, callback) in list(self.rpcs.items()):
            if now >= deadline or not self.connected(now):
                del self.rpcs[rid]
                callback(None, RequestTimeout("The leader did not answer in time")
                         if self.connected(now) else self.link_error())
        up = self.connected(now)
        change = None
        if up != self.was_connected:
            change = "up" if up else "lost"
            if not up:
                log.warning("lost the leader at %s", self.leader_address)
        self.was_connected = up
        return change

    def next_deadline(self):
        """When tick() next has work."""
        return min(self.next_beat, self.reconnect_at or self.next_beat)
