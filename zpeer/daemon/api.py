"""Requests from the local CLI (IPC ops) and from workers (leader RPCs), at one error boundary.

Each `op_*` handler takes (identity, header) and returns a reply map, or None when the answer
comes later (held long polls, RPCs to the leader). ZpeerError becomes an error reply here and
nowhere else.
"""
import logging
import os
import time

import zmq

from zpeer import config, trace
from zpeer.daemon.origin import STDIN_WINDOW_BYTES
from zpeer.errors import (
    BadRequest,
    NotConfigured,
    NotConnected,
    NotLeader,
    PeerNotFound,
    ZpeerError,
)
from zpeer.targets import needs_known, peer_names, resolve_targets
from zpeer.wire import keys, multipart, protocol

log = logging.getLogger(__name__)

MAX_TOKEN_TTL_S = 30 * 86400
REGISTER_WAIT_MAX_S = 30.0
REGISTER_REFUSALS = 2  # failed connection attempts during registerWorker that end its wait early


def _valid_audit_copy(header):
    """True if a worker's audit copy is a well-formed exec/exit/error header."""
    try:
        return protocol.validate(header) in ("exec", "exit", "error")
    except protocol.ProtocolError:
        return False


def _arg(header, name, types, default=None, required=False):
    """A typed request field (BadRequest when present with the wrong type)."""
    value = header.get(name, default)
    if value is None and not required:
        return default
    if not isinstance(value, types) or isinstance(value, bool):  # bool is an int subclass
        raise BadRequest(f"bad or missing field {name!r}")
    return value


class Api:
    """The daemon's request handlers."""

    def __init__(self, daemon):
        self.d = daemon
        self.registering = []  # (identity, rid, deadline, link retries) waiting for the outcome
        self.restarter = None  # zpeer.daemon.restarter.Restarter once a restart was asked for
        self.started_at = time.time()  # tells a restarted daemon from the one before it

    # --- boundary -----------------------------------------------------------------------
    def on_frames(self, sock):
        """Read and serve one CLI request."""
        # [identity, empty, signature, header]: all small, all copied; a longer one is cut to 5
        frames = multipart.recv(sock, zmq.NOBLOCK, data_from=5, max_frames=4)
        trace.mark("request")
        identity = frames[0]
        if len(frames) < 3 or frames[1] != b"":
            log.warning("dropped malformed CLI request (%d frames)", len(frames))
            return
        rid = "?"
        try:
            header = protocol.decode_request(frames[2:])
            rid = header["rid"]
            handler = getattr(self, "op_" + header["op"], None)
            if handler is None:
                raise BadRequest(f"unknown request {header['op']!r}: is the CLI newer than the daemon?")
            result = handler(identity, header)
        except protocol.ProtocolError as exc:
            result = BadRequest(f"malformed request: {exc}").to_reply()
        except ZpeerError as exc:
            result = exc.to_reply()
        except Exception as exc:  # never let one request kill the daemon
            log.exception("request failed")
            result = ZpeerError(f"Internal error in the daemon: {type(exc).__name__}: {exc}").to_reply()
        if result is not None:
            self.d.reply(identity, rid, result)

    def _later(self, identity, header):
        """A callback(result, error) that answers a held CLI request."""
        def done(result, error):
            self.d.reply(identity, header["rid"], error.to_reply() if error else result)
        return done

    # --- local state ----------------------------------------------------------------------
    def op_ping(self, identity, header):
        """Liveness probe."""
        return {"pong": True, "version": self.d.version, "features": ["exclude"]}  # what an older one lacks

    def op_status(self, identity, header):
        """getPeerStatus."""
        d, cfg, link = self.d, self.d.cfg, self.d.link
        status = {
            "role": d.role or cfg.get("role"), "id": d.id, "version": d.version,
            "public_key": d.public.decode(), "home": d.home, "pid": os.getpid(), "started_at": self.started_at,
            "heartbeat_s": d.heartbeat_s, "db_error": d.registry.last_error,
            **_recipes(cfg),
            # live state, so operators (and the chaos tests) can see nothing is left behind
            "exec_sessions": len(d.sessions.sessions), "running_jobs": len(d.targets.jobs),
        }
        if d.role == "leader":
            status.update(bind=cfg["bind"], advertise=cfg.get("advertise"), leader=d.id,
                          leader_address=link.address, connected=True, link="serving",
                          peers_online=sum(map(link.online, link.live)), heartbeat_s=link.beat_s,
                          history_rows=cfg["history_rows"])
        elif d.role == "worker":
            status.update(leader=cfg.get("leader"), leader_key=cfg.get("leader_key"),
                          source_ip=cfg.get("source_ip"), connected=link.usable(),
                          link=link.status, link_reason=link.shown_reason(), heartbeat_s=link.heartbeat_s)
        else:
            status.update(connected=False, link="unconfigured")
        return status

    def op_reload(self, identity, header):
        """The CLI changed config.json: apply it now."""
        self.d.apply_config(config.load(self.d.home))
        return self.op_status(identity, header)

    def op_restart(self, identity, header):
        """restartDaemon and deploy's restart step: restart once the asking job is reported."""
        from zpeer.daemon.restarter import Restarter

        if self.restarter is None:
            self.restarter = Restarter(self.d)
        result = self.restarter.request(_arg(header, "after_job", str), _arg(header, "cmd", str),
                                        _arg(header, "dir", str))
        result["started_at"] = self.started_at
        return result

    def op_db_check(self, identity, header):
        """dbSanityCheck."""
        ok, lines = self.d.registry.sanity_check(worker=self.d.role == "worker",
                                                 dry_run=bool(header.get("dry_run")))
        if self.d.role == "worker":
            self.d.registry.generation += 1
        return {"ok": ok, "lines": lines}

    # --- registry queries (leader answers; workers ask it) --------------------------------
    def _query(self, identity, header, op, args):
        """Run a registry query on the leader, from wherever we are."""
        if self.d.role == "leader":
            return getattr(self, "q_" + op)(args)
        if self.d.role == "worker":
            self.d.link.rpc(op, args, self._later(identity, header))
            return None
        raise NotConfigured("This node has no role yet")

    def op_peers(self, identity, header):
        """listPeers."""
        args = {"pending": bool(header.get("pending"))}
        if self.d.role == "worker" and not args["pending"]:
            done = self._later(identity, header)

            def refresh(result, error):
                if error is None:
                    self.d.peers_cache.write(result["peers"])
                done(result, error)
            self.d.link.rpc("peers", args, refresh)
            return None
        return self._query(identity, header, "peers", args)

    def op_peer_by_ip(self, identity, header):
        """getPeerIdByIp."""
        return self._query(identity, header, "peer_by_ip", {"ip": _arg(header, "ip", str, required=True)})

    def op_history(self, identity, header):
        """history."""
        return self._query(identity, header, "history", {"peer": _arg(header, "peer", str),
                                                         "limit": _arg(header, "limit", int, 20)})

    def q_peers(self, args):
        """Peer records (accepted, or pending ones)."""
        return {"peers": self.d.link.records(pending=bool(args.get("pending"))), "leader_version": self.d.version,
                "waiting": len(self.d.registry.peers("pending")) + len(self.d.link.rekey)}  # (for a footnote)

    def q_peer_by_ip(self, args):
        """Ids of the peers seen at an IP."""
        rows = self.d.registry.by_ip(str(args.get("ip")))
        if not rows:
            raise PeerNotFound(str(args.get("ip")), hint="no registered peer connects from that IP; "
                                                      "`d listPeers` shows each peer's IP")
        return {"ids": [r.id for r in rows]}

    def q_history(self, args):
        """Audit rows, newest first."""
        limit = args.get("limit") if isinstance(args.get("limit"), int) else 20
        rows = self.d.registry.history(args.get("peer") if isinstance(args.get("peer"), str) else None,
                                       max(1, min(limit, 10000)))
        return {"rows": [{"job": r.job, "time": r.started_at, "origin": r.origin, "user": r.origin_user,
                          "target": r.target, "directory": r.directory, "command": r.command,
                          "rc": r.rc, "outcome": r.outcome, "duration_s": r.duration_s,
                          "bytes_out": r.bytes_out} for r in rows]}

    def leader_rpc(self, from_peer, header):
        """A worker's RPC to the leader."""
        op, args = header["op"], header["args"]
        try:
            if op == "audit":
                copy = args.get("header")
                # a worker's copy is hostile input like any header: typed before it reaches SQLite
                if isinstance(copy, dict) and _valid_audit_copy(copy):
                    self.observe(from_peer, copy)
                return
            if op not in ("peers", "peer_by_ip", "history"):
                raise BadRequest(f"unknown rpc {op!r}")
            reply = {"t": "rpc_reply", "rid": header["rid"], "ok": True,
                     "result": getattr(self, "q_" + op)(args)}
        except ZpeerError as exc:
            reply = {"t": "rpc_reply", "rid": header["rid"], "ok": False, "error": exc.to_reply()}
        self.d.link.send(from_peer, reply)

    # --- enrolment (leader) ------------------------------------------------------------------
    def _leader(self):
        """The LeaderLink, or NotLeader."""
        if self.d.role != "leader":
            raise NotLeader("This command runs on the leader")
        return self.d.link

    def op_join_token(self, identity, header):
        """joinToken."""
        link = self._leader()
        ttl = _arg(header, "ttl", (int, float), 3600)
        if not 0 < ttl <= MAX_TOKEN_TTL_S:
            raise BadRequest(f"--ttl must be between 1 and {MAX_TOKEN_TTL_S} seconds")
        token, secret_hash = keys.make_token(link.address, link.public)
        self.d.registry.add_token(secret_hash, ttl)
        return {"token": token, "expires": time.time() + ttl, "address": link.address}

    def op_accept(self, identity, header):
        """acceptPeer."""
        return self._leader().accept(_arg(header, "id", str, required=True), _arg(header, "key", str))

    def op_remove(self, identity, header):
        """removePeer."""
        result = self._leader().remove(_arg(header, "id", str, required=True))
        self.d.dispatch(self.d.sessions.peer_lost(result["id"], "Peer {peer} was removed"))
        self.d.registry.lost_target(result["id"])
        return result

    def op_register(self, identity, header):
        """registerWorker: wait until the leader answered our hello (or the wait ends)."""
        if self.d.role != "worker":
            raise NotConfigured("This node is not configured as a worker")
        wait = min(float(_arg(header, "wait_s", (int, float), 10.0)), REGISTER_WAIT_MAX_S)
        link = self.d.link
        if link.status in ("rejected", "pending"):
            # the answer must be the leader's to this attempt (maybe a new token), not an old refusal
            link.status = "connecting"
            link.hello()
        self.registering.append((identity, header["rid"], time.monotonic() + wait, link.retries))
        self.tick(time.monotonic())
        return None

    def tick(self, now):
        """Answer registerWorker calls whose outcome is known; move a scheduled restart on."""
        if self.restarter is not None:
            self.restarter.tick(now)
        if not self.registering:
            return
        link = self.d.link if self.d.role == "worker" else None
        keep = []
        for identity, rid, deadline, retries in self.registering:
            if link is not None and link.status != "connecting":
                if link.status in ("registered", "pending"):
                    self.d.reply(identity, rid, {"status": link.status, "reason": link.reason,
                                                 "leader": link.leader_address})
                else:
                    self.d.reply(identity, rid, link.link_error().to_reply())
            elif link is not None and not link.handshake_ok and link.retries - retries >= REGISTER_REFUSALS:
                # nothing accepts the connection (refused at once): say so now, not at the deadline
                self.d.reply(identity, rid, NotConnected(hint=(
                    f"nothing answers at {link.leader_address} now: this worker keeps trying and "
                    "registers once the leader is up (`d getPeerStatus` shows when)")).to_reply())
            elif now >= deadline or link is None:
                err = link.link_error() if link else NotConfigured("This node is not a worker")
                self.d.reply(identity, rid, err.to_reply())
            else:
                keep.append((identity, rid, deadline, retries))
        self.registering = keep

    # --- execution ---------------------------------------------------------------------------
    def op_exec_open(self, identity, header):
        """execOnPeer: resolve targets and open a session."""
        requested = _arg(header, "targets", list, required=True)
        if not all(isinstance(t, str) for t in requested):
            raise BadRequest("no --peer given")
        names = peer_names(requested)
        if not names:  # `--peer "$P"` with P unset must not "succeed" at running nothing
            raise BadRequest("No peer given: --peer is empty")
        spec = {"cmd": _arg(header, "cmd", (str, bytes), required=True),
                "dir": _arg(header, "dir", (str, bytes)),
                "user": _arg(header, "user", str), "timeout": _arg(header, "timeout", (int, float)),
                "stdin": bool(header.get("stdin")), "ouser": _arg(header, "ouser", str)}
        for name in ("cmd", "dir", "user", "ouser"):
            if spec[name] and protocol.has_nul(spec[name]):  # execve/chdir/getpwnam raise on NUL
                raise BadRequest(f"--{name} contains a NUL byte")
        for name, what, flag in (("cmd", "command", "shellCmd"), ("dir", "directory", "directory"),
                                 ("user", "user", "user")):
            if spec[name] is not None and not spec[name]:  # `--directory "$D"` with D unset: not home
                raise BadRequest(f"No {what} given: --{flag} is empty")
        batch = _arg(header, "batch", int, 0)
        pid = _arg(header, "pid", int, 0)
        wait_s = _arg(header, "wait_s", (int, float))  # given: also the first poll (one round trip)
        reply = (identity, header["rid"], wait_s, bool(header.get("raw")))
        if self.d.id is None:
            raise NotConfigured("This node has no id yet")
        wants_known, exclude = needs_known(names), _arg(header, "exclude", list, [])
        if wants_known and self.d.role == "worker":  # `all` or a pattern: the leader has the ids
            def expand(result, error):
                try:
                    if error is not None:
                        raise error
                    targets = resolve_targets(requested, [r["id"] for r in result["peers"]], exclude)
                    opened = self._open(spec, targets, batch, pid, reply)
                except ZpeerError as exc:
                    opened = exc.to_reply()
                if opened is not None:
                    self.d.reply(identity, header["rid"], opened)
            self.d.link.rpc("peers", {}, expand)
            return None
        leader = self.d.role == "leader"  # named targets need no registry read (one SQLite query per exec)
        known = ([r.id for r in self.d.registry.peers()] if leader else [self.d.id]) if wants_known else []
        return self._open(spec, resolve_targets(requested, known, exclude), batch, pid, reply)

    def _open(self, spec, targets, batch, pid, reply):
        """Open the session; on the leader, refuse unknown/offline targets at once. With a
        wait (reply = (identity, rid, wait_s)), the request is held as the session's first poll
        and answered with its first events (None returned); else answered now."""
        failures = []
        if self.d.role == "leader":
            for target in targets:
                try:
                    self.d.link.check_target(target)
                except ZpeerError as exc:
                    failures.append((target, exc))
        spec["fanout"] = len(targets)
        sid, actions = self.d.sessions.open(spec, targets, batch, pid, failures)
        self.d.dispatch(actions)
        opened = {"sid": sid, "targets": targets, "room": STDIN_WINDOW_BYTES}
        identity, rid, wait_s, raw = reply
        if wait_s is None:
            return opened
        self.d.sessions.sessions[sid].opened = opened
        self.d.dispatch(self.d.sessions.poll(sid, identity, rid, wait_s=float(wait_s), raw=raw))
        return None

    def op_exec_poll(self, identity, header):
        """Long poll for a session's next output (and carry stdin)."""
        stdin = header.get("stdin")
        if stdin is not None and not isinstance(stdin, bytes):
            raise BadRequest("stdin must be bytes")
        self.d.dispatch(self.d.sessions.poll(_arg(header, "sid", str, required=True), identity,
                                             header["rid"], stdin, bool(header.get("eof")),
                                             float(_arg(header, "wait_s", (int, float), 0.5)),
                                             bool(header.get("need_room")), bool(header.get("raw"))))
        return None

    def op_exec_wake(self, identity, header):
        """The CLI's stdin has bytes while its poll waits for output: end that poll now."""
        self.d.dispatch(self.d.sessions.wake(_arg(header, "sid", str, required=True)))
        return {"ok": True}

    def op_exec_cancel(self, identity, header):
        """Ctrl-C: kill the session's remote jobs."""
        self.d.dispatch(self.d.sessions.cancel(_arg(header, "sid", str, required=True)))
        return {"ok": True}

    # --- audit (leader) ----------------------------------------------------------------------
    def observe(self, from_peer, header):
        """Record execs the leader routes, runs or originates, and how they ended."""
        if self.d.role != "leader":
            return
        mtype, job = header.get("t"), header.get("job")
        if not isinstance(job, str):
            return
        registry = self.d.registry
        if mtype == "exec":
            registry.log_exec(job, started_at=time.time(), origin=from_peer, origin_user=header.get("ouser"),
                              target=str(header.get("to")), fanout=int(header.get("fanout") or 1),
                              directory=protocol.shown(header.get("dir")),
                              command=str(protocol.shown(header.get("cmd"))))
        elif mtype == "exit":
            registry.log_exec(job, rc=header.get("rc"), outcome=header.get("how"),
                              duration_s=header.get("duration"), bytes_out=header.get("bytes") or 0)
        elif mtype == "error":
            err = header.get("err") or {}
            registry.log_exec(job, rc=255, outcome=str(err.get("err")))


def _recipes(cfg):
    """The deploy recipe in effect here (defaults included) and which parts are defaults."""
    from zpeer import recipes
    from zpeer.daemon.restarter import default_restart

    effective = recipes.resolve(cfg)
    if not effective["restart_cmd"]:
        effective["restart_cmd"] = default_restart()[0]  # `systemctl restart UNIT` or "re-exec"
    return {"recipes": effective, "recipe_defaults": [k for k in recipes.RECIPE_KEYS if not cfg.get(k)]}
