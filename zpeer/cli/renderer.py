"""Writes an exec session's events to the terminal or a pipe, as execOnPeer shows them.

One peer: its stdout and stderr go to ours byte for byte. Several: each line gets an `ID: `
prefix (a line longer than LINE_MAX_BYTES is cut there, so memory stays bounded) and a summary
of the outcomes follows on stderr. --json: one JSON Lines record per event.
"""
import base64
import json

from zpeer.cli.sink import OutputSink
from zpeer.cli.stdio import binary, write_all
from zpeer.errors import EXIT_ZPEER_FAILURE

LINE_MAX_BYTES = 1 << 20  # a longer line of a fan-out (a blob with no newline) is cut there
# a fan-out summary names this many peers that ended well; beyond, it counts them
SUMMARY_OK_PEERS_MAX = 10


class Renderer(OutputSink):
    """Writes events: raw for one peer, `ID: ` line prefixes for many, or JSON Lines."""

    def __init__(self, multi, as_json):
        super().__init__()
        self.multi, self.as_json = multi, as_json
        self.partial = {}  # (peer, stream) -> bytes without newline yet
        self.out, self.err = binary("stdout"), binary("stderr")

    def _json(self, obj):
        """One JSON Lines record."""
        write_all(self.out, json.dumps(obj).encode() + b"\n")

    def data(self, peer, stream, data):
        """Output bytes from a peer."""
        if self.as_json:
            data = bytes(data)  # a frame's memoryview has no decode()
            try:
                record = {"event": "stdout" if stream == "o" else "stderr", "peer": peer,
                          "data": data.decode("utf-8")}
            except UnicodeDecodeError:
                record = {"event": "stdout" if stream == "o" else "stderr", "peer": peer,
                          "data": base64.b64encode(data).decode(), "encoding": "base64"}
            self._json(record)
            return
        target = self.out if stream == "o" else self.err
        if not self.multi:
            write_all(target, data)
            return
        key = (peer, stream)
        buf = self.partial.get(key)  # a line that has no newline yet
        if buf is not None:
            held = len(buf)
            buf += data  # amortized: a blob that trickles in costs linear time
            if buf.find(b"\n", held) < 0 and len(buf) < LINE_MAX_BYTES:
                return
            del self.partial[key]
        whole = bytes(data) if buf is None else bytes(buf)
        lines = whole.split(b"\n")
        rest = lines.pop()
        if len(whole) >= LINE_MAX_BYTES and (len(rest) >= LINE_MAX_BYTES
                                             or max(map(len, lines), default=0)
                                             > LINE_MAX_BYTES):
            lines = [piece for line in lines + [rest] for piece in _cut(line)]
            rest = lines.pop() if len(lines[-1]) < LINE_MAX_BYTES else b""  # memory stays bounded
        if rest:
            self.partial[key] = bytearray(rest)
        if lines:
            prefix = peer.encode() + b": "
            write_all(target, b"".join(prefix + line + b"\n" for line in lines))

    def flush_peer(self, peer):
        """Terminate a peer's last partial lines (multi-peer mode)."""
        for stream, target in (("o", self.out), ("e", self.err)):
            rest = self.partial.pop((peer, stream), b"")
            if rest:
                write_all(target, peer.encode() + b": " + bytes(rest) + b"\n")

    def started(self, peer, pid):
        """A remote command started."""
        if self.as_json:
            self._json({"event": "start", "peer": peer, "pid": pid})

    def exited(self, peer, rc, how):
        """A remote command ended."""
        self.flush_peer(peer)
        word = {"timeout": "timeout",
                "cancelled": "cancelled"}.get(how, "ok" if rc == 0 else f"rc {rc}")
        self.results[peer] = (rc, word)
        if self.as_json:
            self._json({"event": "exit", "peer": peer, "rc": rc, "how": how})

    def failed(self, peer, code, message, hint):
        """zpeer could not run (or finish) the command on a peer."""
        self.flush_peer(peer)
        word = {"peer_offline": "offline", "peer_not_found": "not found"}.get(code, "error")
        self.results[peer] = (EXIT_ZPEER_FAILURE, word)
        if self.as_json:
            self._json({"event": "error", "peer": peer, "code": code, "message": message,
                        "hint": hint})
            return
        line = f"{peer}: {message}" if self.multi else message
        write_all(self.err,
                  line.encode() + b"\n"
                  + (f"  hint: {hint}\n".encode() if hint and not self.multi else b""))

    def summary(self, targets):
        """Per-peer outcome on stderr when more than one peer."""
        if not self.multi or self.as_json:
            return
        outcomes = [(peer, self.results.get(peer, (255, "no result"))[1]) for peer in targets]
        ok = [peer for peer, word in outcomes if word == "ok"]
        lines = [f"{peer}: {word}" for peer,
                 word in outcomes if word != "ok" or len(ok) <= SUMMARY_OK_PEERS_MAX]
        # hundreds of "ID: ok" lines would bury the ones that matter
        if len(ok) > SUMMARY_OK_PEERS_MAX:
            lines.append(f"{len(ok)} peers: ok")
        write_all(self.err, ("--\n" + "\n".join(lines) + "\n").encode())


def _cut(line):
    """A line in pieces of at most LINE_MAX_BYTES (an empty line stays one)."""
    return [line[i:i + LINE_MAX_BYTES] for i in range(0, len(line), LINE_MAX_BYTES)] or [b""]
