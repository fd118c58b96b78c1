"""The CLI's standard streams: binary handles, complete writes, stdin reads that never block.

Output goes through `write_all`, which turns a stream that cannot take it (full disk, closed,
I/O error) into OutputFailed; a reader that went away (EPIPE) stays BrokenPipeError, which ends
the CLI as SIGPIPE would.
"""
import errno
import fcntl
import os
import select
import stat
import sys

from zpeer.errors import OutputFailed

STDIN_PIPE_BYTES = 1 << 20  # the default /proc/sys/fs/pipe-max-size


class Closed:
    """Stands for a standard stream the CLI was started without (`>&-`): writing to it fails."""

    def __init__(self, name):
        self.name = name

    def write(self, data):
        """Fail as a write to a closed descriptor does."""
        raise OSError(errno.EBADF, f"{self.name} is closed")

    def flush(self):
        """Nothing buffered."""


class FdStream:
    """A standard stream written straight to its file descriptor, every byte of every write: a
    descriptor that is non-blocking (a pipe or socket a parent set up so, as rsync does) or that
    takes less than was offered is written again once it has room, never taken as done."""

    def __init__(self, fd):
        self.fd = fd
        self._poll = None

    def write(self, data):
        """Write all of data, waiting for room as often as the descriptor asks."""
        view = memoryview(data).cast("B")
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                self._wait_room()

    def _wait_room(self):
        """Until the descriptor can take more (its reader read, or left: then the write fails)."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLOUT)
        self._poll.poll()

    def flush(self):
        """Nothing is buffered here."""


def binary(name):
    """sys.stdout or sys.stderr as an FdStream, or a Closed stand-in when there is none (a stream
    without a descriptor, as a test runner's capture, writes through its own buffer)."""
    stream = getattr(sys, name)
    if stream is None:
        return Closed(name)
    try:
        stream.flush()  # what Python buffered goes first
        return FdStream(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return stream.buffer


def write_all(target, data):
    """Write and flush; a stream that fails (full disk, closed, I/O error) is OutputFailed, except
    a closed pipe, which ends the CLI as SIGPIPE would."""
    try:
        target.write(data)
        target.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: the file object was closed
        raise OutputFailed(getattr(exc, "strerror", None) or exc) from None


def report(err):
    """Print a zpeer failure (message, then hint) and return its exit status; a stderr that
    fails too stays silent."""
    try:
        sys.stderr.write(err.message + "\n" + (f"  hint: {err.hint}\n" if err.hint else ""))
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: started without stderr
        pass
    return err.exit_code


def read_available(fd, size):
    """Whatever fd has now, up to size (b'' at EOF, None if nothing is ready). A pipe gives at
    most 64 KiB a read: reading on while more is there sends fewer, bigger chunks."""
    parts, got = [], 0
    while got < size and select.select([fd], [], [], 0)[0]:
        try:
            part = os.read(fd, size - got)
        except BlockingIOError:  # a non-blocking stdin that select() called ready too soon
            break
        if not part:
            if not parts:
                return b""
            break  # the end of stdin: the next call says so
        parts.append(part)
        got += len(part)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def widen_pipe(fd):
    """Let a pipe on stdin hold STDIN_PIPE_BYTES, not 64 KiB: its writer fills it while a chunk
    travels, so each poll carries more. Best effort: a pipe-size limit or another kind of stdin
    leaves it as it is."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, STDIN_PIPE_BYTES)
    except (OSError, AttributeError):  # AttributeError: no F_SETPIPE_SZ (not Linux)
        pass


def local_user():
    """The invoking user's name (or uid when it has none), for the leader's audit log."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry is still someone: record the number
        return f"uid {os.getuid()}"
