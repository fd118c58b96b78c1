"""The audit's hash chain: each write of an exec_log row appends a link that covers the row's
content and the previous link, so that `d history --verify` finds a row altered, added or
deleted behind the daemon's back, and a link altered or cut out of the chain.

A link is (seq, job, digest, hash): digest is the SHA-256 of the row as stored ("" when retention
pruned it), hash = SHA-256(previous hash, seq, job, digest). The newest link of each job must
match its row. The chain is trimmed to the newest links (the hash before the first one kept is
the anchor, in the meta table, with the head: the hash of the last link); rows whose newest link
would go are linked again first, so every row always has one. Whoever can rewrite the whole
database file can rewrite the chain too: compare the head `--verify` prints with one noted
earlier (or kept off the host) to catch that.
"""
import contextlib
import hashlib
import json

GENESIS = "0" * 64
ANCHOR_KEY, HEAD_KEY = "audit_anchor", "audit_head"
IN_CHUNK = 500  # job ids per `IN (...)` query (SQLite's bound-parameter limit is 999 on old builds)
PROBLEMS_SHOWN_MAX = 20  # problems `--verify` names (the count is always whole)


def link_hash(prev, seq, job, digest):
    """The hash of one link."""
    return hashlib.sha256(f"{prev}\n{seq}\n{job}\n{digest}".encode()).hexdigest()


class AuditChain:
    """The chain over one registry's exec_log rows (its audit_link table and two meta rows)."""

    def __init__(self, registry):
        self.db, self.rows, self.links = registry.db, registry.ExecLog, registry.AuditLink
        self.meta = registry.Meta
        self.columns = [f.column_name for f in self.rows._meta.sorted_fields]
        self.job_column = self.rows.job.column_name
        last = self.links.select().order_by(self.links.seq.desc()).first()
        self.seq = last.seq if last else 0
        self.head = last.hash if last else self._meta(ANCHOR_KEY)

    def started(self):
        """True once this database has had a chain (its head is recorded)."""
        return self.meta.get_or_none(self.meta.key == HEAD_KEY) is not None

    def _meta(self, key):
        """A meta value of the chain (the anchor or the head), GENESIS when none is set."""
        row = self.meta.get_or_none(self.meta.key == key)
        return row.value if row else GENESIS

    def digest(self, values):
        """The SHA-256 of a row's stored values, in column order."""
        return hashlib.sha256(json.dumps(values, separators=(",", ":"), ensure_ascii=False,
                                         default=str).encode()).hexdigest()

    def _stored(self, jobs):
        """{job: its row's values in column order} of those jobs that have a row."""
        found = {}
        columns = ", ".join(self.columns)
        table = self.rows._meta.table_name
        for i in range(0, len(jobs), IN_CHUNK):
            chunk = jobs[i:i + IN_CHUNK]
            sql = (f"SELECT {columns} FROM {table} WHERE {self.job_column} IN "
                   f"({', '.join('?' * len(chunk))})")
            for values in self.db.execute_sql(sql, chunk):
                found[values[self.columns.index(self.job_column)]] = list(values)
        return found

    def link(self, jobs):
        """Append a link for the row of each job as it is stored now (inside the caller's
        transaction); jobs without a row get none."""
        jobs = list(dict.fromkeys(jobs))
        stored = self._stored(jobs)
        self._append([(job, self.digest(stored[job])) for job in jobs if job in stored])

    def drop(self, jobs):
        """Append a link saying retention deleted these jobs' rows."""
        self._append([(job, "") for job in dict.fromkeys(jobs)])

    def _append(self, entries):
        """Write links for (job, digest) entries and move the head."""
        if not entries:
            return
        rows, prev = [], self.head
        for job, digest in entries:
            self.seq += 1
            prev = link_hash(prev, self.seq, job, digest)
            rows.append((self.seq, job, digest, prev))
        table = self.links._meta.table_name
        self.db.connection().executemany(
            f"INSERT INTO {table} (seq, job, digest, hash) VALUES (?, ?, ?, ?)", rows)
        self.head = prev
        self.meta.replace(key=HEAD_KEY, value=prev).execute()

    def mark_started(self):
        """Record the head even with no links yet: from now on a missing chain is a cut one."""
        self.meta.replace(key=HEAD_KEY, value=self.head).execute()

    @contextlib.contextmanager
    def atomic(self):
        """A transaction of the database; if it fails, the links it held were not written and
        the chain's head is where it was."""
        saved = self.seq, self.head
        try:
            with self.db.atomic():
                yield
        except BaseException:
            self.seq, self.head = saved
            raise

    def trim(self, keep_links):
        """Keep about the newest keep_links links: rows whose newest link is older are linked
        anew first (inside the caller's transaction)."""
        count = self.links.select().count()
        if count <= 2 * keep_links:
            return
        cut = self.seq - keep_links  # links up to this seq go
        table, links = self.rows._meta.table_name, self.links._meta.table_name
        stale = [job for (job,) in self.db.execute_sql(
            f"SELECT r.{self.job_column} FROM {table} r WHERE (SELECT MAX(l.seq) FROM {links} l "
            f"WHERE l.job = r.{self.job_column}) <= ?", (cut,))]
        self.link(stale)
        anchor = self.links.get(self.links.seq == cut).hash
        self.links.delete().where(self.links.seq <= cut).execute()
        self.meta.replace(key=ANCHOR_KEY, value=anchor).execute()

    def verify(self):
        """Check the chain and every row against it: {ok, rows, links, head, problems}."""
        problems = []
        prev, expected_seq, latest = self._meta(ANCHOR_KEY), None, {}
        count = 0
        query = self.links.select().order_by(self.links.seq).tuples()
        for seq, job, digest, stored_hash in query.iterator():
            count += 1
            if expected_seq is not None and seq != expected_seq:
                problems.append(f"links {expected_seq}..{seq - 1} of the chain are missing")
            if link_hash(prev, seq, job, digest) != stored_hash:
                problems.append(f"link {seq} (job {job}) does not follow from the one before: "
                                "altered")
            prev, expected_seq, latest[job] = stored_hash, seq + 1, digest
        if prev != self._meta(HEAD_KEY) and (count or self._meta(HEAD_KEY) != GENESIS):
            problems.append("the chain ends before its recorded head: its last links were "
                            "deleted")
        columns = ", ".join(self.columns)
        job_at = self.columns.index(self.job_column)
        rows = 0
        for values in self.db.execute_sql(f"SELECT {columns} FROM {self.rows._meta.table_name}"):
            rows += 1
            job = values[job_at]
            digest = latest.pop(job, None)
            if digest is None:
                problems.append(f"row {job} is not in the chain: written behind the daemon's "
                                "back")
            elif digest == "":
                problems.append(f"row {job} was pruned, yet it is there again")
            elif digest != self.digest(list(values)):
                problems.append(f"row {job} was altered")
        problems.extend(f"row {job} was deleted" for job, digest in latest.items() if digest)
        return {"ok": not problems, "rows": rows, "links": count, "head": prev,
                "problems": problems[:PROBLEMS_SHOWN_MAX], "problem_count": len(problems)}
