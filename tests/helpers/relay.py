"""A network link between two namespaces: one TUN device in each, and this process between them,
which holds each packet for the link's one-way delay and drops a share of them (this kernel has
no sch_netem). Rate limits are the kernel's own (`tc ... tbf` on a device, see netlab).

    python relay.py NS_A DEV_A NS_B DEV_B [SEED]

It prints "ready" once both devices exist (closing them, by exiting, removes them), then takes
commands on stdin, one per line, and answers each with "ok":

    delay MS     one-way delay in both directions (a round trip is twice this)
    loss P       drop each packet with probability P (0..1), in both directions
    down         drop everything (a silent link: no FIN, no RST, nothing)
    up           carry packets again
    stats        answer "ok PACKETS_A_TO_B PACKETS_B_TO_A DROPPED"
End of stdin ends the relay.
"""
import collections
import ctypes
import fcntl
import os
import random
import select
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MAX_PACKET = 65536

libc = ctypes.CDLL(None, use_errno=True)


def enter(ns_path):
    """Move this thread into the network namespace at ns_path."""
    fd = os.open(ns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns_path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(ns, name):
    """A TUN device called name inside namespace ns, owned by this process."""
    home = "/proc/self/ns/net"
    own = os.open(home, os.O_RDONLY)
    try:
        enter(f"/run/netns/{ns}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    finally:
        if libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(own)
    return fd


class Direction:
    """Packets one way: read from src, held for the delay, written to dst."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.held = collections.deque()  # (due, packet), in arrival order
        self.carried = 0

    def take(self, now, link):
        """Read what src has; keep each packet unless the link drops it."""
        while True:
            try:
                packet = os.read(self.src, MAX_PACKET)
            except BlockingIOError:
                return
            if link.drops():
                link.dropped += 1
                continue
            self.held.append((now + link.delay_s, packet))

    def release(self, now):
        """Write the packets whose delay is over."""
        while self.held and self.held[0][0] <= now:
            _, packet = self.held.popleft()
            try:
                os.write(self.dst, packet)
                self.carried += 1
            except OSError:
                pass  # the device is down or full: the packet is lost, as on a wire

    def next_due(self):
        """When the oldest held packet is due, or None."""
        return self.held[0][0] if self.held else None


class Link:
    """The link's settings, changed by commands on stdin."""

    def __init__(self, seed):
        self.delay_s = 0.0
        self.loss = 0.0
        self.up = True
        self.dropped = 0
        self.random = random.Random(seed)

    def drops(self):
        """True if the next packet is lost."""
        return not self.up or (self.loss > 0 and self.random.random() < self.loss)

    def command(self, line, directions):
        """Apply one command line; returns the answer."""
        words = line.split()
        if words[:1] == ["delay"]:
            self.delay_s = float(words[1]) / 1000.0
        elif words[:1] == ["loss"]:
            self.loss = float(words[1])
        elif words == ["down"]:
            self.up = False
            for direction in directions:
                direction.held.clear()
        elif words == ["up"]:
            self.up = True
        elif words == ["stats"]:
            a_to_b, b_to_a = directions
            return f"ok {a_to_b.carried} {b_to_a.carried} {self.dropped}"
        else:
            return f"error unknown command {line.strip()!r}"
        return "ok"


def main(argv):
    ns_a, dev_a, ns_b, dev_b = argv[1:5]
    seed = int(argv[5]) if len(argv) > 5 else 1
    a, b = open_tun(ns_a, dev_a), open_tun(ns_b, dev_b)
    link = Link(seed)
    directions = (Direction(a, b), Direction(b, a))
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        now = time.monotonic()
        dues = [d for d in (x.next_due() for x in directions) if d is not None]
        wait = max(0.0, min(dues) - now) if dues else None
        readable, _, _ = select.select([a, b, stdin], [], [], wait)
        now = time.monotonic()
        if a in readable:
            directions[0].take(now, link)
        if b in readable:
            directions[1].take(now, link)
        for direction in directions:
            direction.release(now)
        if stdin in readable:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                print(link.command(line.decode(), directions), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
