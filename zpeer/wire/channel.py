"""Channels: the frames and states of one piece of remote work, between an origin and a target.

A session is one CLI call on the origin's daemon (zpeer.daemon.origin); it has one channel per
target peer, named by its job id `SESSION.N`. Every channel message is a peer message
([SIGNATURE, header map, optional data frame], see zpeer.wire.protocol) whose header names the
"job" and the peer it goes "to"; the leader routes it by "to" and sets "from" itself. Headers
are built by zpeer.wire.messages.

Streams are numbered as file descriptors: stream 0 flows origin -> target (the command's
stdin), streams 1 and 2 flow target -> origin (its stdout and stderr). Each direction has a
window (`Credit`): the sender keeps at most that many bytes unacknowledged, and the receiver
gives credit back as its reader consumes, so a slow reader slows the command instead of growing
a buffer anywhere on the way.

    operation   message             direction         fields besides t, rid, job, to
    open        exec                origin -> target  kind fields (cmd, dir, user, timeout,
                                                      stdin), credit (the output window),
                                                      ttl, ts
    started     started             target -> origin  pid (or the first out or exit names it)
    data 1, 2   out + data frame    target -> origin  fd (1 or 2), seq (1, 2, ... per channel)
    credit 1,2  credit              origin -> target  n: output bytes its reader consumed
    data 0      stdin + data frame  origin -> target  eof: no more after this chunk
    credit 0    stdin_ack           target -> origin  n: stdin bytes the command took
    signal      cancel              origin -> target  SIGTERM to the process group, SIGKILL
                                                      after a grace; ends in exit how=cancelled
    exit        exit                target -> origin  rc, how (exit, timeout, cancelled),
                                                      bytes, duration, seq (the last out's)
    close       error               to the origin     err {err, msg, hint}: zpeer could not run
                                                      or finish the job (exit 255 for it)
    keepalive   alive               both ways         jobs (the ones the sender still holds),
                                                      side (origin or target)
    resize      winsize             origin -> target  rows, cols: the pty's new window size

On the origin a channel goes  queued -> sent -> running -> done:
    queued   waiting for a place in the session's --batch
    sent     its exec left; no word that the command started (it may or may not run)
    running  a message named the command's pid
    done     its exit or error came, or it was declared lost; nothing after that is taken

On the target it goes  open -> exited -> closed:
    open     the exec was taken (never twice: the target remembers every job id it saw) and
             the command spawned; output flows within the credit the origin gave
    exited   the shell is gone; the pipes are drained (or cut after a grace)
    closed   the exit (or error) went out; the channel is forgotten

Rules every kind of channel keeps:
  - A cancel that overtakes its exec is remembered, and that exec never starts.
  - A target that hears nothing from the origin for the silence limit kills the job; an origin
    that hears nothing from the target fails the channel (zpeer failure, 255).
  - Output is numbered and taken once, in order (`Sequencer`): what comes after a gap (a chunk
    lost on the way, say by a redial) waits, and the exit with it, while the origin's alive
    says what it lacks and the target sends that again (zpeer.daemon.resend); a gap that
    stays for the silence limit fails the channel rather than hand the user cut output.
    Output beyond the window given fails it too.
  - An exec older than its ttl when it arrives is refused, never run late.
A kind of work is what the target runs for an open and which of these streams it uses: the
exec kind runs `/bin/bash -c CMD` on pipes, or, when the exec carries `pty` {term, rows, cols},
in a pseudo-terminal that is the command's controlling terminal (stream 1 is the screen, stream
2 unused, stream 0 the keystrokes; `winsize` resizes it). A pty channel's out and stdin carry
`tty`: they go before bulk on every hop (zpeer.daemon.pacing).
"""

STDIN, STDOUT, STDERR = 0, 1, 2
EARLY_CHUNKS_MAX = 1 << 16  # chunks kept past a gap (their bytes are within the window)
# the largest window any end grants (an origin's fan-out shares this much): a target takes no
# more credit than this, whatever an exec claims, so what waits for a reader stays bounded
WINDOW_MAX_BYTES = 32 << 20
OUTPUT_STREAMS = (STDOUT, STDERR)


class Credit:
    """One direction of a stream as its sender sees it: how much it may still send."""

    __slots__ = ("window", "in_flight")

    def __init__(self, window):
        self.window = window
        self.in_flight = 0  # sent and not acknowledged yet

    def room(self):
        """Bytes that may go now."""
        return self.window - self.in_flight

    def sent(self, n):
        """n bytes went out."""
        self.in_flight += n

    def acknowledged(self, n):
        """The receiver consumed n bytes (never more than were sent: the room stays within the
        window whatever a peer claims)."""
        if n > 0:
            self.in_flight = max(0, self.in_flight - n)


class Intake:
    """One direction of a stream as its receiver sees it: whether the sender keeps to its
    window, and when to give credit back (in batches of a quarter window, not per chunk)."""

    __slots__ = ("window", "received", "granted", "owed")

    def __init__(self, window):
        self.window = window
        self.received = 0  # bytes taken in
        self.granted = 0  # credit given back so far, beyond the first window
        self.owed = 0  # bytes consumed and not given back yet

    def fits(self, n):
        """True if n more bytes keep the sender within what it was allowed."""
        return self.received + n <= self.window + self.granted

    def take(self, n):
        """n bytes arrived."""
        self.received += n

    def consumed(self, n):
        """The reader consumed n bytes; returns the credit to give back now (0: not yet)."""
        self.owed += n
        if self.owed < self.window // 4:
            return 0
        grant, self.owed = self.owed, 0
        self.granted += grant
        return grant


class Sequencer:
    """The output of one channel as its receiver takes it: each chunk once, in seq order, the
    exit after the output it counts; what comes early waits (within the window: the sender
    never has more unacknowledged)."""

    __slots__ = ("taken", "early", "early_bytes", "held_exit", "gap_since")

    def __init__(self):
        self.taken = 0  # the last seq taken in order
        self.early = {}  # seq -> (header, data) that came after a gap
        self.early_bytes = 0
        self.held_exit = None  # an exit that came before all the output it counts
        self.gap_since = None  # since when something is missing

    def arrive(self, header, data, now):
        """An out or exit came; returns what may be taken now, in order: (header, data)
        pairs."""
        seq = header.get("seq")
        if header["t"] == "exit":
            if seq is None or seq <= self.taken:
                return [(header, data)]  # all it counts is here (a bad count is the taker's)
            self.held_exit = header
            self.gap_since = self.gap_since or now
            return []
        if seq is None:
            seq = self.taken + 1
        if seq <= self.taken or seq in self.early:
            return []  # sent again, and here already
        if seq > self.taken + 1:
            if len(self.early) >= EARLY_CHUNKS_MAX:
                return []  # not kept: it comes again with the rest
            self.early[seq] = (header, data)
            self.early_bytes += len(data or b"")
            self.gap_since = self.gap_since or now
            return []
        ready = [(header, data)]
        self.taken = seq
        while self.taken + 1 in self.early:
            self.taken += 1
            early = self.early.pop(self.taken)
            self.early_bytes -= len(early[1] or b"")
            ready.append(early)
        if self.held_exit is not None and self.held_exit["seq"] <= self.taken:
            ready.append((self.held_exit, None))
            self.held_exit = None
        if not self.early and self.held_exit is None:
            self.gap_since = None
        return ready

    def holds(self, header):
        """True for an out this end has taken or keeps already (sent again: it is dropped, and
        its bytes count against no window)."""
        seq = header.get("seq")
        return seq is not None and (seq <= self.taken or seq in self.early)

    def have(self):
        """The highest seq this end holds (taken or waiting)."""
        return max(self.early, default=self.taken)

    def missing(self, limit):
        """Up to `limit` seqs missing below the highest held, or None when there are more."""
        gaps = []
        for seq in range(self.taken + 1, self.have()):
            if seq not in self.early:
                if len(gaps) == limit:
                    return None
                gaps.append(seq)
        return gaps
