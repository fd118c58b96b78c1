"""The leader's peer registry and audit log, in SQLite through peewee. No ZeroMQ here.

Tables: meta (schema version), peer (id, ip as observed on the connection, hostname, role,
version, CURVE key, status accepted/pending/removed, first/last seen), join_token (hash of the
one-time secret, expiry, use) and exec_log (audit of every exec routed by this leader).
Workers keep the same schema but only meta (`sanity_check(worker=True)` deletes the rest), so a
damaged worker file is replaced (`open_registry`). last_seen is flushed in batches (`flush()`),
never one write per heartbeat; audit rows go to a journal at once, to SQLite in batches, and
the oldest go once there are more than keep_history() says.
"""
import logging
import os
import sqlite3
import time

import peewee

from zpeer.daemon.audit import (
    FLUSH_S,
    PRUNE_BATCH_ROWS,
    PRUNE_EVERY_ROWS,
    PRUNE_PAUSE_S,
    PRUNE_SQL,
    Journal,
    statements,
)
from zpeer.errors import BadDatabase

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
AUDIT_RETRY_S = 1.0  # after a failed audit write
OPEN_EXECS_MAX = 100_000  # execs without an outcome tracked for lost_target (about 20 MB at most)


def _make_models(db):
    """Model classes bound to one database (no process-global binding)."""

    class Base(peewee.Model):
        """Every table of this database."""
        class Meta:
            database = db

    class Meta(Base):
        """Key-value facts about the registry itself (its schema version)."""
        key = peewee.CharField(primary_key=True)
        value = peewee.TextField()

        class Meta:
            table_name = "meta"

    class Peer(Base):
        """One peer: id, key, address, status and when it was seen."""
        id = peewee.CharField(primary_key=True, max_length=64)
        ip = peewee.CharField(null=True)
        hostname = peewee.CharField(null=True)
        role = peewee.CharField(default="worker")
        version = peewee.CharField(null=True)
        key = peewee.CharField(null=True, index=True)
        status = peewee.CharField(default="accepted")
        first_seen = peewee.FloatField(null=True)
        last_seen = peewee.FloatField(null=True)

        class Meta:
            table_name = "peer"

    class JoinToken(Base):
        """A one-time join token, stored as a hash of its secret."""
        secret_hash = peewee.CharField(primary_key=True)
        created = peewee.FloatField()
        expires = peewee.FloatField()
        used_at = peewee.FloatField(null=True)
        used_by = peewee.CharField(null=True)

        class Meta:
            table_name = "join_token"

    class ExecLog(Base):
        """One exec in the journal (`d history`): who ran what where, and how it ended."""
        job = peewee.CharField(primary_key=True)
        started_at = peewee.FloatField()
        origin = peewee.CharField()
        origin_user = peewee.CharField(null=True)
        target = peewee.CharField(index=True)
        fanout = peewee.IntegerField(default=1)
        directory = peewee.TextField(null=True)
        command = peewee.TextField()
        rc = peewee.IntegerField(null=True)
        outcome = peewee.CharField(null=True)
        duration_s = peewee.FloatField(null=True)
        bytes_out = peewee.BigIntegerField(default=0)

        class Meta:
            table_name = "exec_log"

    return Meta, Peer, JoinToken, ExecLog


def open_registry(path, disposable):
    """The node's Registry. A damaged file is BadDatabase, unless disposable (a worker's holds
    nothing it needs): then it is moved aside, with a log line, and a new one is started."""
    try:
        return Registry(path)
    except BadDatabase as err:
        if not disposable:
            raise
        aside = f"{path}.bad-{time.strftime('%Y%m%dT%H%M%S')}"
        for suffix in [s for s in ("-wal", "-shm", "") if os.path.exists(path + s)]:
            os.replace(path + suffix, aside + suffix)
        log.warning("%s: moved to %s; this worker starts a new one", err.message, aside)
        return Registry(path)


class Registry:
    """Peers, tokens and the exec audit of one node's SQLite file."""

    def __init__(self, path, replay=True):
        self.path = path
        self.db = peewee.SqliteDatabase(path, pragmas={"journal_mode": "wal", "busy_timeout": 200,
                                                       "synchronous": "normal"})
        self.Meta, self.Peer, self.JoinToken, self.ExecLog = _make_models(self.db)
        self._seen = {}  # peer id -> (last_seen, ip): pending batched writes
        self._audit = []  # (job, fields): pending audit writes
        self._audit_inserts = {}  # job -> fields of its queued insert (later updates merge into it)
        self._audit_due = 0.0  # monotonic time the queued rows are written at
        # audit rows kept (keep_history; 0: all), when the next prune is due, events written since the last
        self._keep_rows, self._prune_due, self._since_prune = 0, None, 0
        self._open_target = {}  # job -> target, for execs with no outcome yet
        self._open_by_target = {}  # target -> set of those jobs
        self._journal = Journal(os.path.dirname(os.path.abspath(path)))
        self.last_error = None
        self.generation = 0  # bumped whenever the peer set changes (drives peers.cache)
        try:
            self.db.connect()
            self.db.create_tables([self.Meta, self.Peer, self.JoinToken, self.ExecLog])
        except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:  # not a database, malformed
            self.db.close()
            self._journal.close()
            if isinstance(exc, (peewee.OperationalError, sqlite3.OperationalError)):
                raise  # locked, cannot open: not a damaged file
            raise BadDatabase(path, exc) from None
        for suffix in ("", "-wal", "-shm"):  # keys and the audit are nobody else's business
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)
        row = self.Meta.get_or_none(self.Meta.key == "schema_version")
        if row is None:
            self.Meta.create(key="schema_version", value=str(SCHEMA_VERSION))
        left = self._journal.replay() if replay else []  # what a killed daemon had not written yet
        if left:
            log.info("audit journal: writing %d events left by the previous daemon", len(left))
            for job, fields in left:
                self._queue_audit(job, fields)
            self.flush_audit(force=True)

    def close(self):
        """Flush pending writes and close the file."""
        self.flush()
        self.flush_audit(force=True)
        self._journal.close()
        self.db.close()

    # --- peers -------------------------------------------------------------------------
    def get(self, peer_id):
        """The peer row or None."""
        return self.Peer.get_or_none(self.Peer.id == peer_id)

    def by_key(self, key):
        """The non-removed peer row bound to a CURVE key, or None."""
        return (self.Peer.select().where((self.Peer.key == key) & (self.Peer.status != "removed"))
                .first())

    def peers(self, status="accepted"):
        """Peers with a status, ordered by id."""
        return list(self.Peer.select().where(self.Peer.status == status).order_by(self.Peer.id))

    def by_ip(self, ip):
        """Accepted peers whose observed IP is ip."""
        return list(self.Peer.select().where((self.Peer.ip == ip) & (self.Peer.status == "accepted"))
                    .order_by(self.Peer.id))

    def upsert(self, peer_id, **fields):
        """Create or update a peer row; returns it. Bumps the generation on id/status changes."""
        now = time.time()
        row = self.get(peer_id)
        if row is None:
            row = self.Peer.create(id=peer_id, first_seen=now, last_seen=now, **fields)
            self.generation += 1
            return row
        if "status" in fields and fields["status"] != row.status:
            self.generation += 1
        for name, value in fields.items():
            setattr(row, name, value)
        row.save()
        return row

    def set_status(self, peer_id, status):
        """Change a peer's status (accepted, pending, removed)."""
        return self.upsert(peer_id, status=status)

    def delete(self, peer_id):
        """Forget a peer entirely."""
        self.Peer.delete().where(self.Peer.id == peer_id).execute()
        self.generation += 1

    def touch(self, peer_id, ip=None):
        """Note that a peer was seen now; written by the next flush()."""
        self._seen[peer_id] = (time.time(), ip)

    def last_seen(self, row):
        """Best known last-seen time of a row, including unflushed heartbeats."""
        pending = self._seen.get(row.id)
        return pending[0] if pending else row.last_seen

    def flush(self):
        """Write batched last_seen/ip updates in one transaction; keeps them on failure."""
        if not self._seen:
            return 0
        batch, self._seen = self._seen, {}
        try:
            with self.db.atomic():  # one prepared statement for the batch: 1,000 peers cost ~1 ms
                self.db.connection().executemany(
                    "UPDATE peer SET last_seen = ?, ip = COALESCE(?, ip) WHERE id = ?",
                    [(seen, ip or None, peer_id) for peer_id, (seen, ip) in batch.items()])
            self.last_error = None
        except (peewee.OperationalError, sqlite3.Error) as exc:  # executemany raises sqlite3's own
            for key, value in batch.items():
                self._seen.setdefault(key, value)
            self._note_error(exc)
            return 0
        return len(batch)

    def _note_error(self, exc):
        """Remember a database failure for getPeerStatus and the log."""
        while "cannot rollback" in str(exc) and exc.__context__ is not None:
            exc = exc.__context__  # SQLite already rolled back after the real error: report that one
        if str(exc) != self.last_error:
            log.error("database %s: %s (will retry)", self.path, exc)
        self.last_error = str(exc)

    # --- join tokens --------------------------------------------------------------------
    def add_token(self, secret_hash, ttl_s):
        """Store a new token's secret hash with its expiry."""
        now = time.time()
        self.JoinToken.create(secret_hash=secret_hash, created=now, expires=now + ttl_s)

    def consume_token(self, secret_hash, peer_id):
        """Mark a token used by peer_id; returns None if fine else the reason it is refused."""
        row = self.JoinToken.get_or_none(self.JoinToken.secret_hash == secret_hash)
        if row is None:
            return "unknown token"
        if row.used_at is not None:
            return "token already used"
        if row.expires < time.time():
            return "token expired"
        row.used_at, row.used_by = time.time(), peer_id
        row.save()
        return None

    # --- audit --------------------------------------------------------------------------
    def log_exec(self, job, **fields):
        """Record an audit insert (with "command") or update: in the journal now, in SQLite by
        the next flush_audit() that is due."""
        self._journal.append(job, fields)
        self._queue_audit(job, fields)
        self._track_open(job, fields)

    def _track_open(self, job, fields):
        """Remember, by target, the execs whose outcome is not in yet (not a peer's exec on
        itself: its origin loses nothing when the link to the leader drops)."""
        if "command" in fields:
            if len(self._open_target) < OPEN_EXECS_MAX and fields.get("origin") != fields["target"]:
                self._open_target[job] = fields["target"]
                self._open_by_target.setdefault(fields["target"], set()).add(job)
        elif "rc" in fields:
            target = self._open_target.pop(job, None)
            if target is not None:
                jobs = self._open_by_target[target]
                jobs.discard(job)
                if not jobs:
                    del self._open_by_target[target]

    def end_interrupted_execs(self, leader_id):
        """At a leader's start: the execs the audit still shows running were cut off when the
        previous leader died (their origins heard "Lost the leader", their peers killed them),
        so they end with 255 and outcome leader_restarted; a late exit still replaces that.
        A worker's exec on itself is the exception: it never crossed the leader and runs on.
        Returns how many; database trouble is logged, never fatal."""
        model = self.ExecLog
        try:
            with self.db.atomic():
                count = model.update(rc=255, outcome="leader_restarted").where(
                    model.rc.is_null() & model.outcome.is_null()
                    & ((model.origin != model.target) | (model.target == leader_id))).execute()
        except (peewee.PeeweeException, sqlite3.Error) as exc:
            log.warning("audit: cannot end the execs the previous leader left open: %s", exc)
            return 0
        if count:
            log.info("audit: %d execs were running when the previous leader stopped: leader_restarted", count)
        return count

    def lost_target(self, peer):
        """A peer went offline or was removed: the execs it still ran end in the audit with 255
        and outcome peer_lost, as they did for their origins (an exit that comes later anyway,
        from a link that was only slow, replaces that with the real outcome)."""
        for job in self._open_by_target.pop(peer, ()):
            del self._open_target[job]
            self.log_exec(job, rc=255, outcome="peer_lost")

    def _queue_audit(self, job, fields):
        """Queue one audit event for SQLite."""
        if not self._audit:
            self._audit_due = max(self._audit_due, time.monotonic() + FLUSH_S)
        queued = self._audit_inserts.get(job)
        if queued is not None and "command" not in fields:
            queued.update(fields)  # the exit of an exec not written yet: one row, one INSERT
            return
        if "command" in fields:
            self._audit_inserts[job] = fields
        self._audit.append((job, fields))

    def audit_due(self):
        """When flush_audit() has work (the loop's poll ends then), or None."""
        due = self._audit_due if self._audit else None  # (every loop turn asks: no generator here)
        return due if self._prune_due is None else self._prune_due if due is None else min(due, self._prune_due)

    def keep_history(self, rows):
        """Keep only the newest `rows` audit rows (0: all of them); the surplus goes at once."""
        self._keep_rows = rows
        self._prune_due = time.monotonic() if rows else None

    def _prune_history(self):
        """Delete the oldest audit rows beyond the kept number, PRUNE_BATCH_ROWS at most; with
        more left, the next prune is PRUNE_PAUSE_S away. Database trouble is logged, never fatal."""
        self._prune_due, self._since_prune = None, 0
        try:
            with self.db.atomic():
                deleted = self.db.execute_sql(PRUNE_SQL, (self._keep_rows - 1, PRUNE_BATCH_ROWS)).rowcount
        except (peewee.PeeweeException, sqlite3.Error) as exc:
            self._prune_due = time.monotonic() + AUDIT_RETRY_S
            self._note_error(exc)
            return
        if deleted >= PRUNE_BATCH_ROWS:
            self._prune_due = time.monotonic() + PRUNE_PAUSE_S

    def flush_audit(self, force=False):
        """Write queued audit rows in one transaction once due (FLUSH_S after the first, or at
        once with `force`), then empty the journal, and prune the oldest rows when due; database
        trouble is logged, never fatal."""
        if self._prune_due is not None and time.monotonic() >= self._prune_due:
            self._prune_history()
        if not self._audit or (not force and time.monotonic() < self._audit_due):
            return
        batch, self._audit = self._audit, []
        self._audit_inserts = {}
        try:
            with self.db.atomic():  # prepared statements: a peewee query per row cost ~1 ms per exec
                connection = self.db.connection()
                for sql, rows in statements(self.ExecLog, batch):
                    connection.executemany(sql, rows)
            self.last_error = None
            self._audit_due = 0.0
            self._journal.clear()
            self._since_prune += len(batch)
            every = min(PRUNE_EVERY_ROWS, max(1, self._keep_rows // 100))  # a small limit: <= 1 % over
            if self._keep_rows and self._since_prune >= every and self._prune_due is None:
                self._prune_due = time.monotonic()  # the next loop turn, or history() below
        except (peewee.PeeweeException, sqlite3.Error) as exc:
            self._audit[:0] = batch[-10000:]
            # a locked or read-only file: each attempt blocks busy_timeout, so not every turn
            self._audit_due = time.monotonic() + AUDIT_RETRY_S
            self._note_error(exc)

    def history(self, peer=None, limit=20):
        """Newest audit rows first, optionally for one target (a prune that is due runs first)."""
        self.flush_audit(force=True)
        if self._prune_due is not None:
            self._prune_history()
        query = self.ExecLog.select().order_by(self.ExecLog.started_at.desc()).limit(limit)
        if peer:
            query = query.where((self.ExecLog.target == peer) | (self.ExecLog.origin == peer))
        return list(query)

    # --- maintenance --------------------------------------------------------------------
    def sanity_check(self, worker, dry_run=False):
        """Integrity + schema check; on a worker delete leader-only rows. Returns report lines."""
        lines = []
        result = self.db.execute_sql("PRAGMA integrity_check").fetchall()
        ok = result == [("ok",)]
        lines.append("integrity: ok" if ok else "integrity: FAILED: " + "; ".join(r[0] for r in result))
        row = self.Meta.get_or_none(self.Meta.key == "schema_version")
        version = int(row.value) if row else None
        if version == SCHEMA_VERSION:
            lines.append(f"schema version: {version} (current)")
        else:
            lines.append(f"schema version: {version} (expected {SCHEMA_VERSION})")
            if not dry_run:
                self.Meta.replace(key="schema_version", value=str(SCHEMA_VERSION)).execute()
                lines.append(f"schema version set to {SCHEMA_VERSION}")
        if worker:
            for table, model in (("peer", self.Peer), ("join_token", self.JoinToken),
                                 ("exec_log", self.ExecLog)):
                count = model.select().count()
                if count and not dry_run:
                    model.delete().execute()
                verb = "would delete" if dry_run else "deleted"
                lines.append(f"leader-only {table}: {count} rows" + (f", {verb}" if count else ""))
            self._seen.clear()
        return ok, lines
