"""Target side of the channels: the jobs this node runs for origins.

`TargetJobs` never blocks: the daemon loop polls the fds it lists (`poll_items`) and feeds
readiness and timers back; every method returns actions (zpeer.daemon.actions: messages to the
origin, addressed by their "to" field). A channel's frames and states are in
zpeer.wire.channel; the command behind a channel is a zpeer.daemon.command.Command.
"""
import logging
import math
import os
import pwd
import select
import signal
import sys
import time
from collections import OrderedDict

from zpeer import filecopy, trace
from zpeer.daemon import leftovers, process
from zpeer.daemon.actions import Send
from zpeer.daemon.command import RC_CANCELLED, Command
from zpeer.daemon.process import child_environment, spawn, spawn_pty, working_directory
from zpeer.daemon.resend import Closed, Unacked, wanted_of
from zpeer.errors import BadRequest, ExitLost, TooLate, ZpeerError
from zpeer.wire import messages
from zpeer.wire.channel import WINDOW_MAX_BYTES, Credit
from zpeer.wire.protocol import shown

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1 << 20  # a pipe's size (PIPE_SIZE_BYTES): one read takes what it holds
TTY_CHUNK_BYTES = 64 << 10  # a pseudo-terminal's screen output per message (it is not paced)
TTY_SIZE_MAX = 10000  # rows or columns a pseudo-terminal may be given
TERM_MAX_CHARS = 64
EXIT_LINGER_S = 0.001  # an output pipe closed: how long to wait for the shell's exit in place
SEEN_JOBS_MAX = 10000    # remembered job ids: an exec is never started twice
# cancels that overtook their exec, per (origin, job): kept apart, so a flood of cancels for
# made-up ids cannot push real ones out of `seen`
EARLY_CANCELS_MAX = 1000
# A job's first message names its pid: its first output, its exit, or after this long a
# "started" message of its own (a short command then sends one message through the leader, not
# two)
STARTED_DELAY_S = 0.02
DEFAULT_RESEND_AFTER_S = 2.0  # twice the default heartbeat
CLOSED_KEEP_MIN_S = 1.0  # an ended job's end is kept at least this long (zpeer.daemon.resend)
# output a target keeps for one origin that has not credited it yet, all its jobs (running and
# ended) together: past it, that origin's commands wait to write (an origin that never gives
# credit back could otherwise make it hold a window per job, for thousands of jobs)
ORIGIN_HELD_MAX_BYTES = 256 << 20
STDIN_BUFFER_MAX_BYTES = 16 << 20  # 4x the origin's stdin window (origin.STDIN_WINDOW_BYTES)
# a change to the daemon user's passwd entry or /run/user dir is seen this late (each exec would
# otherwise look both up)
OWN_IDENTITY_S = 5.0


def _buffer(data):
    """A message's data as a bytes-like object: a zmq.Frame's buffer, or what it is."""
    if data is None:
        return b""
    return data.buffer if hasattr(data, "buffer") else data


def tty_size(fields):
    """(rows, cols) of a pty spec or winsize message, each within 1..TTY_SIZE_MAX."""
    def bounded(value, default):
        if isinstance(value, bool) or not isinstance(value, int):
            return default
        return max(1, min(TTY_SIZE_MAX, value))
    return bounded(fields.get("rows"), 24), bounded(fields.get("cols"), 80)


class TargetChannel:
    """One job this node runs for an origin: the channel's state around its command."""

    __slots__ = ("job", "origin", "cmd", "output", "started", "deadline", "bytes_out", "seq",
                 "last_origin_word", "announce_at", "recorded", "unacked", "tty", "stdin_got",
                 "stdin_early")

    def __init__(self, job, origin, cmd, timeout_s, credit):
        self.job, self.origin, self.cmd = job, origin, cmd
        self.tty = cmd.terminal  # its traffic goes before bulk (zpeer.daemon.pacing)
        self.output = Credit(credit)  # streams 1 and 2, as this end sends them
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s if timeout_s else None
        self.bytes_out = 0
        self.seq = 0  # out messages sent: lets the origin prove it got every chunk, in order
        self.last_origin_word = self.started
        self.announce_at = None  # when the target must say "started" at the latest
        self.recorded = False  # its process group is in jobs.journal (zpeer.daemon.leftovers)
        self.unacked = Unacked()  # output sent and not yet covered by the origin's credit
        self.stdin_got = 0  # stdin taken in, in order (its end counts one more): its alive says
        self.stdin_early = {}  # at -> (data, eof): stdin chunks that came past a gap


def _in_order(ch, data, eof, at):
    """What of a stdin chunk starting at byte `at` is new to the channel, in order, with what
    waited past a gap and follows now: (data, eof), or (None, False) when nothing is (a copy,
    or a chunk past a gap, kept within STDIN_BUFFER_MAX_BYTES until the gap is filled)."""
    if at > ch.stdin_got:
        early = ch.stdin_early
        if at not in early and sum(len(d) for d, _ in early.values()) + len(data) \
                <= STDIN_BUFFER_MAX_BYTES:
            early[at] = (data, eof)
        return None, False
    taken, ended = [], False
    while True:
        got = ch.stdin_got
        end = at + len(data) + (1 if eof else 0)
        if end > got:
            ch.stdin_got = end
            taken.append(data[got - at:])
            ended = ended or eof
        nexts = [a for a in ch.stdin_early if a <= ch.stdin_got]
        if not nexts:
            break
        at = min(nexts)
        data, eof = ch.stdin_early.pop(at)
    if not taken:
        return None, False
    return (taken[0] if len(taken) == 1 else b"".join(taken)), ended


class TargetJobs:
    """The jobs this node runs on behalf of origins."""

    def __init__(self, node_id, home, run_as_root=None):
        self.node_id, self.home = node_id, home
        self.records = leftovers.Records(home)  # our running process groups, on disk
        # (origin, job id) -> TargetChannel: job ids are the origin's to choose (and no secret:
        # `d history` shows them), so another origin's id is another job
        self.jobs = {}
        self.seen = OrderedDict()  # (origin, job id) -> True: at-most-once across reconnects
        self.early_cancels = OrderedDict()  # (origin, job) -> True: cancelled before its exec came
        self.finished = []  # process groups of ended jobs whose records forget_finished() removes
        # (SIGKILL time, pgid, recorded) of stopped jobs whose shell is gone: what is left of their
        # group (a member that ignores SIGTERM) still gets its SIGKILL
        self.pending_kills = []
        self.is_root = os.geteuid() == 0 if run_as_root is None else run_as_root
        self.own = None  # (monotonic expiry, passwd entry, environment) of the daemon's user
        # the hops output leaves by (the node's link): how much to read for an origin, and
        # whether its hop has bulk waiting (zpeer.daemon.links)
        self.hops = None
        self.closed = Closed()  # ended jobs whose origins may lack their end (zpeer.daemon.resend)
        # what an origin lacks and was sent this long ago goes again (the node sets it from its
        # heartbeat: an origin's alive comes each interval)
        self.resend_after_s = DEFAULT_RESEND_AFTER_S
        self.held = {}  # origin -> output kept for it (ORIGIN_HELD_MAX_BYTES), as of this turn

    def handle(self, from_peer, header, data):
        """A channel message for the target side (exec, credit, stdin, cancel, alive from an
        origin); returns actions. The daemon and the bench swarm both use it."""
        mtype = header["t"]
        job = header.get("job")
        # only a job's origin feeds, paces or stops it: what another peer sends under its id
        # names a job of that peer's, which it does not have
        if mtype == "exec":
            if not header["ttl"] > 0:  # its origin may have given up: it must never start now
                log.warning("exec %s from %s arrived too late: not started", job, from_peer)
                late = TooLate(f"Not run on {self.node_id}: the command reached it too late (its "
                               "origin could have given up on it by then)")
                return [Send(messages.error(job, from_peer, late.to_reply()))]
            return self.start(header, from_peer)
        if mtype == "credit":
            self.credit(from_peer, job, header["n"], header.get("total"))
        elif mtype == "stdin":
            # the received frame's buffer, not a copy (the child's pipe takes it from there)
            return self.stdin(from_peer, job, _buffer(data), header["eof"], header.get("at"))
        elif mtype == "cancel":
            self.cancel(job, from_peer)
        elif mtype == "alive":
            return self.alive(from_peer, wanted_of(header))
        elif mtype == "winsize":
            ch = self.jobs.get((from_peer, job))
            if ch is not None:
                ch.cmd.resize(*tty_size(header))
        return []

    def keepalives(self, extra=None):
        """One alive message per origin listing the jobs we run for it (plus `extra` ones)."""
        jobs = self.jobs_by_origin()
        for origin, ids in self.closed.by_origin().items():
            jobs.setdefault(origin, []).extend(ids)
        for origin, job in extra or ():
            jobs.setdefault(origin, []).append(job)
        return [Send(messages.alive(origin, ids, "target", stdin_got=[self._stdin_got(origin, j)
                                                                      for j in ids]))
                for origin, ids in jobs.items()]

    def _stdin_got(self, origin, job):
        """How far a job has its stdin (None: it no longer runs here)."""
        ch = self.jobs.get((origin, job))
        return None if ch is None else ch.stdin_got

    def _remember(self, key):
        """Record an (origin, job id) as seen; False if it was seen before."""
        if key in self.seen:
            return False
        self.seen[key] = True
        while len(self.seen) > SEEN_JOBS_MAX:
            self.seen.popitem(last=False)
        return True

    def start(self, msg, origin):
        """Open a channel for an exec; returns actions (an error, or nothing yet: the first
        output, the exit or a "started" names the pid later)."""
        job = msg["job"]
        if not self._remember((origin, job)):
            log.warning("job %s from %s already seen: not started again", job, origin)
            return []
        if self.early_cancels.pop((origin, job), None):
            log.info("job %s from %s was cancelled before it arrived: not started", job, origin)
            return [Send(messages.exit_status(job, origin, RC_CANCELLED, "cancelled", 0, 0.0, 0))]
        try:
            trace.mark("spawn")
            proc = self._spawn(msg)
        except ZpeerError as exc:
            return [Send(messages.error(job, origin, exc.to_reply()))]
        trace.mark("spawned")
        credit = max(0, min(msg["credit"], WINDOW_MAX_BYTES))  # never more than any origin gives
        ch = TargetChannel(job, origin, Command(proc), msg.get("timeout"), credit)
        self.jobs[origin, job] = ch
        log.info("job %s from %s: pid %d: %s", job, origin, proc.pid, shown(msg["cmd"][:200]))
        ch.announce_at = time.monotonic() + STARTED_DELAY_S
        return []

    def _announce(self, ch):
        """True once, for the job's first message (which then names its pid). Its process group
        goes on disk for zpeer.daemon.leftovers then, before the origin hears of the job: not at
        spawn, where reading the start time of a process still in execve waits for it, and a
        command that ends within STARTED_DELAY_S without output needs no record."""
        if ch.announce_at is None:
            return False
        ch.announce_at = None
        self.records.record(ch.cmd.pid, ch.job)
        ch.recorded = True
        return True

    def _own_identity(self):
        """The daemon user's passwd entry and command environment, looked up again after
        OWN_IDENTITY_S."""
        now = time.monotonic()
        if self.own is None or now >= self.own[0]:
            entry = pwd.getpwuid(os.geteuid())
            self.own = (now + OWN_IDENTITY_S, entry, child_environment(entry, self.home))
        return self.own[1], self.own[2]

    def _spawn(self, msg):
        """Fork the command in its own session; ZpeerError for bad user or directory."""
        user = msg.get("user")
        extra = {}
        if user:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise BadRequest(f"No such user on {self.node_id}: {user}") from None
            if entry.pw_uid != os.geteuid():
                if not self.is_root:
                    raise BadRequest(f"--user {user} needs the daemon on {self.node_id} to run "
                                     "as root")
                extra = {"user": entry.pw_uid, "group": entry.pw_gid,
                         "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid)}
            env = child_environment(entry, self.home)
        else:
            entry, env = self._own_identity()
        directory, notice = working_directory(msg.get("dir"), entry, self.node_id, extra)
        env = dict(env)
        env.update(process.exec_env(msg.get("env") or {}))
        env["ZPEER_JOB"] = msg["job"]
        program, argv = process.command_argv(msg["cmd"], entry, bool(msg.get("login")))
        if msg.get("file") is not None:  # a file copy: zpeer's agent, not a shell
            if msg.get("pty") is not None:
                raise BadRequest("A file copy has no terminal")
            argv = filecopy.agent_argv(sys.executable, msg["file"], self.node_id, extra)
            program = argv[0]
            extra, notice = {}, b""  # it becomes the user itself; its paths say where it is
        try:
            if msg.get("pty") is not None:
                term = msg["pty"].get("term")
                if not isinstance(term, str) or len(term) > TERM_MAX_CHARS \
                        or not term.isprintable():
                    raise BadRequest(f"Bad terminal type for {self.node_id}: {term!r}"[:200])
                env["TERM"] = term or "dumb"
                notice = notice.replace(b"\n", b"\r\n")  # the terminal is not in raw mode yet
                return spawn_pty(process.exec_argv(program, argv), directory, env,
                                 tty_size(msg["pty"]), extra, notice)
            return spawn(argv, directory, env, bool(msg.get("stdin")), extra, notice, program)
        except OSError as exc:
            raise ZpeerError(f"Cannot start command on {self.node_id}: {exc}") from None

    def poll_items(self):
        """(fd, want_write) pairs the loop must poll: output pipes with credit, stdin, pidfds."""
        held = {}
        for ch in self.jobs.values():
            held[ch.origin] = held.get(ch.origin, 0) + ch.unacked.held
        for closed in self.closed.jobs.values():
            held[closed.origin] = held.get(closed.origin, 0) + closed.unacked.held
        self.held = held
        items = []
        for ch in self.jobs.values():
            items.extend(ch.cmd.fds_to_poll(self._may_read(ch)))
        return items

    def _may_read(self, ch):
        """True if the job's output may be read now: credit from its origin, room on the hop
        (a pseudo-terminal's screen does not wait for bulk)."""
        if not self._has_room(ch):
            return False
        return self.hops is None or ch.tty or not self.hops.backlogged(ch.origin)

    def _has_room(self, ch):
        """True if the job may send more output: credit from its origin, and what this node
        keeps for that origin within ORIGIN_HELD_MAX_BYTES."""
        return ch.output.room() > 0 and self.held.get(ch.origin, 0) < ORIGIN_HELD_MAX_BYTES

    def on_ready(self, ready):
        """Handle a set of ready fds; returns actions."""
        out = []
        for ch in list(self.jobs.values()):
            cmd = ch.cmd
            closed = False
            for num, fd in list(cmd.pipes.items()):
                if fd in ready and self._may_read(ch):
                    # a second read when the first drained the pipe: a command's EOF is usually
                    # right behind its last output (one loop turn less for `hostname`)
                    for _ in range(2):
                        before = ch.bytes_out
                        got = self._read(ch, num)
                        out.extend(got)
                        if (not got or not self._may_read(ch)
                                or ch.bytes_out - before >= READ_CHUNK_BYTES):
                            break
                    closed = closed or num not in cmd.pipes
            if cmd.stdin_fd is not None and cmd.stdin_fd in ready:
                out.extend(self._stdin_ack(ch, cmd.write_stdin()))
            if cmd.pidfd is not None and cmd.pidfd in ready:
                cmd.reap()
            if closed and cmd.exited_at is None and cmd.pidfd is not None and not cmd.lingered:
                out.extend(self._linger(ch))
            out.extend(self._maybe_finish(ch))
        return out

    def _linger(self, ch):
        """An output pipe closed: the shell is most likely exiting. The kernel closes its other
        pipe and reports its exit microseconds later; wait that long here (at most
        EXIT_LINGER_S, once per job) instead of a loop turn for each."""
        cmd = ch.cmd
        cmd.lingered = True
        out = []
        deadline = time.monotonic() + EXIT_LINGER_S
        while cmd.exited_at is None:
            poller = select.poll()  # not select(): a busy daemon's fds pass FD_SETSIZE (1024)
            readable = [fd for fd in cmd.pipes.values() if self._has_room(ch)]
            for fd in readable + [cmd.pidfd]:
                poller.register(fd, select.POLLIN)
            # one look even past the deadline: a loaded loop gets here late, the fds ready
            left_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = {fd for fd, _ in poller.poll(left_ms)}
            for num, fd in list(cmd.pipes.items()):
                if fd in ready and self._has_room(ch):
                    out.extend(self._read(ch, num))
            if cmd.pidfd in ready:
                cmd.reap()
            if not ready or not left_ms:
                break
        return out

    def _read(self, ch, num):
        """Read one chunk (bounded by the channel's credit) of an output stream."""
        cmd = ch.cmd
        if ch.tty:
            chunk = TTY_CHUNK_BYTES
        else:
            chunk = READ_CHUNK_BYTES if self.hops is None else self.hops.chunk_bytes(ch.origin)
        data = cmd.read(num, min(chunk, ch.output.room()))
        if not data:
            return []
        ch.output.sent(len(data))
        ch.bytes_out += len(data)
        ch.seq += 1
        # its first message says "started" too
        pid = cmd.pid if self._announce(ch) else None
        header = messages.output(ch.job, ch.origin, num, ch.seq, pid, ch.tty)
        ch.unacked.sent(header, data, time.monotonic())
        self.held[ch.origin] = self.held.get(ch.origin, 0) + len(data)
        return [Send(header, data)]

    @staticmethod
    def _stdin_ack(ch, n):
        """The ack for n stdin bytes the child took (none when the pipe was full)."""
        return [] if n is None else [Send(messages.stdin_ack(ch.job, ch.origin, n))]

    def _maybe_finish(self, ch):
        """End the job when the shell exited and its pipes are drained (or idle/cut)."""
        cmd = ch.cmd
        if cmd.exited_at is None:
            return []
        now = time.monotonic()
        if not cmd.drained(now, self._has_room(ch)):
            return []
        del self.jobs[ch.origin, ch.job]
        if cmd.kill_at is not None:  # stopped, and its SIGKILL is still due
            self.pending_kills.append((cmd.kill_at, cmd.pid, ch.recorded))
        elif ch.recorded:
            self.finished.append(cmd.pid)
        rc = cmd.rc()
        cmd.release()
        log.info("job %s: %s rc=%d after %.3fs", ch.job, cmd.how, rc, now - ch.started)
        if cmd.proc.status_lost and cmd.how == "exit":
            # never pass a made-up code off as the command's
            lost = ExitLost(f"The exit status of the command on {self.node_id} was lost")
            final = Send(messages.error(ch.job, ch.origin, lost.to_reply()))
        else:
            # its first message: the exit says "started" too
            pid = None
            if ch.announce_at is not None:
                ch.announce_at = None
                pid = cmd.pid
            final = Send(messages.exit_status(ch.job, ch.origin, rc, cmd.how, ch.bytes_out,
                                              now - ch.started, ch.seq, pid))
        # until the origin shows it has the end: a link that drops it loses nothing
        self.closed.keep(ch.job, ch.origin, ch.unacked, final, now,
                         max(CLOSED_KEEP_MIN_S, 2 * self.resend_after_s))
        return [final]

    def forget_finished(self):
        """Drop the on-disk records of jobs that ended (after their exits left: off the fast
        path)."""
        for pgid in self.finished:
            self.records.forget(pgid)
        self.finished.clear()

    def credit(self, origin, job, n, total=None):
        """The origin consumed output: allow n more bytes (or up to `total` given in all)."""
        ch = self.jobs.get((origin, job))
        if ch:
            if not isinstance(total, int):  # an origin that does not count: n is all there is
                total = ch.unacked.acked + n
            ch.output.acknowledged(ch.unacked.acknowledge_to(total))
            ch.last_origin_word = time.monotonic()

    def stdin(self, origin, job, data, eof, at=None):
        """Queue stdin bytes for a job's child; returns acks for what it took at once. A chunk
        that starts `at` a byte of the stream: taken in order, once (what came before, again,
        is cut off; one past a gap waits for its origin to send what is missing)."""
        ch = self.jobs.get((origin, job))
        if ch is None:
            return []
        if at is not None:
            data, eof = _in_order(ch, data, eof, at)
            if data is None:
                return []
        cmd = ch.cmd
        if cmd.stdin_fd is None:  # child closed stdin: ack so the origin does not stall
            return [Send(messages.stdin_ack(job, ch.origin, len(data)))] if data else []
        out = []
        if data and len(cmd.stdin_buf) + len(data) > STDIN_BUFFER_MAX_BYTES:
            # the origin ignored its stdin window: refuse to buffer without bound
            log.warning("job %s: origin %s overran its stdin window, killing the job", job,
                        ch.origin)
            cmd.stdin_buf.clear()
            cmd.close_stdin()
            cmd.stop("cancelled")
            return out
        if data:
            cmd.stdin_buf.append(data)
            out = self._stdin_ack(ch, cmd.write_stdin())
        if eof:
            cmd.stdin_eof = True
            if not cmd.stdin_buf:
                cmd.close_stdin()
        return out

    def cancel(self, job, origin=None):
        """Kill a job's process group at the origin's request."""
        ch = self.jobs.get((origin, job))
        if ch:
            ch.cmd.stop("cancelled")
        elif (origin, job) not in self.seen:  # its exec may be on its way: it must never run
            self.early_cancels[(origin, job)] = True
            while len(self.early_cancels) > EARLY_CANCELS_MAX:
                self.early_cancels.popitem(last=False)

    def runs(self, origin, job):
        """True while this node runs that job for that origin."""
        return (origin, job) in self.jobs

    def abandon(self, origin, job, err):
        """The job's origin gave up on it (an error in its name: the leader could not carry its
        data): stop the command, as a cancel does."""
        ch = self.jobs.get((origin, job))
        if ch is not None:
            log.warning("job %s from %s failed on the way: %s; stopping it", job, origin,
                        str(err.get("msg") or err.get("err"))[:300])
            ch.cmd.stop("cancelled")

    def alive(self, origin, wanted):
        """The origin still wants these jobs: `wanted` maps each to what it says it has
        (zpeer.daemon.resend.Wanted); returns the output and ends it lacks, again."""
        now = time.monotonic()
        out = []
        for job, has in wanted.items():
            ch = self.jobs.get((origin, job))
            if ch:
                ch.last_origin_word = now
                if has.acked is not None:
                    ch.output.acknowledged(ch.unacked.acknowledge_to(has.acked))
                again = ch.unacked.due(has, now, self.resend_after_s)
                if again:
                    log.info("job %s: %d chunks sent again for %s", job, len(again), origin)
                out.extend(again)
        if self.closed.jobs:
            out.extend(self.closed.on_alive(origin, wanted, now, self.resend_after_s))
        return out

    def on_timer(self, now, origin_timeout_s):
        """Timeouts, SIGKILL escalation, orphaned jobs, and drain grace; returns actions."""
        out = []
        if self.pending_kills and min(self.pending_kills)[0] <= now:
            self._kill_leftover_groups(now)
        self.closed.expire(now)
        for ch in list(self.jobs.values()):
            cmd = ch.cmd
            if ch.deadline and now >= ch.deadline and cmd.how == "exit":
                cmd.stop("timeout")
            if now - ch.last_origin_word > origin_timeout_s and cmd.how == "exit":
                log.warning("job %s: origin %s went silent, killing it", ch.job, ch.origin)
                cmd.stop("cancelled")
            if cmd.kill_at and now >= cmd.kill_at:
                cmd.kill_group(signal.SIGKILL)
                cmd.kill_at = None
            if cmd.exited_at is None and cmd.pidfd is None:
                cmd.reap()
            if ch.announce_at is not None and now >= ch.announce_at and self._announce(ch):
                out.append(Send(messages.started(ch.job, ch.origin, cmd.pid)))
            out.extend(self._maybe_finish(ch))
        return out

    def _kill_leftover_groups(self, now):
        """SIGKILL the groups of stopped jobs whose grace is over (their shell is gone already)."""
        due = [k for k in self.pending_kills if k[0] <= now]
        self.pending_kills = [k for k in self.pending_kills if k[0] > now]
        for _, pgid, recorded in due:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if recorded:
                self.finished.append(pgid)

    def next_deadline(self):
        """Earliest monotonic time at which on_timer has work."""
        times = [min(self.pending_kills)[0]] if self.pending_kills else []
        for ch in self.jobs.values():
            cmd = ch.cmd
            if ch.announce_at is not None:
                times.append(ch.announce_at)
            if ch.deadline and cmd.how == "exit":
                times.append(ch.deadline)
            if cmd.kill_at:
                times.append(cmd.kill_at)
            if cmd.exited_at is not None:
                times.append(time.monotonic() + 0.05)
            if cmd.pidfd is None and cmd.exited_at is None:
                times.append(time.monotonic() + 0.05)
        return min(times) if times else None

    def jobs_by_origin(self):
        """origin -> [job ids], for keepalives."""
        result = {}
        for ch in self.jobs.values():
            result.setdefault(ch.origin, []).append(ch.job)
        return result

    def fail_origin(self, origin):
        """The origin is gone (disconnected): kill its jobs."""
        for ch in self.jobs.values():
            if ch.origin == origin and ch.cmd.how == "exit":
                ch.cmd.stop("cancelled")

    def fail_others(self, keep_origin):
        """Our leader link is gone: kill jobs of every origin but `keep_origin` (ourselves)."""
        for ch in self.jobs.values():
            if ch.origin != keep_origin and ch.cmd.how == "exit":
                ch.cmd.stop("cancelled")

    def interrupt(self, message, hint):
        """This daemon stops or restarts: an error for each job's origin (its command is
        killed with the daemon); returns actions."""
        err = {"err": "interrupted", "msg": message, "hint": hint}
        return [Send(messages.error(ch.job, ch.origin, dict(err))) for ch in self.jobs.values()]

    def reported(self, job_id):
        """True once a job's exit has left this node (or it never ran here)."""
        return all(ch.job != job_id for ch in self.jobs.values())

    def shutdown(self):
        """Kill everything (daemon stopping)."""
        for ch in list(self.jobs.values()):
            ch.cmd.kill_group(signal.SIGKILL)
            ch.cmd.release()
            self.records.forget(ch.cmd.pid)
        self.jobs.clear()
        self._kill_leftover_groups(float("inf"))
        self.forget_finished()
