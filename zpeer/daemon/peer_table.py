"""The leader's table of verified peers: the route and key of each, when it was last heard, and
how long it may stay silent before it is offline.

A peer enters when its hello was accepted (zpeer.daemon.enrolment) and leaves when it is silent
for three of its heartbeat intervals (`sweep`), is removed, or its route is taken over by a
connection with another key. A closed connection (FIN, RST: a killed daemon, a stopped host's
kernel) marks it gone at once for new work; its running jobs keep the silence limit, so a link
that comes back in time loses nothing.
"""
import logging
import math

log = logging.getLogger(__name__)


def beat_interval_s(base_s, peers, budget_per_s):
    """The heartbeat interval announced to workers: `base_s`, stretched (in 0.5 s steps) so that
    `peers` workers send at most `budget_per_s` heartbeats a second in all."""
    need_s = peers / max(1.0, float(budget_per_s))
    return base_s if need_s <= base_s else math.ceil(need_s * 2) / 2


class Entry:
    """A verified peer's connection: its key, address, route and when it was last heard."""

    __slots__ = ("key", "ip", "rx", "route", "fd", "gone", "tx", "tx_at", "clock_offset_s",
                 "user")

    def __init__(self, key, ip, rx, route, fd):
        self.key, self.ip, self.rx, self.route, self.fd = key, ip, rx, route, fd
        self.gone = False  # its connection closed; it may still come back within the limit
        # its last stamp and when it came, on the leader's clock (zpeer.daemon.stamps)
        self.tx = self.tx_at = None
        self.clock_offset_s = None  # its wall clock less the leader's, as it measured (shown)
        self.user = None  # the account its daemon runs commands as (its hello says)


class PeerTable:
    """Verified peers of a leader (the leader itself is always online)."""

    def __init__(self, own_id, heartbeat_s):
        self.own_id = own_id
        self.live = {}  # peer id -> Entry
        self.keys = {}  # CURVE key -> peer id, of the entries in live
        self.fds = {}  # socket fd -> (peer id, route) of the connection a verified hello came over
        self.heartbeat_s = heartbeat_s
        self.beat_s = heartbeat_s  # the interval workers are told (stretched for big fleets)
        self.slow_s, self.slow_until = 0.0, 0.0  # a longer interval some workers may still use

    def admit(self, peer_id, key, ip, route, fd, now):
        """A peer's hello was accepted on this connection: it is online from here; its entry."""
        previous = self.live.get(peer_id)
        if previous is not None:
            self.keys.pop(previous.key, None)
        entry = self.live[peer_id] = Entry(key, ip, now, route, fd)
        self.keys[key] = peer_id
        if fd is not None:
            self.fds[fd] = (peer_id, route)
        return entry

    def verified(self, peer_id, key, route):
        """The peer's entry if this key and route are the ones its accepted hello bound."""
        entry = self.live.get(peer_id)
        if entry is None or entry.key != key or entry.route != route:
            return None
        return entry

    def by_key(self, key):
        """(peer id, entry) of the verified peer this key is bound to, or (None, None): what
        comes over a peer's older connection, whose route a newer one took (handover), is
        still the peer's (CURVE proved the key)."""
        peer_id = self.keys.get(key)
        entry = self.live.get(peer_id) if peer_id is not None else None
        if entry is None or entry.key != key:
            return None, None
        return peer_id, entry

    def route_of(self, peer_id):
        """The routing identity to send to a verified peer by, or None."""
        entry = self.live.get(peer_id)
        return None if entry is None else entry.route

    def drop(self, peer_id):
        """Forget a peer (removed, or its route taken by another key)."""
        entry = self.live.pop(peer_id, None)
        if entry is not None:
            self.fds.pop(entry.fd, None)
            self.keys.pop(entry.key, None)

    def disconnected(self, fd):
        """The connection behind fd closed: its peer is offline for new work at once."""
        owner = self.fds.pop(fd, None)
        entry = self.live.get(owner[0]) if owner else None
        # the same route may already run over a newer connection (a handover closes the old one)
        if entry is not None and entry.fd == fd and entry.route == owner[1] and not entry.gone:
            entry.gone = True
            log.info("peer %s disconnected", owner[0])

    def online(self, peer_id):
        """True if the peer is connected and verified (the leader itself always is)."""
        if peer_id == self.own_id:
            return True
        entry = self.live.get(peer_id)
        return entry is not None and not entry.gone

    def may_return(self, peer_id):
        """True while a peer's running jobs wait for it (online, or disconnected for less than
        the silence limit: a flapping link may come back)."""
        return peer_id == self.own_id or peer_id in self.live

    def count_online(self):
        """How many peers are online now (the leader not counted)."""
        return sum(map(self.online, self.live))

    def retune(self, now, heartbeat_s, budget_per_s):
        """Follow the fleet's size with the announced interval (workers learn it from each
        reply)."""
        self.heartbeat_s = heartbeat_s
        beat_s = beat_interval_s(heartbeat_s, len(self.live), budget_per_s)
        if beat_s < self.beat_s:
            # workers still beat at the old interval until their next reply tells them the new one
            self.slow_s, self.slow_until = self.beat_s, now + 2 * self.beat_s
        if beat_s != self.beat_s:
            log.info("heartbeat interval %.1fs for %d peers", beat_s, len(self.live))
        self.beat_s = beat_s

    def silence_limit_s(self, now):
        """How long a verified peer may stay silent before it is offline: 3 of its intervals."""
        return 3 * max(self.beat_s, self.slow_s if now < self.slow_until else 0.0)

    def sweep(self, now):
        """Take the peers silent for their limit off the table; returns their ids."""
        limit = self.silence_limit_s(now)
        gone = [p for p, e in self.live.items() if now - e.rx > limit]
        for peer_id in gone:
            self.drop(peer_id)
            log.info("peer %s offline (silent for %.1fs)", peer_id, limit)
        return gone
