"""Clusters on a netlab Lab: the leader's daemon in the leader's namespace, each worker's in its
own, every link a relay the test can slow, delay, silence or move. The CLIs run here and reach
their daemons over the IPC socket in each ZPEER_HOME, which no namespace separates.
"""
from helpers.netlab import LEADER_IP, in_namespace
from helpers.nodes import TEST_HEARTBEAT_S, Node, Nodes

LEADER_PORT = 7700  # the leader's namespace is the lab's own: nothing else listens there


class WanCluster(Nodes):
    """A leader `vps` at 10.201.0.1 and workers, each behind its own WanLink (the lab removes
    the links; `stop` the daemons)."""

    def __init__(self, base, lab, heartbeat_s=TEST_HEARTBEAT_S):
        self.base, self.lab, self.heartbeat_s = base, lab, heartbeat_s
        self.nodes = {}
        self.links = {}
        self.vps = None

    def leader(self, name="vps"):
        """Create and start the leader in the lab's leader namespace."""
        node = Node(self.base, name)
        node.d("setPeerConfig", "--role", "leader", "--id", name, "--bind",
               f"{LEADER_IP}:{LEADER_PORT}", "--heartbeat", self.heartbeat_s, check=0)
        self.nodes[name] = self.vps = node
        node.start(preexec_fn=in_namespace(self.lab.leader_ns))
        return node

    def worker(self, name, delay_ms=0, uplink_mbit=None):
        """A worker behind a new link (delay_ms each way and an uplink of uplink_mbit from the
        start, as on a real one: TCP measures the path from its first packets), started and
        enrolled; its Node (node.link is the link)."""
        link = self.lab.link()
        if delay_ms:
            link.delay(delay_ms)
        if uplink_mbit:
            link.uplink_rate(uplink_mbit)
        node = Node(self.base, name)
        node.link = link
        node.d("setPeerConfig", "--heartbeat", self.heartbeat_s, check=0)
        self.nodes[name], self.links[name] = node, link
        node.start(preexec_fn=in_namespace(link.ns))
        token = self.vps.d("joinToken", check=0).stdout.decode().strip()
        out = node.d("registerWorker", "--id", name, "--token", token, check=0)
        assert b"Registered" in out.stdout, out
        return node
