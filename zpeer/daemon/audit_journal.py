"""The audit journal: exec audit events on disk the moment they happen, before SQLite has them.

The leader appends each audit event to `audit.journal` next to the registry, as one msgpack
record in one write(); the audit log (zpeer.daemon.audit) writes the queued rows to SQLite in one
transaction per batch and then empties the journal. A daemon that is SIGKILLed loses nothing:
the next one on that home replays the journal first. A record cut short by the kill (a write is
not atomic on a full disk) ends the replay: everything before it is kept.
"""
import logging
import os

import msgpack

from zpeer import config

log = logging.getLogger(__name__)

JOURNAL_FILE = "audit.journal"
MAX_REPLAY_BYTES = 256 << 20  # a journal bigger than this is not read whole into memory


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
                self.fd = config.open_private(self.path, append=True)
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
        """The events a previous daemon left unwritten, oldest first (kept until clear())."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_REPLAY_BYTES)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("audit journal %s: cannot read it: %s", self.path, exc)
            return []
        events = []
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True,
                                    max_buffer_size=MAX_REPLAY_BYTES)
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
