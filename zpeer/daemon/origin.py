"""Origin side of the channels: one session per CLI call, one channel (job) per target peer.

The CLI opens a session (`exec_open`), then long-polls it (`exec_poll`): the daemon answers
when output is ready or a short deadline passes. Stdin comes on a second connection
(`exec_input`), each chunk answered once a quarter of the stdin window is free again, so a command
that reads slowly holds the CLI's reads back (an older CLI brings stdin with its polls, and cuts
a held one short with `exec_wake` when stdin has bytes). Output bytes handed to the CLI are
returned to the target as credit, so a slow reader slows the remote command instead of growing
buffers. The frames and
states of a channel are described in zpeer.wire.channel.

Every method takes what happened and returns actions (zpeer.daemon.actions); none touches a
socket. The events a poll reply carries, per job, in order:
    [peer, "s", pid]                    started
    [peer, "o" | "e", data]             output (data: bytes, or a frame index when raw)
    [peer, "x", rc, how]                exited
    [peer, "f", code, message, hint]    failed (zpeer's own failure: 255 for it)
"""
import logging
import os
import time
import uuid
from collections import deque

from zpeer.daemon.actions import Reply, Send
from zpeer.daemon.resend import StdinLog
from zpeer.daemon.silence import origin_limit_s, resend_after_s
from zpeer.wire import messages
from zpeer.wire.channel import STDOUT, WINDOW_MAX_BYTES, Credit, Intake, Sequencer

log = logging.getLogger(__name__)

SINGLE_WINDOW_BYTES = 4 << 20     # output in flight per job when one target
SESSION_WINDOW_BYTES = WINDOW_MAX_BYTES  # shared by the jobs of a fan-out
MIN_WINDOW_BYTES = 64 << 10
POLL_REPLY_MAX_BYTES = 2 << 20
POLL_WAIT_MAX_S = 0.5
# after the exec's ttl, this much longer before a job sent and never heard of counts as lost
GIVE_UP_MARGIN_S = 0.25
STDIN_WINDOW_BYTES = 4 << 20     # stdin sent to a target and not yet taken by its command
# a CLI waiting for stdin room is answered once this share of the window is free, not at each
# ack: it then sends big chunks, not one per 64 KiB its command took
STDIN_WAKE_SHARE = 4
STDIN_MESSAGE_MAX_BYTES = 1 << 20  # stdin per message on the hops (pacing.CHUNK_MAX_BYTES)
FAN_STDIN_BYTES = 16 << 20  # a file fan-out's stdin windows, all peers together
# a --batch session keeps its stdin for the peers of later batches up to this (one window: it
# goes to each at its start without pacing); past it those are not run, and say so
STDIN_REPLAY_MAX_BYTES = STDIN_WINDOW_BYTES
FAN_STDIN_MIN_BYTES = 128 << 10
# a pseudo-terminal's screen output in flight: small, since it is not paced behind bulk (a
# `cat` of a big file on it must not fill a hop that keystrokes cross)
TTY_WINDOW_BYTES = 256 << 10
# no poll for this long (a poll is held POLL_WAIT_MAX_S at most): check whether the CLI still
# lives, and again every CLI_CHECK_S; a killed CLI's remote jobs are then cancelled well within 2 s
CLI_SILENCE_S = 0.75
CLI_CHECK_S = 0.25
SESSION_ORPHAN_S = 60.0
# (a job "sent" and not heard of: its exec may have reached the peer, its "started" not come back)
LOST_WHEN = {"running": "mid-command",
             "sent": "before the command was known to start (it may or may not have run)"}
# how often jobs are checked for silent targets (the limit is seconds): every job on every loop
# turn would make a fan-out's cost quadratic
SILENCE_SCAN_S = 0.1
GAPS_LISTED_MAX = 64  # missing chunks an alive names per job (more: the target sends all again)
ACTIVE = ("sent", "running")


def _pid_alive(pid):
    """True if a local process with that pid exists and is not a zombie (a killed CLI whose
    parent has not reaped it yet is gone all the same)."""
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _pieces(data):
    """Stdin in messages of at most STDIN_MESSAGE_MAX_BYTES (views, not copies): control on a
    hop waits behind one message at most."""
    if not data:
        return [b""]
    if len(data) <= STDIN_MESSAGE_MAX_BYTES:
        return [data]
    view = memoryview(data)
    return [view[i:i + STDIN_MESSAGE_MAX_BYTES]
            for i in range(0, len(view), STDIN_MESSAGE_MAX_BYTES)]


def _stdin_header(job, piece, eof, tty, now):
    """The stdin message of one piece for a job, kept in its StdinLog to go again if lost."""
    header = messages.stdin(job.job, job.target, eof, tty)
    job.stdin_log.sent(header, piece, now)
    return header


class OriginJob:
    """One target's channel of a session."""

    __slots__ = ("job", "target", "state", "sent_at", "last_word", "output", "stdin", "order",
                 "doom", "stdin_moved", "stdin_log")

    def __init__(self, job, target, window):
        self.job, self.target = job, target
        self.state = "queued"  # queued -> sent -> running -> done
        self.sent_at = self.last_word = None
        self.output = Intake(window)  # streams 1 and 2, as this end receives them
        self.stdin = Credit(STDIN_WINDOW_BYTES)  # stream 0, as this end sends it
        self.order = Sequencer()  # its output, taken once and in order
        # (when, code, message, hint): its target was lost while its exec may still start; the
        # failure is said once the exec's ttl has passed (zpeer.daemon.stamps)
        self.doom = None
        self.stdin_moved = 0.0  # when its command last took stdin (or had all it was sent)
        self.stdin_log = StdinLog()  # its stdin until the target has it (sent again if lost)


class Session:
    """A CLI exec call: its jobs, buffered events and the CLI request being held."""

    def __init__(self, sid, spec, targets, batch, cli_pid, verdicts):
        self.sid, self.spec, self.batch, self.cli_pid = sid, spec, batch, cli_pid
        # (job, this session if the exec was never sent, err or None: cancelled) of the ends this
        # node decided, for the audit
        self.verdicts = verdicts
        self.tty = spec.get("pty") is not None  # its traffic goes before bulk
        self.window = (TTY_WINDOW_BYTES if self.tty else SINGLE_WINDOW_BYTES if len(targets) <= 1
                       else max(MIN_WINDOW_BYTES, SESSION_WINDOW_BYTES // len(targets)))
        self.jobs = {t: OriginJob(f"{sid}.{i}", t, self.window) for i, t in enumerate(targets)}
        if spec.get("file") and len(targets) > 1:
            # a fan-out's stdin is one stream copied per peer down the line (each hop's own
            # copy, encrypted): its windows share a budget, so the leader's memory stays bounded
            share = max(FAN_STDIN_MIN_BYTES, FAN_STDIN_BYTES // len(targets))
            for job in self.jobs.values():
                job.stdin.window = min(STDIN_WINDOW_BYTES, share)
        self.queued = deque(self.jobs.values())  # not sent yet, in order (--batch)
        self.count = {"queued": len(self.jobs), "sent": 0, "running": 0, "done": 0}
        self.stdin_sent = False  # no stdin ever sent: every job has the whole stdin window
        # the stdin so far, for the jobs of later batches (None: none will need it)
        self.replay = bytearray() if batch and spec.get("stdin") and len(targets) > batch \
            else None
        self.replay_eof = False
        self.events = deque()
        self.buffered = 0
        self.waiter = None  # (identity, rid, deadline)
        # (identity, rid, deadline): a stdin feed held until there is room to send more
        self.feeder = None
        self.last_poll = time.monotonic()
        self.check_at = 0.0  # when to look again whether the CLI lives (while it does not poll)
        self.cli_gone = False  # it does not: its jobs are cancelled, the session dropped once done
        self.cancelled = False
        self.wants_room = False
        self.opened = None  # what exec_open answers (sid, targets), sent with the first reply
        self.raw = False  # the CLI takes output as raw frames after the reply map (no copies)

    def move(self, job, state):
        """Change a job's state, keeping the per-state counts (read on every message)."""
        self.count[job.state] -= 1
        self.count[state] += 1
        job.state = state

    def stdin_room(self):
        """How many stdin bytes the CLI may send now (the slowest running command decides)."""
        if not self.stdin_sent:
            return min((j.stdin.window for j in self.jobs.values()), default=STDIN_WINDOW_BYTES)
        return min((j.stdin.room() for j in self.active()), default=STDIN_WINDOW_BYTES)

    def stdin_enough(self):
        """Room worth answering a CLI that waits for it (a quarter of the smallest window)."""
        return max(1, min((j.stdin.window for j in self.jobs.values()),
                          default=STDIN_WINDOW_BYTES) // STDIN_WAKE_SHARE)

    def running(self):
        """How many jobs are sent and not done."""
        return self.count["sent"] + self.count["running"]

    def active(self):
        """Jobs sent and not done."""
        return [j for j in self.jobs.values() if j.state in ACTIVE]

    def finished(self):
        """All jobs done and every event handed to the CLI."""
        return not self.events and self.count["done"] == len(self.jobs)

    def event(self, event, size=0):
        """Queue an event for the CLI."""
        self.events.append(event)
        self.buffered += size

    def fail(self, job, code, message, hint="", told=False):
        """A job ended in a zpeer failure (exit 255 for it); nothing once it is done. What this
        end decides (not `told` by a peer's error) is a verdict for the audit too."""
        if job.state == "done":
            return
        if not told:
            self.verdicts.append((job, self if job.state == "queued" else None,
                                  {"err": code, "msg": message}))
        self.move(job, "done")
        self.event([job.target, "f", code, message, hint or ""])


class OriginSessions:
    """All exec sessions this node originates."""

    def __init__(self, node_id, heartbeat_s):
        self.node_id = node_id
        self.heartbeat_s = heartbeat_s
        self.sessions = {}
        self.verdicts = []  # see Session.verdicts; take_verdicts() empties it
        self.by_job = {}  # job id -> (session, OriginJob)
        self.woken = {}  # sid -> session with news from its targets this turn (wake_pending)
        self.next_scan = 0.0  # monotonic time of the next scan for silent targets (on_timer)
        self.relay = False  # a worker: its fan-outs' stdin goes once, to the leader (_feed)

    @property
    def silence_limit_s(self):
        """No word from a target for this long means it is gone (zpeer.daemon.silence)."""
        return origin_limit_s(self.heartbeat_s)

    @property
    def exec_ttl_s(self):
        """How long an exec may take to reach its target and start there: less than the
        silence limit, so that no job this node gives up on can start afterwards."""
        return 2 * self.heartbeat_s + 0.5

    def _lose(self, session, job, code, message, hint="", now=None):
        """Fail a job whose target is gone, but a job sent and never heard of only once its
        exec can no longer start (until then it may still: its target may come back)."""
        now = time.monotonic() if now is None else now
        give_up_at = (job.sent_at or 0) + self.exec_ttl_s + GIVE_UP_MARGIN_S
        if job.state == "sent" and now < give_up_at:
            if job.doom is None:
                job.doom = (give_up_at, code, message, hint)
            return
        session.fail(job, code, message, hint)

    def open(self, spec, targets, batch, cli_pid, failures=(), first_poll=None):
        """Create a session; `failures` are (peer, error) already known (unknown, offline).
        With first_poll = (identity, rid, wait_s, raw, opened), the CLI's open request is held
        as the session's first poll and answered with its first events, the sid and `opened`
        merged in. Returns (sid, actions)."""
        sid = uuid.uuid4().hex[:12]
        session = Session(sid, spec, targets, batch, cli_pid, self.verdicts)
        self.sessions[sid] = session
        for peer, err in failures:
            session.fail(session.jobs[peer], err.code, err.message, err.hint)
        for job in session.jobs.values():
            self.by_job[job.job] = (session, job)
        actions = self._launch(session)
        if first_poll is not None:
            identity, rid, wait_s, raw, opened = first_poll
            session.opened = dict(opened, sid=sid)
            actions.extend(self.poll(sid, identity, rid, wait_s=wait_s, raw=raw))
        return sid, actions

    def _launch(self, session):
        """Send queued jobs while the batch limit allows."""
        actions = []
        if session.cancelled:
            return actions
        running = session.running()
        while session.queued:
            job = session.queued[0]
            if job.state != "queued":  # failed before it was sent (offline target)
                session.queued.popleft()
                continue
            if session.batch and running >= session.batch:
                break
            session.queued.popleft()
            session.move(job, "sent")
            job.sent_at = time.monotonic()
            job.last_word = job.sent_at
            running += 1
            actions.append(Send(messages.exec_open(job.job, job.target, session.spec,
                                                   session.window, self.exec_ttl_s)))
            if session.stdin_sent and session.replay is not None:
                actions.extend(self._replay(session, job))
        return actions

    @staticmethod
    def _replay(session, job):
        """A job of a later batch starts: the stdin its session had so far goes to it first."""
        data, now = bytes(session.replay), time.monotonic()
        if not data and not session.replay_eof:
            return []
        job.stdin.sent(len(data))
        job.stdin_moved = now
        pieces = _pieces(data)
        return [Send(_stdin_header(job, piece, session.replay_eof and i == len(pieces) - 1,
                                   session.tty, now), piece)
                for i, piece in enumerate(pieces)]

    @staticmethod
    def _keep_for_replay(session, data, eof):
        """Keep stdin for the jobs of later batches, while some are queued and it fits; past
        the bound they fail at once: never run, never fed half their input."""
        if not any(job.state == "queued" for job in session.queued):
            session.replay = None
            return
        session.replay += data
        session.replay_eof = session.replay_eof or eof
        if len(session.replay) > STDIN_REPLAY_MAX_BYTES:
            session.replay = None
            for job in session.queued:
                session.fail(job, "stdin_too_big",
                             f"Not run on {job.target}: its stdin (more than "
                             f"{STDIN_REPLAY_MAX_BYTES >> 20} MiB) cannot be kept for a later "
                             "batch", "without --batch, every peer reads it as it comes")

    def on_message(self, peer, header, data):
        """A channel message from a target (started, out, exit, error, stdin_ack); returns
        actions."""
        found = self.by_job.get(header.get("job"))
        if found is None:
            return []
        session, job = found
        if peer != job.target or job.state == "done":
            return []
        job.last_word = time.monotonic()
        mtype = header["t"]
        if mtype != "error":
            job.doom = None  # it answers: whatever the leader saw, the target is there
        if mtype in ("started", "out", "exit") and job.state == "sent" \
                and header.get("pid") is not None:
            # a job's first message names its pid: "started", or its first output or exit
            session.move(job, "running")
            session.event([job.target, "s", header["pid"]])
        if mtype in ("out", "exit"):
            # (a chunk sent again is no overrun: a full window's chunk comes again when it was
            # slow on the way, say queued in the leader past the resend delay)
            if mtype == "out" and not job.order.holds(header) \
                    and not job.output.fits(len(data or b"") + job.order.early_bytes):
                # a target that ignores its credit would grow our memory without bound: stop it
                session.fail(job, "flow_control",
                             f"Peer {job.target} sent more output than allowed")
                return [Send(messages.cancel(job.job, job.target))] + self._wake(session)
            # each chunk once and in order; after a gap (a chunk lost on a redial) the rest
            # waits for the target to send it again, as our alive asks (zpeer.wire.channel)
            for ready_header, ready_data in job.order.arrive(header, data, job.last_word):
                if ready_header["t"] == "out":
                    self._take_output(session, job, ready_header, ready_data)
                elif ready_header.get("seq", job.order.taken) != job.order.taken:
                    return self._output_lost(session, job)  # it counts output never sent
                else:
                    session.move(job, "done")
                    session.event([job.target, "x", ready_header["rc"], ready_header["how"]])
        elif mtype == "stdin_ack":
            job.stdin.acknowledged(header["n"])
            job.stdin_log.took(header["n"])
            job.stdin_moved = job.last_word
            actions = self._answer_feeder(session)
            if session.wants_room and session.stdin_room() >= session.stdin_enough():
                return actions + self._wake(session, force=True)
            return actions
        elif mtype == "error":
            err = header["err"]
            code, text, hint = str(err.get("err")), str(err.get("msg")), str(err.get("hint") or "")
            if code == "peer_lost":  # the leader lost the target, with the exec perhaps on its way
                when = LOST_WHEN.get(job.state, "mid-command")  # what this end knows of it
                self._lose(session, job, code, f"Peer {job.target} disconnected {when}", hint)
            else:  # the exec never left (offline, unknown), or the target refused it: it never runs
                session.fail(job, code, text, hint, told=True)
        actions = []
        if job.state == "done":
            actions.extend(self._launch(session))
        # answered once the turn's messages are in (wake_pending): a short command's output and
        # exit arrive together and make one reply, not a reply and another poll
        self.woken[session.sid] = session
        return actions

    @staticmethod
    def _take_output(session, job, header, data):
        """A chunk of output in its order: to the CLI's events."""
        if data is None:
            return
        size = len(data)
        job.output.take(size)
        session.event([job.target, "o" if header["fd"] == STDOUT else "e", data], size)

    def _output_lost(self, session, job):
        """A chunk of the job's output is gone for good: never hand the user silently cut
        output; returns actions."""
        session.fail(job, "output_lost", f"Output from {job.target} was lost in transit",
                     "the link to that peer dropped messages; the command may have completed")
        actions = [Send(messages.cancel(job.job, job.target))] + self._wake(session)
        return actions + self._launch(session)

    def wake_pending(self):
        """Answer the held polls of sessions that got news this turn; returns actions."""
        actions = []
        woken, self.woken = self.woken, {}
        for sid, session in woken.items():
            if self.sessions.get(sid) is session:
                actions.extend(self._wake(session))
        return actions

    def poll(self, sid, identity, rid, stdin=None, eof=False, wait_s=POLL_WAIT_MAX_S,
             need_room=False, raw=False):
        """A CLI asks for the next events (and may bring stdin bytes); returns actions."""
        session = self.sessions.get(sid)
        if session is None:
            return [Reply(identity, rid, {"err": "bad_request", "msg": f"no such session {sid}"})]
        session.raw = raw
        actions = self._feed(session, stdin, eof)
        room = session.stdin_room()
        enough = room >= session.stdin_enough()
        session.wants_room = need_room and not enough
        if need_room and enough:
            wait_s = 0  # the CLI has stdin waiting for room, and there is some now
        session.last_poll = time.monotonic()
        session.waiter = (identity, rid,
                          session.last_poll + min(max(wait_s, 0.0), POLL_WAIT_MAX_S))
        actions.extend(self._wake(session, force=wait_s <= 0))
        return actions

    def _feed(self, session, stdin, eof, size=None):
        """Stdin bytes (and its end) and a new window size for the session's running jobs;
        returns actions. A file push from a worker to several peers sends its bytes once, in a
        fan message the leader copies to each (zpeer.filecopy)."""
        actions = []
        if stdin or eof:
            session.stdin_sent = True
            n = len(stdin or b"")
            jobs = session.active()
            now = time.monotonic()
            for job in jobs:
                if job.stdin.in_flight == 0:
                    job.stdin_moved = now
                job.stdin.sent(n)
            fan = self.relay and session.spec.get("file") and \
                sum(job.target != self.node_id for job in jobs) > 1
            pieces = _pieces(stdin)
            for i, piece in enumerate(pieces):
                end = eof and i == len(pieces) - 1
                headers = [_stdin_header(job, piece, end, session.tty, now) for job in jobs]
                if fan:  # once to the leader, which copies it to each (zpeer.filecopy)
                    fanned = [h for h in headers if h["to"] != self.node_id]
                    actions.append(Send(messages.fan(fanned[0]["job"], fanned[0]["to"],
                                                     [[h["job"], h["to"], h["at"]]
                                                      for h in fanned], end), piece))
                    headers = [h for h in headers if h["to"] == self.node_id]
                actions.extend(Send(header, piece) for header in headers)
            if session.replay is not None:
                self._keep_for_replay(session, stdin or b"", eof)
        if size is not None and session.tty:
            actions.extend(Send(messages.winsize(job.job, job.target, *size))
                           for job in session.active())
        return actions

    def feed(self, sid, identity, rid, stdin=None, eof=False, size=None, wait_room=False):
        """A CLI's stdin (keystrokes, a stream) or window size, on a connection of its own while
        its poll waits for output: on their way at once, answered with the room left; with
        `wait_room`, only once there is enough room to send more (or POLL_WAIT_MAX_S passed, or
        the session ended): the stream's back-pressure. Returns actions."""
        session = self.sessions.get(sid)
        if session is None:
            return [Reply(identity, rid, {"err": "bad_request", "msg": f"no such session {sid}"})]
        session.last_poll = time.monotonic()
        actions = self._feed(session, stdin, eof, size)
        if session.feeder is not None:  # a CLI holds one feed at a time: an older one ends
            actions.extend(self._answer_feeder(session, force=True))
        session.feeder = (identity, rid, session.last_poll + POLL_WAIT_MAX_S)
        return actions + self._answer_feeder(session, force=not wait_room)

    @staticmethod
    def _answer_feeder(session, force=False):
        """Answer a held feed when there is room worth sending into (or force)."""
        if session.feeder is None:
            return []
        room = session.stdin_room()
        if not (force or room >= session.stdin_enough() or session.cancelled
                or session.count["done"] == len(session.jobs)):
            return []
        identity, rid, _ = session.feeder
        session.feeder = None
        return [Reply(identity, rid, {"room": max(0, room)})]

    def _wake(self, session, force=False):
        """Answer the held CLI request if there is something to say (and a held feed once its
        session is over)."""
        if session.feeder is not None and (session.cancelled
                                           or session.count["done"] == len(session.jobs)):
            feeds = self._answer_feeder(session, force=True)
            return feeds + self._wake(session, force)
        # a lone "started" event does not answer a poll: `true` then costs one poll, not two
        urgent = any(event[1] != "s" for event in session.events)
        if session.waiter is None or not (urgent or force or session.finished()):
            return []
        identity, rid, _ = session.waiter
        session.waiter = None
        events, size, actions, frames = [], 0, [], []
        while session.events and size < POLL_REPLY_MAX_BYTES:
            event = session.events.popleft()
            if event[1] in ("o", "e"):
                n = len(event[2])
                size += n
                session.buffered -= n
                job = session.jobs.get(event[0])
                if job and job.state in ACTIVE:
                    grant = job.output.consumed(n)
                    if grant:
                        actions.append(Send(messages.credit(job.job, job.target, grant,
                                                            job.output.granted)))
                if session.raw:  # the received frame's buffer goes out as it is: zero-copy
                    frames.append(event[2])
                    event = [event[0], event[1], len(frames) - 1]
                else:
                    event = [event[0], event[1], bytes(event[2])]
            events.append(event)
        done = session.finished()
        if done:
            self._drop(session)
        session.wants_room = False
        reply = {"events": events, "done": done, "room": max(0, session.stdin_room())}
        if session.opened is not None:  # exec_open held as the first poll: it says what opened
            reply.update(session.opened)
            session.opened = None
        actions.append(Reply(identity, rid, reply, frames))
        return actions

    def wake(self, sid):
        """The CLI has stdin for the session: answer its held poll now (the reply carries whatever
        output there is), so that its next poll can bring the bytes; returns actions."""
        session = self.sessions.get(sid)
        return [] if session is None else self._wake(session, force=True)

    def cancel(self, sid):
        """Ctrl-C in the CLI: kill every remote job of the session; returns actions."""
        session = self.sessions.get(sid)
        if session is None:
            return []
        session.cancelled = True
        actions = []
        for job in session.jobs.values():
            if job.state == "queued":
                session.verdicts.append((job, session, None))
                session.move(job, "done")
                session.event([job.target, "x", 130, "cancelled"])
            elif job.state in ACTIVE:
                actions.append(Send(messages.cancel(job.job, job.target)))
        return actions + self._wake(session)

    def interrupt(self, message, hint, keep_target):
        """This daemon stops or restarts: launch nothing more, cancel the remote jobs (not the
        ones on `keep_target`, this node, which end with it), fail the queued ones with
        `message` and every running one at once; returns actions."""
        actions = []
        for session in list(self.sessions.values()):
            session.cancelled = True
            for job in session.jobs.values():
                if job.state in ACTIVE and job.target != keep_target:
                    actions.append(Send(messages.cancel(job.job, job.target)))
                elif job.state == "queued":
                    session.fail(job, "interrupted", message, hint)
        return actions + self.peer_lost(None, message, defer=False)

    def _drop(self, session):
        """Forget a finished session."""
        self.sessions.pop(session.sid, None)
        for job in session.jobs.values():
            self.by_job.pop(job.job, None)

    def on_alive(self, peer, jobs, stdin_got=None):
        """A target says these jobs still run (keeps them from being declared lost), and how far
        each has its stdin: what it lacks and went a while ago goes again; returns actions."""
        now = time.monotonic()
        counted = isinstance(stdin_got, list) and len(stdin_got) == len(jobs)
        actions = []
        for i, job_id in enumerate(jobs):
            found = self.by_job.get(job_id) if isinstance(job_id, str) else None
            if found and found[1].target == peer:
                job = found[1]
                job.last_word = now
                got = stdin_got[i] if counted else None
                if type(got) is int and job.state in ACTIVE:
                    again = job.stdin_log.due(got, now, self.resend_after_s)
                    if again:
                        log.info("job %s: stdin sent again from byte %d", job_id, got)
                    actions.extend(again)
        return actions

    @property
    def resend_after_s(self):
        """What a target lacks and was sent this long ago goes again (zpeer.daemon.silence)."""
        return resend_after_s(self.heartbeat_s)

    def peer_lost(self, peer, message, exclude=None, defer=True):
        """A target (or, with peer None, our leader link) is gone: fail its running jobs at once,
        and the ones sent and never heard of once their exec can no longer start (at once when
        not `defer`: this daemon stops). `message` may say {peer} and {when}: mid-command, or
        before the job was known to start."""
        actions = []
        now = time.monotonic()
        for session in list(self.sessions.values()):
            for job in session.jobs.values():
                if job.target == exclude:
                    continue
                if job.state in ACTIVE and (peer is None or job.target == peer):
                    when = LOST_WHEN.get(job.state, "mid-command")
                    text = message.format(peer=job.target, when=when)
                    if defer:
                        self._lose(session, job, "peer_lost", text, now=now)
                    else:
                        session.fail(job, "peer_lost", text)
                    actions.extend(self._launch(session))
            actions.extend(self._wake(session))
        return actions

    def reported(self, job_id):
        """True once a job's end reached its CLI (or it never was one of ours)."""
        return job_id not in self.by_job

    def on_timer(self, now):
        """Held polls that expire, silent targets, vanished CLIs; returns actions."""
        actions = []
        scan = now >= self.next_scan
        if scan:
            self.next_scan = now + SILENCE_SCAN_S
        limit_s = self.silence_limit_s
        for session in list(self.sessions.values()):
            for job in session.jobs.values() if scan and session.running() else ():
                if job.doom is not None and now >= job.doom[0] and job.state in ACTIVE:
                    session.fail(job, *job.doom[1:])
                    actions.extend(self._launch(session))
                elif job.state in ACTIVE and job.order.gap_since is not None \
                        and now - job.order.gap_since > limit_s:
                    actions.extend(self._output_lost(session, job))
                elif job.state in ACTIVE and self._stalled(session, job, now):
                    # a copy's peer that takes nothing holds the others back: it is left behind
                    actions.append(Send(messages.cancel(job.job, job.target)))
                    session.fail(job, "peer_slow", f"Peer {job.target} took no data for "
                                 f"{session.spec['file']['stall_s']:.1f}s: left behind so that "
                                 "the others go on", "a full disk or a stopped process there?")
                    actions.extend(self._launch(session))
                elif job.state in ACTIVE and now - job.last_word > limit_s:
                    what = "did not answer" if job.state == "sent" else "was lost mid-command"
                    actions.append(Send(messages.cancel(job.job, job.target)))
                    session.fail(job, "peer_lost",
                                 f"Peer {job.target} {what} (no word for {limit_s:.1f}s)",
                                 "check it with `d listPeers`; the command may or may not have run")
                    actions.extend(self._launch(session))
            if session.feeder and now >= session.feeder[2]:
                actions.extend(self._answer_feeder(session, force=True))
            if session.waiter and now >= session.waiter[2]:
                actions.extend(self._wake(session, force=True))
            elif session.waiter:
                actions.extend(self._wake(session))  # only if something worth a reply waits
            silent = now - session.last_poll
            if session.waiter is not None or silent <= CLI_SILENCE_S:
                continue
            # (a terminal session's CLI may be suspended, `~^Z`, for as long as its user likes)
            orphan = silent > SESSION_ORPHAN_S and not session.tty
            if now >= session.check_at:  # (a look at /proc, not on every loop turn)
                session.check_at = now + CLI_CHECK_S
                if session.cli_gone or not _pid_alive(session.cli_pid) or orphan:
                    if not session.cli_gone:
                        log.warning("session %s: CLI pid %s is gone, cancelling", session.sid,
                                    session.cli_pid)
                    session.cli_gone = True
                    actions.extend(a for a in self.cancel(session.sid) if type(a) is Send)
            if session.cli_gone and (session.count["done"] == len(session.jobs)
                                     or silent > SESSION_ORPHAN_S):
                self._drop(session)
        return actions

    @staticmethod
    def _stalled(session, job, now):
        """True for a file copy's job whose stdin window is full and has not moved for the
        copy's stall limit (zpeer.filecopy)."""
        copy = session.spec.get("file")
        return (copy is not None and copy.get("stall_s") and job.stdin.room() <= 0
                and now - job.stdin_moved > copy["stall_s"])

    def take_verdicts(self):
        """The ends this node decided since the last call, as the messages that would have said
        them (an exec first for a job never sent), for the audit: what a CLI was told is what the
        history says."""
        headers = []
        for job, unsent, err in self.verdicts:
            if unsent is not None:
                headers.append(messages.exec_open(job.job, job.target, unsent.spec,
                                                  unsent.window, self.exec_ttl_s))
            if err is None:
                headers.append(messages.exit_status(job.job, self.node_id, 130, "cancelled", 0,
                                                    0.0, 0))
            else:
                headers.append(messages.error(job.job, self.node_id, err))
        self.verdicts.clear()
        return headers

    def keepalives(self):
        """One alive message per target peer listing the jobs we still want."""
        wanted = {}
        for session in self.sessions.values():
            for job in session.active():
                jobs, got, acked, gaps = wanted.setdefault(job.target, ([], [], [], {}))
                jobs.append(job.job)
                got.append(job.order.taken)
                acked.append(job.output.granted)
                if job.order.gap_since is not None:
                    gaps[job.job] = [job.order.have(), job.order.missing(GAPS_LISTED_MAX)]
        return [Send(messages.alive(peer, jobs, "origin", got, acked, gaps or None))
                for peer, (jobs, got, acked, gaps) in wanted.items()]

    def next_deadline(self):
        """Earliest held-poll deadline, or check of a CLI that does not poll."""
        times = [s.waiter[2] if s.waiter else max(s.last_poll + CLI_SILENCE_S, s.check_at)
                 for s in self.sessions.values()]
        times += [s.feeder[2] for s in self.sessions.values() if s.feeder]
        return min(times) if times else None
