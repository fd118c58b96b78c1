"""A worker's copies, for the leader's audit, of the jobs that never cross the leader (the ones it
runs on itself), kept until the leader has acknowledged them.

Each job has two copies: its exec, and its end (its exit, or its error). They go to the leader in
that order, each again until acknowledged, so a copy lost to a link that was down (or a leader
that was away) arrives once the link is back; the end goes only after the exec was taken, so that
the leader's row is never updated before it exists. Nothing here touches a socket.
"""
import logging
import time
from collections import OrderedDict

log = logging.getLogger(__name__)

COPIES_MAX = 10000  # jobs kept waiting: beyond, the oldest are given up (with a log line)
RETRY_S = 2.0  # an unacknowledged copy goes again after this long
RETRY_BATCH = 100  # copies sent again per look (a long outage is caught up over a few turns)


class AuditCopies:
    """The copies waiting for the leader's acknowledgment, oldest job first."""

    def __init__(self):
        self.jobs = OrderedDict()  # job -> [exec header, end header, exec taken by the leader]
        self.in_flight = {}  # rpc id -> (job, part: 0 exec, 1 end, when sent)

    def add(self, header):
        """A copy of this worker's own exec, exit or error."""
        job = header.get("job")
        if not isinstance(job, str):
            return
        entry = self.jobs.get(job)
        if header["t"] == "exec":
            if entry is None:
                self.jobs[job] = [dict(header), None, False]
        elif entry is not None:
            entry[1] = dict(header)
        else:  # its exec was given up (or came before this daemon): the end alone is no row
            return
        while len(self.jobs) > COPIES_MAX:
            dropped, _ = self.jobs.popitem(last=False)
            for rid in [r for r, (j, _, _) in self.in_flight.items() if j == dropped]:
                del self.in_flight[rid]
            log.warning("audit copy of job %s given up: too many wait for the leader", dropped)

    def due(self, now=None):
        """(job, header) for each copy to send now: the first one not taken of each job, unless
        it is in flight and not RETRY_S old."""
        now = time.monotonic() if now is None else now
        flying = {}
        for job, part, sent in self.in_flight.values():  # the latest send of each copy
            flying[(job, part)] = max(sent, flying.get((job, part), sent))
        out = []
        for job, (exec_copy, end_copy, exec_taken) in self.jobs.items():
            part = 1 if exec_taken else 0
            header = end_copy if exec_taken else exec_copy
            if header is None:
                continue
            sent = flying.get((job, part))
            if sent is None or now - sent >= RETRY_S:
                out.append((job, part, header))
                if len(out) >= RETRY_BATCH:
                    break
        return out

    def sent(self, rid, job, part, now=None):
        """A copy left in the rpc `rid` (an acknowledgment of its last two sends takes it)."""
        earlier = [r for r, (j, p, _) in self.in_flight.items() if (j, p) == (job, part)]
        for old in earlier[:-1]:
            del self.in_flight[old]
        self.in_flight[rid] = (job, part, time.monotonic() if now is None else now)

    def acknowledged(self, rid):
        """The leader took the copy of rpc `rid`; a job whose end was taken is done."""
        found = self.in_flight.pop(rid, None)
        if found is None:
            return
        job, part, _ = found
        for other in [r for r, (j, p, _) in self.in_flight.items() if (j, p) == (job, part)]:
            del self.in_flight[other]
        entry = self.jobs.get(job)
        if entry is None:
            return
        if part == 0:
            entry[2] = True
        else:
            del self.jobs[job]
