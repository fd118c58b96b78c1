"""The leader's cap on connections that have not proven a peer: at most UNVERIFIED_PER_IP_MAX
open per source address, the oldest ended beyond that.

A connection counts from its TCP accept until a hello over it is accepted (zpeer.daemon.peer_table
binds it) or it closes. CurveZMQ keeps an unauthenticated one short (a 5 s handshake, 2 MiB
frames), but a client with a fresh key passes the handshake and may then idle: without this cap
one address could hold connections by the thousand. Peers behind one NAT are unaffected once
they are enrolled; only their handshakes in progress share the cap. No sockets here: the leader
reads its monitor and ends what `accepted` returns (zpeer.daemon.tcp_state.end).
"""
from collections import OrderedDict

UNVERIFIED_PER_IP_MAX = 16


class Admission:
    """Open connections without an accepted hello, per source address, oldest first."""

    def __init__(self, per_ip_max=UNVERIFIED_PER_IP_MAX):
        self.per_ip_max = per_ip_max
        self.ip_of = {}  # fd -> source address
        self.by_ip = {}  # source address -> OrderedDict of its fds (oldest first)

    def accepted(self, fd, ip):
        """A connection was accepted: the (fd, ip) of those to end now (the oldest beyond the
        cap)."""
        self.closed(fd)  # a number reused: the old connection closed before this one came
        if ip is None:
            return []
        self.ip_of[fd] = ip
        fds = self.by_ip.setdefault(ip, OrderedDict())
        fds[fd] = None
        ended = []
        while len(fds) > self.per_ip_max:
            old, _ = fds.popitem(last=False)
            del self.ip_of[old]
            ended.append((old, ip))
        return ended

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
        if not fds:
            del self.by_ip[ip]

    def count(self, ip):
        """Unverified connections from one address."""
        return len(self.by_ip.get(ip, ()))
