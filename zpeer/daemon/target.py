"""Child processes on the target: spawn, credit-limited output reads, stdin, timeouts, kills.

`TargetJobs` holds the jobs this node runs for origins. It never blocks: the daemon loop polls
the fds it lists (`poll_items`) and feeds readiness and timers back; every method returns the
messages to send, as (header, data) pairs addressed to the origin by their "to" field.
"""
import logging
import math
import os
import pwd
import select
import signal
import time
from collections import OrderedDict

from zpeer import trace
from zpeer.daemon import leftovers
from zpeer.daemon.process import (
    RC_CANCELLED,
    RunningJob,
    child_environment,
    pending_bytes,
    spawn,
    working_directory,
)
from zpeer.errors import BadRequest, ExitLost, ZpeerError
from zpeer.logsetup import RateLimited
from zpeer.wire.protocol import shown

log = logging.getLogger(__name__)
_LIMITER = RateLimited()  # for logs about peers steering jobs that are not theirs

READ_CHUNK_BYTES = 1 << 20  # the pipe's size: a 1 GB stream ran 10 % faster than with 256 KiB reads
EXIT_IDLE_GRACE_S = 0.3  # after the shell exits, a pipe idle this long is closed (bg children)
EXIT_DRAIN_MAX_S = 5.0   # and a pipe that keeps producing after the exit is cut after this
EXIT_LINGER_S = 0.001  # an output pipe closed: how long to wait for the shell's exit in place
SEEN_JOBS_MAX = 10000    # remembered job ids: an exec is never started twice
EARLY_CANCELS_MAX = 1000  # cancels that overtook their exec, per (origin, job): kept apart, so a
                          # flood of cancels for made-up ids cannot push real ones out of `seen`
# A job's first message names its pid: its first output, its exit, or after this long a
# "started" message of its own (a short command then sends one message through the leader, not two)
STARTED_DELAY_S = 0.02
STDIN_BUFFER_MAX_BYTES = 4 << 20  # 4x the origin's stdin window (sessions.STDIN_WINDOW_BYTES)
OWN_IDENTITY_S = 5.0  # a change to the daemon user's passwd entry or /run/user dir is seen this late


class TargetJobs:
    """The jobs this node runs on behalf of origins."""

    def __init__(self, node_id, home, run_as_root=None):
        self.node_id, self.home = node_id, home
        self.records = leftovers.Records(home)  # our running process groups, on disk
        self.jobs = {}
        self.seen = OrderedDict()  # job id -> True: at-most-once across retries/reconnects
        self.early_cancels = OrderedDict()  # (origin, job) -> True: cancelled before its exec came
        self.finished = []  # process groups of ended jobs whose records forget_finished() removes
        self.is_root = os.geteuid() == 0 if run_as_root is None else run_as_root
        self.own = None  # (monotonic expiry, passwd entry, environment) of the daemon's user

    def handle(self, from_peer, header, data):
        """A routed message for the target side (exec, credit, stdin, cancel, alive from an
        origin); returns the messages to send. The daemon and the bench swarm both use it."""
        mtype = header["t"]
        job = header.get("job")
        running = self.jobs.get(job) if mtype in ("credit", "stdin", "cancel") else None
        if running is not None and running.origin != from_peer:
            # job ids are no secret (`d history`): only the origin may feed, pace or stop its job
            if _LIMITER.allow(("steer", from_peer)):
                log.warning("%s for job %s from %s, which is not its origin: dropped", mtype, job, from_peer)
            return []
        if mtype == "exec":
            if header.get("ts") and time.time() > header["ts"] + header["ttl"]:
                log.warning("exec %s from %s arrived too late: dropped", job, from_peer)
                return [({"t": "error", "job": job, "to": from_peer,
                          "err": {"err": "timeout", "msg": "Request expired before delivery"}}, None)]
            return self.start(header, from_peer)
        if mtype == "credit":
            self.credit(job, header["n"])
        elif mtype == "stdin":
            return self.stdin(job, bytes(data or b""), header["eof"])
        elif mtype == "cancel":
            self.cancel(job, from_peer)
        elif mtype == "alive":
            self.alive(from_peer, [j for j in header["jobs"] if isinstance(j, str)])
        return []

    def keepalives(self, extra=None):
        """One alive message per origin listing the jobs we run for it (plus `extra` ones)."""
        jobs = self.jobs_by_origin()
        for origin, job in extra or ():
            jobs.setdefault(origin, []).append(job)
        return [({"t": "alive", "to": origin, "jobs": ids, "side": "target"}, None)
                for origin, ids in jobs.items()]

    def _remember(self, job):
        """Record a job id as seen; False if it was seen before."""
        if job in self.seen:
            return False
        self.seen[job] = True
        while len(self.seen) > SEEN_JOBS_MAX:
            self.seen.popitem(last=False)
        return True

    def start(self, msg, origin):
        """Start an exec request; returns the messages to send (started or error)."""
        job = msg["job"]
        if not self._remember(job):
            log.warning("job %s from %s already seen: not started again", job, origin)
            return []
        if self.early_cancels.pop((origin, job), None):
            log.info("job %s from %s was cancelled before it arrived: not started", job, origin)
            return [({"t": "exit", "job": job, "to": origin, "rc": RC_CANCELLED, "how": "cancelled",
                      "bytes": 0, "duration": 0.0, "seq": 0}, None)]
        try:
            trace.mark("spawn")
            proc = self._spawn(msg)
        except ZpeerError as exc:
            return [({"t": "error", "job": job, "to": origin, "err": exc.to_reply()}, None)]
        trace.mark("spawned")
        rj = RunningJob(job, origin, proc, msg.get("timeout"), msg["credit"])
        self.jobs[job] = rj
        log.info("job %s from %s: pid %d: %s", job, origin, proc.pid, shown(msg["cmd"][:200]))
        rj.announce_at = time.monotonic() + STARTED_DELAY_S
        return []

    def _announce(self, rj):
        """True once, for the job's first message (which then names its pid). Its process group
        goes on disk for zpeer.daemon.leftovers then, before the origin hears of the job: not at spawn,
        where reading the start time of a process still in execve waits for it, and a command
        that ends within STARTED_DELAY_S without output needs no record."""
        if rj.announce_at is None:
            return False
        rj.announce_at = None
        self.records.record(rj.proc.pid, rj.job)
        rj.recorded = True
        return True

    def _own_identity(self):
        """The daemon user's passwd entry and command environment, looked up again after
        OWN_IDENTITY_S (the passwd and /run/user lookups were 40-50 us of every exec)."""
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
                    raise BadRequest(f"--user {user} needs the daemon on {self.node_id} to run as root")
                extra = {"user": entry.pw_uid, "group": entry.pw_gid,
                         "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid)}
            env = child_environment(entry, self.home)
        else:
            entry, env = self._own_identity()
        directory, notice = working_directory(msg.get("dir"), entry, self.node_id, extra)
        env = dict(env, ZPEER_JOB=msg["job"])
        try:
            return spawn(["/bin/bash", "-c", msg["cmd"]], directory, env, bool(msg.get("stdin")), extra, notice)
        except OSError as exc:
            raise ZpeerError(f"Cannot start command on {self.node_id}: {exc}") from None

    def poll_items(self):
        """(fd, want_write) pairs the loop must poll: output pipes with credit, stdin, pidfds."""
        items = []
        for rj in self.jobs.values():
            if rj.credit > 0:
                items.extend((fd, False) for fd in rj.pipes.values())
            if rj.stdin_fd is not None and rj.stdin_buf:
                items.append((rj.stdin_fd, True))
            if rj.pidfd is not None and rj.exited_at is None:
                items.append((rj.pidfd, False))
        return items

    def on_ready(self, ready):
        """Handle a set of ready fds; returns messages."""
        out = []
        for rj in list(self.jobs.values()):
            closed = False
            for num, fd in list(rj.pipes.items()):
                if fd in ready and rj.credit > 0:
                    # a second read when the first drained the pipe: a command's EOF is usually
                    # right behind its last output (one loop turn less for `hostname`)
                    for _ in range(2):
                        before = rj.bytes_out
                        got = self._read(rj, num)
                        out.extend(got)
                        if not got or rj.credit <= 0 or rj.bytes_out - before >= READ_CHUNK_BYTES:
                            break
                    closed = closed or num not in rj.pipes
            if rj.stdin_fd is not None and rj.stdin_fd in ready:
                out.extend(self._stdin_ack(rj, rj.write_stdin()))
            if rj.pidfd is not None and rj.pidfd in ready:
                rj.reap()
            if closed and rj.exited_at is None and rj.pidfd is not None and not rj.lingered:
                out.extend(self._linger(rj))
            out.extend(self._maybe_finish(rj))
        return out

    def _linger(self, rj):
        """An output pipe closed: the shell is most likely exiting. The kernel closes its other
        pipe and reports its exit microseconds later; wait that long here (at most
        EXIT_LINGER_S, once per job) instead of a loop turn for each (a short command's end
        woke the loop three times, 0.1-0.2 ms)."""
        rj.lingered = True
        out = []
        deadline = time.monotonic() + EXIT_LINGER_S
        while rj.exited_at is None:
            poller = select.poll()  # not select(): a busy daemon's fds pass FD_SETSIZE (1024)
            for fd in [fd for fd in rj.pipes.values() if rj.credit > 0] + [rj.pidfd]:
                poller.register(fd, select.POLLIN)
            # one look even past the deadline: a loaded loop gets here late, the fds ready
            left_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = {fd for fd, _ in poller.poll(left_ms)}
            for num, fd in list(rj.pipes.items()):
                if fd in ready and rj.credit > 0:
                    out.extend(self._read(rj, num))
            if rj.pidfd in ready:
                rj.reap()
            if not ready or not left_ms:
                break
        return out

    def _read(self, rj, num):
        """Read one chunk (bounded by credit) from a pipe."""
        try:
            data = os.read(rj.pipes[num], min(READ_CHUNK_BYTES, rj.credit))
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            rj.close_pipe(num)
            return []
        rj.credit -= len(data)
        rj.bytes_out += len(data)
        rj.last_data_at = time.monotonic()
        rj.seq += 1
        header = {"t": "out", "job": rj.job, "to": rj.origin, "fd": num, "seq": rj.seq}
        if self._announce(rj):
            header["pid"] = rj.proc.pid  # its first message: "started" too
        return [(header, data)]

    @staticmethod
    def _stdin_ack(rj, n):
        """The ack for n stdin bytes the child took (none when the pipe was full)."""
        return [] if n is None else [({"t": "stdin_ack", "job": rj.job, "to": rj.origin, "n": n}, None)]

    def _maybe_finish(self, rj):
        """End the job when the shell exited and its pipes are drained (or idle/cut)."""
        if rj.exited_at is None:
            return []
        now = time.monotonic()
        for num, fd in list(rj.pipes.items()):
            pending = pending_bytes(fd)
            idle_since = max(rj.exited_at, rj.last_data_at or 0)
            if rj.how != "exit":
                # killed: deliver what is already buffered if the reader keeps up, no more
                if pending == 0 or rj.credit <= 0:
                    rj.close_pipe(num)
            elif pending == 0 and now - idle_since > EXIT_IDLE_GRACE_S:
                rj.close_pipe(num)  # a background child holds the pipe open but is silent
            elif now - rj.exited_at > EXIT_DRAIN_MAX_S and rj.credit > 0:
                rj.close_pipe(num)  # a background child keeps writing after the shell exited
        if rj.pipes:
            return []
        del self.jobs[rj.job]
        if rj.recorded:
            self.finished.append(rj.proc.pid)
        rc = rj.rc()
        rj.release()
        log.info("job %s: %s rc=%d after %.3fs", rj.job, rj.how, rc, now - rj.started)
        if rj.proc.status_lost and rj.how == "exit":  # never pass a made-up code off as the command's
            lost = ExitLost(f"The exit status of the command on {self.node_id} was lost")
            return [({"t": "error", "job": rj.job, "to": rj.origin, "err": lost.to_reply()}, None)]
        exit_msg = {"t": "exit", "job": rj.job, "to": rj.origin, "rc": rc, "how": rj.how,
                    "bytes": rj.bytes_out, "duration": now - rj.started, "seq": rj.seq}
        if rj.announce_at is not None:  # its first message: the exit says "started" too
            rj.announce_at = None
            exit_msg["pid"] = rj.proc.pid
        return [(exit_msg, None)]

    def forget_finished(self):
        """Drop the on-disk records of jobs that ended (after their exits left: off the fast path)."""
        for pgid in self.finished:
            self.records.forget(pgid)
        self.finished.clear()

    def credit(self, job, n):
        """The origin consumed output: allow n more bytes."""
        rj = self.jobs.get(job)
        if rj:
            rj.credit += max(0, n)
            rj.last_origin_word = time.monotonic()

    def stdin(self, job, data, eof):
        """Queue stdin bytes for a job's child; returns acks for what it took at once."""
        rj = self.jobs.get(job)
        if rj is None:
            return []
        if rj.stdin_fd is None:  # child closed stdin: ack so the origin does not stall
            return [({"t": "stdin_ack", "job": job, "to": rj.origin, "n": len(data)}, None)] if data else []
        out = []
        if data and len(rj.stdin_buf) + len(data) > STDIN_BUFFER_MAX_BYTES:
            # the origin ignored its stdin window: refuse to buffer without bound
            log.warning("job %s: origin %s overran its stdin window, killing the job", job, rj.origin)
            rj.stdin_buf.clear()
            rj.close_stdin()
            rj.stop("cancelled")
            return out
        if data:
            rj.stdin_buf += data
            out = self._stdin_ack(rj, rj.write_stdin())
        if eof:
            rj.stdin_eof = True
            if not rj.stdin_buf:
                rj.close_stdin()
        return out

    def cancel(self, job, origin=None):
        """Kill a job's process group at the origin's request."""
        rj = self.jobs.get(job)
        if rj:
            rj.stop("cancelled")
        elif job not in self.seen:  # the exec may still be on its way: it must not run then
            self.early_cancels[(origin, job)] = True
            while len(self.early_cancels) > EARLY_CANCELS_MAX:
                self.early_cancels.popitem(last=False)

    def alive(self, origin, jobs):
        """The origin still wants these jobs."""
        now = time.monotonic()
        for job in jobs:
            rj = self.jobs.get(job)
            if rj and rj.origin == origin:
                rj.last_origin_word = now

    def on_timer(self, now, origin_timeout_s):
        """Timeouts, SIGKILL escalation, orphaned jobs, and drain grace; returns messages."""
        out = []
        for rj in list(self.jobs.values()):
            if rj.deadline and now >= rj.deadline and rj.how == "exit":
                rj.stop("timeout")
            if now - rj.last_origin_word > origin_timeout_s and rj.how == "exit":
                log.warning("job %s: origin %s went silent, killing it", rj.job, rj.origin)
                rj.stop("cancelled")
            if rj.kill_at and now >= rj.kill_at:
                rj.kill_group(signal.SIGKILL)
                rj.kill_at = None
            if rj.exited_at is None and rj.pidfd is None:
                rj.reap()
            if rj.announce_at is not None and now >= rj.announce_at and self._announce(rj):
                out.append(({"t": "started", "job": rj.job, "to": rj.origin, "pid": rj.proc.pid}, None))
            out.extend(self._maybe_finish(rj))
        return out

    def next_deadline(self):
        """Earliest monotonic time at which on_timer has work."""
        times = []
        for rj in self.jobs.values():
            if rj.announce_at is not None:
                times.append(rj.announce_at)
            if rj.deadline and rj.how == "exit":
                times.append(rj.deadline)
            if rj.kill_at:
                times.append(rj.kill_at)
            if rj.exited_at is not None:
                times.append(time.monotonic() + 0.05)
            if rj.pidfd is None and rj.exited_at is None:
                times.append(time.monotonic() + 0.05)
        return min(times) if times else None

    def jobs_by_origin(self):
        """origin -> [job ids], for keepalives."""
        result = {}
        for rj in self.jobs.values():
            result.setdefault(rj.origin, []).append(rj.job)
        return result

    def fail_origin(self, origin):
        """The origin is gone (disconnected): kill its jobs."""
        for rj in self.jobs.values():
            if rj.origin == origin and rj.how == "exit":
                rj.stop("cancelled")

    def fail_others(self, keep_origin):
        """Our leader link is gone: kill jobs of every origin but `keep_origin` (ourselves)."""
        for rj in self.jobs.values():
            if rj.origin != keep_origin and rj.how == "exit":
                rj.stop("cancelled")

    def shutdown(self):
        """Kill everything (daemon stopping)."""
        for rj in list(self.jobs.values()):
            rj.kill_group(signal.SIGKILL)
            rj.release()
            self.records.forget(rj.proc.pid)
        self.jobs.clear()
        self.forget_finished()
