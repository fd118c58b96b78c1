"""An opt-in timeline of the exec path, for `bench/timeline.py`: with ZPEER_TRACE set to a
directory, each process appends `NAME NANOSECONDS` lines to DIR/PID at the marks the daemons
make on the way (request in, exec out, exec in, command spawned, loop woken, exit out...).

The clock is CLOCK_MONOTONIC, which all processes of a machine share, so marks of the client,
the leader and a worker on one machine line up. Unset (the normal case), `mark` returns at once.
"""
import os
import time

_fd = None


def _open():
    """The trace file of this process, if ZPEER_TRACE names a directory."""
    directory = os.environ.get("ZPEER_TRACE")
    if not directory or not os.path.isdir(directory):
        return None
    return os.open(os.path.join(directory, str(os.getpid())),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


ENABLED = bool(os.environ.get("ZPEER_TRACE"))


def mark(name, detail=None):
    """Append one mark, `NAME` or `NAME:DETAIL` (one write; nothing when off)."""
    global _fd, ENABLED
    if not ENABLED:
        return
    if _fd is None:
        _fd = _open()
        if _fd is None:
            ENABLED = False
            return
    label = name if detail is None else f"{name}:{detail}"
    os.write(_fd, f"{label} {time.monotonic_ns()}\n".encode())
