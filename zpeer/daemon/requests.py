"""The CLI's requests on d.sock, at one error boundary.

A request is [identity, empty, SIGNATURE, header map with "op" and "rid", (data)]
(zpeer.wire.ipc). Each
`op_NAME` method of the handlers below takes (identity, header) and returns a reply map, or None
when the answer comes later (held long polls, questions to the leader). A ZpeerError becomes an
error reply here and nowhere else; any other exception is an internal error, and the daemon
serves on.
"""
import logging

import zmq

from zpeer import trace
from zpeer.daemon.ops_exec import ExecOps
from zpeer.daemon.ops_fleet import FleetOps
from zpeer.daemon.ops_node import NodeOps
from zpeer.daemon.registration import Registration
from zpeer.errors import BadRequest, ZpeerError
from zpeer.wire import ipc, multipart, protocol

log = logging.getLogger(__name__)

HANDLERS = (NodeOps, FleetOps, ExecOps, Registration)


def op_names():
    """Every request op a daemon serves."""
    return sorted(name[3:] for cls in HANDLERS for name in dir(cls) if name.startswith("op_"))


class Requests:
    """Reads CLI requests and hands each to its handler."""

    def __init__(self, node):
        self.node = node
        self.handlers = [cls(node) for cls in HANDLERS]
        self.ops = {name[3:]: getattr(h, name) for h in self.handlers for name in dir(h)
                    if name.startswith("op_")}
        self.tickers = [h for h in self.handlers if hasattr(h, "tick")]

    def on_frames(self, sock):
        """Read and serve one CLI request."""
        # [identity, empty, signature, header]: all small, all copied, then a poll's stdin as a
        # frame of its own, not copied; a longer one is cut to 6
        frames = multipart.recv(sock, zmq.NOBLOCK, data_from=4, meta_at=2, max_frames=5)
        trace.mark("request")
        identity = frames[0]
        if len(frames) < 3 or frames[1] != b"":
            log.warning("dropped malformed CLI request (%d frames)", len(frames))
            return
        meta, frames[2] = frames[2], frames[2].bytes
        rid = "?"
        try:
            header = protocol.decode_request(frames[2:])
            rid = header["rid"]
            if header["op"] == "exec_open":  # the audit records who runs the CLI, and its
                # session lives as long as that process, as the kernel says (only an exec needs
                # it: off the poll path)
                credentials = ipc.peer_credentials(meta)
                if credentials is not None:
                    header["pid"], header["ouser"] = credentials
            handler = self.ops.get(header["op"])
            if handler is None:
                raise BadRequest(f"unknown request {header['op']!r}: is the CLI newer than the "
                                 "daemon?")
            result = handler(identity, header)
        except protocol.ProtocolError as exc:
            result = BadRequest(f"malformed request: {exc}").to_reply()
        except ZpeerError as exc:
            result = exc.to_reply()
        except Exception as exc:  # never let one request kill the daemon
            log.exception("request failed")
            result = ZpeerError(f"Internal error in the daemon: {type(exc).__name__}: {exc}"
                                ).to_reply()
        if result is not None:
            self.node.reply(identity, rid, result)

    def tick(self, now):
        """Handlers' timers: registerWorker waits, a scheduled restart."""
        for handler in self.tickers:
            handler.tick(now)
