"""The daemon's heap: output chunks without page faults while streaming, memory back when idle.

glibc serves each allocation of 128 KiB or more with a fresh mmap and unmaps it when freed (its
threshold only rises once such a chunk is freed, and it kept not rising here). Every output
chunk is such an allocation, several times over: the pipe read on the target, libzmq's message
on each side of each hop. So every chunk page-faulted all its pages in and handed them back: a
1 GB stream cost the worker's loop 1.1 s of CPU, and reading a pipe into fresh 1 MiB buffers
took 0.9-1.1 s per GB against 0.27-0.33 s with the thresholds below.

`tune()` serves allocations up to MMAP_THRESHOLD_BYTES from the heap, which keeps up to
TRIM_THRESHOLD_BYTES free at its top. A daemon that streamed would then sit 5-7 MB above its
idle size, so `Trimmer` hands free heap back (`malloc_trim`) once the daemon has had no job and
no session for IDLE_TRIM_S. On a C library without mallopt (musl) both do nothing.
"""
MMAP_THRESHOLD_BYTES = 4 << 20  # above the 1 MiB output chunk (zpeer.execution.READ_CHUNK_BYTES)
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
        import logging  # here: the CLI imports this module too, and never logs

        logging.getLogger(__name__).warning("mallopt refused the heap thresholds: output chunks will page-fault")
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
