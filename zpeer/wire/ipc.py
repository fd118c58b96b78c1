"""The CLI <-> local daemon link: a REQ client for the CLI and the reply helper for the daemon.

The daemon binds a ROUTER on ipc://$ZPEER_HOME/d.sock, so it can hold many CLI requests at
once (long polls for job output) and answer each when it is ready. The CLI talks REQ: one
request, one reply, which also paces output streaming (it asks for the next output only after
writing the previous one). Frames: see zpeer.wire.protocol. Only zmq and msgpack are imported here.
`peer_credentials` tells the daemon which process and user a CLI is, from the kernel.
"""
import os
import time
import uuid

import msgpack
import zmq

from zpeer import config
from zpeer.errors import BadRequest, FailedToConnect, ZpeerError, from_reply
from zpeer.wire import multipart, protocol

CONNECT_TIMEOUT_S = 1.0
DEFAULT_CALL_TIMEOUT_S = 10.0


class Client:
    """A CLI's connection to its local daemon."""

    def __init__(self, home=None, ctx=None):
        self.home = home
        self.path = config.socket_path(home)
        self.ctx = ctx or zmq.Context.instance()
        self.sock = None
        self.timeout_ms = None  # the socket's receive timeout now

    def _connect(self):
        """Open the REQ socket; Failed to connect within CONNECT_TIMEOUT_S if nobody listens."""
        try:
            os.stat(self.path)
            allowed = os.access(self.path, os.W_OK)  # connect() to a Unix socket needs write access
        except PermissionError:  # a directory on the way is closed to us
            allowed = False
        except OSError:
            too_long = config.socket_path_too_long(self.path)
            if too_long:
                raise FailedToConnect(hint=f"{too_long}: use a shorter ZPEER_HOME") from None
            raise FailedToConnect() from None
        if not allowed:
            raise FailedToConnect(hint=f"permission denied: {os.path.dirname(self.path)} is open "
                                       "to its owner and the daemon's --group only (as root: `d "
                                       "setPeerConfig --group GROUP`, then join that group)")
        sock = self.ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.setsockopt(zmq.IMMEDIATE, 1)  # POLLOUT only once a daemon accepted us
        sock.connect(f"ipc://{self.path}")
        if not sock.poll(int(CONNECT_TIMEOUT_S * 1000), zmq.POLLOUT):
            sock.close(0)
            raise FailedToConnect()
        self.sock = sock

    def call(self, op, timeout_s=DEFAULT_CALL_TIMEOUT_S, wake_fd=None, on_wake=None, data=None,
             **args):
        """Send one request and return the reply map; raises the daemon's ZpeerError. `data`
        (a poll's stdin) goes as a frame after the map, not packed into it.

        While the reply is awaited, `on_wake()` runs once if `wake_fd` becomes readable first (a
        long poll for output that stdin should cut short)."""
        self.begin(op, timeout_s, data=data, **args)
        timeout_ms = int(timeout_s * 1000) + 1
        if wake_fd is not None:
            timeout_ms = self._wait_or_wake(timeout_ms, wake_fd, on_wake)
        return self.finish(timeout_ms)

    def begin(self, op, timeout_s=DEFAULT_CALL_TIMEOUT_S, data=None, **args):
        """Send a request without waiting for its reply (`finish` takes it, once `sock` is
        readable: a CLI that waits on several things at once polls it)."""
        if self.sock is None:
            self._connect()
        header = {"op": op, "rid": uuid.uuid4().hex[:16], "deadline_s": timeout_s}
        header.update(args)
        try:
            frames = protocol.encode(header, data)
        except UnicodeEncodeError as exc:  # argv bytes that are not UTF-8 (surrogateescape)
            raise BadRequest(f"Not valid UTF-8: {protocol.shown(protocol.os_text(exc.object))}",
                             hint="only --shellCmd and --directory of execOnPeer may hold any "
                                  "bytes") from None
        multipart.send(self.sock, frames)

    def finish(self, timeout_ms):
        """The reply to the request `begin` sent, waiting at most timeout_ms for it."""
        if timeout_ms != self.timeout_ms:  # a blocking receive with a timeout: no poll() per call
            self.sock.rcvtimeo = self.timeout_ms = timeout_ms
        try:
            frames = multipart.recv(self.sock, data_from=2)  # [signature, map, raw output...]
        except zmq.Again:
            self.close()  # a REQ without its reply is unusable
            raise FailedToConnect("Failed to connect",
                                  hint="the local daemon did not answer in time: is it stuck? "
                                       "see its log, `systemctl status zpeer`") from None
        try:
            reply = protocol.unpack_header(frames[1], protocol.MAX_IPC_BYTES)
        except (protocol.ProtocolError, IndexError):
            raise ZpeerError("Bad reply from the local daemon (is it another zpeer version?)") \
                from None
        if reply.get("err"):
            raise from_reply(reply)
        if len(frames) > 2:  # raw output (exec polls with raw=True): buffers, not copies
            reply["frames"] = [frame.buffer for frame in frames[2:]]
        return reply

    def twin(self):
        """Another connection to the same daemon (a REQ socket holds one request at a time)."""
        return Client(self.home, self.ctx)

    def _wait_or_wake(self, timeout_ms, wake_fd, on_wake):
        """Wait for the reply or wake_fd (then call on_wake, once); returns the time left in ms."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(wake_fd, zmq.POLLIN)
        deadline = time.monotonic() + timeout_ms / 1000
        ready = dict(poller.poll(timeout_ms))
        if self.sock not in ready and wake_fd in ready:
            on_wake()
        return max(1, int((deadline - time.monotonic()) * 1000) + 1)

    def close(self):
        """Close the socket."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = self.timeout_ms = None


def reply_frames(identity, rid, payload, data_frames=()):
    """Frames of a daemon's reply to a CLI request (ROUTER envelope + empty REQ delimiter), then
    any raw data frames the map's events point to by index."""
    body = dict(payload)
    body["rid"] = rid
    return protocol.envelope(identity, [b"", protocol.SIGNATURE,
                                        msgpack.packb(body, use_bin_type=True), *data_frames])


def bind_cli_socket(ctx, home, group=None):
    """The daemon's side: a ROUTER on d.sock, inside the 0700 state dir (closed to others)."""
    path = config.socket_path(home)
    too_long = config.socket_path_too_long(path)
    if too_long:  # libzmq would refuse with a traceback-worthy ZMQError
        raise ZpeerError(too_long, hint="use a shorter ZPEER_HOME")
    if os.path.exists(path):
        os.unlink(path)  # stale: the caller holds the daemon lock, so no live daemon owns it
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(f"ipc://{path}")
    socket_access(home, path, group)
    return sock


def socket_access(home, path, group):
    """Owner only (dir 0700), or with `--group`: dir 0710 + socket 0770 for that group.

    The socket is bound inside the directory, so it is never reachable by others between
    bind() and chmod(): the directory's mode is the gate.
    """
    if not group:
        os.chmod(home, 0o700)
        os.chmod(path, 0o700)
        return
    import grp

    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        import logging  # here, not at the top: the CLI imports this module and never logs

        logging.getLogger(__name__).error("group %s does not exist: CLI socket stays owner-only",
                                          group)
        return
    for target, mode in ((home, 0o710), (path, 0o770)):
        os.chown(target, -1, gid)
        os.chmod(target, mode)


_USER_NAMES = {}  # uid -> name: a CLI's user, as the kernel names it


def peer_credentials(frame):
    """(pid, user) of the process on the other end of the connection `frame` came over (a
    zmq.Frame), from the kernel (SO_PEERCRED), not from what that process says; None when it
    cannot be told."""
    import socket  # the daemon's side only: the CLI's start imports neither
    import struct

    ucred = struct.Struct("3i")  # pid, uid, gid
    try:
        fd = frame.get(zmq.SRCFD)
        sock = socket.socket(fileno=fd)
    except (zmq.ZMQError, OSError, TypeError):
        return None
    try:
        pid, uid, _ = ucred.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   ucred.size))
    except OSError:
        return None
    finally:
        sock.detach()
    return pid, user_name(uid)


def user_name(uid):
    """The account name of a uid (`uid N` for one without a passwd entry), looked up once."""
    name = _USER_NAMES.get(uid)
    if name is None:
        import pwd

        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:  # a uid without a passwd entry is still someone: the number
            name = f"uid {uid}"
        _USER_NAMES[uid] = name
    return name
