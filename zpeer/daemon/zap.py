"""The leader's ZAP handler: which CURVE keys may open a connection at all (zmq.auth)."""
import logging

from zmq.auth.thread import ThreadAuthenticator


class KeyPolicy:
    """ZAP callback: any CURVE key may connect (to enrol) unless it was revoked."""

    def __init__(self):
        self.revoked = set()

    def callback(self, domain, key):
        """Called by the ZAP thread for each new connection."""
        return (key.decode() if isinstance(key, bytes) else key) not in self.revoked


def start_authenticator(ctx):
    """pyzmq's ZAP handler thread (zmq.auth): CURVE keys are checked by KeyPolicy."""
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("zpeer.zap"))
    auth.start()
    return auth
