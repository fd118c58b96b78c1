"""How much bulk one hop's TCP connection may take now: the kernel's view of it, followed.

A HopWindow watches the connection libzmq made for a hop (zpeer.daemon.tcp_state) and says how
many bulk bytes may be handed to libzmq now (`room`), so that the kernel holds at most `lowat`
bytes unsent (QUEUE_TARGET_S of the rate it measures: what control waits behind) and at most
`cap` in all, sent or not. What libzmq itself still holds (the kernel takes no more than its
send buffer, small on a slow link) is what this node handed it less what the kernel counts as
written, both in wire bytes (tcp_state.wire_bytes: every message on the connection is counted,
control too).

Both limits start small for each burst of bulk and grow only on evidence: the kernel sent all it
had while bulk waited, no queue builds on the way (round trips stay near the bare one), and the
latest rate allows it; a rate measured while the connection was busy sets them. A token bucket's
burst passes at line rate, and a congestion control that believes it (BBR) then queues seconds
of bulk on a slow link, where a lost packet holds up everything behind it: `cap` keeps that out.
"""
from collections import deque

from zpeer.daemon import tcp_state

QUEUE_TARGET_S = 0.025  # bulk that control may wait behind, in time at the connection's rate
# the limits start here for each burst of bulk (after IDLE_RESET_S without any): a rate measured
# when the path was another (roaming) or the connection idle says nothing of it now
INITIAL_LOWAT_BYTES = 8 << 10
IDLE_RESET_S = 1.0
MIN_LOWAT_BYTES = 8 << 10
MAX_LOWAT_BYTES = 8 << 20
RETRY_MIN_S, RETRY_MAX_S = 0.002, 0.02  # when to look again at a hop whose bulk waits
# cap: rate * (2 * bare round trip + CAP_EXTRA_S), twice the bandwidth-delay product and more,
# which never holds TCP back
INITIAL_CAP_BYTES = 16 << 10
MIN_CAP_BYTES = 16 << 10
MAX_CAP_BYTES = 256 << 20
CAP_EXTRA_S = 0.1
RATE_WINDOW_S = 1.0  # the rate is the best the kernel measured busy within this long
BASE_QUIET_S = 0.05  # an idle connection this long: libzmq's count starts again (no drift)
QUEUEING_RTTS, QUEUEING_SLACK_S = 2, 0.005  # a round trip beyond this: a queue builds
GROW_INTERVAL_MIN_S = 0.01
GROWTH = 3  # per round trip while nothing queues, near BBR startup (2.89)


class HopWindow:
    """One hop's connection, as far as bulk may fill it."""

    def __init__(self):
        self.fd = None  # the hop's TCP connection, as libzmq named it
        self.lowat = INITIAL_LOWAT_BYTES
        self.cap = INITIAL_CAP_BYTES
        self.rates = deque()  # (when, bytes per second) the kernel measured busy: best first
        # wire bytes handed to libzmq since the base, and the kernel's written count then
        self.handed = self.written_base = 0
        self.written_seen = 0  # the kernel's written count at the last look
        self.handed_at = 0.0
        self.grown_at = 0.0  # when the limits last grew
        self.last_bulk_at = 0.0
        self.rate = 0  # bytes per second, as the kernel last measured it

    def attach(self, fd):
        """The hop's connection is the one behind fd (a new connection: new fd)."""
        if fd == self.fd:
            return
        state = tcp_state.read(fd)
        self.fd = fd if state is not None else None
        self.lowat, self.cap = INITIAL_LOWAT_BYTES, INITIAL_CAP_BYTES
        self.rates.clear()
        self.handed, self.written_base = 0, state.written if state else 0
        self.written_seen = self.written_base

    def detach(self, fd=None):
        """The connection behind fd (or the hop's, whatever it is) closed."""
        if fd is None or fd == self.fd:
            self.fd = None

    def handing(self, frames, now):
        """A message of these frames goes to libzmq for this hop's connection."""
        if self.fd is not None:
            self.handed += tcp_state.wire_bytes(frames)
            self.handed_at = now

    def room(self, now):
        """Bulk bytes that may go now (None: unpaced) and when to look again if none may."""
        state = tcp_state.read(self.fd) if self.fd is not None else None
        if state is None:
            self.fd = None
            return None, None
        if now - self.last_bulk_at > IDLE_RESET_S:
            self.lowat, self.cap = INITIAL_LOWAT_BYTES, INITIAL_CAP_BYTES
        self.last_bulk_at = now
        self._follow(state, now)
        in_libzmq = self._seen(state, now)
        room = min(self.lowat - state.notsent, self.cap - state.queued) - in_libzmq
        self.rate = state.delivery_rate
        return room, (None if room > 0 else self.retry_at(now, room))

    def _seen(self, state, now):
        """What libzmq holds, from the kernel's state read now."""
        if state.notsent == 0 and state.unacked == 0 and now - self.handed_at > BASE_QUIET_S:
            # nothing in the kernel and nothing handed lately: libzmq holds nothing either
            self.handed, self.written_base = 0, state.written
        self.written_seen = state.written
        return self.in_libzmq()

    def in_libzmq(self):
        """Bytes handed to libzmq for the connection that the kernel had not taken at the last
        look (written only grows: never less than what libzmq holds now). 0 while unpaced."""
        if self.fd is None:
            return 0
        return max(0, self.handed - (self.written_seen - self.written_base))

    def look(self, now):
        """What libzmq holds for the connection now, read from the kernel."""
        state = tcp_state.read(self.fd) if self.fd is not None else None
        if state is None:
            return 0
        return self._seen(state, now)

    def retry_at(self, now, room):
        """When to look again at a connection `room` bytes short (0 or less): about when the
        excess has left, at the rate the kernel last measured."""
        rate = self.rate or MIN_LOWAT_BYTES / QUEUE_TARGET_S
        wait_s = (1 - room) / rate
        return now + min(RETRY_MAX_S, max(RETRY_MIN_S, wait_s))

    def _follow(self, state, now):
        """Keep lowat and cap with what the kernel measures of the connection."""
        if state.delivery_rate and not state.app_limited:
            while self.rates and self.rates[-1][1] <= state.delivery_rate:
                self.rates.pop()
            self.rates.append((now, state.delivery_rate))
        while self.rates and now - self.rates[0][0] > RATE_WINDOW_S:
            self.rates.popleft()
        queueing = state.rtt_s > QUEUEING_RTTS * state.min_rtt_s + QUEUEING_SLACK_S
        # the latest rate, busy or not, bounds growth: a token bucket's burst passes at line
        # rate, the samples after it do not
        room_for = 2 * state.delivery_rate * (2 * state.min_rtt_s + CAP_EXTRA_S)
        if (state.notsent == 0 and state.unacked and not queueing and room_for > self.cap
                and now - self.grown_at >= max(state.rtt_s, GROW_INTERVAL_MIN_S)):
            # the kernel sent all it had while bulk waited here, and nothing queues on the way:
            # we, not the link, are the limit; GROWTH times as much, at most once a round trip
            # (as TCP's slow start grows, and as it stops once round trips grow)
            if state.queued * 2 > self.cap:
                self.cap = int(min(MAX_CAP_BYTES, self.cap * GROWTH, room_for))
            self.lowat = int(min(MAX_LOWAT_BYTES, self.lowat * GROWTH, self.cap))
            self.grown_at = now
        elif self.rates and not state.app_limited:
            rate = self.rates[0][1]
            self.lowat = int(min(MAX_LOWAT_BYTES, max(MIN_LOWAT_BYTES, rate * QUEUE_TARGET_S)))
            wanted = rate * (2 * state.min_rtt_s + CAP_EXTRA_S)
            self.cap = int(min(MAX_CAP_BYTES, max(MIN_CAP_BYTES, wanted)))
