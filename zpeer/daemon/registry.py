"""The node's SQLite file through peewee: the leader's peer registry and join tokens, and the
table the audit log writes (zpeer.daemon.audit). No ZeroMQ here.

Tables: meta (schema version), peer (id, ip as observed on the connection, hostname, role,
version, CURVE key, status accepted/pending/removed, first/last seen, target-only), join_token
(hash of the one-time secret, expiry, use), exec_log (the audit of every exec routed by this
leader), audit_link (its hash chain, zpeer.daemon.audit_chain) and policy_rule (the access
policy, zpeer.daemon.access).
Workers keep the same schema but only meta (`sanity_check(worker=True)` deletes the rest), so a
damaged worker file is replaced (`open_registry`). last_seen is flushed in batches (`flush()`),
never one write per heartbeat.
"""
import logging
import os
import sqlite3
import time

import peewee

from zpeer.errors import BadDatabase

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# the file cannot be written (locked by another process, read-only, disk full)
DB_ERRORS = (peewee.PeeweeException, sqlite3.Error)


REVOKED_PREFIX = "revoked:"  # Meta rows of revoked keys (their ids may be re-enrolled)

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
        target_only = peewee.BooleanField(default=False)  # joinToken --target-only: starts nothing

        class Meta:
            table_name = "peer"

    class JoinToken(Base):
        """A one-time join token, stored as a hash of its secret."""
        secret_hash = peewee.CharField(primary_key=True)
        created = peewee.FloatField()
        expires = peewee.FloatField()
        used_at = peewee.FloatField(null=True)
        used_by = peewee.CharField(null=True)
        bound_id = peewee.CharField(null=True)  # joinToken --id: the one id it may enrol
        may_replace = peewee.BooleanField(default=False)  # --replace: it may rebind that id
        target_only = peewee.BooleanField(default=False)  # --target-only: the peer it enrols

        class Meta:
            table_name = "join_token"

    class ExecLog(Base):
        """One exec in the journal (`d history`): who ran what where, and how it ended."""
        job = peewee.CharField(primary_key=True)
        started_at = peewee.FloatField()
        origin = peewee.CharField(index=True)  # retention counts and cuts rows per origin
        origin_user = peewee.CharField(null=True)
        target = peewee.CharField(index=True)
        fanout = peewee.IntegerField(default=1)
        directory = peewee.TextField(null=True)
        command = peewee.TextField()
        rc = peewee.IntegerField(null=True)
        outcome = peewee.CharField(null=True)
        duration_s = peewee.FloatField(null=True)
        bytes_out = peewee.BigIntegerField(default=0)
        tty = peewee.BooleanField(default=False)  # a pseudo-terminal session

        class Meta:
            table_name = "exec_log"

    class AuditLink(Base):
        """One link of the audit's hash chain (zpeer.daemon.audit_chain)."""
        seq = peewee.IntegerField(primary_key=True)
        job = peewee.CharField(index=True)
        digest = peewee.CharField()
        hash = peewee.CharField()

        class Meta:
            table_name = "audit_link"

    class PolicyRule(Base):
        """One rule of the access policy (zpeer.daemon.access), in the order they apply."""
        number = peewee.AutoField()
        action = peewee.CharField()
        kind = peewee.CharField(default="run")
        origins = peewee.TextField()
        targets = peewee.TextField()
        users = peewee.TextField(null=True)

        class Meta:
            table_name = "policy_rule"

    return Meta, Peer, JoinToken, ExecLog, AuditLink, PolicyRule


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
    """Peers and join tokens of one node's SQLite file (and the file itself)."""

    def __init__(self, path):
        self.path = path
        self.db = peewee.SqliteDatabase(path, pragmas={"journal_mode": "wal", "busy_timeout": 200,
                                                       "synchronous": "normal"})
        (self.Meta, self.Peer, self.JoinToken, self.ExecLog, self.AuditLink,
         self.PolicyRule) = _make_models(self.db)
        self._seen = {}  # peer id -> (last_seen, ip): pending batched writes
        self.last_error = None  # the last database failure, for getPeerStatus
        self.generation = 0  # bumped whenever the peer set changes (drives peers.cache)
        try:
            self.db.connect()
            self.db.create_tables([self.Meta, self.Peer, self.JoinToken, self.ExecLog,
                                   self.AuditLink, self.PolicyRule])
        except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:  # not a database, malformed
            self.db.close()
            if isinstance(exc, (peewee.OperationalError, sqlite3.OperationalError)):
                raise  # locked, cannot open: not a damaged file
            raise BadDatabase(path, exc) from None
        for suffix in ("", "-wal", "-shm"):  # keys and the audit are nobody else's business
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)
        self._add_missing_columns()
        row = self.Meta.get_or_none(self.Meta.key == "schema_version")
        if row is None:
            self.Meta.create(key="schema_version", value=str(SCHEMA_VERSION))

    def _add_missing_columns(self):
        """A database from before a column was added gets it (with its default)."""
        for model in (self.JoinToken, self.Peer, self.ExecLog):
            table = model._meta.table_name
            have = {row[1] for row in self.db.execute_sql(f"PRAGMA table_info({table})")}
            for field in model._meta.fields.values():
                if field.column_name not in have:
                    self.db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {field.column_name} "
                                        f"{field.field_type}"
                                        + (" DEFAULT 0" if field.default is False else ""))

    def close(self):
        """Flush pending writes and close the file."""
        self.flush()
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
        peer = self.Peer
        return list(peer.select().where((peer.ip == ip) & (peer.status == "accepted"))
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

    def revoked_keys(self):
        """Every key a removePeer revoked, whatever its id became since."""
        meta = self.Meta
        rows = meta.select().where(meta.key.startswith(REVOKED_PREFIX))
        revoked = {row.key[len(REVOKED_PREFIX):] for row in rows}
        return revoked | {row.key for row in self.peers("removed") if row.key}

    def revoke_key(self, key):
        """Remember for good that this key was revoked."""
        self.Meta.replace(key=REVOKED_PREFIX + key, value="").execute()

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
            with self.db.atomic():  # one prepared statement for the whole batch
                self.db.connection().executemany(
                    "UPDATE peer SET last_seen = ?, ip = COALESCE(?, ip) WHERE id = ?",
                    [(seen, ip or None, peer_id) for peer_id, (seen, ip) in batch.items()])
            self.last_error = None
        except (peewee.OperationalError, sqlite3.Error) as exc:  # executemany raises sqlite3's own
            for key, value in batch.items():
                self._seen.setdefault(key, value)
            self.note_error(exc)
            return 0
        return len(batch)

    def note_error(self, exc):
        """Remember a database failure for getPeerStatus and the log."""
        while "cannot rollback" in str(exc) and exc.__context__ is not None:
            # SQLite already rolled back after the real error: report that one
            exc = exc.__context__
        if str(exc) != self.last_error:
            log.error("database %s: %s (will retry)", self.path, exc)
        self.last_error = str(exc)

    # --- join tokens --------------------------------------------------------------------
    def add_token(self, secret_hash, ttl_s, bound_id=None, may_replace=False, target_only=False):
        """Store a new token's secret hash with its expiry (and the id it is for, if any)."""
        self.add_tokens([secret_hash], ttl_s, bound_id, may_replace, target_only)

    def add_tokens(self, secret_hashes, ttl_s, bound_id=None, may_replace=False,
                   target_only=False):
        """Store new tokens' secret hashes, all in one transaction."""
        now = time.time()
        rows = [{"secret_hash": h, "created": now, "expires": now + ttl_s, "bound_id": bound_id,
                 "may_replace": may_replace, "target_only": target_only} for h in secret_hashes]
        with self.db.atomic():
            for start in range(0, len(rows), 100):  # 6 variables a row: within any SQLite's 999
                self.JoinToken.insert_many(rows[start:start + 100]).execute()

    def token_target_only(self, secret_hash):
        """True if this token enrols its peer as target-only (`joinToken --target-only`)."""
        row = self.JoinToken.get_or_none(self.JoinToken.secret_hash == secret_hash)
        return row is not None and bool(row.target_only)

    def token_may_replace(self, secret_hash, peer_id):
        """True if this token was made to rebind peer_id (`joinToken --id ID --replace`)."""
        row = self.JoinToken.get_or_none(self.JoinToken.secret_hash == secret_hash)
        return row is not None and bool(row.may_replace) and row.bound_id == peer_id

    def consume_token(self, secret_hash, peer_id):
        """Mark a token used by peer_id; returns None if fine else the reason it is refused."""
        row = self.JoinToken.get_or_none(self.JoinToken.secret_hash == secret_hash)
        if row is None:
            return "unknown token"
        if row.used_at is not None:
            return "token already used"
        if row.expires < time.time():
            return "token expired"
        if row.bound_id is not None and row.bound_id != peer_id:
            return f"token is for peer {row.bound_id}"
        row.used_at, row.used_by = time.time(), peer_id
        row.save()
        return None

    # --- the access policy ------------------------------------------------------------
    def policy_rules(self):
        """The access policy's rules as stored, in the order they apply."""
        return list(self.PolicyRule.select().order_by(self.PolicyRule.number))

    def add_policy_rule(self, action, kind, origins, targets, users):
        """Append a rule; returns its number."""
        return self.PolicyRule.create(action=action, kind=kind, origins=origins,
                                      targets=targets, users=users).number

    def remove_policy_rule(self, number):
        """Delete one rule; True if it was there."""
        return bool(self.PolicyRule.delete().where(self.PolicyRule.number == number).execute())

    def reset_policy(self):
        """Delete every rule (the target-only peers stay so: that is their enrolment)."""
        self.PolicyRule.delete().execute()

    def target_only_ids(self):
        """The accepted peers enrolled as target-only."""
        return [r.id for r in self.Peer.select(self.Peer.id).where(
            (self.Peer.target_only == True) & (self.Peer.status == "accepted"))]  # noqa: E712

    # --- maintenance --------------------------------------------------------------------
    def sanity_check(self, worker, dry_run=False):
        """Integrity + schema check; on a worker delete leader-only rows. Returns report lines."""
        lines = []
        result = self.db.execute_sql("PRAGMA integrity_check").fetchall()
        ok = result == [("ok",)]
        lines.append("integrity: ok" if ok
                     else "integrity: FAILED: " + "; ".join(r[0] for r in result))
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
                                 ("exec_log", self.ExecLog), ("audit_link", self.AuditLink),
                                 ("policy_rule", self.PolicyRule)):
                count = model.select().count()
                if count and not dry_run:
                    model.delete().execute()
                verb = "would delete" if dry_run else "deleted"
                lines.append(f"leader-only {table}: {count} rows" + (f", {verb}" if count else ""))
            self._seen.clear()
        return ok, lines
