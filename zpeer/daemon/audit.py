"""The audit journal: exec audit events on disk the moment they happen, SQLite once a second.

The leader audits every exec it routes, runs or originates, and how it ended. Writing each event
to SQLite in its own transaction cost the leader about 0.23 ms of CPU per `true` (two
transactions: the exec, then its exit), a third of its share of a short command. So each event is
appended to `audit.journal` next to the registry as one msgpack record in one write(), and the
registry writes the queued rows to `exec_log` in one transaction per `FLUSH_S` (sooner for
`d history` and at stop), then empties the journal. A daemon that is SIGKILLed loses nothing:
the next one on that home replays the journal first. A record cut short by the kill (a write is
not atomic on a full disk) ends the replay: everything before it is kept.

Also here: the SQL of those batches (`statements`) and of the retention (`PRUNE_SQL`: a leader
keeps the newest `history_rows` rows, see Registry.keep_history).
"""
import logging
import os

import msgpack

log = logging.getLogger(__name__)

JOURNAL_FILE = "audit.journal"
FLUSH_S = 1.0  # queued audit rows reach SQLite within this long
MAX_REPLAY_BYTES = 256 << 20  # a journal bigger than this is not read whole into memory
PRUNE_EVERY_ROWS = 1000  # audit rows written between two prunes (the table holds up to this many extra)
PRUNE_BATCH_ROWS = 5000  # audit rows one prune deletes at most (about 20 ms): a backlog takes several
PRUNE_PAUSE_S = 0.05  # between those prunes, so the loop keeps serving


class Journal:
    """Append-only file of (job, fields) audit events, emptied once SQLite holds them."""

    def __init__(self, directory):
        self.path = os.path.join(directory, JOURNAL_FILE)
        self.fd = None  # opened on the first event: workers, which audit nothing, have no journal
        self.broken = False

    def append(self, job, fields):
        """Write one event. A failing disk only loses the journal's safety net (the event stays
        queued for SQLite): after a failed or short write the journal takes nothing more until
        clear(), so a torn record stays its last one and the replay keeps all before it."""
        if self.broken:
            return
        try:
            record = msgpack.packb([job, fields], use_bin_type=True)
        except (TypeError, ValueError) as exc:  # a value msgpack cannot hold: nothing was written
            log.warning("audit journal %s: event of job %s not journalled: %s", self.path, job, exc)
            return
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if os.write(self.fd, record) != len(record):
                raise OSError("short write (disk full?)")
        except OSError as exc:
            log.warning("audit journal %s: %s (rows still reach the database)", self.path, exc)
            self.broken = True

    def clear(self):
        """SQLite holds every event written so far: start the journal afresh."""
        try:
            if self.fd is not None:
                os.ftruncate(self.fd, 0)
            elif os.path.exists(self.path):  # replayed, nothing appended since
                os.truncate(self.path, 0)
            self.broken = False
        except OSError as exc:
            log.warning("audit journal %s: cannot empty it: %s", self.path, exc)

    def replay(self):
        """The events a previous daemon left unwritten, oldest first (the file stays until clear())."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_REPLAY_BYTES)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("audit journal %s: cannot read it: %s", self.path, exc)
            return []
        events = []
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=MAX_REPLAY_BYTES)
        unpacker.feed(raw)
        try:
            for item in unpacker:
                if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                        or not isinstance(item[1], dict)):
                    raise ValueError("not a (job, fields) record")
                events.append((item[0], item[1]))
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            log.warning("audit journal %s: unreadable after %d records (%s): the rest is dropped",
                        self.path, len(events), type(exc).__name__)
        return events

    def close(self):
        """Close the file (its content stays for the next daemon if SQLite did not take it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def statements(model, batch):
    """Consecutive audit rows of one shape as (sql, parameter rows), for executemany.

    Rows with "command" are inserts (replacing a row with that job id; missing fields take the
    model's defaults, as peewee's insert would), the others update the row of their job. Values
    go through each field's db_value, the conversion peewee applies.
    """
    fields = model._meta.fields
    groups = []
    for job, values in batch:
        insert = "command" in values
        if insert:
            values = dict(values)
            for name, field in fields.items():
                if name not in values and name != "job" and field.default is not None:
                    values[name] = field.default() if callable(field.default) else field.default
        names = tuple(values)
        params = [fields[n].db_value(values[n]) for n in names]
        if not groups or groups[-1][0] != (insert, names):
            groups.append(((insert, names), []))
        groups[-1][1].append([job] + params if insert else params + [job])
    table = model._meta.table_name
    for (insert, names), rows in groups:
        columns = [fields[n].column_name for n in names]
        if insert:
            sql = (f"INSERT OR REPLACE INTO {table} (job, {', '.join(columns)}) "
                   f"VALUES ({', '.join('?' * (len(columns) + 1))})")
        else:
            sql = f"UPDATE {table} SET {', '.join(c + ' = ?' for c in columns)} WHERE job = ?"
        yield sql, rows


# The audit rows beyond the newest N (parameters: N - 1, then the most rows to delete at once),
# oldest first. Rows are appended, so rowid order is the order they came in: walking N rows of
# the rowid b-tree costs a few ms at 100,000, where counting or sorting by time would scan all.
PRUNE_SQL = """DELETE FROM exec_log WHERE rowid IN (
    SELECT rowid FROM exec_log
    WHERE rowid < (SELECT rowid FROM exec_log ORDER BY rowid DESC LIMIT 1 OFFSET ?)
    ORDER BY rowid LIMIT ?)"""
