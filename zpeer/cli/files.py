"""`d pushFile` and `d pullFile`: copy files and directories to and from peers.

A copy is an exec session whose jobs run zpeer's file agent (zpeer.filecopy explains the
streams). Push: this process is the sender; a fan-out's stream leaves this node once (the
leader copies it to every peer, each at its own pace). Pull: this process is a receiver per
peer, writing `DIR/PEER/...` when there are several.
"""
import json
import os
import signal
import sys
import time

import click

from zpeer import filecopy
from zpeer.cli.common import CONTEXT, Seconds, client, exclude_option, peer_option
from zpeer.cli.stdio import binary, local_user, report, write_all
from zpeer.errors import EXIT_ZPEER_FAILURE, FailedToConnect, OutputFailed, ZpeerError
from zpeer.targets import many_peers, needs_known, peer_names, resolve_targets
from zpeer.wire.protocol import os_text

POLL_WAIT_S = 0.5
POLL_GRACE_S = 10.0
STDIN_POLL_MAX_BYTES = 4 << 20  # stdin one poll carries at most (the window bounds it too)
CANCEL_WAIT_POLLS = 20
PROGRESS_EVERY_S = 0.25
SUMMARY_OK_PEERS_MAX = 10
STALL_S = 30.0  # a push's peer that takes nothing for this long is left behind


@click.command("pushFile", context_settings=CONTEXT)
@peer_option
@exclude_option
@click.option("--dest", metavar="PATH",
              help="Where on the peers (default: the user's home); an existing directory "
                   "receives each SRC by name, as cp does.")
@click.option("--user", metavar="NAME",
              help="Write as this user (the target daemon must run as root).")
@click.option("--batch", type=click.IntRange(1), metavar="N",
              help="Copy to at most N peers at a time.")
@click.option("--checksum", is_flag=True,
              help="Skip files whose content is the same (not only size and mtime).")
@click.option("--stall", type=Seconds(0.1), default=STALL_S, show_default=True,
              metavar="SECONDS", help="Leave a peer that takes no data for this long behind.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines events (start/file/error/done).")
@click.argument("srcs", nargs=-1, required=True, metavar="SRC...")
def push_file(peers, exclude, dest, user, batch, checksum, stall, as_json, srcs):
    """Copy local files and directories to peers; exit 0 when every file reached every peer.

    \b
    Modes, mtimes and symbolic links are kept (owners too when the peer's daemon is root);
    identical files are skipped; each file appears only once complete and verified.
    Examples:
      d pushFile --peer vps --dest /etc/app app.conf
      d pushFile --peer all --dest /srv site/
    """
    spec = {"op": "recv", "dest": os_text(dest), "checksum": checksum, "stall_s": stall}
    sys.exit(run_copy("push", list(peers), spec, user, batch, exclude, as_json, srcs=srcs))


@click.command("pullFile", context_settings=CONTEXT)
@peer_option
@exclude_option
@click.option("--dest", metavar="DIR", default=".", show_default=True,
              help="Local directory; from several peers each gets DIR/PEER/.")
@click.option("--user", metavar="NAME",
              help="Read as this user (the target daemon must run as root).")
@click.option("--batch", type=click.IntRange(1), metavar="N",
              help="Copy from at most N peers at a time.")
@click.option("--checksum", is_flag=True,
              help="Skip files whose content is the same (not only size and mtime).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines events (start/file/error/done).")
@click.argument("srcs", nargs=-1, required=True, metavar="SRC...")
def pull_file(peers, exclude, dest, user, batch, checksum, as_json, srcs):
    """Copy files and directories from peers; exit 0 when every file came from every peer.

    \b
    SRC is a path on the peer (relative ones start in the user's home). Nothing is ever
    written outside DIR, whatever a peer sends.
    Examples:
      d pullFile --peer vps /var/log/app.log
      d pullFile --peer 'web*' --dest logs /var/log/nginx
    """
    spec = {"op": "send", "srcs": [os_text(s) for s in srcs], "checksum": checksum}
    sys.exit(run_copy("pull", list(peers), spec, user, batch, exclude, as_json, dest=dest))


class LocalFailure(ZpeerError):
    """The local destination cannot take the copy: no file came (exit 1, not zpeer's own)."""

    exit_code = 1


class _LeaveNow(Exception):
    """A second Ctrl-C: stop waiting for the remote side."""


def run_copy(direction, peers, spec, user, batch, exclude, as_json, srcs=(), dest="."):
    """Run a push or a pull; returns the exit status."""
    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)
        if len(interrupted) > 1:
            raise _LeaveNow

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    view = View(as_json, many_peers(peers))
    try:
        conn = client()
        groups = _groups(conn, peers, exclude, batch)
        walked = filecopy.walk(srcs, spec["checksum"]) if direction == "push" else None
        if walked is not None:
            for message in walked[2]:
                view.local_failure(message)
        statuses = {}
        for group in groups:
            if interrupted:
                break
            if direction == "push":
                copy = Push(conn, view, interrupted, spec, user, *walked[:2])
            else:
                copy = Pull(conn, view, interrupted, spec, user, dest)
            statuses.update(copy.run(group, exclude if not batch else ()))
    except ZpeerError as err:
        view.end_progress()
        return report(err)
    except _LeaveNow:
        view.end_progress()
        return 130
    except BrokenPipeError:
        os._exit(141)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    view.end_progress()
    if interrupted:
        return 130
    try:
        view.summary(statuses)
    except OutputFailed:
        pass
    rc = max(statuses.values(), default=EXIT_ZPEER_FAILURE)
    if walked is not None and walked[2]:
        rc = max(rc, 1)
    return rc


def _groups(conn, peers, exclude, batch):
    """The sessions to run: all peers in one, or --batch N of them in each (the peers resolved
    here then, since each session's stream starts from its beginning)."""
    if not batch:
        return [peers]
    names = peer_names(peers)
    known = []
    if needs_known(names):
        known = [r["id"] for r in conn.call("peers")["peers"]]
    targets = resolve_targets(peers, known, list(exclude))
    return [targets[i:i + batch] for i in range(0, len(targets), batch)]


class View:
    """What the user sees: failures as `PEER: message`, a progress line on a terminal, a
    summary per peer after a fan-out, or JSON Lines."""

    def __init__(self, as_json, multi):
        self.as_json, self.multi = as_json, multi
        self.out, self.err = binary("stdout"), binary("stderr")
        self.tty = not as_json and sys.stderr is not None and _isatty(sys.stderr)
        self.counts = {}  # peer -> the receiver's counts
        self.total = self.moved = 0
        self.files_total = self.files_done = 0
        self.peers_total = self.peers_done = 0
        self.started_at = time.monotonic()
        self.drawn_at = 0.0
        self.line = False

    def json(self, **record):
        """One JSON Lines event."""
        write_all(self.out, json.dumps(record).encode() + b"\n")

    def local_failure(self, message):
        """Something here failed (a source that cannot be read)."""
        if self.as_json:
            self.json(event="error", peer=None, message=message)
        else:
            self._err(message)

    def failure(self, peer, message, hint=""):
        """Something failed on (or for) a peer."""
        if self.as_json:
            self.json(event="error", peer=peer, message=message, hint=hint or None)
        else:
            self._err(f"{peer}: {message}" + (f"\n  hint: {hint}" if hint and not self.multi
                                              else ""))

    def _err(self, text):
        self.end_progress()
        write_all(self.err, text.encode() + b"\n")

    def output(self, peer, data):
        """What the agent said on stderr (a notice, or a crash)."""
        for line in bytes(data).decode("utf-8", "backslashreplace").splitlines():
            self.failure(peer, line)

    def file_done(self, peer, path):
        """A file is in place on (or from) a peer."""
        self.files_done += 1
        if self.as_json:
            self.json(event="file", peer=peer, path=filecopy.shown(path), status="written")
        self.progress()

    def started(self, peer):
        """A peer's copy began."""
        if self.as_json:
            self.json(event="start", peer=peer)

    def done(self, peer, rc, counts):
        """A peer's copy ended with exit status rc."""
        self.peers_done += 1
        self.counts[peer] = counts
        if self.as_json:
            self.json(event="done", peer=peer, status=rc, **(counts or {}))
        self.progress(force=True)

    def progress(self, force=False):
        """Redraw the progress line (bytes, rate, ETA, files, peers done) on a terminal."""
        now = time.monotonic()
        if not self.tty or (not force and now - self.drawn_at < PROGRESS_EVERY_S):
            return
        self.drawn_at = now
        spent = max(now - self.started_at, 1e-3)
        rate = self.moved / spent
        eta = ""
        if rate > 0 and self.total > self.moved:
            eta = f", ETA {_duration((self.total - self.moved) / rate)}"
        line = (f"{_size(self.moved)}/{_size(self.total)} {_size(rate)}/s{eta}, "
                f"{self.files_done} files, peers {self.peers_done}/{self.peers_total}")
        try:
            write_all(self.err, b"\r" + line.encode() + b"\x1b[K")
            self.line = True
        except OutputFailed:
            self.tty = False

    def end_progress(self):
        """Take the progress line away (before any other line, and at the end)."""
        if self.line:
            self.line = False
            try:
                write_all(self.err, b"\r\x1b[K")
            except OutputFailed:
                pass

    def summary(self, statuses):
        """A line per peer after a fan-out (the ones that went well counted past a few)."""
        if not self.multi or self.as_json or not statuses:
            return
        lines, ok = [], []
        for peer, rc in statuses.items():
            counts = self.counts.get(peer)
            if rc == 0 and counts:
                ok.append(f"{peer}: ok, {counts['files']} files ({counts['written']} written, "
                          f"{counts['skipped']} skipped), {_size(counts['bytes'])}")
            elif counts:
                lines.append(f"{peer}: {counts['failed']} failed, {counts['written']} written, "
                             f"{counts['skipped']} skipped")
            else:
                lines.append(f"{peer}: failed")
        if len(ok) > SUMMARY_OK_PEERS_MAX:
            ok = [f"{len(ok)} peers: ok"]
        write_all(self.err, ("--\n" + "\n".join(ok + lines) + "\n").encode())


def _isatty(stream):
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Copy:
    """One session of a copy: its jobs' agents, this end's stream to them, their events."""

    def __init__(self, conn, view, interrupted, spec, user):
        self.conn, self.view, self.interrupted = conn, view, interrupted
        self.spec, self.user = spec, user
        self.sid = None
        self.targets = []
        self.status = {}  # peer -> exit status of its copy
        self.pending = bytearray()  # stream bytes for the agents, not sent yet
        self.eof = False  # the stream's end is in `pending`
        self.eof_sent = False
        self.stdin_frame = False  # polls carry stdin as a frame of its own (the daemon said so)

    def run(self, peers, exclude):
        """Open the session, follow it to its end; {peer: exit status}."""
        reply = self.conn.call(
            "exec_open", targets=peers, cmd=filecopy.describe(self.spec), dir=None,
            user=self.user, timeout=None, exclude=list(exclude), batch=0, stdin=True,
            pid=os.getpid(), ouser=local_user(), file=self.spec, wait_s=0, raw=True,
            timeout_s=POLL_GRACE_S)
        self.sid, self.targets = reply["sid"], reply["targets"]
        self.stdin_frame = bool(reply.get("stdin_frame"))  # a daemon from before: in the map
        self.view.peers_total += len(self.targets)
        self.begin()
        try:
            self._follow(reply)
        finally:
            self.close()
        return {peer: self.status.get(peer, EXIT_ZPEER_FAILURE) for peer in self.targets}

    def _follow(self, reply):
        room = reply.get("room", 0)
        cancel_polls = 0
        self._deliver(reply)
        while not reply["done"]:
            if self.interrupted:
                if cancel_polls == 0:
                    self._cancel()
                cancel_polls += 1
                if cancel_polls > CANCEL_WAIT_POLLS:
                    return
            chunk, eof = None, False
            if not self.interrupted and not self.eof_sent:
                self.fill(max(0, min(room, STDIN_POLL_MAX_BYTES)))
                take = min(room, len(self.pending), STDIN_POLL_MAX_BYTES)
                if take:
                    view = memoryview(self.pending)
                    chunk = view[:take].tobytes()  # one copy (a slice, then bytes, made two)
                    view.release()
                    del self.pending[:take]
                if self.eof and not self.pending:
                    eof = self.eof_sent = True
            more = not self.eof_sent and not self.interrupted and (self.pending or self.ready())
            wait = 0 if (chunk or eof) and more and room > len(chunk or b"") else POLL_WAIT_S
            try:
                framed = chunk if chunk and self.stdin_frame else None
                reply = self.conn.call(
                    "exec_poll", sid=self.sid, stdin=None if framed else chunk, data=framed,
                    eof=eof, wait_s=wait,
                    need_room=bool(more), raw=True, timeout_s=wait + POLL_GRACE_S)
            except FailedToConnect:
                raise FailedToConnect("Failed to connect: the local daemon stopped answering "
                                      "mid-copy") from None
            room = reply.get("room", 0)
            self._deliver(reply)

    def _deliver(self, reply):
        frames = reply.get("frames", ())
        for event in reply["events"]:
            peer, kind = event[0], event[1]
            if kind in ("o", "e"):
                data = event[2]
                data = frames[data] if isinstance(data, int) else data
                if kind == "o":
                    self.stdout(peer, data)
                else:
                    self.view.output(peer, data)
            elif kind == "s":
                self.view.started(peer)
            elif kind == "x":
                self.exited(peer, event[2], event[3])
            elif kind == "f":
                self.failed(peer, event[2], event[3], event[4])

    def _cancel(self):
        try:
            self.conn.call("exec_cancel", sid=self.sid, timeout_s=2)
        except ZpeerError:
            pass

    def failed(self, peer, code, message, hint):
        """zpeer could not run or finish the copy there (a peer left behind: it failed)."""
        if peer not in self.status:
            self.status[peer] = 1 if code == "peer_slow" else EXIT_ZPEER_FAILURE
            self.view.failure(peer, message, hint)
            self.peer_ended(peer)
            self.view.done(peer, self.status[peer], None)

    # what a push and a pull do differently
    def begin(self):
        """The session is open."""

    def fill(self, room):
        """Add stream bytes to `pending` (about `room` of them)."""

    def ready(self):
        """True when fill would add something now."""
        return False

    def stdout(self, peer, data):
        """Bytes of a peer's agent's stdout."""
        raise NotImplementedError

    def exited(self, peer, rc, how):
        """A peer's agent ended."""
        raise NotImplementedError

    def peer_ended(self, peer):
        """A peer is out of the copy, however."""

    def close(self):
        """The session is over, however it ended."""


class Push(Copy):
    """This process sends; each peer's agent receives and answers."""

    def __init__(self, conn, view, interrupted, spec, user, entries, paths):
        super().__init__(conn, view, interrupted, spec, user)
        self.entries, self.paths = entries, paths
        self.readers = {}
        self.needs = {}  # peer -> bitmap, once it said
        self.ended = set()
        self.phase = "manifest"
        self.pieces = None
        self.problems = []
        self.first_need_at = None  # when the first peer said which files it needs

    def begin(self):
        for peer in self.targets:
            self.readers[peer] = filecopy.unpacker()
        for record in filecopy.manifest_records(self.entries):
            self.pending += record
        self.phase = "wait"

    def ready(self):
        if self.phase == "wait":
            self._maybe_start()
        return self.phase == "data" or (self.phase == "end" and not self.eof)

    def _maybe_start(self):
        live = [p for p in self.targets if p not in self.ended]
        if self.needs and self.first_need_at is None:
            self.first_need_at = time.monotonic()
        late = self.first_need_at is not None and \
            time.monotonic() - self.first_need_at > self.spec["stall_s"]
        if late:  # one that has not answered yet is left to the stall limit of the stream
            live = [p for p in live if p in self.needs]
        if all(p in self.needs for p in live):
            union = [i for i, e in enumerate(self.entries) if e["k"] == "f" and any(
                filecopy.has_bit(self.needs[p], i) for p in live)]
            self.view.total += sum(self.entries[i]["s"] for i in union)
            self.view.files_total = len(union)
            self.pieces = self._data(union)
            self.phase = "data"

    def _data(self, union):
        for i in union:
            yield from filecopy.file_records(i, self.entries[i], self.paths[i], self.problems)

    def fill(self, room):
        if self.phase == "wait":
            self._maybe_start()
        if self.phase != "data":
            return
        while len(self.pending) < room:
            piece = next(self.pieces, None)
            if piece is None:
                self.pending += filecopy.pack(["q"])
                self.phase, self.eof = "end", True
                return
            if len(piece) > 64 and not isinstance(piece, (str,)):
                self.view.moved += len(piece)
            self.pending += piece
        self.view.progress()

    def stdout(self, peer, data):
        reader = self.readers.get(peer)
        if reader is None:
            return
        try:
            reader.feed(data)
            for record in reader:
                self._answer(peer, record)
        except Exception as exc:  # noqa: BLE001 - whatever a peer sends, this end stands
            self.readers.pop(peer, None)
            self.status[peer] = max(self.status.get(peer, 0), 1)
            self.view.failure(peer, f"Bad answer from {peer}: {type(exc).__name__}")

    def _answer(self, peer, record):
        kind = record[0]
        if kind == "n" and peer not in self.needs and isinstance(record[1], bytes):
            self.needs[peer] = record[1]
        elif kind == "K":
            i = record[1]
            if type(i) is int and 0 <= i < len(self.entries):
                self.view.file_done(peer, self.entries[i]["p"])
        elif kind == "F":
            self.view.failure(peer, str(record[2]))
        elif kind == "D":
            counts = record[1] if isinstance(record[1], dict) else {}
            self.view.counts[peer] = counts

    def exited(self, peer, rc, how):
        counts = self.view.counts.get(peer)
        if how == "cancelled":
            status = 130
        elif counts is None:
            status = 1 if rc in (0, 1, 2) else EXIT_ZPEER_FAILURE
            if rc == 0:
                self.view.failure(peer, "The copy ended without its summary")
        else:
            status = 0 if rc == 0 and not counts.get("failed") else 1
        self.status[peer] = status
        self.peer_ended(peer)
        self.view.done(peer, status, counts)

    def peer_ended(self, peer):
        self.ended.add(peer)
        self.readers.pop(peer, None)


class Pull(Copy):
    """Each peer's agent sends; this process receives, into DIR (or DIR/PEER from several)."""

    def __init__(self, conn, view, interrupted, spec, user, dest):
        super().__init__(conn, view, interrupted, spec, user)
        self.dest = os.fsencode(dest)
        self.receivers = {}
        self.asked = set()  # peers whose need went out (or that ended before)

    def begin(self):
        multi = self.view.multi or len(self.targets) > 1
        if multi:
            try:
                os.makedirs(self.dest, exist_ok=True)
            except OSError as exc:
                raise LocalFailure(filecopy.failure(exc, self.dest)) from None
        for peer in self.targets:
            where = self.dest
            if multi:
                where = os.path.join(self.dest, peer.encode())
                try:
                    os.mkdir(where, 0o755)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise LocalFailure(filecopy.failure(exc, where)) from None
            self.receivers[peer] = filecopy.Receiver(
                where, lambda record, peer=peer: self._answer(peer, record),
                self.spec["checksum"])

    def ready(self):
        return bool(self.pending) or (not self.eof and self._all_asked())

    def _all_asked(self):
        return all(p in self.asked for p in self.targets)

    def fill(self, room):
        if not self.eof and self._all_asked():
            self.eof = True

    def _answer(self, peer, record):
        kind = record[0]
        receiver = self.receivers.get(peer)
        if kind == "n":
            self.pending += filecopy.pack(["n", peer, record[1]])
            self.asked.add(peer)
            if receiver is not None:
                needed = receiver.needed
                self.view.total += sum(receiver.entries[i]["s"] for i in needed)
                self.view.files_total += len(needed)
        elif kind == "K":
            self.view.file_done(peer, receiver.entries[record[1]]["p"] if receiver else b"")
        elif kind == "F":
            self.view.failure(peer, record[2])
        elif kind == "D":
            self.view.counts[peer] = record[1]

    def stdout(self, peer, data):
        receiver = self.receivers.get(peer)
        if receiver is None:
            return
        try:
            receiver.feed(data)
        except filecopy.Violation as exc:
            self.view.failure(peer, f"Refused the copy from {peer}: {exc}")
            self.status[peer] = 1
            self.peer_ended(peer)
        except OSError as exc:
            self.view.failure(peer, filecopy.failure(exc, receiver.dest))
            self.status[peer] = 1
            self.peer_ended(peer)
        else:
            self.view.moved = sum(r.counts["bytes"] for r in self.receivers.values())
            self.view.progress()

    def exited(self, peer, rc, how):
        receiver = self.receivers.get(peer)
        if peer in self.status:  # refused already
            status = self.status[peer]
        elif how == "cancelled":
            status = 130
        elif receiver is None or receiver.state != "done":
            status = 1 if rc in (0, 1, 2) else EXIT_ZPEER_FAILURE
            self.view.failure(peer, "The copy ended before all of it came")
        else:
            status = 0 if rc == 0 and not receiver.failures else 1
        self.status[peer] = status
        counts = receiver.counts if receiver is not None else None
        self.peer_ended(peer)
        self.view.done(peer, status, counts)

    def peer_ended(self, peer):
        self.asked.add(peer)
        receiver = self.receivers.pop(peer, None)
        if receiver is not None:
            self.view.counts[peer] = receiver.counts
            receiver.close()

    def close(self):
        for peer in list(self.receivers):
            self.receivers.pop(peer).close()
