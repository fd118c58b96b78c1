"""Logging setup for entry points, and a rate limiter for logs about hostile input."""
import logging
import sys
import time


def configure(level="INFO"):
    """Log to stderr with timestamps (only entry points call this)."""
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class RateLimited:
    """Allow at most `burst` log lines per `period_s` per key; counts what it suppressed."""

    def __init__(self, burst=5, period_s=10.0):
        self.burst, self.period_s = burst, period_s
        self.windows = {}
        self.suppressed = 0

    def allow(self, key):
        """True if a line about `key` may be logged now."""
        now = time.monotonic()
        start, count = self.windows.get(key, (now, 0))
        if now - start > self.period_s:
            start, count = now, 0
        self.windows[key] = (start, count + 1)
        if len(self.windows) > 1000:
            self.windows.clear()
        if count < self.burst:
            return True
        self.suppressed += 1
        return False
