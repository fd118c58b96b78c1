"""Logging setup for entry points, a rate limiter for logs about hostile input, and the
escaping of what a terminal or a log reader would act on."""
import logging
import sys
import time

# C0, DEL and C1 controls (an OSC retitles a terminal, a newline forges a row or a log line)
# and bidirectional controls (they reorder what is shown): written as escapes
_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
_ESCAPES.update({code: f"\\u{code:04x}" for code in [0x061C, *range(0x200E, 0x2010),
                                                      *range(0x202A, 0x202F),
                                                      *range(0x2066, 0x206A)]})


def escaped(value):
    """str(value) with control and bidirectional characters written as escapes."""
    return str(value).translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """Each log record on one line: what its message quotes (a command, a peer's text) cannot
    start a line of its own; a traceback keeps its lines."""

    def formatMessage(self, record):
        record.message = escaped(record.message)
        return super().formatMessage(record)


def configure(level="INFO"):
    """Log to stderr with timestamps (only entry points call this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        handlers=[handler])


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
