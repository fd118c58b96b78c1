"""What the leader answers about the fleet, to its own CLI and to workers' RPCs: the peer list,
the peer at an IP, and the audit log."""
import time

from zpeer.errors import BadRequest, NoRecording, NotAllowed, PeerNotFound, ZpeerError
from zpeer.wire import messages

HISTORY_ROWS_MAX = 10000
QUERIES = ("peers", "peer_by_ip", "history")


class FleetQueries:
    """Registry and audit reads of a leader, by query name."""

    def __init__(self, leader, registry, audit):
        self.leader, self.registry, self.audit = leader, registry, audit

    def answer(self, op, args, asker=None):
        """The result map of one query (BadRequest for an unknown one); `asker`: the peer
        whose RPC it is (None: the leader's own CLI)."""
        if op not in QUERIES:
            raise BadRequest(f"unknown rpc {op!r}")
        return getattr(self, op)(args, asker)

    def peers(self, args, _asker):
        """Peer records (accepted, or pending ones)."""
        pending = bool(args.get("pending"))
        return {"peers": self.leader.records(pending=pending),
                "leader_version": self.leader.version,
                "waiting": self.leader.enrolment.waiting_count()}  # (for a footnote)

    def peer_by_ip(self, args, _asker):
        """Ids of the peers seen at an IP."""
        rows = self.registry.by_ip(str(args.get("ip")))
        if not rows:
            raise PeerNotFound(str(args.get("ip")),
                               hint="no registered peer connects from that IP; `d listPeers` "
                                    "shows each peer's IP")
        return {"ids": [r.id for r in rows]}

    def history(self, args, asker):
        """Audit rows, newest first, or a part of a session's recording (`replay`): what the
        access policy lets `asker` read (a refusal is audited too)."""
        readable = None
        if asker is not None:
            try:
                readable = self.leader.access.history_filter(asker)
            except NotAllowed:
                self.audit.log_exec(f"history.{messages.new_rid()}", started_at=time.time(),
                                    origin=asker, target=self.leader.id, command="d history",
                                    rc=255, outcome="not_allowed")
                raise
        if isinstance(args.get("replay"), str):
            return self.replay(args["replay"], args.get("offset"), readable)
        limit = args.get("limit") if isinstance(args.get("limit"), int) else 20
        peer = args.get("peer") if isinstance(args.get("peer"), str) else None
        rows = self.audit.history(peer, max(1, min(limit, HISTORY_ROWS_MAX)), readable)
        casts = self.audit.casts
        return {"rows": [{"job": r.job, "time": r.started_at, "origin": r.origin,
                          "user": r.origin_user, "target": r.target, "directory": r.directory,
                          "command": r.command, "rc": r.rc, "outcome": r.outcome,
                          "duration_s": r.duration_s, "bytes_out": r.bytes_out,
                          "ended": None if r.duration_s is None else r.started_at + r.duration_s,
                          "tty": bool(r.tty), "recorded": bool(r.tty) and casts.has(r.job)}
                         for r in rows]}

    def replay(self, job, offset, readable=None):
        """Up to READ_CHUNK_BYTES of a recording from offset, and its size (only of a session
        on a target `readable` accepts, when given)."""
        try:
            if readable is not None:
                row = self.audit.model.get_or_none(self.audit.model.job == job)
                if row is None or not readable(row.target):
                    raise FileNotFoundError(job)  # as if there were none: nothing to learn
            data, size = self.audit.casts.read(job, offset if isinstance(offset, int) else 0)
        except (FileNotFoundError, NotADirectoryError):
            raise NoRecording(f"No recording of job {job}",
                           hint="the leader records pty sessions after `d setPeerConfig "
                                "--record-sessions`; `d history` lists them") from None
        except OSError as exc:
            raise ZpeerError(f"Cannot read the recording of {job}: {exc.strerror}") from None
        return {"cast": data, "size": size}
