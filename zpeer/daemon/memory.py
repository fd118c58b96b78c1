"""The daemon's heap: output chunks without page faults while streaming, memory back when idle.

Output moves in chunks of up to 1 MiB, allocated and freed all the time: the pipe read on the
target, libzmq's message on each side of each hop. With glibc's defaults such a chunk gets an
mmap of its own (until glibc's dynamic threshold rises) or the top of the heap, which glibc hands
back to the OS whenever more than its trim threshold is free there: while streaming, the heap
shrinks and grows with every few chunks, and each chunk page-faults its pages in again, which
costs more CPU than the copying itself (bench/README.md has the figures).

`tune()` serves allocations up to MMAP_THRESHOLD_BYTES from the heap, which keeps up to
TRIM_THRESHOLD_BYTES free at its top. A daemon that streamed then sits a few MB above its idle
size, so `Trimmer` hands free heap back (`malloc_trim`) once the daemon has had no job and no
session for IDLE_TRIM_S. On a C library without mallopt (musl) both do nothing.
"""
import logging

log = logging.getLogger(__name__)

# above the 1 MiB output chunk (zpeer.daemon.target.READ_CHUNK_BYTES)
MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_THRESHOLD_BYTES = 8 << 20
IDLE_TRIM_S = 2.0
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_libc = None


def _glibc():
    """glibc's handle, or None (another C library, or no ctypes)."""
    global _libc
    if _libc is None:
        try:
            import ctypes  # here: only a daemon tunes its heap

            libc = ctypes.CDLL(None)
            _libc = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else False
        except (ImportError, OSError):
            _libc = False
    return _libc or None


def tune():
    """Serve output-sized allocations from the heap; True if the C library took the settings."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    if not ok:
        log.warning("mallopt refused the heap thresholds: output chunks will page-fault")
    return ok


def trim():
    """Hand the heap's free memory back to the OS."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class Trimmer:
    """Calls `trim` once the daemon has been idle IDLE_TRIM_S after being busy."""

    def __init__(self, trim_fn=trim):
        self.trim_fn = trim_fn
        self.dirty = False  # busy since the last trim
        self.idle_since = None

    def tick(self, now, busy):
        """Called every loop turn; trims when busy turned idle and stayed idle long enough."""
        if busy:
            self.dirty, self.idle_since = True, None
            return
        if not self.dirty:
            return
        if self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= IDLE_TRIM_S:
            self.trim_fn()
            self.dirty, self.idle_since = False, None
