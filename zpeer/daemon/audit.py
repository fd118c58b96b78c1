"""The leader's audit log (`d history`): every exec it routes, runs or originates, and how it
ended.

`AuditLog.observe` takes the channel messages the leader sees (exec, exit, error). Each event
goes to the journal (zpeer.daemon.audit_journal) at once and to the registry's exec_log table in
one transaction per FLUSH_S (sooner for `d history` and at stop): a transaction per event would
cost a short command a third of its leader CPU. Every write is a link of the hash chain
(zpeer.daemon.audit_chain) in the same transaction. `history_rows` rows are kept
(`keep_history`): the surplus is pruned in batches, so the loop keeps serving, and fairly across
origins (zpeer.daemon.audit_retention).
"""
import logging
import os
import time
from collections import OrderedDict

from zpeer.daemon import audit_retention
from zpeer.daemon.audit_chain import AuditChain
from zpeer.daemon.audit_journal import Journal
from zpeer.daemon.casts import Casts
from zpeer.daemon.registry import DB_ERRORS
from zpeer.wire import protocol

log = logging.getLogger(__name__)

FLUSH_S = 1.0  # queued audit rows reach SQLite within this long
AUDIT_RETRY_S = 1.0  # after a failed audit write
OPEN_EXECS_MAX = 100_000  # execs without an outcome tracked for lost_target (about 20 MB at most)
# audit rows written between two prunes (the table holds up to this many extra)
PRUNE_EVERY_ROWS = 1000
# audit rows one prune deletes at most (it holds the loop briefly): a backlog takes several
PRUNE_BATCH_ROWS = 5000
PRUNE_PAUSE_S = 0.05  # between those prunes, so the loop keeps serving
HISTORY_SCAN_MAX = 100_000  # rows a filtered history read looks at, at most
CHAIN_LINKS_MIN = 10_000  # links the chain keeps at least (about two per row otherwise)


class AuditLog:
    """The exec audit of a leader: queued events, their journal, open execs and the retention."""

    def __init__(self, registry, replay=True):
        self.registry = registry  # its database and exec_log model; its last_error for status
        self.db, self.model = registry.db, registry.ExecLog
        self._queue = []  # (job, fields): pending writes
        self._inserts = {}  # job -> fields of its queued insert (later updates merge into it)
        self._due = 0.0  # monotonic time the queued rows are written at
        # rows kept (keep_history; 0: all), when the next prune is due, rows written since the last
        self._keep_rows, self._prune_due, self._since_prune = 0, None, 0
        self._open_target = {}  # job -> target, for execs with no outcome yet
        self._origins = OrderedDict()  # job id -> the origin of its first exec, the newest ones
        self._open_by_target = {}  # target -> set of those jobs
        self._open_origin = {}  # job -> its origin, for the same execs
        self._open_from = {}  # origin -> how many of them it started (the leader caps that)
        home = os.path.dirname(os.path.abspath(registry.path))
        self._journal = Journal(home)
        self.casts = Casts(home)  # recordings of pty sessions (zpeer.daemon.casts)
        self.chain = AuditChain(registry)  # what `d history --verify` checks
        self._adopt_unchained()
        left = self._journal.replay() if replay else []  # what a killed daemon had not written yet
        if left:
            log.info("audit journal: writing %d events left by the previous daemon", len(left))
            for job, fields in left:
                self._enqueue(job, fields)
            self.flush(force=True)

    def _adopt_unchained(self):
        """A database from before the chain: its rows are linked as they are (the chain vouches
        for what happens from here on)."""
        if self.chain.started():
            return
        try:
            with self.chain.atomic():
                self.chain.link([row.job for row in self.model.select(self.model.job)])
                self.chain.mark_started()
        except DB_ERRORS as exc:
            self.registry.note_error(exc)

    def close(self):
        """Write what is queued; the journal keeps what SQLite did not take."""
        self.flush(force=True)
        self._journal.close()
        self.casts.close()

    def record_sessions(self, on):
        """Record what pseudo-terminal sessions print from now on (or stop starting to)."""
        self.casts.enabled = bool(on)

    # --- events --------------------------------------------------------------------------
    def observe(self, from_peer, header, trusted=False, data=None):
        """Record an exec the leader routes, runs or originates, and how it ended: only as its
        target (from_peer) says, unless the leader itself says it (`trusted`: what its own CLI
        was told). A pty session's screen (`data` of its output) goes to its recording."""
        mtype, job = header.get("t"), header.get("job")
        if not isinstance(job, str):
            return
        by = {} if trusted else {"by": from_peer}
        # job ids are their origins' to choose: another origin's exec under a known id is
        # another row (exits and errors name their origin in "to")
        origin = from_peer if mtype == "exec" else str(header.get("to"))
        first = self._origins.setdefault(job, origin) if mtype == "exec" else \
            self._origins.get(job, origin)
        if first != origin:
            job = f"{job}@{origin}"
        while len(self._origins) > OPEN_EXECS_MAX:
            self._origins.popitem(last=False)
        if mtype == "exec" or self.casts.open:
            self.casts.observe(from_peer, header, data, job, trusted)
        if mtype == "exec":
            self.log_exec(job, started_at=time.time(), origin=from_peer,
                          origin_user=header.get("ouser"), target=str(header.get("to")),
                          fanout=int(header.get("fanout") or 1),
                          directory=protocol.shown(header.get("dir")),
                          command=str(protocol.shown(header.get("cmd"))),
                          tty=isinstance(header.get("pty"), dict))
        elif mtype == "exit":
            self.log_exec(job, rc=header.get("rc"), outcome=header.get("how"),
                          duration_s=header.get("duration"), bytes_out=header.get("bytes") or 0,
                          **by)
        elif mtype == "error":
            err = header.get("err") or {}
            self.log_exec(job, rc=255, outcome=str(err.get("err")), **by)

    def log_exec(self, job, **fields):
        """Record an audit insert (with "command") or update: in the journal now, in SQLite by
        the next flush() that is due."""
        self._journal.append(job, fields)
        self._enqueue(job, fields)
        self._track_open(job, fields)

    def _track_open(self, job, fields):
        """Remember, by target, the execs whose outcome is not in yet (not a peer's exec on
        itself: its origin loses nothing when the link to the leader drops)."""
        if "command" in fields:
            if (len(self._open_target) < OPEN_EXECS_MAX and job not in self._open_target
                    and fields.get("origin") != fields["target"]):
                origin = str(fields.get("origin"))
                self._open_target[job] = fields["target"]
                self._open_by_target.setdefault(fields["target"], set()).add(job)
                self._open_origin[job] = origin
                self._open_from[origin] = self._open_from.get(origin, 0) + 1
        elif "rc" in fields and fields.get("by", self._open_target.get(job)) \
                == self._open_target.get(job):
            target = self._open_target.pop(job, None)
            if target is not None:
                jobs = self._open_by_target[target]
                jobs.discard(job)
                if not jobs:
                    del self._open_by_target[target]
                self._ended_from(job)

    def _ended_from(self, job):
        """An open exec ended: its origin has one fewer."""
        origin = self._open_origin.pop(job, None)
        if origin is not None:
            left = self._open_from[origin] - 1
            if left:
                self._open_from[origin] = left
            else:
                del self._open_from[origin]

    def open_from(self, origin):
        """How many execs that origin started through the leader have not ended."""
        return self._open_from.get(origin, 0)

    def end_interrupted(self, leader_id):
        """At a leader's start: the execs the audit still shows running were cut off when the
        previous leader died (their origins heard "Lost the leader", their peers killed them),
        so they end with 255 and outcome leader_restarted; a late exit still replaces that.
        A worker's exec on itself is the exception: it never crossed the leader and runs on.
        Returns how many; database trouble is logged, never fatal."""
        model = self.model
        try:
            with self.chain.atomic():
                open_rows = model.rc.is_null() & model.outcome.is_null() & (
                    (model.origin != model.target) | (model.target == leader_id))
                jobs = [row.job for row in model.select(model.job).where(open_rows)]
                count = model.update(rc=255, outcome="leader_restarted").where(
                    open_rows).execute()
                self.chain.link(jobs)
        except DB_ERRORS as exc:
            log.warning("audit: cannot end the execs the previous leader left open: %s", exc)
            return 0
        if count:
            log.info("audit: %d execs were running when the previous leader stopped: "
                     "leader_restarted", count)
        return count

    def lost_target(self, peer):
        """A peer went offline or was removed: the execs it still ran end in the audit with 255
        and outcome peer_lost, as they did for their origins (an exit that comes later anyway,
        from a link that was only slow, replaces that with the real outcome)."""
        for job in self._open_by_target.pop(peer, ()):
            del self._open_target[job]
            self._ended_from(job)
            self.log_exec(job, rc=255, outcome="peer_lost")

    def _enqueue(self, job, fields):
        """Queue one audit event for SQLite."""
        if not self._queue:
            self._due = max(self._due, time.monotonic() + FLUSH_S)
        queued = self._inserts.get(job)
        if queued is not None:
            # a job id's first exec is its row (another exec under that id is not it), and only
            # the job's target says how it ended
            if "command" in fields or fields.get("by", queued["target"]) != queued["target"]:
                return
            # the exit of an exec not written yet: one row, one INSERT
            queued.update((k, v) for k, v in fields.items() if k != "by")
            return
        if "command" in fields:
            self._inserts[job] = fields
        self._queue.append((job, fields))

    # --- writing and retention -----------------------------------------------------------
    def due(self):
        """When flush() has work (the loop's poll ends then), or None."""
        due = self._due if self._queue else None  # (every loop turn asks: no generator here)
        if self._prune_due is None:
            return due
        return self._prune_due if due is None else min(due, self._prune_due)

    def keep_history(self, rows):
        """Keep only the newest `rows` audit rows (0: all of them); the surplus goes at once."""
        self._keep_rows = rows
        self._prune_due = time.monotonic() if rows else None

    def _prune(self):
        """Delete the audit rows beyond the kept number, fairly across origins
        (zpeer.daemon.audit_retention), PRUNE_BATCH_ROWS at most, and say so in the chain; with
        more left, the next prune is PRUNE_PAUSE_S away. Database trouble is logged, never
        fatal."""
        self._prune_due, self._since_prune = None, 0
        try:
            with self.chain.atomic():
                jobs = audit_retention.prune(self.db, self.model._meta.table_name,
                                             self._keep_rows, PRUNE_BATCH_ROWS)
                self.chain.drop(jobs)
                self.chain.trim(max(self._keep_rows, CHAIN_LINKS_MIN))
        except DB_ERRORS as exc:
            self._prune_due = time.monotonic() + AUDIT_RETRY_S
            self.registry.note_error(exc)
            return
        deleted = len(jobs)
        if deleted >= PRUNE_BATCH_ROWS:
            self._prune_due = time.monotonic() + PRUNE_PAUSE_S
        elif deleted:  # the recordings of the rows that went go too
            self.casts.sweep(self._kept)

    def _kept(self, jobs):
        """Which of these jobs still have an audit row."""
        model, kept = self.model, set()
        try:
            for i in range(0, len(jobs), 500):
                rows = model.select(model.job).where(model.job.in_(jobs[i:i + 500]))
                kept.update(row.job for row in rows)
        except DB_ERRORS as exc:
            self.registry.note_error(exc)
            return set(jobs)  # cannot tell: keep them all
        return kept

    def flush(self, force=False):
        """Write queued audit rows in one transaction once due (FLUSH_S after the first, or at
        once with `force`), then empty the journal, and prune the oldest rows when due; database
        trouble is logged, never fatal."""
        if self._prune_due is not None and time.monotonic() >= self._prune_due:
            self._prune()
        if not self._queue or (not force and time.monotonic() < self._due):
            return
        batch, self._queue = self._queue, []
        self._inserts = {}
        try:
            with self.chain.atomic():  # prepared statements, not a peewee query per row
                connection = self.db.connection()
                for sql, rows in statements(self.model, batch):
                    connection.executemany(sql, rows)
                self.chain.link([job for job, _ in batch])
            self.registry.last_error = None
            self._due = 0.0
            self._journal.clear()
            self._since_prune += len(batch)
            # a small limit: <= 1 % over it
            every = min(PRUNE_EVERY_ROWS, max(1, self._keep_rows // 100))
            if self._keep_rows and self._since_prune >= every and self._prune_due is None:
                self._prune_due = time.monotonic()  # the next loop turn, or history() below
        except DB_ERRORS as exc:
            self._queue[:0] = batch[-10000:]
            # a locked or read-only file: each attempt blocks busy_timeout, so not every turn
            self._due = time.monotonic() + AUDIT_RETRY_S
            self.registry.note_error(exc)

    def verify(self):
        """`d history --verify`: the rows and the hash chain checked (zpeer.daemon.audit_chain)."""
        self.flush(force=True)
        return self.chain.verify()

    def history(self, peer=None, limit=20, readable=None):
        """Newest audit rows first, optionally for one peer, and only the rows whose target
        `readable` accepts when given (a prune that is due runs first)."""
        self.flush(force=True)
        if self._prune_due is not None:
            self._prune()
        query = self.model.select().order_by(self.model.started_at.desc())
        if peer:
            query = query.where((self.model.target == peer) | (self.model.origin == peer))
        if readable is None:
            return list(query.limit(limit))
        rows = []
        for row in query.limit(HISTORY_SCAN_MAX).iterator():
            if readable(row.target):
                rows.append(row)
                if len(rows) >= limit:
                    break
        return rows


def statements(model, batch):
    """Consecutive audit rows of one shape as (sql, parameter rows), for executemany.

    Rows with "command" are inserts (never over a row with that job id: the first exec under an
    id is its row; missing fields take the model's defaults, as peewee's insert would), the
    others update the row of their job, and with "by" only if that peer is its target. Values go
    through each field's db_value, the conversion peewee applies.
    """
    fields = model._meta.fields
    groups = []
    for job, values in batch:
        insert = "command" in values
        by = values.get("by")
        if by is not None:
            values = {k: v for k, v in values.items() if k != "by"}
        if insert:
            values = dict(values)
            for name, field in fields.items():
                if name not in values and name != "job" and field.default is not None:
                    values[name] = field.default() if callable(field.default) else field.default
        names = tuple(values)
        params = [fields[n].db_value(values[n]) for n in names]
        checked = by is not None and not insert
        if not groups or groups[-1][0] != (insert, checked, names):
            groups.append(((insert, checked, names), []))
        row = [job] + params if insert else params + [job]
        groups[-1][1].append(row + [by] if checked else row)
    table = model._meta.table_name
    for (insert, checked, names), rows in groups:
        columns = [fields[n].column_name for n in names]
        if insert:
            sql = (f"INSERT OR IGNORE INTO {table} (job, {', '.join(columns)}) "
                   f"VALUES ({', '.join('?' * (len(columns) + 1))})")
        else:
            sql = f"UPDATE {table} SET {', '.join(c + ' = ?' for c in columns)} WHERE job = ?"
            if checked:
                sql += f" AND {fields['target'].column_name} = ?"
        yield sql, rows
