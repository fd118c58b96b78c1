"""Moving multipart messages on and off ZeroMQ sockets at the least cost.

pyzmq's zero-copy path (`copy=False`) wraps every frame in a `zmq.Frame` object, which costs
more than copying a small frame (a heartbeat's frames, say); output chunks (up to 1 MiB) are the
opposite case. So the small frames that open every zpeer message (routing identity, signature,
header map) are copied, and frames from a given index on (output, stdin) are received zero-copy;
a frame whose metadata is needed (the CURVE key as User-Id, Peer-Address, SRCFD) is received as
a `zmq.Frame` too.
"""
import zmq

ZERO_COPY_MIN_BYTES = 64 * 1024  # pyzmq's own copy threshold: below it a "zero-copy" send copies
_SNDMORE = int(zmq.SNDMORE)  # a plain int: flag arithmetic on pyzmq's enum costs a call a frame


def send(sock, frames, flags=0):
    """Send a multipart message; zero-copy only when a frame is big enough to gain from it."""
    copy = all(len(f) < ZERO_COPY_MIN_BYTES for f in frames)
    flags = int(flags)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | _SNDMORE if i < last else flags, copy=copy)


def recv(sock, flags=0, data_from=2, meta_at=None, max_frames=None):
    """One multipart message as a list: bytes for frames before index `data_from`, zero-copy
    `zmq.Frame`s from it on, and a `zmq.Frame` at index `meta_at` (for its properties).

    A message longer than `max_frames` (if given) is read to its end (a socket must never be left
    inside a message) and returned cut to max_frames + 1 frames, so the decoder rejects it."""
    frames = []
    more = True
    while more:
        index = len(frames)
        if index >= data_from or index == meta_at:
            frame = sock.recv(flags, copy=False)
            more = frame.more
        else:
            frame = sock.recv(flags)
            more = sock.getsockopt(zmq.RCVMORE)
        if max_frames is None or index <= max_frames:
            frames.append(frame)
    return frames
