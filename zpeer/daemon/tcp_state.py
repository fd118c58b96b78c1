"""The kernel's view of a TCP connection that libzmq owns, by its file descriptor.

libzmq names the descriptor of the connection a message came over (the SRCFD property). We
only read the connection's state (TCP_INFO), never read, write, close or configure it: libzmq
owns it, and a descriptor whose connection closed is forgotten on the monitor's disconnect
event. The one exception is `end`: it shuts a removed peer's connection down, and libzmq then
closes it as when a peer hangs up. Linux only: elsewhere `read` gives None and nothing is paced.
"""
import array
import fcntl
import socket
import struct
from typing import NamedTuple

TCP_INFO_BYTES = 232
# offsets in struct tcp_info (linux/tcp.h)
_FLAGS_AT, _UNACKED_AT, _RTT_AT, _BYTES_ACKED_AT = 7, 24, 68, 120
_NOTSENT_AT, _MIN_RTT_AT, _DELIVERY_RATE_AT = 144, 148, 160
SIOCOUTQ = 0x5411  # bytes in the send queue: unsent and unacknowledged
CURVE_FRAME_BYTES = 33  # a CURVE MESSAGE command around each frame: name, nonce, MAC, flags
_TCP_INFO = getattr(socket, "TCP_INFO", None)


class TcpState(NamedTuple):
    """What the kernel says of one connection."""

    notsent: int  # bytes written and not yet sent (waiting for the congestion window)
    unacked: int  # segments sent and not yet acknowledged
    written: int  # bytes written to the connection so far
    delivery_rate: int  # bytes per second, as the kernel last measured it (0: not yet)
    app_limited: bool  # that measurement saw less data than the connection could carry
    rtt_s: float  # the smoothed round trip
    min_rtt_s: float  # the smallest round trip seen lately
    queued: int  # bytes in the send queue: unsent and sent but unacknowledged


def _borrowed(fd):
    """A socket object on fd that must be detached, never closed."""
    return socket.socket(fileno=fd)


def read(fd):
    """The connection's TcpState, or None when fd is no TCP socket (or not on Linux)."""
    if _TCP_INFO is None or fd is None:
        return None
    try:
        sock = _borrowed(fd)
    except OSError:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, TCP_INFO_BYTES)
    except OSError:
        return None
    finally:
        sock.detach()
    if len(raw) < TCP_INFO_BYTES:
        return None  # an old kernel: no notsent bytes to pace by
    notsent, = struct.unpack_from("I", raw, _NOTSENT_AT)
    unacked, = struct.unpack_from("I", raw, _UNACKED_AT)
    rtt_us, = struct.unpack_from("I", raw, _RTT_AT)
    min_rtt_us, = struct.unpack_from("I", raw, _MIN_RTT_AT)
    rate, = struct.unpack_from("Q", raw, _DELIVERY_RATE_AT)
    acked, = struct.unpack_from("Q", raw, _BYTES_ACKED_AT)
    queue = array.array("i", [0])
    try:
        fcntl.ioctl(fd, SIOCOUTQ, queue, True)
    except OSError:
        return None
    app_limited = bool(raw[_FLAGS_AT] & 1)  # tcpi_delivery_rate_app_limited
    # acknowledged plus still queued: exact, where bytes_sent counts a packet that a local
    # qdisc dropped and TCP sent again twice
    return TcpState(notsent, unacked, acked + queue[0], rate, app_limited, rtt_us / 1e6,
                    min_rtt_us / 1e6, queue[0])


def peer_ip(fd):
    """The address at the other end of a TCP connection, or None."""
    try:
        sock = _borrowed(fd)
    except OSError:
        return None
    try:
        return tcp_peer(sock)
    finally:
        sock.detach()


def tcp_peer(sock):
    """The peer address of a TCP socket, or None. The kernel's answer decides, not the socket
    object's family: libzmq's I/O thread may close the descriptor and the number go to another
    socket (a CLI's Unix one, whose peer name is a string) between the two looks."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    try:
        address = sock.getpeername()
    except OSError:
        return None
    return address[0] if isinstance(address, tuple) else None


def end(fd, peer_ip):
    """End the TCP connection behind fd (a revoked peer's, from peer_ip) for both directions:
    libzmq reads its end and closes the descriptor itself, as when the peer hangs up. Only a
    TCP connection to that address: a number reused for another socket is left alone."""
    if fd is None:
        return
    try:
        sock = _borrowed(fd)
    except OSError:
        return
    try:
        if tcp_peer(sock) == peer_ip:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # gone already
    finally:
        sock.detach()


def wire_bytes(frames):
    """What libzmq writes to a CURVE connection for one message of these frames (ZMTP 3)."""
    total = 0
    for frame in frames:
        body = len(frame) + CURVE_FRAME_BYTES
        total += body + (2 if body < 256 else 9)  # flags and a short or long size
    return total
