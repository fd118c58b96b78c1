"""Recordings of pseudo-terminal sessions on the leader (`d setPeerConfig --record-sessions`):
what each session's screen showed, as an asciicast v2 file in `$ZPEER_HOME/casts/`.

The audit (zpeer.daemon.audit) hands every channel message it sees here: an exec with a `pty`
starts a recording (while recording is on), its screen output ("out", only from its target,
each seq once) and window sizes ("winsize", only from its origin) are appended as events, its
exit or error ends it. Files are named by the audit row's job and go when that row is pruned
(`sweep`), so recordings rotate with `d history`. The leader records what crosses it: a worker's
session on itself never does.
"""
import codecs
import json
import logging
import os
import re
import time

from zpeer import config
from zpeer.wire import protocol

log = logging.getLogger(__name__)

CASTS_DIR = "casts"
CAST_MAX_BYTES = 64 << 20  # one recording stops growing here (a `cat` of a huge file)
READ_CHUNK_BYTES = 256 << 10  # what one replay request carries (an rpc header is <= 1 MiB)
OPEN_MAX = 1000  # recordings open at once
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,150}")


def file_name(job):
    """The file of a job's recording: its name when that is a plain word, else hex (job ids
    are their origins' to choose)."""
    if _SAFE.fullmatch(job) and not job.startswith("x-"):
        return job + ".cast"
    return "x-" + job.encode("utf-8", "surrogateescape").hex() + ".cast"


def job_of(name):
    """The job a recording's file name stands for (None: not a recording's)."""
    if not name.endswith(".cast"):
        return None
    stem = name[:-len(".cast")]
    if stem.startswith("x-"):
        try:
            return bytes.fromhex(stem[2:]).decode("utf-8", "surrogateescape")
        except ValueError:
            return None
    return stem


class Recording:
    """One session being recorded."""

    __slots__ = ("name", "origin", "target", "fd", "started", "seq", "size", "decoder")

    def __init__(self, name, origin, target, fd):
        self.name, self.origin, self.target, self.fd = name, origin, target, fd
        self.started = time.monotonic()
        self.seq = 0  # the last output seq recorded: what is sent again is not recorded twice
        self.size = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")  # chunks cut characters


class Casts:
    """The leader's recordings: the open ones and the directory."""

    def __init__(self, home):
        self.dir = os.path.join(home, CASTS_DIR)
        self.enabled = False
        self.open = {}  # job id as sent -> Recording

    def observe(self, from_peer, header, data, name, trusted):
        """A channel message the leader saw (`name`: the audit row's job for an exec)."""
        mtype, job = header.get("t"), header.get("job")
        if mtype == "exec":
            if self.enabled and isinstance(header.get("pty"), dict) and job not in self.open:
                self._start(job, name, from_peer, header)
            return
        rec = self.open.get(job)
        if rec is None:
            return
        if mtype == "out":
            if (trusted or from_peer == rec.target) and header.get("to") == rec.origin:
                seq = header.get("seq")
                if data is not None and (not isinstance(seq, int) or seq > rec.seq):
                    rec.seq = seq if isinstance(seq, int) else rec.seq
                    self._event(rec, "o", rec.decoder.decode(bytes(data)))
        elif mtype == "winsize":
            if (trusted or from_peer == rec.origin) and header.get("to") == rec.target:
                self._event(rec, "r", f"{header.get('cols')}x{header.get('rows')}")
        elif mtype in ("exit", "error") and header.get("to") == rec.origin \
                and (trusted or from_peer == rec.target):
            self._end(job)

    def _start(self, job, name, origin, header):
        """A recording's file and its header line."""
        if len(self.open) >= OPEN_MAX:
            return
        pty = header["pty"]
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = config.open_private(os.path.join(self.dir, file_name(name)))
        except OSError as exc:
            log.warning("cannot record session %s: %s", name, exc)
            return
        rec = Recording(name, origin, str(header.get("to")), fd)
        self.open[job] = rec
        first = {"version": 2, "width": _int(pty.get("cols"), 80),
                 "height": _int(pty.get("rows"), 24), "timestamp": int(time.time()),
                 "command": str(protocol.shown(header.get("cmd"))),
                 "title": f"{origin} -> {rec.target}",
                 "env": {"TERM": str(pty.get("term"))[:64]}}
        self._write(rec, json.dumps(first) + "\n")

    def _event(self, rec, code, text):
        """One event line: seconds since the start, its code, its data."""
        if text:
            self._write(rec, json.dumps([round(time.monotonic() - rec.started, 6), code, text])
                        + "\n")

    def _write(self, rec, line):
        """Append to a recording, within CAST_MAX_BYTES."""
        data = line.encode()
        if rec.fd is None or rec.size + len(data) > CAST_MAX_BYTES:
            return
        try:
            os.write(rec.fd, data)
            rec.size += len(data)
        except OSError as exc:
            log.warning("recording %s stopped: %s", rec.name, exc)
            os.close(rec.fd)
            rec.fd = None

    def _end(self, job):
        """The session ended: its file is complete."""
        rec = self.open.pop(job)
        if rec.fd is not None:
            os.close(rec.fd)

    def close(self):
        """The daemon stops: every open recording ends where it is."""
        for job in list(self.open):
            self._end(job)

    def has(self, name):
        """True if there is a recording for the audit row `name`."""
        return os.path.exists(os.path.join(self.dir, file_name(name)))

    def read(self, name, offset):
        """(bytes from offset, the file's size) of a recording; FileNotFoundError if none."""
        with open(os.path.join(self.dir, file_name(name)), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, offset))
            return f.read(READ_CHUNK_BYTES), size

    def sweep(self, kept):
        """Remove the recordings of audit rows that are gone; `kept(names)` says which of these
        rows still exist."""
        try:
            names = [(n, job_of(n)) for n in os.listdir(self.dir)]
        except FileNotFoundError:
            return
        recording = {rec.name for rec in self.open.values()}
        jobs = [job for _, job in names if job is not None and job not in recording]
        alive = kept(jobs) if jobs else set()
        for filename, job in names:
            if job is not None and job not in recording and job not in alive:
                try:
                    os.unlink(os.path.join(self.dir, filename))
                except OSError:
                    pass


def _int(value, default):
    """A positive int from a peer's field, else default."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else default
