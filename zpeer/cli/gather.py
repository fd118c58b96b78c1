"""`d execOnPeer --gather`: peers whose stdout is the same are shown once, as clush -b does.

Each peer's stdout is held until the command has ended everywhere; then every distinct output is
printed once under a header naming the peers that printed it (ids folded into ranges, sorted):

    ---------------
    db1,web[1-3] (4)
    ---------------
    5.15.0-91-generic

stderr and zpeer's own errors still stream at once with `ID: ` prefixes, and the outcome
summary and the exit status are those of a fan-out without --gather. A peer whose stdout
grows past GATHER_PEER_MAX_BYTES (or takes the total past GATHER_TOTAL_MAX_BYTES) leaves the
gathering: what it held and what follows are printed as a fan-out prints them, so memory stays
bounded and nothing is lost.
"""
from zpeer.cli.renderer import Renderer
from zpeer.cli.stdio import write_all
from zpeer.targets import fold

GATHER_PEER_MAX_BYTES = 1 << 20  # gathering is for short outputs (versions, hashes, counts)
GATHER_TOTAL_MAX_BYTES = 64 << 20
RULE = b"-" * 15 + b"\n"


class Gatherer(Renderer):
    """A Renderer that holds each peer's stdout and prints identical ones once, at the end."""

    def __init__(self):
        super().__init__(multi=True, as_json=False)
        self.held = {}  # peer -> bytearray of its stdout so far
        self.streamed = set()  # peers whose stdout outgrew the gathering (printed as they come)
        self.total = 0

    def data(self, peer, stream, data):
        """Hold stdout (unless the peer outgrew it); stderr streams with prefixes."""
        if stream != "o" or peer in self.streamed:
            super().data(peer, stream, data)
            return
        buf = self.held.setdefault(peer, bytearray())
        if (len(buf) + len(data) > GATHER_PEER_MAX_BYTES
                or self.total + len(data) > GATHER_TOTAL_MAX_BYTES):
            self.streamed.add(peer)
            self.total -= len(buf)
            del self.held[peer]
            if buf:
                super().data(peer, "o", bytes(buf))
            super().data(peer, "o", data)
            return
        buf += data
        self.total += len(data)

    def groups(self):
        """(header, output) for each distinct non-empty held stdout, sorted by header."""
        by_output = {}
        for peer, buf in self.held.items():
            if buf:
                by_output.setdefault(bytes(buf), []).append(peer)
        return sorted((f"{fold(peers)} ({len(peers)})", out) for out, peers in by_output.items())

    def release(self):
        """Print the gathered outputs (once): at the end, and also after Ctrl-C or a lost daemon."""
        groups, self.held, self.total = self.groups(), {}, 0
        for header, out in groups:
            write_all(self.out,
                      RULE + header.encode() + b"\n" + RULE + out
                      + (b"" if out.endswith(b"\n") else b"\n"))
