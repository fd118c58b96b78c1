"""Pacing of bulk data on one hop, so that control never waits behind it.

Everything a node sends on a hop (a worker to its leader, the leader to one peer) shares one TCP
connection, and a message waits behind every byte queued before it: in libzmq's pipe and in the
kernel's send buffer. So bulk (the data of "out" and "stdin" messages) is handed to libzmq only
as far as the hop's connection has room (zpeer.daemon.hop_window: a small multiple of what the
link carries in a round trip, and about QUEUE_TARGET_S of it unsent); the rest waits here, one
queue per job, released in turn. Control (heartbeats, credit, cancels, alive, RPCs) goes at
once and so waits behind about that much bulk, and TCP's own congestion control keeps the link
full. A job's exit or error waits behind its own queued output, never behind another job's.
A pseudo-terminal's keystrokes and screen output (messages marked `tty`) count as control:
typing stays responsive while a transfer fills the same hop (their credit window is small).

The loop looks again at a hop whose bulk waits after about the time its excess takes to leave
(`retry_at`). A hop whose descriptor is unknown (before the first message on a new connection)
or is no Linux TCP socket sends bulk unpaced.

An output or stdin chunk sent again (zpeer.daemon.resend: its receiver had not had it after a
while, which on a slow hop means it still waits here) is not queued a second time beside its
first copy: a hop whose queue is seconds long would otherwise carry every chunk again and again.

A pacer also counts what it holds for its peer (`held`): the bulk queued here and what it
handed to libzmq that the kernel has not taken (control too), as of its last look at the
kernel; pacers that share a `Budget` keep its total. The leader bounds both (zpeer.daemon.leader:
what peers send it is not bounded by windows it can trust). An unpaced hop holds nothing here
and its libzmq queue is not counted (SNDHWM bounds its messages).
"""
import time
from collections import OrderedDict, deque

from zpeer.daemon.hop_window import HopWindow

BULK_TYPES = frozenset({"out", "stdin", "fan"})
BEHIND_OUTPUT = frozenset({"exit", "error"})  # these must not overtake their job's output
CHUNK_MIN_BYTES = 4 << 10
CHUNK_MAX_BYTES = 1 << 20


class Budget:
    """What the pacers of a node hold together."""

    __slots__ = ("total",)

    def __init__(self):
        self.total = 0  # the sum of their `held`


class Pacer:
    """The bulk a node sends on one hop: its queues, released as the hop has room."""

    def __init__(self, budget=None):
        self.window = HopWindow()
        self.queues = OrderedDict()  # job -> deque of (header, data), in turn order
        self.queued_bytes = 0
        self.queued_chunks = set()  # what _chunk names of the output and stdin chunks queued
        self.retry_at = None  # when to look again at the connection, while bulk waits
        self.budget = budget
        self.held = 0  # queued here and not taken by the kernel, at the last count

    def _count(self):
        """Count again what the hop holds (no look at the kernel: an upper bound)."""
        held = self.queued_bytes + self.window.in_libzmq()
        if self.budget is not None:
            self.budget.total += held - self.held
        self.held = held
        return held

    def look(self, now):
        """What the hop holds for its peer now, with the kernel's count read now."""
        self.window.look(now)
        return self._count()

    @property
    def fd(self):
        """The hop's connection (None: unknown, bulk goes unpaced)."""
        return self.window.fd

    def attach(self, fd):
        """The hop's connection is the one behind fd (a new connection: new fd)."""
        self.window.attach(fd)
        self._count()

    def detach(self, fd=None):
        """The connection behind fd (or the hop's, whatever it is) closed."""
        self.window.detach(fd)
        self._count()

    def handing(self, frames, now):
        """A message of these frames goes to libzmq for this hop's connection."""
        self.window.handing(frames, now)
        self._count()

    def chunk_bytes(self):
        """How much output a target should read into one message for this hop."""
        if self.window.fd is None:
            return CHUNK_MAX_BYTES
        return min(CHUNK_MAX_BYTES, max(CHUNK_MIN_BYTES, self.window.lowat // 2))

    def backlogged(self):
        """True while a lowat's worth of bulk waits here: its producers should pause."""
        return self.window.fd is not None and self.queued_bytes >= self.window.lowat

    def push(self, header, data):
        """Take a message for the hop; returns the ones to send now, in order."""
        job = header.get("job")
        mtype = header["t"]
        if job in self.queues:
            if mtype not in BULK_TYPES and mtype not in BEHIND_OUTPUT:
                return [(header, data)]  # credit, cancel, alive overtake
        elif (self.window.fd is None or mtype not in BULK_TYPES or data is None
              or header.get("tty")):
            return [(header, data)]
        chunk = _chunk(header)
        if chunk is not None:
            if chunk in self.queued_chunks:
                return []  # its first copy waits here still: it goes in its turn
            self.queued_chunks.add(chunk)
        queue = self.queues.get(job)
        if queue is None:
            queue = self.queues[job] = deque()
        queue.append((header, data))
        self.queued_bytes += len(data) if data is not None else 0
        return self.release(time.monotonic())

    def release(self, now):
        """The queued messages the connection has room for now, one job's at a time."""
        if not self.queues:
            return []
        room, self.retry_at = self.window.room(now)
        out = []
        while self.queues and (room is None or room > 0):
            job, queue = next(iter(self.queues.items()))
            header, data = queue.popleft()
            if self.queued_chunks:
                self.queued_chunks.discard(_chunk(header))
            if data is not None:
                n = len(data)
                self.queued_bytes -= n
                if room is not None:
                    room -= n
            if queue:
                self.queues.move_to_end(job)
            else:
                del self.queues[job]
            out.append((header, data))
        if self.queues and self.retry_at is None:  # the room is spent: look again when it is back
            self.retry_at = self.window.retry_at(now, room)
        self._count()
        return out

    def next_deadline(self):
        """When to look at the connection again, while bulk waits (None: nothing waits)."""
        return self.retry_at if self.queues else None

    def due(self, now):
        """True when bulk waits and it is time to look at the connection again."""
        return bool(self.queues) and (self.retry_at is None or now >= self.retry_at)

    def clear(self):
        """The hop is gone: nothing queued will leave."""
        self.queues.clear()
        self.queued_bytes = 0
        self.queued_chunks.clear()
        self.retry_at = None
        self._count()

    def forget(self):
        """The hop's peer is gone: nothing it holds counts any more."""
        self.window.detach()
        self.clear()


def _chunk(header):
    """(type, from, to, job, place) of an output chunk (its seq) or a stdin chunk (the byte it
    starts at), or None for any other message (job ids are their origins' to choose: the same
    id of two origins is two jobs)."""
    place = header.get("seq") if header["t"] == "out" else \
        header.get("at") if header["t"] == "stdin" else None
    if place is None:
        return None
    return header["t"], header.get("from"), header["to"], header.get("job"), place
