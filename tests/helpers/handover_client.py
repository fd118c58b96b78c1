"""A client that takes its route back while its last message is half-sent, again and again.

    python handover_client.py ADDRESS:PORT SERVER_PUBLIC_KEY ROUNDS BYTES

Each round a CurveZMQ DEALER sends one message of BYTES over a slow uplink; once the kernel has
seen a quarter of it acknowledged, a second DEALER with the same routing identity connects (the
leader's ROUTER_HANDOVER gives it the route), and the first one's message still arrives whole.
That is what a worker that redials on a slow link does. Then the first connection ends with a
reset (a process killed, a NAT that forgot it). Prints "round N" after each, "done" at the end.
"""
import socket
import struct
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from zpeer.daemon import tcp_state

ROUND_TIMEOUT_S = 30.0


def dealer(ctx, identity, server_key):
    """A CURVE client DEALER with this routing identity and a fresh key."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.curve_serverkey = server_key
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    return sock


def wait_event(monitor, wanted, deadline):
    """The value of the first monitor event of this kind (for a connect: its fd)."""
    while time.monotonic() < deadline:
        if monitor.poll(100):
            event = recv_monitor_message(monitor)
            if event["event"] == wanted:
                return event["value"]
    raise TimeoutError(f"no monitor event {wanted}")


def acked(fd):
    """Bytes of the connection that its peer has acknowledged (None once it is gone)."""
    state = tcp_state.read(fd)
    return None if state is None else state.written - state.queued


def wait_acked(fd, at_least, deadline):
    """Until the peer has acknowledged at_least bytes, or the connection is gone."""
    while time.monotonic() < deadline:
        got = acked(fd)
        if got is None or got >= at_least:
            return
        time.sleep(0.005)
    raise TimeoutError(f"the peer did not acknowledge {at_least} bytes")


def reset_on_close(fd):
    """The connection on fd ends with a reset when libzmq closes it (SO_LINGER 0)."""
    try:
        borrowed = socket.socket(fileno=fd)
    except OSError:
        return  # libzmq has closed it already
    try:
        borrowed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        borrowed.detach()


def one_round(ctx, endpoint, server_key, number, size):
    """Send a message, take the route over half-way, let the message arrive, close both."""
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    identity = f"handover{number}/{'0' * 32}".encode()
    first = dealer(ctx, identity, server_key)
    monitor = first.get_monitor_socket(zmq.EVENT_CONNECTED)
    first.connect(endpoint)
    fd = wait_event(monitor, zmq.EVENT_CONNECTED, deadline)
    first.send(b"z" * size)
    wait_acked(fd, size // 4, deadline)
    second = dealer(ctx, identity, server_key)
    second_monitor = second.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    second.connect(endpoint)
    wait_event(second_monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, deadline)
    mid_message = (acked(fd) or size) < size
    second.send(b"hello")
    wait_acked(fd, size, deadline)
    reset_on_close(fd)
    for sock in (first, second):
        sock.disable_monitor()
    monitor.close(0)
    second_monitor.close(0)
    first.close(0)
    second.close(0)
    return mid_message


def main():
    endpoint, server_key, rounds, size = sys.argv[1:5]
    ctx = zmq.Context()
    for number in range(int(rounds)):
        mid = one_round(ctx, f"tcp://{endpoint}", server_key.encode(), number, int(size))
        print(f"round {number} {'mid-message' if mid else 'after the message'}", flush=True)
    print("done", flush=True)
    ctx.term()


if __name__ == "__main__":
    main()
