"""A node's link to the fleet, by role: what the daemon asks of whatever role it has.

The loop polls `sock` and `monitor`, calls `on_monitor` and `receive` when they are readable,
and hands what `receive` returns (a message for this node) to its own cores. Everything that
depends on the role is a method of the link: LeaderLink (zpeer.daemon.leader), WorkerLink
(zpeer.daemon.worker), or NullLink below for a node with no role yet; nothing else branches on
the role.

    adopt(cfg, changed)     apply changed settings in place; False when the link must be rebuilt
    receive()               one message from the socket: (from_peer, header, data) when it is
                            for this node, None when the link dealt with it
    send_toward(h, data)    send a message on its way to h["to"] (bulk paced, see
                            zpeer.daemon.pacing); False if it cannot go now
    release_bulk(now)       each loop turn: paced bulk that has room now goes
    chunk_bytes(to)         how much output a target reads into one message for peer `to`
    backlogged(to)          True while bulk for `to` waits here: read no more output for it
    witness(header, data)   what this node sends, for the audit
    refusal(to)             the error for a message to `to` that cannot leave now
    precheck(targets)       (target, error) for targets a new exec cannot reach at all
    ask(op, args, done)     a fleet query (zpeer.daemon.queries); done(result, error) once
    known_ids(done)         the peer ids `all` and patterns resolve against; done(ids, error)
    tick(now)               timers; returns the peers lost (None: this worker's leader)
    next_deadline()         when tick() has work next, or None
    refresh_cache(cache)    keep peers.cache in step with the peer set
    status()                getPeerStatus's fields for this role
    as_leader(), as_worker()  the link itself, or the error for a command of the other role
"""
from zpeer.daemon.pacing import CHUNK_MAX_BYTES
from zpeer.errors import NotConfigured, NotLeader


class Link:
    """What every role's link provides (the defaults are those of a node with no role)."""

    role = None  # "leader" or "worker": shown by getPeerStatus, never branched on
    holds_fleet_data = True  # a worker's database holds no registry or audit of its own
    sock = monitor = None

    def __init__(self, node_id):
        self.id = node_id

    def adopt(self, cfg, changed):
        """Apply changed settings without a rebuild; False when they need a new link."""
        return not changed

    def close(self, linger_ms=0):
        """Close the link's sockets (queued messages get linger_ms to leave)."""

    def on_monitor(self):
        """Read the socket monitor's events."""

    def receive(self):
        """One message from the socket, for this node, or None."""
        return None

    def send_toward(self, header, data=None):
        """Send a message towards header["to"]; False if it cannot go now."""
        return False

    def witness(self, header, data=None):
        """A message this node sends (the audit sees it where it is kept)."""

    def release_bulk(self, now):
        """Send the paced bulk that has room now (a node with no role paces none)."""

    def chunk_bytes(self, to):
        """How much output a target reads into one message for peer `to`."""
        return CHUNK_MAX_BYTES

    def backlogged(self, to):
        """True while bulk for peer `to` waits on this node."""
        return False

    def refusal(self, to):
        """Why a message for peer `to` cannot leave this node now."""
        return NotConfigured("This node has no role yet")

    def precheck(self, targets):
        """(target, error) for each target a new exec cannot reach at all."""
        return []

    def ask(self, op, args, done):
        """A fleet query; done(result, error) exactly once."""
        raise NotConfigured("This node has no role yet")

    def known_ids(self, done):
        """The peer ids patterns and `all` match against: a node with no role knows itself."""
        done([self.id], None)

    def tick(self, now):
        """Timers of the link; returns the peers lost since the last tick."""
        return []

    def next_deadline(self):
        """When tick() next has work (None: only when something happens)."""
        return None

    def refresh_cache(self, cache):
        """Keep peers.cache in step with the fleet (a node with no role has none)."""

    def status(self):
        """getPeerStatus's fields for this role."""
        return {"connected": False, "link": "unconfigured"}

    def as_leader(self):
        """This link, for a leader-only command; NotLeader on any other role."""
        raise NotLeader("This command runs on the leader")

    def as_worker(self):
        """This link, for a worker-only command; NotConfigured on any other role."""
        raise NotConfigured("This node is not configured as a worker")


class NullLink(Link):
    """The link of a node with no role yet: it serves its CLI and can run commands on itself."""
