"""The leader's cap on connections that have not proven a peer: per source address, at most
UNVERIFIED_PER_IP_MAX of them may stay open longer than UNVERIFIED_GRACE_S; the oldest beyond
that are ended.

A connection counts from its TCP accept until a hello over it is accepted (zpeer.daemon.peer_table
binds it) or it closes. CurveZMQ keeps a connection that has not finished its handshake short (5
s, 2 MiB frames), but a client with a fresh key passes the handshake and may then idle: without
this cap one address could hold connections by the thousand. The grace lets a fleet behind one
NAT come back all at once after a leader restart (their hellos are accepted within it). No
sockets here: the leader reads its monitor and ends what `sweep` returns
(zpeer.daemon.tcp_state.end).
"""
from collections import OrderedDict
from itertools import islice

UNVERIFIED_PER_IP_MAX = 16
UNVERIFIED_GRACE_S = 5.0


class Admission:
    """Open connections without an accepted hello, per source address, oldest first."""

    def __init__(self, per_ip_max=UNVERIFIED_PER_IP_MAX, grace_s=UNVERIFIED_GRACE_S):
        self.per_ip_max, self.grace_s = per_ip_max, grace_s
        self.ip_of = {}  # fd -> source address
        self.by_ip = {}  # source address -> OrderedDict fd -> accepted at (oldest first)
        self.crowded = set()  # addresses with more than per_ip_max of them

    def accepted(self, fd, ip, now):
        """A connection was accepted (its address, None if it cannot be told)."""
        self.closed(fd)  # a number reused: the old connection closed before this one came
        if ip is None:
            return
        self.ip_of[fd] = ip
        fds = self.by_ip.setdefault(ip, OrderedDict())
        fds[fd] = now
        if len(fds) > self.per_ip_max:
            self.crowded.add(ip)

    def verified(self, fd):
        """An accepted hello came over this connection: it no longer counts."""
        self.closed(fd)

    def closed(self, fd):
        """The connection closed (or is no longer counted)."""
        ip = self.ip_of.pop(fd, None)
        if ip is None:
            return
        fds = self.by_ip[ip]
        fds.pop(fd, None)
        if len(fds) <= self.per_ip_max:
            self.crowded.discard(ip)
        if not fds:
            del self.by_ip[ip]

    def sweep(self, now):
        """The (fd, ip) of the connections to end now: of each crowded address, the oldest of
        those that have had their grace, beyond its cap of them (a young one, a worker in the
        middle of its hello, say, is not judged yet and costs an old one nothing)."""
        ended = []
        for ip in list(self.crowded):
            fds = self.by_ip[ip]
            old = [fd for fd, since in fds.items() if now - since >= self.grace_s]
            for fd in old[:max(0, len(old) - self.per_ip_max)]:
                self.closed(fd)
                ended.append((fd, ip))
        return ended

    def next_deadline(self):
        """When one more connection of a crowded address than its cap has had its grace (the
        sweep then ends the oldest), or None."""
        times = [next(islice(self.by_ip[ip].values(), self.per_ip_max, None))
                 for ip in self.crowded]
        return min(times) + self.grace_s if times else None
