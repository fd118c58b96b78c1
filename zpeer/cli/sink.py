"""Where an exec session's events go on the CLI side: the OutputSink interface.

The exec client (zpeer.cli.exec_client) hands each event of a poll reply to a sink, in order:

    started(peer, pid)                   the remote command runs (its first word named its pid)
    data(peer, stream, data)             output bytes: stream "o" (stdout) or "e" (stderr)
    exited(peer, rc, how)                it ended: rc as the CLI reports it, how = exit, timeout
                                         or cancelled
    failed(peer, code, message, hint)    zpeer could not run or finish it there (255 for it)
    release()                            the session is over, however it ended (Ctrl-C, a lost
                                         daemon): print what was held back

`results` maps each peer that ended to (status, word); `status(targets)` is the CLI's exit
status. Implementations: Renderer (streams, `ID: ` prefixes, JSON Lines), Gatherer (--gather)
and Capture (deploy steps, which read what a step printed).
"""
from zpeer.errors import EXIT_ZPEER_FAILURE


class OutputSink:
    """The events of one exec session, as the exec client delivers them."""

    def __init__(self):
        self.results = {}  # peer -> (status, word)

    def started(self, peer, pid):
        """A remote command started."""

    def data(self, peer, stream, data):
        """Output bytes from a peer: stream "o" (stdout) or "e" (stderr)."""
        raise NotImplementedError

    def exited(self, peer, rc, how):
        """A remote command ended."""
        raise NotImplementedError

    def failed(self, peer, code, message, hint):
        """zpeer could not run (or finish) the command on a peer."""
        raise NotImplementedError

    def release(self):
        """The session is over: print anything held back (nothing here)."""

    def status(self, targets):
        """The exit status: the largest of the peers' statuses (255 for one with no result)."""
        return max((self.results.get(p, (EXIT_ZPEER_FAILURE, ""))[0] for p in targets), default=0)


def deliver(sink, events, frames=()):
    """Hand a poll reply's events to a sink (output: bytes, or the index of a raw frame of the
    reply when polled with raw=True)."""
    for event in events:
        kind = event[1]
        if kind in ("o", "e"):
            data = event[2]
            sink.data(event[0], kind, frames[data] if isinstance(data, int) else data)
        elif kind == "s":
            sink.started(event[0], event[2])
        elif kind == "x":
            sink.exited(event[0], event[2], event[3])
        elif kind == "f":
            sink.failed(event[0], event[2], event[3], event[4])


class Capture(OutputSink):
    """Keeps each peer's output instead of printing it (deploy steps read what a step said)."""

    def __init__(self):
        super().__init__()
        self.out, self.err = {}, {}

    def data(self, peer, stream, data):
        """Output bytes from a peer, kept."""
        store = self.out if stream == "o" else self.err
        store[peer] = store.get(peer, b"") + bytes(data)

    def exited(self, peer, rc, how):
        """A remote command ended."""
        self.results[peer] = (rc, how)

    def failed(self, peer, code, message, hint):
        """zpeer could not run the command there: its message joins the peer's stderr."""
        self.results[peer] = (EXIT_ZPEER_FAILURE, code)
        self.err[peer] = self.err.get(peer, b"") + message.encode() + b"\n"
