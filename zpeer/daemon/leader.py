"""Leader role: the CURVE-secured ROUTER, enrolment, liveness and routing by peer id.

Incoming frames are [identity, SIGNATURE, header, (data)]. Each message is checked against the
CURVE key that ZAP authenticated for its connection (the frame's User-Id) and against the
routing identity (`ID/SECRET`, see protocol) that the peer's accepted hello bound: a connection
only acts as the peer id bound to its key, pending or unknown keys can only say hello, and the
leader sends a peer's messages only to the identity its verified hello came from.
"""
import logging
import socket
import sqlite3
import time

import peewee
import zmq
from zmq.utils.monitor import recv_monitor_message

from zpeer import config, trace
from zpeer.errors import (
    BadRequest,
    BindFailed,
    NotAuthorized,
    PeerNotFound,
    PeerOffline,
    ZpeerError,
)
from zpeer.logsetup import RateLimited
from zpeer.peerinfo import describe_last_seen, peer_record
from zpeer.wire import keys, multipart, protocol

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 5.0
BIND_RETRY_S = 2.0
LEADER_ZMTP_PING_S = 10.0
MAX_PENDING = 64  # pending join requests kept: a flood of hellos cannot fill the registry
SNDHWM = 20000
RCVHWM = 20000
# the registry cannot be written (locked by another process, read-only, disk full)
DB_ERRORS = (peewee.PeeweeException, sqlite3.Error)


class LeaderLink:
    """The leader's ROUTER socket and everything it knows about connected peers."""

    def __init__(self, ctx, auth, cfg, public, secret, registry, version):
        self.cfg, self.registry, self.version = cfg, registry, version
        self.id = cfg["id"]
        self.public = public.decode() if isinstance(public, bytes) else public
        self.heartbeat_s = float(cfg["heartbeat_s"])
        self.policy = keys.KeyPolicy()
        self.policy.revoked = {row.key for row in registry.peers("removed") if row.key}
        auth.configure_curve_callback("*", self.policy)
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        # Liveness is the application heartbeat (workers ping, we answer). ZMTP pings from our
        # side only reap pipes of hosts that vanished without a FIN, so they can be rare: at
        # 1,000 peers they were half of the leader's idle CPU. (Workers keep theirs at the
        # heartbeat interval: it is what makes them reconnect through a half-open link.)
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(max(LEADER_ZMTP_PING_S, 10 * self.heartbeat_s) * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(max(LEADER_ZMTP_PING_S, 10 * self.heartbeat_s) * 3000))
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = public, secret
        try:
            _bind(sock, cfg["bind"])
        except BindFailed:
            sock.close(0)
            raise
        self.sock = sock
        # a closed connection is seen at once (FIN/RST: a killed daemon, a stopped host's kernel)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.fds = {}  # socket fd -> (peer id, route) of the connection a verified hello came over
        self.live = {}  # peer id -> {"key", "ip", "rx", "route", "fd", "gone"} for verified peers
        self.rekey = {}  # peer id -> {"key", "ip", "since"}: a known id asking to bind a new key
        self.waiting = {}  # peer id -> route of its last pending hello: acceptPeer calls it back
        self.limiter = RateLimited()
        self.next_flush = time.monotonic() + FLUSH_INTERVAL_S
        self.beat_s = self.heartbeat_s  # the interval workers are told (stretched for big fleets)
        self.slow_s, self.slow_until = 0.0, 0.0  # a longer interval some workers may still use
        self.reconfigure(cfg)

    def reconfigure(self, cfg):
        """Apply settings that need no re-bind (advertised address, heartbeat)."""
        self.cfg = cfg
        self.heartbeat_s = float(cfg["heartbeat_s"])
        self._retune(time.monotonic())
        host, port = config.split_host_port(cfg["bind"])
        self.address = config.join_host_port(cfg.get("advertise") or host, port)
        own_ip = cfg.get("advertise") or (host if host not in ("0.0.0.0", "::", "*") else None)
        try:
            self.registry.upsert(self.id, ip=own_ip or _primary_ip(), hostname=socket.gethostname(),
                                 role="leader", version=self.version, key=self.public, status="accepted")
        except DB_ERRORS as exc:  # serve anyway: our own row is refreshed on the next start
            self._db_trouble(exc)

    def close(self, linger_ms=0):
        """Close the socket (the daemon owns the authenticator, which outlives a re-bind)."""
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger_ms)

    # --- sending -----------------------------------------------------------------------
    def send(self, peer_id, header, data=None):
        """Send to a connected peer by identity; False if it cannot take it now."""
        entry = self.live.get(peer_id)
        if entry is None:
            return False
        try:
            frames = protocol.envelope(entry["route"], protocol.encode(header, data))
            trace.mark("lead.send", header["t"])  # before: the receiver may run before send() returns
            multipart.send(self.sock, frames, zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (HWM): the peer is not keeping up
            if self.limiter.allow(("send", peer_id)):
                log.warning("cannot send %s to %s: %s", header.get("t"), peer_id, exc)
            return False

    def _send_raw(self, identity, header):
        """Answer a connection that is not (yet) a verified peer (hello replies)."""
        try:
            multipart.send(self.sock, protocol.envelope(identity, protocol.encode(header)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # --- receiving ---------------------------------------------------------------------
    def receive(self):
        """Read one message; returns (peer_id, header, data) for the daemon, or None."""
        # [identity, signature (a zmq.Frame: its User-Id is the sender's key), header, data]
        frames = multipart.recv(self.sock, zmq.NOBLOCK, data_from=3, meta_at=1, max_frames=4)
        identity = frames[0]
        peer_id = protocol.peer_of_route(identity)  # claimed; the key and route decide below
        try:
            header, data = protocol.decode(frames[1:])
            key = frames[1].get("User-Id")
        except (protocol.ProtocolError, zmq.ZMQError, UnicodeDecodeError) as exc:
            if self.limiter.allow(("bad", peer_id)):
                log.warning("dropped malformed message from %r: %s", peer_id, exc)
            return None
        if header["t"] == "hello":
            ip = frames[1].get("Peer-Address")  # only a hello can come over a new connection
            fd = frames[1].get(zmq.SRCFD)
            try:
                self._hello(identity, peer_id, key, ip, header, fd)
            except DB_ERRORS as exc:  # no welcome: the worker says hello again next heartbeat
                self._db_trouble(exc)
            return None
        entry = self.live.get(peer_id)
        if entry is None or entry["key"] != key or entry["route"] != identity:
            self._unverified(identity, peer_id, key, header)
            return None
        entry["rx"] = time.monotonic()
        trace.mark("lead.recv", header["t"])
        self.registry.touch(peer_id, entry["ip"])
        if header["t"] == "hb":
            self.send(peer_id, {"t": "hb", "rid": header["rid"], "gen": self.registry.generation,
                                "hb": self.beat_s})
            return None
        if data is not None:
            data = data.buffer  # zero-copy memoryview of the output bytes
        return peer_id, header, data

    def _unverified(self, identity, peer_id, key, header):
        """A message from a connection not bound to this id: only tell it to say hello."""
        row = self.registry.get(peer_id)
        if row is not None and row.status == "accepted" and row.key == key:
            self._send_raw(identity, {"t": "rehello", "rid": header["rid"]})  # e.g. after our restart
            return
        if self.limiter.allow(("unverified", peer_id)):
            log.warning("ignored %s from unenrolled connection %r (key %s)", header["t"], peer_id, key)

    def _hello(self, identity, peer_id, key, ip, header, fd=None):
        """Enrolment and (re)registration: bind id <-> key, answer with welcome."""
        rid = header["rid"]
        if (not config.valid_peer_id(peer_id, new=False) or header["id"] != peer_id or peer_id == self.id
                or not (config.valid_peer_id(peer_id) or self.registry.get(peer_id))):
            self._send_raw(identity, {"t": "welcome", "rid": rid, "status": "rejected",
                                      "leader": self.id, "gen": 0,
                                      "reason": f"invalid or reserved peer id {peer_id[:64]!r}"})
            return
        if len(identity) != len(peer_id.encode()) + 1 + protocol.ROUTE_SECRET_HEX:
            # a bare or short identity is guessable: another key could take its route over
            self._send_raw(identity, {"t": "welcome", "rid": rid, "status": "rejected",
                                      "leader": self.id, "gen": 0,
                                      "reason": "routing identity is not ID/SECRET (zpeer too old?)"})
            return
        row = self.registry.get(peer_id)
        token = header.get("token")
        status, reason = "pending", "waiting for `d acceptPeer` on the leader"
        if row is not None and row.key == key and row.status == "accepted":
            status, reason = "accepted", "known key"
        elif isinstance(token, str) and token:
            refusal = self.registry.consume_token(keys.hash_secret(token), peer_id)
            if refusal is None:
                status, reason = "accepted", "enrolled with a join token"
            else:
                status, reason = "rejected", f"join token refused: {refusal}"
        elif row is not None and row.status == "accepted":
            # an existing id with a new key (reinstalled host): only a token or acceptance re-binds it
            self.rekey[peer_id] = {"key": key, "ip": ip, "since": time.time()}
            status, reason = "pending", (f"peer id {peer_id} is bound to another key: waiting for "
                                         f"`d acceptPeer {peer_id}` on the leader (or use a join token)")
        elif row is None and len(self.registry.peers("pending")) >= MAX_PENDING:
            status, reason = "rejected", "too many pending join requests: use a join token"
        fields = {"hostname": str(header.get("hostname"))[:255], "version": str(header.get("version"))[:64],
                  "role": "worker"}
        if status == "accepted":
            self.rekey.pop(peer_id, None)
            self.waiting.pop(peer_id, None)
            if row is None or row.key != key:
                self.policy.revoked.discard(key)
            try:
                wanted = dict(fields, ip=ip, key=key, status="accepted")
                if row is None or any(getattr(row, k) != v for k, v in wanted.items()):
                    self.registry.upsert(peer_id, **wanted)  # a reconnect that changed nothing writes nothing
            except DB_ERRORS as exc:
                if reason != "known key":
                    raise  # a new binding that is not stored is not granted
                self._db_trouble(exc)  # its row already says accepted; the ip is flushed later
            # the disconnects queued so far belong to older connections (an fd is closed after its
            # event is queued, so it cannot be reused before): read them before fd names this one
            self.on_monitor()
            self.live[peer_id] = {"key": key, "ip": ip, "rx": time.monotonic(), "route": identity, "fd": fd,
                                  "gone": False}
            if fd is not None:
                self.fds[fd] = (peer_id, identity)
            log.info("peer %s online from %s (%s)", peer_id, ip, reason)
            return self._welcome(identity, rid, status, reason)
        if self.live.get(peer_id, {}).get("route") == identity:
            # this connection now holds the id's route (handover) but not its key: stop using it.
            # Only then: a hello on another route (routes are ID/SECRET) must not knock a peer off.
            self.live.pop(peer_id)
            log.warning("peer %s: route taken by a connection with another key; suspended", peer_id)
        if peer_id in self.rekey:
            log.info("peer %s from %s asks to bind a new key %s: pending", peer_id, ip, key)
        elif status == "pending" and (row is None or row.status in ("pending", "removed")):
            if row is None or row.key != key or row.status != "pending":
                log.info("peer %s from %s asks to join: pending (key %s)", peer_id, ip, key)
            self.registry.upsert(peer_id, ip=ip, key=key, status="pending", **fields)
        elif status == "rejected":
            log.warning("peer %s from %s refused: %s", peer_id, ip, reason)
        if status == "pending":  # bounded: MAX_PENDING new ids, or ids of the registry
            self.waiting[peer_id] = identity
        return self._welcome(identity, rid, status, reason)

    def _db_trouble(self, exc):
        """A registry write failed: keep routing, say so in the log and getPeerStatus."""
        if self.limiter.allow(("db", str(exc))):
            log.error("database %s: %s (will retry)", self.registry.path, exc)
        self.registry.last_error = str(exc)

    def _welcome(self, identity, rid, status, reason):
        """Answer a hello on the connection it came from."""
        self._send_raw(identity, {"t": "welcome", "rid": rid, "status": status, "leader": self.id,
                                  "gen": self.registry.generation, "reason": reason,
                                  "hb": self.beat_s})

    # --- liveness ----------------------------------------------------------------------
    def on_monitor(self):
        """A verified peer's connection closed: offline for new work at once. Its running jobs
        keep the silence limit of the sweep, so a link that comes back in time loses nothing."""
        while self.monitor.poll(0):
            try:
                fd = int(recv_monitor_message(self.monitor)["value"])
            except (zmq.ZMQError, ValueError, KeyError):
                continue
            owner = self.fds.pop(fd, None)
            entry = self.live.get(owner[0]) if owner else None
            # the same route may already run over a newer connection (a handover closes the old one)
            if entry is not None and entry["fd"] == fd and entry["route"] == owner[1] and not entry["gone"]:
                entry["gone"] = True
                log.info("peer %s disconnected", owner[0])

    def _retune(self, now):
        """Follow the fleet's size with the announced interval (workers learn it from each reply)."""
        beat_s = config.beat_interval_s(self.heartbeat_s, len(self.live), self.cfg.get("heartbeat_budget")
                                 or config.DEFAULT_HEARTBEAT_BUDGET_PER_S)
        if beat_s < self.beat_s:
            # workers still beat at the old interval until their next reply tells them the new one
            self.slow_s, self.slow_until = self.beat_s, now + 2 * self.beat_s
        if beat_s != self.beat_s:
            log.info("heartbeat interval %.1fs for %d peers", beat_s, len(self.live))
        self.beat_s = beat_s

    def silence_limit_s(self, now):
        """How long a verified peer may stay silent before it is offline: 3 of its intervals."""
        return 3 * max(self.beat_s, self.slow_s if now < self.slow_until else 0.0)

    def sweep(self, now):
        """Mark peers silent for 3 heartbeat intervals offline; returns their ids."""
        self._retune(now)
        limit = self.silence_limit_s(now)
        gone = [p for p, e in self.live.items() if now - e["rx"] > limit]
        for peer_id in gone:
            self.fds.pop(self.live.pop(peer_id)["fd"], None)
            log.info("peer %s offline (silent for %.1fs)", peer_id, limit)
        if now >= self.next_flush:
            self.registry.flush()
            self.next_flush = now + FLUSH_INTERVAL_S
        return gone

    def online(self, peer_id):
        """True if the peer is connected and verified (the leader itself always is)."""
        if peer_id == self.id:
            return True
        entry = self.live.get(peer_id)
        return entry is not None and not entry["gone"]

    def may_return(self, peer_id):
        """True while a peer's running jobs wait for it (online, or disconnected for less than
        the silence limit: a flapping link may come back)."""
        return peer_id == self.id or peer_id in self.live

    def check_target(self, peer_id):
        """Raise PeerNotFound / PeerOffline unless a message can go to peer_id now."""
        if self.online(peer_id):
            return
        row = self.registry.get(peer_id)
        if row is None or row.status == "removed":
            raise PeerNotFound(peer_id)
        if row.status == "pending":
            raise NotAuthorized(f"Peer not accepted yet: {peer_id}")
        raise PeerOffline(f"Peer offline: {peer_id} ({describe_last_seen(self.registry.last_seen(row))})")

    # --- management ----------------------------------------------------------------------
    def records(self, pending=False):
        """Rows for listPeers."""
        rows = self.registry.peers("pending" if pending else "accepted")
        records = [peer_record(r, self.online(r.id), self.registry.last_seen(r), self.version) for r in rows]
        if pending:
            for record, row in zip(records, rows):
                record["key"] = row.key
        if pending:
            for peer_id, req in sorted(self.rekey.items()):
                record = peer_record(self.registry.get(peer_id), False, req["since"], self.version)
                record.update(ip=req["ip"], status="pending", rekey=True, key=req["key"])
                records.append(record)
        return records

    def accept(self, peer_id, key=None):
        """Accept a pending peer's key (only if it starts with `key`, when given)."""
        row = self.registry.get(peer_id)
        if row is None or row.status not in ("pending", "accepted"):
            raise PeerNotFound(peer_id, hint="`d listPeers --pending` lists the peers waiting")
        request = self.rekey.get(peer_id)
        asked = request["key"] if request else row.key
        if key and not (asked or "").startswith(key):
            # the key that asked last is not the one the admin checked: someone else may have asked
            raise BadRequest(f"The key waiting for {peer_id} is {asked}, not {key}…: nothing accepted",
                             hint="compare with `d getPeerStatus` on that peer, then accept again")
        self.rekey.pop(peer_id, None)
        if request is not None:  # bind the new key; the old one is revoked with it
            if row.key:
                self.policy.revoked.add(row.key)
            self.live.pop(peer_id, None)
            row = self.registry.upsert(peer_id, key=request["key"], ip=request["ip"])
        self.policy.revoked.discard(row.key)
        self.registry.set_status(peer_id, "accepted")
        if peer_id in self.waiting:  # it says hello again now, not at its next heartbeat
            self._send_raw(self.waiting.pop(peer_id), {"t": "rehello", "rid": "accepted"})
        return {"id": peer_id, "status": "accepted"}

    def remove(self, peer_id):
        """Revoke a peer's key, cut its route and forget it."""
        if peer_id == self.id:
            raise ZpeerError("The leader cannot remove itself")
        row = self.registry.get(peer_id)
        if row is None or row.status == "removed":
            raise PeerNotFound(peer_id)
        if row.key:
            self.policy.revoked.add(row.key)
        self.send(peer_id, {"t": "bye", "rid": "removed", "reason": "removed by the leader"})
        self.live.pop(peer_id, None)
        self.registry.set_status(peer_id, "removed")
        return {"id": peer_id, "status": "removed"}


def _bind(sock, address):
    """Bind, waiting briefly for a just-closed socket of ours to release the port."""
    host, port = config.split_host_port(address)
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        try:
            sock.bind(config.tcp_endpoint(host, port))
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise BindFailed(f"Cannot listen on {address}: {zmq.strerror(exc.errno)}") from None
            time.sleep(0.05)


def _primary_ip():
    """Best guess at this host's address when bound to all of them (use --advertise to say)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
