"""Leader role: the CURVE-secured ROUTER every worker connects to, and routing by peer id.

Incoming frames are [identity, SIGNATURE, header, (data)]. Each message is checked against the
CURVE key that ZAP authenticated for its connection (the frame's User-Id) and against the
routing identity (`ID/SECRET`, see zpeer.wire.protocol) that the peer's accepted hello bound
(zpeer.daemon.peer_table): a connection only acts as the peer id bound to its key, pending or
unknown keys can only say hello (zpeer.daemon.enrolment), and the leader sends a peer's messages
only to the identity its verified hello came from. Channel messages between two other peers are
forwarded here by their "to" field, with "from" set from the sender's verified id; the leader
audits every exec it forwards, runs or originates (zpeer.daemon.audit).
"""
import logging
import os
import socket
import time
from collections import OrderedDict

import zmq
from zmq.utils.monitor import recv_monitor_message

from zpeer import config, trace
from zpeer.daemon import tcp_state
from zpeer.daemon.access import AccessPolicy, Rule
from zpeer.daemon.admission import Admission
from zpeer.daemon.enrolment import Enrolment
from zpeer.daemon.links import Link
from zpeer.daemon.pacing import CHUNK_MAX_BYTES, Budget, Pacer
from zpeer.daemon.peer_table import PeerTable
from zpeer.daemon.queries import FleetQueries
from zpeer.daemon.registry import DB_ERRORS
from zpeer.daemon.stamps import boot_s, spend, transit_s
from zpeer.daemon.zap import KeyPolicy
from zpeer.errors import (
    BindFailed,
    NotAllowed,
    NotAuthorized,
    NotConnected,
    PeerNotFound,
    PeerOffline,
    QueueFull,
    TooManyJobs,
    ZpeerError,
)
from zpeer.logsetup import RateLimited
from zpeer.peerinfo import describe_last_seen, peer_record
from zpeer.wire import ipc, messages, multipart, protocol

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 5.0  # last-seen times reach the registry this often (one transaction)
BIND_RETRY_S = 2.0
# The kernel's keepalive probes reap the connections of hosts that vanished without a FIN
# (liveness is the workers' heartbeats, which the leader answers), and a user timeout those
# whose data stays unacknowledged. Not ZMTP pings: libzmq 4.3's ping timer writes on an engine
# that handover has left with a read error, and the leader aborts (`!_io_error`,
# stream_engine_base.cpp; docs/troubleshooting.md)
LEADER_KEEPALIVE_IDLE_S = 10.0
KEEPALIVE_PROBES = 3
BYE_GRACE_S = 0.2  # a removed peer's connection ends this long after its bye
HANDSHAKE_MS = 5000  # CURVE's handshake is a few round trips, 2 s on a 600 ms satellite link
SNDHWM = 20000
RCVHWM = 20000
AUDIT_TYPES = ("exec", "exit", "error")
ALIVE_REPLIES_MAX = 1000  # jobs one alive message can get "lost" answers for
# commands one peer may have running through the leader at once (a fan-out to 10,000 fits)
OPEN_JOBS_PER_PEER_MAX = 20_000
FAN_JOBS_MAX = 10000  # targets one fan message copies its stdin to (protocol's MAX_NAMES)
# What the leader holds for one peer (its bulk queued here and what libzmq has not handed to the
# kernel): peers' windows bound it only as long as peers keep to them. A job whose data would
# pass it fails (QueueFull). Tens of 4 MiB output windows to one slow peer fit.
DEST_QUEUE_MAX_BYTES = 256 << 20
TOTAL_QUEUE_MAX_BYTES = 1 << 30  # the same for all peers together
# beyond the caps, control (heartbeat replies, credit, exits, the errors of jobs that did not
# fit) still goes, up to this much more; past it the peer reads nothing at all and it is dropped
CONTROL_HEADROOM_BYTES = 32 << 20
RECOUNT_INTERVAL_S = 0.1  # the total is counted again from the kernel at most this often
FAILED_JOBS_MAX = 100_000  # jobs failed for their queue, whose later messages are not forwarded
STREAM_TYPES = frozenset({"out", "stdin"})  # the only messages whose data frame is forwarded
# of a job's messages, those that go from its target to its origin
TOWARD_ORIGIN = frozenset({"started", "out", "stdin_ack", "exit", "error"})


class LeaderLink(Link):
    """The leader's ROUTER socket, its verified peers, and what it routes and answers."""

    role = "leader"

    def __init__(self, ctx, auth, cfg, public, secret, registry, audit, version):
        super().__init__(cfg["id"])
        self.cfg, self.registry, self.audit, self.version = cfg, registry, audit, version
        self.public = public.decode() if isinstance(public, bytes) else public
        self.heartbeat_s = float(cfg["heartbeat_s"])
        self.policy = KeyPolicy()
        self.policy.revoked = registry.revoked_keys()  # refused at the handshake, for good
        auth.configure_curve_callback("*", self.policy)
        self.sock = _router_socket(ctx, cfg["bind"], public, secret, self.heartbeat_s)
        # a closed connection is seen at once (FIN/RST: a killed daemon, a stopped host's kernel)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.admission = Admission()  # connections that have not proven a peer, per address
        self.table = PeerTable(self.id, self.heartbeat_s)
        self.access = AccessPolicy()
        self.load_access()
        self.own_user = ipc.user_name(os.geteuid())
        self.enrolment = Enrolment(self.id, registry, self.table, self.policy, self.access)
        self.queries = FleetQueries(self, registry, audit)
        self.limiter = RateLimited()
        self.pacers = {}  # peer id -> Pacer: our bulk to it (zpeer.daemon.pacing)
        self.budget = Budget()  # what the pacers hold together
        self.recounted_at = 0.0
        # (origin, target, job) of the jobs failed because their data did not fit
        self.queue_failed = OrderedDict()
        self.waiting = set()  # peers whose pacer holds bulk
        now = time.monotonic()
        self.next_flush = now + FLUSH_INTERVAL_S
        self.next_sweep = now + self.heartbeat_s
        self.ending = []  # (when, fd, ip): connections of removed peers to end (tcp_state.end)
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
            self.registry.upsert(self.id, ip=own_ip or _primary_ip(),
                                 hostname=socket.gethostname(), role="leader",
                                 version=self.version, key=self.public, status="accepted")
        except DB_ERRORS as exc:  # serve anyway: our own row is refreshed on the next start
            self.registry.note_error(exc)

    def adopt(self, cfg, changed):
        """Advertised address and heartbeat change in place, keeping every connection."""
        if not changed:
            self.cfg = cfg
            return True
        if changed <= {"advertise", "heartbeat_s", "heartbeat_budget"}:
            self.reconfigure(cfg)
            return True
        return False

    def close(self, linger_ms=0):
        """Close the socket (the daemon owns the authenticator, which outlives a re-bind)."""
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger_ms)

    # --- sending -------------------------------------------------------------------------
    def send(self, peer_id, header, data=None):
        """Send to a verified peer, its bulk paced; False if it cannot take it now (a peer for
        which the leader holds more than its caps and their headroom: it reads nothing)."""
        entry = self.table.live.get(peer_id)
        if entry is None:
            return False
        pacer = self.pacers.get(peer_id)
        if pacer is None:
            return self._put(peer_id, entry, header, data)
        if self._over(pacer, len(data) if data is not None else 0, CONTROL_HEADROOM_BYTES):
            if self.limiter.allow(("full", peer_id)):
                log.warning("dropped %s to %s: the leader holds %d MiB for it and reads nothing "
                            "back", header.get("t"), peer_id, pacer.held >> 20)
            return False
        return self._send_paced(peer_id, pacer, pacer.push(header, data), header)

    def _over(self, pacer, n, headroom=0):
        """Why n more bytes for pacer's peer would take the leader past its caps (plus
        headroom), or None: the counts are upper bounds, read again from the kernel before
        saying so."""
        if pacer.held + n > DEST_QUEUE_MAX_BYTES + headroom:
            if pacer.look(time.monotonic()) + n > DEST_QUEUE_MAX_BYTES + headroom:
                return "peer"
        if self.budget.total + n > TOTAL_QUEUE_MAX_BYTES + headroom:
            now = time.monotonic()
            if now - self.recounted_at >= RECOUNT_INTERVAL_S:
                self.recounted_at = now
                for other in self.pacers.values():
                    if other.held:
                        other.look(now)
            if self.budget.total + n > TOTAL_QUEUE_MAX_BYTES + headroom:
                return "all"
        return None

    def _send_paced(self, peer_id, pacer, ready, header=None):
        """Send what a peer's pacer released; False if `header` was among them and could not
        go."""
        entry = self.table.live.get(peer_id)
        ok = True
        for item, data in ready:
            sent = entry is not None and self._put(peer_id, entry, item, data)
            if item is header:
                ok = sent
        if pacer.queues:
            self.waiting.add(peer_id)
        else:
            self.waiting.discard(peer_id)
        return ok

    def _put(self, peer_id, entry, header, data):
        """Put a message on the socket for a verified peer by its route (an exec with the
        peer's last stamp, see zpeer.daemon.stamps); False if it cannot take it now."""
        route = entry.route
        now = header["tx"] = boot_s()
        if header["t"] == "exec":
            if entry.tx is None:
                header.pop("echo", None)
                header.pop("held", None)
            else:
                header["echo"], header["held"] = entry.tx, now - entry.tx_at
        try:
            frames = protocol.envelope(route, protocol.encode(header, data))
            # marked before: the receiver may run before send() returns
            trace.mark("lead.send", header["t"])
            multipart.send(self.sock, frames, zmq.NOBLOCK)
            pacer = self.pacers.get(peer_id)
            if pacer is not None:
                pacer.handing(frames[1:], time.monotonic())
            return True
        except zmq.ZMQError as exc:
            # EHOSTUNREACH (gone) or EAGAIN (HWM): the peer is not keeping up
            if self.limiter.allow(("send", peer_id)):
                log.warning("cannot send %s to %s: %s", header.get("t"), peer_id, exc)
            return False

    def _send_raw(self, identity, header):
        """Answer a connection that is not (yet) a verified peer (hello replies)."""
        try:
            multipart.send(self.sock, protocol.envelope(identity, protocol.encode(header)),
                           zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def send_toward(self, header, data=None):
        """A message this node originates: straight to the peer it names."""
        header.setdefault("from", self.id)
        return self.send(header["to"], header, data)

    def witness(self, header, data=None):
        """The leader audits what it originates."""
        self.audit.observe(self.id, header, trusted=True, data=data)

    # --- receiving -----------------------------------------------------------------------
    def receive(self):
        """Read one message; returns (peer_id, header, data) when it is for this node."""
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
        mtype = header["t"]
        if mtype == "hello":
            ip = frames[1].get("Peer-Address")  # only a hello can come over a new connection
            fd = frames[1].get(zmq.SRCFD)
            try:
                self._hello(identity, peer_id, key, ip, header, fd)
            except DB_ERRORS as exc:  # no welcome: the worker says hello again next heartbeat
                self.registry.note_error(exc)
            return None
        entry = self.table.verified(peer_id, key, identity)
        if entry is None and identity[:1] == b"\0":
            # libzmq named the route: a newer connection took the peer's own (a redial), and
            # what was on its way over this one still counts
            owner, entry = self.table.by_key(key)
            peer_id = owner or peer_id
        if entry is None:
            self._unverified(identity, peer_id, key, header)
            return None
        entry.rx = time.monotonic()
        now = boot_s()
        if isinstance(header.get("tx"), (int, float)):
            entry.tx, entry.tx_at = header["tx"], now
        trace.mark("lead.recv", mtype)
        self.registry.touch(peer_id, entry.ip)
        if mtype == "hb":
            if isinstance(header.get("offset"), (int, float)):
                entry.clock_offset_s = header["offset"]
            self.send(peer_id, messages.heartbeat_reply(header["rid"], self.registry.generation,
                                                        self.table.beat_s, time.time()))
            return None
        if mtype == "rpc":
            self._rpc(peer_id, header)
            return None
        if mtype == "fan":
            header["from"] = peer_id
            return self._fan(peer_id, header, None if data is None else data.buffer)
        if mtype not in protocol.ROUTED_TYPES:
            return None
        # zero-copy memoryview of the output bytes; no other message carries any (a control
        # message with a data frame would skip the pacer's queue with it)
        data = data.buffer if data is not None and mtype in STREAM_TYPES else None
        if self.queue_failed and _job_key(peer_id, header) in self.queue_failed:
            return None  # its job failed for its queue: nothing of it goes on
        header["from"] = peer_id
        if mtype == "exec":  # the leg from its origin to here
            spend(header, transit_s(header.get("echo"), header.get("held"), now))
            if self._refused(peer_id, header):
                return None
        self.audit.observe(peer_id, header, data=data)
        if header["to"] == self.id:
            return peer_id, header, data
        self._forward(peer_id, header, data)
        return None

    def _refused(self, origin, header):
        """Refuse an exec the access policy does not allow, or one more than its origin may
        have running (its audit row says so, its origin hears it as from the target); True if
        refused."""
        target = header["to"]
        try:
            if self.audit.open_from(origin) >= OPEN_JOBS_PER_PEER_MAX:
                raise TooManyJobs(f"Too many commands running from {origin} "
                                  f"({OPEN_JOBS_PER_PEER_MAX}): {target} was not asked")
            if not self.access.open:
                self.access.check_run(origin, target,
                                      header.get("user") or self.daemon_user(target))
        except (NotAllowed, TooManyJobs) as exc:
            if self.limiter.allow(("refused", origin)):
                log.warning("refused: %s", exc.message)
            reply = messages.error(header["job"], origin, exc.to_reply(), target)
            self.audit.observe(origin, header)
            self.audit.observe(self.id, reply, trusted=True)
            self.send(origin, reply)
            return True
        return False

    def daemon_user(self, peer_id):
        """The account a peer's daemon runs commands as by default (its hello says), or None."""
        if peer_id == self.id:
            return self.own_user
        entry = self.table.live.get(peer_id)
        return None if entry is None else entry.user

    def load_access(self):
        """The access policy from the registry (at start, and after `d policy` changed it)."""
        self.access.rules = [Rule(r.number, r.action, r.origins, r.targets, r.users, r.kind)
                             for r in self.registry.policy_rules()]
        self.access.target_only = set(self.registry.target_only_ids())

    def _unverified(self, identity, peer_id, key, header):
        """A message from a connection not bound to this id: only tell it to say hello."""
        row = self.registry.get(peer_id)
        if row is not None and row.status == "accepted" and row.key == key:
            # e.g. after our restart
            self._send_raw(identity, messages.rehello(header["rid"]))
            return
        if self.limiter.allow(("unverified", peer_id)):
            log.warning("ignored %s from unenrolled connection %r (key %s)", header["t"],
                        peer_id, key)

    def _hello(self, identity, peer_id, key, ip, header, fd=None):
        """Enrolment and (re)registration: answer a hello with welcome."""
        verdict = self.enrolment.on_hello(identity, peer_id, key, ip, header)
        if verdict.step == "malformed":
            self._send_raw(identity, messages.welcome(header["rid"], "rejected", self.id, 0,
                                                      verdict.reason))
            return
        if verdict.status == "accepted":
            # the disconnects queued so far belong to older connections (an fd is closed after
            # its event is queued, so it cannot be reused before): read them before fd names
            # this one
            self.on_monitor()
            entry = self.table.admit(peer_id, key, ip, identity, fd, time.monotonic())
            self.admission.verified(fd)
            entry.user = header.get("daemon_user")
            if isinstance(header.get("tx"), (int, float)):
                entry.tx, entry.tx_at = header["tx"], boot_s()
            self._new_connection(peer_id, fd)
            log.info("peer %s online from %s (%s)", peer_id, ip, verdict.reason)
        self._send_raw(identity, messages.welcome(header["rid"], verdict.status, self.id,
                                                  self.registry.generation, verdict.reason,
                                                  self.table.beat_s))

    def _new_connection(self, peer_id, fd):
        """A peer's hello came over a (new) connection: its bulk is paced on that one; what
        waits for the peer stays queued."""
        pacer = self.pacers.get(peer_id)
        if pacer is None:
            pacer = self.pacers[peer_id] = Pacer(self.budget)
        pacer.attach(fd)
        self._send_paced(peer_id, pacer, pacer.release(time.monotonic()))

    def release_bulk(self, now):
        """The bulk that has room on its peer's connection now goes."""
        for peer_id in list(self.waiting):
            pacer = self.pacers[peer_id]
            if pacer.due(now):
                self._send_paced(peer_id, pacer, pacer.release(now))

    def chunk_bytes(self, to):
        """The output chunk for the hop to peer `to`."""
        pacer = self.pacers.get(to)
        return CHUNK_MAX_BYTES if pacer is None else pacer.chunk_bytes()

    def backlogged(self, to):
        """True while the hop to `to` has bulk waiting."""
        pacer = self.pacers.get(to)
        return pacer is not None and pacer.backlogged()

    def _forget_peer(self, peer_id):
        """A peer left the table: what was queued for it will not leave."""
        pacer = self.pacers.pop(peer_id, None)
        if pacer is not None:
            pacer.forget()  # what it held no longer counts
        self.waiting.discard(peer_id)

    def _rpc(self, peer_id, header):
        """A worker's RPC: a fleet query, or its audit copy of an exec it ran on itself."""
        op, args = header["op"], header["args"]
        if op == "audit":
            copy = args.get("header")
            # a worker's copy is hostile input like any header: typed before it reaches SQLite
            if isinstance(copy, dict) and _valid_audit_copy(copy):
                if copy.get("to") == peer_id:  # a worker's copies are of its jobs on itself
                    self.audit.observe(peer_id, copy)
            self.send(peer_id, messages.rpc_result(header["rid"], {}))  # taken: not again
            return
        try:
            reply = messages.rpc_result(header["rid"], self.queries.answer(op, args, peer_id))
        except ZpeerError as exc:
            reply = messages.rpc_error(header["rid"], exc.to_reply())
        self.send(peer_id, reply)

    def _fan(self, origin, header, data):
        """A fan-out's stdin (zpeer.filecopy): one copy per job, each paced on its target's own
        hop; the copy for this node itself is returned, as a message for it."""
        local = None
        for item in header["jobs"][:FAN_JOBS_MAX]:
            if not (isinstance(item, list) and len(item) in (2, 3) and all(
                    isinstance(x, str) and 0 < len(x) <= protocol.MAX_ID_LEN
                    and not protocol.has_nul(x) for x in item[:2])):
                continue
            copy = messages.stdin(item[0], item[1], header["eof"])
            if len(item) == 3 and type(item[2]) is int:
                copy["at"] = item[2]  # where this job's stream is (zpeer.daemon.resend)
            copy["from"] = origin
            if self.queue_failed and _job_key(origin, copy) in self.queue_failed:
                continue
            if item[1] == self.id:
                local = (origin, copy, data)
            else:
                self._forward(origin, copy, data)
        return local

    def _forward(self, from_peer, header, data):
        """A channel message between two other peers: on to its destination, or answered here
        for the one that cannot be reached."""
        to = header["to"]
        # new work only for a connected peer; a running job's messages (credit, stdin, cancel)
        # are still tried while a peer that dropped its link may come back (its route may be up)
        mtype = header["t"]
        usable = self.table.online(to) if mtype == "exec" else self.table.may_return(to)
        if usable and data is not None and to in self.pacers:
            over = self._over(self.pacers[to], len(data))
            if over is not None:
                self._queue_full(from_peer, header, over)
                return
        if usable and self.send(to, header, data):
            return
        if mtype == "exec":
            reply = messages.error(header["job"], from_peer, self.refusal(to).to_reply(), to)
            self.audit.observe(to, reply)
            self.send(from_peer, reply)
        elif mtype == "alive" and header.get("side") == "origin" and not self.table.may_return(to):
            # the origin still waits on jobs of a peer we saw go offline: tell it now, rather
            # than let it wait out its own silence limit (an origin on a worker sees no sweep)
            lost = {"err": "peer_lost", "msg": f"Peer {to} disconnected mid-command"}
            for job in header["jobs"][:ALIVE_REPLIES_MAX]:
                if isinstance(job, str):  # not audited: a worker names these job ids
                    self.send(from_peer, messages.error(job, from_peer, lost, to))

    def _queue_full(self, sender, header, over):
        """A job's data that the leader may not hold (`over`: the cap of its destination
        "peer", or of "all"): the job fails at both its ends with one error (its origin hears
        it from its target, its target from its origin and stops the command), its audit row
        says so, and nothing more of it is forwarded. Earlier data of it still goes (what
        arrives is exact, then the error)."""
        to, job = header["to"], header["job"]
        key = _job_key(sender, header)
        if key in self.queue_failed:
            return
        self.queue_failed[key] = True
        while len(self.queue_failed) > FAILED_JOBS_MAX:
            self.queue_failed.popitem(last=False)
        origin, target, _ = key
        if over == "peer":
            why = f"The leader's queue for {to} is full ({DEST_QUEUE_MAX_BYTES >> 20} MiB wait " \
                  f"for it): {job} failed"
        else:
            why = f"The leader's queues are full ({TOTAL_QUEUE_MAX_BYTES >> 20} MiB wait for " \
                  f"peers): {job} failed"
        if self.limiter.allow(("queue_full", to)):
            log.warning("%s (from %s)", why, sender)
        err = QueueFull(why).to_reply()
        to_origin = messages.error(job, origin, err, target)
        self.audit.observe(self.id, to_origin, trusted=True)
        self.send(origin, to_origin)
        self.send(target, messages.error(job, target, err, origin))

    def on_monitor(self):
        """Connections that opened (the oldest unproven ones of an address beyond its cap are
        ended) and closed (their peers are offline for new work at once)."""
        while self.monitor.poll(0):
            try:
                event = recv_monitor_message(self.monitor)
                fd = int(event["value"])
            except (zmq.ZMQError, ValueError, KeyError):
                continue
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.admission.accepted(fd, tcp_state.peer_ip(fd), time.monotonic())
                continue
            self.admission.closed(fd)
            owner = self.table.fds.get(fd)
            if owner is not None and owner[0] in self.pacers:
                self.pacers[owner[0]].detach(fd)
            self.table.disconnected(fd)
            # closed: its number may name another connection soon, which must not be ended
            self.ending = [end for end in self.ending if end[1] != fd]

    # --- liveness ------------------------------------------------------------------------
    def _retune(self, now):
        """Follow the fleet's size with the announced heartbeat interval."""
        budget = self.cfg.get("heartbeat_budget") or config.DEFAULT_HEARTBEAT_BUDGET_PER_S
        self.table.retune(now, self.heartbeat_s, budget)

    def tick(self, now):
        """Every heartbeat interval: peers silent for their limit are lost (their running
        execs end in the audit too); last-seen times are flushed every FLUSH_INTERVAL_S. At
        any turn: the connections an address holds beyond its cap without a peer are ended."""
        if self.admission.crowded:
            self.on_monitor()  # the hellos and closes so far count first
            for fd, ip in self.admission.sweep(now):
                if self.limiter.allow(("unproven", ip)):
                    log.warning("ended a connection from %s: more than %d open without an "
                                "accepted hello", ip, self.admission.per_ip_max)
                tcp_state.end(fd, ip)
        if self.ending and self.ending[0][0] <= now:
            self.on_monitor()  # the disconnects so far: their fds are not ours to end
            while self.ending and self.ending[0][0] <= now:
                _, fd, ip = self.ending.pop(0)
                tcp_state.end(fd, ip)
        if now < self.next_sweep:
            return []
        self.next_sweep = now + self.heartbeat_s
        self._retune(now)
        gone = self.table.sweep(now)
        for peer_id in gone:
            self.audit.lost_target(peer_id)
            self._forget_peer(peer_id)
        for peer_id in [p for p in self.pacers if p not in self.table.live]:
            self._forget_peer(peer_id)  # dropped (its route taken, say): not coming back
        if now >= self.next_flush:
            self.registry.flush()
            self.next_flush = now + FLUSH_INTERVAL_S
        return gone

    def next_deadline(self):
        """The next sweep, or sooner a pacer's look at its connection."""
        retries = [self.pacers[p].next_deadline() for p in self.waiting]
        retries.append(self.admission.next_deadline())
        ending = [self.ending[0][0]] if self.ending else []
        return min([self.next_sweep] + ending + [r for r in retries if r is not None])

    def check_target(self, peer_id):
        """Raise PeerNotFound / PeerOffline unless a message can go to peer_id now."""
        if self.table.online(peer_id):
            return
        row = self.registry.get(peer_id)
        if row is None or row.status == "removed":
            raise PeerNotFound(peer_id)
        if row.status == "pending":
            raise NotAuthorized(f"Peer not accepted yet: {peer_id}")
        last_seen = describe_last_seen(self.registry.last_seen(row))
        raise PeerOffline(f"Peer offline: {peer_id} ({last_seen})")

    def refusal(self, to):
        """Why a message for peer `to` cannot leave now."""
        try:
            self.check_target(to)
        except ZpeerError as exc:
            return exc
        return NotConnected(f"Cannot reach peer {to} now (its link is congested or closing)")

    def precheck(self, targets):
        """Unknown, pending and offline targets fail at once, never after a timeout."""
        failures = []
        for target in targets:
            try:
                self.check_target(target)
            except ZpeerError as exc:
                failures.append((target, exc))
        return failures

    # --- the fleet -----------------------------------------------------------------------
    def ask(self, op, args, done):
        """Fleet queries are answered here, at once."""
        try:
            result = self.queries.answer(op, args)
        except ZpeerError as exc:
            done(None, exc)
            return
        done(result, None)

    def known_ids(self, done):
        """The accepted peers of the registry (named targets never need this read)."""
        done([r.id for r in self.registry.peers()], None)

    def records(self, pending=False):
        """Rows for listPeers: the accepted peers, or the requests that wait for acceptance."""
        if pending:
            return self.enrolment.pending_records(self.version)
        records = []
        for row in self.registry.peers("accepted"):
            online = self.table.online(row.id)
            record = peer_record(row, online, self.registry.last_seen(row), self.version)
            entry = self.table.live.get(row.id) if online else None
            offset = 0.0 if row.id == self.id else entry and entry.clock_offset_s
            record["clock_offset_s"] = None if offset is None else round(offset, 1)
            records.append(record)
        return records

    def accept(self, peer_id, key=None, target_only=False):
        """acceptPeer: bind the waiting key; the peer is called back to say hello at once."""
        result, route = self.enrolment.accept(peer_id, key, target_only)
        if route is not None:
            self._send_raw(route, messages.rehello("accepted"))
        return result

    def remove(self, peer_id):
        """removePeer: revoke the key, tell the peer, cut its route; its execs end as lost."""
        result = self.enrolment.revoke(peer_id)
        self.send(peer_id, messages.bye("removed by the leader"))
        entry = self.table.live.get(peer_id)
        self.table.drop(peer_id)
        if entry is not None and entry.fd is not None and not entry.gone:
            # its connection ends once the bye has had time to leave: nothing more comes over
            # it (one that closed already is not ours to end: its number may be reused)
            self.ending.append((time.monotonic() + BYE_GRACE_S, entry.fd, entry.ip))
        self._forget_peer(peer_id)
        self.audit.lost_target(peer_id)
        return result

    def refresh_cache(self, cache):
        """peers.cache from the registry, when its peer set moved."""
        if cache.moved(self.registry.generation):
            cache.write([r.id for r in self.registry.peers()])

    def status(self):
        """getPeerStatus's leader fields."""
        cfg = self.cfg
        return {"bind": cfg["bind"], "advertise": cfg.get("advertise"), "leader": self.id,
                "leader_address": self.address, "connected": True, "link": "serving",
                "peers_online": self.table.count_online(), "heartbeat_s": self.table.beat_s,
                "history_rows": cfg["history_rows"], "clock_offset_s": 0.0}

    def as_leader(self):
        """This link: leader-only commands run here."""
        return self


def _job_key(sender, header):
    """(origin, target, job) of a job's message from `sender`."""
    if header["t"] in TOWARD_ORIGIN:
        return header["to"], sender, header.get("job")
    return sender, header["to"], header.get("job")


def _valid_audit_copy(header):
    """True if a worker's audit copy is a well-formed exec/exit/error header."""
    try:
        return protocol.validate(header) in AUDIT_TYPES
    except protocol.ProtocolError:
        return False


def _router_socket(ctx, address, public, secret, heartbeat_s):
    """The leader's CURVE server ROUTER, bound to address (BindFailed if it cannot be)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.LEADER_MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)  # a connection without a key is let go soon
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    idle_s = max(LEADER_KEEPALIVE_IDLE_S, 10 * heartbeat_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, round(idle_s)))
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, round(idle_s / KEEPALIVE_PROBES)))
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_PROBES)
    sock.setsockopt(zmq.TCP_MAXRT, int(idle_s * 2000))  # TCP_USER_TIMEOUT on Linux
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, secret
    try:
        _bind(sock, address)
    except BindFailed:
        sock.close(0)
        raise
    return sock


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
                raise BindFailed(f"Cannot listen on {address}: {zmq.strerror(exc.errno)}") \
                    from None
            time.sleep(0.05)


def _primary_ip():
    """Best guess at this host's address when bound to all of them (use --advertise to say)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
