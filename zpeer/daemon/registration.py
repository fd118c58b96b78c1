"""registerWorker on a worker: its CLI waits until the leader has answered this node's hello
(registered or pending), or says why it cannot (refused, nothing answers, key mismatch)."""
import time

from zpeer.daemon.fields import arg
from zpeer.errors import NotConfigured, NotConnected

REGISTER_WAIT_MAX_S = 30.0
REGISTER_REFUSALS = 2  # failed connection attempts during registerWorker that end its wait early


class Registration:
    """The registerWorker calls waiting for their outcome."""

    def __init__(self, node):
        self.node = node
        self.waiting = []  # (identity, rid, deadline, link retries when it began)

    def op_register(self, identity, header):
        """registerWorker: wait until the leader answered our hello (or the wait ends)."""
        link = self.node.link.as_worker()
        wait = min(float(arg(header, "wait_s", (int, float), 10.0)), REGISTER_WAIT_MAX_S)
        # the answer must be the leader's to this attempt (maybe a new token), not an old refusal
        link.ask_again()
        self.waiting.append((identity, header["rid"], time.monotonic() + wait, link.retries))
        self.tick(time.monotonic())

    def tick(self, now):
        """Answer the calls whose outcome is known."""
        if not self.waiting:
            return
        try:
            link = self.node.link.as_worker()
        except NotConfigured:
            link = None  # the node stopped being a worker meanwhile
        keep = []
        for identity, rid, deadline, retries in self.waiting:
            answer = _outcome(link, now, deadline, retries)
            if answer is None:
                keep.append((identity, rid, deadline, retries))
            else:
                self.node.reply(identity, rid, answer)
        self.waiting = keep


def _outcome(link, now, deadline, retries):
    """The reply to one waiting call, or None while it must wait on."""
    if link is not None and link.state != "connecting":
        if link.state in ("registered", "pending"):
            return {"status": link.state, "reason": link.reason, "leader": link.leader_address}
        return link.link_error().to_reply()
    if link is not None and not link.handshake_ok and link.retries - retries >= REGISTER_REFUSALS:
        # nothing accepts the connection (refused at once): say so now, not at the deadline
        return NotConnected(hint=(
            f"nothing answers at {link.leader_address} now: this worker keeps trying and "
            "registers once the leader is up (`d getPeerStatus` shows when)")).to_reply()
    if now >= deadline or link is None:
        err = link.link_error() if link else NotConfigured("This node is not a worker")
        return err.to_reply()
    return None
