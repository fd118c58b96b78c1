"""What a target keeps until its origin has it, so that a link that drops messages (a redial
after silence, a peer that roamed to a new address) loses no output and no exit; and what an
origin keeps of the stdin it sent until its target has it (StdinLog).

A job's output chunks stay in its `Unacked` until the origin's credit covers them: the credit
window bounds them, as it bounds what is in flight. A job that ended stays in `Closed` with its
last chunks and its final message (exit or error) until the origin's alive no longer names it,
or the origin has been silent for the limit. An origin's alive says, per job, the last chunk it
took in order and all the credit it gave; what it lacks and was sent at least `after_s` ago
(long enough for it to have arrived) goes again. The origin takes each chunk once, in order
(zpeer.daemon.origin), so a chunk sent twice is harmless.
"""
from collections import OrderedDict, deque
from typing import NamedTuple, Optional

from zpeer.daemon.actions import Send

NO, MAYBE, NAMED = 0, 1, 2
# a chunk the origin names as missing goes again this share of `after_s` after it last went:
# it is lost, not late (one connection keeps the order), unless it was sent again just now
NAMED_AFTER_SHARE = 0.25


class Wanted(NamedTuple):
    """What an origin's alive says it has of one job (None: it does not say)."""

    got: Optional[int] = None  # the last chunk it took in order
    acked: Optional[int] = None  # the credit it gave in all
    have: Optional[int] = None  # past a gap: the highest chunk it holds
    missing: Optional[frozenset] = None  # past a gap: the chunks it lacks below `have`

    def lacks(self, seq):
        """Whether the origin lacks chunk seq: NO, MAYBE (nothing after it came yet, or it
        names too many), or NAMED (missing below one it holds)."""
        if self.got is None or seq <= self.got:
            return NO
        if self.have is None or seq > self.have or self.missing is None:
            return MAYBE
        return NAMED if seq in self.missing else NO


def wanted_of(header):
    """An origin's alive as {job id: Wanted}; what is malformed counts as not said."""
    jobs = header["jobs"]
    got, acked, gaps = header.get("got"), header.get("acked"), header.get("gaps")
    counted = (isinstance(got, list) and isinstance(acked, list) and len(got) == len(jobs)
               and len(acked) == len(jobs))
    gaps = gaps if isinstance(gaps, dict) else {}
    wanted = {}
    for i, job in enumerate(jobs):
        if not isinstance(job, str):
            continue
        if not (counted and type(got[i]) is int and type(acked[i]) is int):
            wanted[job] = Wanted()
            continue
        have, missing = None, None
        gap = gaps.get(job)
        if isinstance(gap, list) and len(gap) == 2 and type(gap[0]) is int:
            have = gap[0]
            if isinstance(gap[1], list) and all(type(seq) is int for seq in gap[1]):
                missing = frozenset(gap[1])
        wanted[job] = Wanted(got[i], acked[i], have, missing)
    return wanted


class Unacked:
    """One job's output chunks sent and not yet covered by the origin's credit."""

    __slots__ = ("chunks", "acked", "released", "held")

    def __init__(self):
        self.chunks = deque()  # [seq, header, data, sent_at], oldest first
        self.acked = 0  # credit the origin gave in all
        self.released = 0  # bytes of the chunks let go, being covered
        self.held = 0  # bytes of the chunks kept

    def sent(self, header, data, now):
        """A chunk went out."""
        self.chunks.append([header["seq"], header, data, now])
        self.held += len(data)

    def acknowledge_to(self, total):
        """The origin has given `total` credit in all; returns how much that adds."""
        gained = total - self.acked
        if gained <= 0:
            return 0
        self.acked = total
        chunks = self.chunks
        while chunks and self.released + len(chunks[0][2]) <= total:
            n = len(chunks.popleft()[2])
            self.released += n
            self.held -= n
        return gained

    def due(self, has, now, after_s):
        """The chunks the origin lacks (`has`: a Wanted) that went at least after_s ago, to
        send again now."""
        out = []
        if has.got is None:
            return out
        for chunk in self.chunks:
            lacks = has.lacks(chunk[0])
            wait_s = after_s * NAMED_AFTER_SHARE if lacks == NAMED else after_s
            if lacks != NO and now - chunk[3] >= wait_s:
                chunk[3] = now
                out.append(Send(dict(chunk[1]), chunk[2]))
        return out


class ClosedJob:
    """A job that ended here, as long as its origin may lack the end of it."""

    __slots__ = ("origin", "unacked", "final", "sent_at", "keep_s", "until")

    def __init__(self, origin, unacked, final, now, keep_s):
        self.origin, self.unacked, self.final = origin, unacked, final
        self.sent_at = now
        self.keep_s = keep_s  # from its end, and again from each alive that names it
        self.until = now + keep_s


class Closed:
    """The jobs that ended here and whose origins may still lack their end."""

    def __init__(self):
        self.jobs = OrderedDict()  # (origin, job id) -> ClosedJob, in the order they expire

    def keep(self, job, origin, unacked, final, now, keep_s):
        """Keep a job's last chunks and final Send (its exit or error)."""
        self.jobs[origin, job] = ClosedJob(origin, unacked, final, now, keep_s)

    def on_alive(self, origin, wanted, now, after_s):
        """The origin's alive: `wanted` maps the jobs it waits for to what it has (Wanted).
        Jobs of that origin it no longer names are let go; what it lacks goes again; returns
        actions."""
        out = []
        for key, closed in list(self.jobs.items()):
            if closed.origin != origin:
                continue
            job = key[1]
            if job not in wanted:
                del self.jobs[key]
                continue
            has = wanted[job]
            if has.acked is not None:
                closed.unacked.acknowledge_to(has.acked)
            out.extend(closed.unacked.due(has, now, after_s))
            if closed.until < now + closed.keep_s:
                closed.until = now + closed.keep_s
                self.jobs.move_to_end(key)  # expire() takes them in order
            if now - closed.sent_at >= after_s:
                closed.sent_at = now
                out.append(Send(dict(closed.final.header), closed.final.data))
        return out

    def expire(self, now):
        """Let go of the jobs kept long enough (their origins have stopped waiting)."""
        jobs = self.jobs
        while jobs:
            key, closed = next(iter(jobs.items()))
            if closed.until > now:
                break  # kept in the order they expire
            del jobs[key]

    def by_origin(self):
        """origin -> [job ids] kept for it."""
        result = {}
        for (origin, job) in self.jobs:
            result.setdefault(origin, []).append(job)
        return result


class StdinLog:
    """One job's stdin as its origin sent it, kept until the target is known to have it: the
    same promise for the other direction. Each stdin message says at which byte of the stream
    it starts (`at`); the target takes the bytes in order, once, and says in its alive how far
    it got. The end of input counts as one byte more (as TCP's FIN), so a lost end goes again
    too. The stdin window bounds what is kept."""

    __slots__ = ("chunks", "at", "taken")

    def __init__(self):
        self.chunks = deque()  # [end, header, data, sent_at], oldest first; end counts the FIN
        self.at = 0  # where the next chunk starts
        self.taken = 0  # bytes its command took in all (stdin_ack): the target has them

    def sent(self, header, data, now):
        """A stdin message for this job is going out: stamp where it starts, keep it."""
        header["at"] = self.at
        self.at += len(data)
        end = self.at + (1 if header.get("eof") else 0)
        self.chunks.append([end, header, data, now])

    def took(self, n):
        """The command took n more bytes (the target has them)."""
        self.taken += n
        self.confirm(self.taken)

    def confirm(self, got):
        """The target has the stream up to `got` (FIN counted): let go of what it covers."""
        chunks = self.chunks
        while chunks and chunks[0][0] <= got:
            chunks.popleft()

    def due(self, got, now, after_s):
        """The chunks the target lacks (it has the stream up to `got`) that went at least
        after_s ago, to send again now."""
        self.confirm(got)
        out = []
        for chunk in self.chunks:
            if now - chunk[3] >= after_s:
                chunk[3] = now
                out.append(Send(dict(chunk[1]), chunk[2]))
        return out
