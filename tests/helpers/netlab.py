"""Hosts on network namespaces with real TCP between them, for what users' links do.

A Lab makes a leader's namespace and, per worker, a namespace joined to the leader's by a relay
(tests/helpers/relay.py: delay, loss, silence) over two TUN devices; `tc tbf` on a device limits
its rate. The leader is 10.201.0.1 (on its loopback device); worker i is 10.201.i.2 on its own
link, and may move to another address of 10.201.i.0/24 (roaming). These addresses live only in
the lab's namespaces. Everything a Lab starts (namespaces, relays) it removes itself, by name
and by its own process handles.
"""
import ctypes
import itertools
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RELAY = os.path.join(HERE, "relay.py")
LEADER_IP = "10.201.0.1"
CLONE_NEWNET = 0x40000000
_serial = itertools.count(1)


def unavailable():
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
    if probe.returncode != 0:
        return "ip netns does not work here: " + probe.stderr.decode(errors="replace")
    return None


def ip(*args, check=True):
    """Run `ip ARGS`; raise with its stderr when it fails and check is set."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def in_namespace(ns):
    """A preexec_fn that moves the child into namespace ns before it execs."""
    path = f"/run/netns/{ns}"

    def enter():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(121)
        os.close(fd)
    return enter


class WanLink:
    """One relay between the leader's namespace and a worker's, with its settings."""

    def __init__(self, lab, index):
        self.lab, self.index = lab, index
        self.ns = f"{lab.prefix}w{index}"
        self.worker_dev, self.leader_dev = f"zw{index}", f"zl{index}"
        self.address = f"10.201.{index}.2"
        self.proc = None

    def start(self):
        """Make the worker's namespace, the relay and both ends' addresses and routes."""
        self.lab.namespace(self.ns)
        self.proc = subprocess.Popen(
            [sys.executable, RELAY, self.ns, self.worker_dev, self.lab.leader_ns,
             self.leader_dev, str(self.index)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"relay did not start: {line!r}")
        ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", self.worker_dev)
        ip("-n", self.ns, "link", "set", self.worker_dev, "up")
        ip("-n", self.ns, "route", "add", f"{LEADER_IP}/32", "dev", self.worker_dev)
        ip("-n", self.lab.leader_ns, "link", "set", self.leader_dev, "up")
        ip("-n", self.lab.leader_ns, "route", "add", f"10.201.{self.index}.0/24", "dev",
           self.leader_dev)
        return self

    def command(self, line):
        """Send the relay one command (see relay.py); returns its answer."""
        self.proc.stdin.write(line + "\n")
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"relay: {line}: {answer}")
        return answer

    def delay(self, one_way_ms):
        """Hold each packet this long each way (the round trip is twice this)."""
        self.command(f"delay {one_way_ms}")

    def loss(self, share):
        """Drop this share of packets each way."""
        self.command(f"loss {share}")

    def down(self):
        """Silence: every packet is dropped, nothing tells either end."""
        self.command("down")

    def up(self):
        """Carry packets again."""
        self.command("up")

    def uplink_rate(self, mbit, latency_ms=100, burst="16kb"):
        """Limit what the worker sends (its uplink) with a token bucket."""
        self.lab.run_in(self.ns, "tc", "qdisc", "replace", "dev", self.worker_dev, "root", "tbf",
                        "rate", f"{mbit}mbit", "burst", burst, "latency", f"{latency_ms}ms")

    def downlink_rate(self, mbit, latency_ms=100, burst="16kb"):
        """Limit what the leader sends to this worker."""
        self.lab.run_in(self.lab.leader_ns, "tc", "qdisc", "replace", "dev", self.leader_dev,
                        "root", "tbf", "rate", f"{mbit}mbit", "burst", burst,
                        "latency", f"{latency_ms}ms")

    def move(self, new_host):
        """The worker's address changes to 10.201.INDEX.NEW_HOST (roaming): the old one is gone
        and its connections go silent, as when a laptop changes networks."""
        new = f"10.201.{self.index}.{new_host}"
        # the old one first: a secondary address of its subnet would go with it
        ip("-n", self.ns, "addr", "del", f"{self.address}/24", "dev", self.worker_dev)
        ip("-n", self.ns, "addr", "add", f"{new}/24", "dev", self.worker_dev)
        ip("-n", self.ns, "route", "replace", f"{LEADER_IP}/32", "dev", self.worker_dev,
           "src", new)
        self.address = new

    def stop(self):
        """End the relay (its devices go with it)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.proc = None


class Lab:
    """The leader's namespace and the worker links; a context manager that removes them all."""

    def __init__(self):
        self.prefix = f"zp{os.getpid() % 100000}x{next(_serial)}"
        self.leader_ns = f"{self.prefix}l"
        self.namespaces = []
        self.links = []

    def __enter__(self):
        self.namespace(self.leader_ns)
        ip("-n", self.leader_ns, "addr", "add", f"{LEADER_IP}/32", "dev", "lo")
        return self

    def __exit__(self, *exc):
        self.close()

    def namespace(self, name):
        """Make a namespace with its loopback up."""
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def link(self):
        """A new worker namespace linked to the leader's; its WanLink."""
        link = WanLink(self, len(self.links) + 1).start()
        self.links.append(link)
        return link

    def run_in(self, ns, *argv, check=True):
        """Run a command inside namespace ns."""
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=20,
                              preexec_fn=in_namespace(ns))
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: {proc.stderr.strip()}")
        return proc

    def close(self):
        """Stop every relay and remove every namespace this lab made."""
        for link in self.links:
            link.stop()
        for name in reversed(self.namespaces):
            ip("netns", "del", name, check=False)
        self.namespaces = []
