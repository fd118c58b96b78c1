"""Wire format of zpeer: versioned msgpack headers plus raw data frames. No sockets here.

Peer link (worker DEALER <-> leader ROUTER), as the DEALER sends it::

    frame 0  SIGNATURE        b"ZP" + one version byte (PROTOCOL_VERSION)
    frame 1  header           msgpack map: {"t": type, "rid": request id, ...fields}
    frame 2  data (optional)  raw bytes (command output, stdin), never re-encoded

The ROUTER sees one more frame in front: the routing identity of the DEALER, `ID/SECRET`: the
peer id plus a random secret of that link (`route_identity`). The secret matters: the ROUTER
hands an identity over to the newest connection that claims it (ROUTER_HANDOVER), so a guessable
one would let any CURVE key take over a peer's route and receive its execs. It travels only
inside the CURVE handshake. `envelope()` is the only place that builds that prefix; every send on
a ROUTER goes through it.

Routing fields in the header: "to" names the destination peer; "from" names the origin peer and
is set by the leader from the connection's authenticated identity, never trusted from a worker.

CLI link (CLI REQ <-> daemon ROUTER on d.sock) uses the same frames 0..1 with "op" instead of
"t"; bulk bytes travel inside the msgpack map there (bin type).

Every header carries "rid", a request id (str, <= 64 chars); replies echo it.

An exec's "cmd" and "dir" are str, or bytes when they are not valid UTF-8 (a file name in
Latin-1): the command runs with exactly the bytes it was given (`os_text`).

A target's first message about a job names the command's "pid": its first "out", its "exit", or a
"started" of its own when the command has said nothing for 20 ms. The origin takes that first pid
as the job's start.
"""
import msgpack

PROTOCOL_VERSION = 1
SIGNATURE = b"ZP" + bytes([PROTOCOL_VERSION])
MAX_HEADER_BYTES = 1 << 20  # a peer header is small; output travels in the data frame
MAX_IPC_BYTES = 16 << 20  # CLI replies carry output inside the map
MAX_ID_LEN = 64
MAX_MESSAGE_BYTES = 64 << 20  # socket MAXMSGSIZE: bounds any single frame from the network
# what the leader takes from any connection, before its handshake too (libzmq applies MAXMSGSIZE
# to handshake frames): a peer sends at most 1 MiB of output (or 256 KiB of stdin) and a header
LEADER_MAX_MESSAGE_BYTES = 2 << 20
ROUTE_SECRET_HEX = 32  # hex digits of a route identity's secret part
INT64 = 1 << 63  # ints leave msgpack up to 2**64-1; SQLite (audit) and the OS take int64

_STR = (str,)
_OPT_STR = (str, type(None))
_OS_TEXT = (str, bytes)  # text for the OS: bytes when it is not UTF-8
_OPT_OS_TEXT = (str, bytes, type(None))
_INT = (int,)
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_BOOL = (bool,)
_MAP = (dict,)
_LIST = (list,)
_ANY = object

# type -> {field: allowed python types}; only these fields are required, extra ones are ignored.
PEER_MESSAGES = {
    "hello": {"id": _STR, "hostname": _STR, "version": _STR, "role": _STR, "pid": _INT},
    "welcome": {"status": _STR, "leader": _STR, "gen": _INT},
    "rehello": {},
    "hb": {},
    "bye": {"reason": _STR},
    "rpc": {"op": _STR, "args": _MAP},
    "rpc_reply": {"ok": _BOOL},
    "exec": {"job": _STR, "to": _STR, "cmd": _OS_TEXT, "dir": _OPT_OS_TEXT, "user": _OPT_STR,
             "timeout": _OPT_NUM, "stdin": _BOOL, "credit": _INT, "ttl": _NUM},
    "started": {"job": _STR, "to": _STR, "pid": _INT},
    "out": {"job": _STR, "to": _STR, "fd": _INT},
    "credit": {"job": _STR, "to": _STR, "n": _INT},
    "stdin": {"job": _STR, "to": _STR, "eof": _BOOL},
    "stdin_ack": {"job": _STR, "to": _STR, "n": _INT},
    "exit": {"job": _STR, "to": _STR, "rc": _INT, "how": _STR},
    "error": {"job": _STR, "to": _STR, "err": _MAP},
    "cancel": {"job": _STR, "to": _STR},
    "alive": {"to": _STR, "jobs": _LIST},
    "winsize": {"job": _STR, "to": _STR, "rows": _INT, "cols": _INT},
    # stdin of several jobs of one session in one message, that the leader copies to each
    # (a file push sends each byte once from its origin: zpeer.filecopy)
    "fan": {"job": _STR, "to": _STR, "jobs": _LIST, "eof": _BOOL},
}

# Fields any message may carry beyond its schema, checked when present (handlers and the audit
# use them without further checks, and the leader forwards them from one peer to another).
OPTIONAL_FIELDS = {"ts": _NUM, "ttl": _NUM, "fanout": _INT, "ouser": _OPT_STR, "bytes": _INT,
                   "duration": _NUM, "hb": _NUM, "reason": _STR, "token": _STR, "from": _STR,
                   "daemon_user": _STR,
                   # an exec run as sshd runs a session (the user's shell), with variables to set
                   "login": _BOOL, "env": _MAP,
                   "side": _STR, "gen": _INT, "err": _MAP, "pid": _INT, "seq": _INT,
                   # an origin's alive: per job, the last output seq and the credit it has
                   "got": _LIST, "acked": _LIST, "gaps": _MAP, "total": _INT,
                   # stdin: where a chunk starts in its stream; a target's alive: per job, how
                   # far it has the stream (zpeer.daemon.resend.StdinLog)
                   "at": _INT, "stdin_got": _LIST,
                   # stamps (zpeer.daemon.stamps) and clocks shown, never compared for a verdict
                   "tx": _NUM, "echo": _NUM, "held": _NUM, "wall": _NUM, "offset": _NUM,
                   # an exec in a pseudo-terminal (term, rows, cols), and its traffic, which
                   # goes before bulk (zpeer.daemon.pacing)
                   "pty": _MAP, "tty": _BOOL,
                   # an exec that runs zpeer's file agent, not a shell (zpeer.filecopy)
                   "file": _MAP}
# Strings that reach execve, chdir or getpwnam (where an embedded NUL raises, not fails).
NUL_FREE_FIELDS = ("cmd", "dir", "user", "job", "to", "from", "id")

# Job-scoped messages the leader forwards between peers by their "to" field.
ROUTED_TYPES = frozenset({"exec", "started", "out", "credit", "stdin", "stdin_ack", "exit", "error",
                          "cancel", "alive", "winsize"})


class ProtocolError(ValueError):
    """A frame sequence that is not a valid zpeer message."""


def encode(header, data=None):
    """Frames for a message (without routing envelope)."""
    frames = [SIGNATURE, msgpack.packb(header, use_bin_type=True)]
    if data is not None:
        frames.append(data)
    return frames


def envelope(identity, frames):
    """Prefix frames with a ROUTER routing identity: the one place an envelope is built."""
    if isinstance(identity, str):
        identity = identity.encode()
    return [identity] + list(frames)


def _bytes(frame):
    """Bytes of a frame that may be a zmq.Frame (zero-copy receive) or bytes."""
    return frame if isinstance(frame, bytes) else getattr(frame, "bytes", frame)


def unpack_header(raw, max_bytes=MAX_HEADER_BYTES):
    """Decode a msgpack header map, rejecting anything but a map with a valid rid."""
    if len(raw) > max_bytes:
        raise ProtocolError("header too large")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable header: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    rid = header.get("rid")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_LEN:
        raise ProtocolError("missing or bad rid")
    return header


def check_signature(frame):
    """Raise unless frame is our signature with a supported version."""
    sig = _bytes(frame)
    if len(sig) != 3 or sig[:2] != b"ZP":
        raise ProtocolError("not a zpeer message")
    if sig[2] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {sig[2]}")


def route_identity(peer_id):
    """A new routing identity for a DEALER of peer_id: `ID/SECRET` (bytes)."""
    import secrets  # only daemons build routes; the CLI imports this module and never needs it

    return f"{peer_id}/{secrets.token_hex(ROUTE_SECRET_HEX // 2)}".encode()


def peer_of_route(identity):
    """The peer id an identity claims (its part before '/'), as text; never trusted alone."""
    return identity.split(b"/", 1)[0][:MAX_ID_LEN * 4].decode("utf-8", "replace")


def _check_field(mtype, field, value, types):
    """Raise unless value has one of types (bool is no int here) and sane bounds."""
    if not isinstance(value, types) or (types is _INT and isinstance(value, bool)):
        raise ProtocolError(f"{mtype}: bad field {field!r}")
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise ProtocolError(f"{mtype}: {field} out of range")
    if isinstance(value, (str, bytes)):
        if field in ("id", "job", "to", "from") and len(value) > MAX_ID_LEN:
            raise ProtocolError(f"{mtype}: {field} too long")
        if field in NUL_FREE_FIELDS and has_nul(value):
            raise ProtocolError(f"{mtype}: NUL in {field}")


def has_nul(value):
    """True if a str or bytes value holds a NUL (execve, chdir and getpwnam raise on one)."""
    return (b"\x00" if isinstance(value, bytes) else "\x00") in value


def os_text(value):
    """A command or directory as the wire carries it: the str when it is valid UTF-8, else its
    original bytes (argv reaches Python decoded with surrogateescape), so nothing is lost."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def shown(value):
    """A command or directory as text for people, logs and the audit: non-UTF-8 bytes as \\xNN."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def validate(header):
    """Check a peer header map against its type's schema; returns its type or raises."""
    mtype = header.get("t")
    schema = PEER_MESSAGES.get(mtype) if isinstance(mtype, str) else None
    if schema is None:
        raise ProtocolError(f"unknown message type {str(mtype)[:40]!r}")
    for field, types in schema.items():
        _check_field(mtype, field, header.get(field), types)
    for field, types in OPTIONAL_FIELDS.items():
        if field not in schema and header.get(field) is not None:
            _check_field(mtype, field, header[field], types)
    return mtype


def decode(frames):
    """Decode [SIGNATURE, header, (data)] from the peer link into (header, data or None)."""
    if len(frames) not in (2, 3):
        raise ProtocolError(f"expected 2 or 3 frames, got {len(frames)}")
    check_signature(frames[0])
    header = unpack_header(_bytes(frames[1]))
    validate(header)
    data = frames[2] if len(frames) == 3 else None
    return header, data


def decode_request(frames):
    """Decode a CLI request [SIGNATURE, header, (data)] into a header map with an "op"; a data
    frame (a poll's stdin, not copied into the map) is its "data", a buffer."""
    if len(frames) not in (2, 3):
        raise ProtocolError(f"expected 2 or 3 frames, got {len(frames)}")
    check_signature(frames[0])
    header = unpack_header(_bytes(frames[1]), MAX_IPC_BYTES)
    if not isinstance(header.get("op"), str):
        raise ProtocolError("missing op")
    header.pop("data", None)  # only the frame says it
    if len(frames) == 3:
        frame = frames[2]
        header["data"] = frame.buffer if hasattr(frame, "buffer") else frame
    return header
