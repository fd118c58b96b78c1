"""One running command on the target: its process group, the daemon's ends of its pipes, its
stdin buffer, and how it is stopped (SIGTERM to the group, SIGKILL after a grace).

zpeer.daemon.target holds one per open channel and drives it from the daemon loop.
"""
import array
import fcntl
import itertools
import os
import signal
import termios
import time
from collections import deque

from zpeer.daemon.process import winsize_bytes

PIPE_SIZE_BYTES = 1 << 20
WRITEV_PARTS_MAX = 64  # buffers one writev takes (a 1 MiB pipe fills with fewer)
KILL_GRACE_S = 1.0       # SIGTERM to the group, then SIGKILL
EXIT_IDLE_GRACE_S = 0.3  # after the shell exits, a pipe idle this long is closed (bg children)
# and a pipe that keeps producing after the exit (more than it held then) is cut after this
EXIT_DRAIN_MAX_S = 5.0
RC_TIMEOUT = 124
RC_CANCELLED = 130


def exit_status(returncode):
    """Shell convention: the exit code, or 128+N for death by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def pending_bytes(fd):
    """Bytes waiting in a pipe (FIONREAD)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return 0
    return buf[0]


def session_groups(sid):
    """The process groups of session `sid` (its leader's group first, even once it is gone)."""
    groups = {sid}
    try:
        names = os.listdir("/proc")
    except OSError:
        return groups
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and int(fields[3]) == sid:
            groups.add(int(fields[2]))
    return groups


class StdinBuffer:
    """Stdin bytes waiting for a child's pipe: the received buffers themselves (a message's
    frame, not a copy), written with writev as far as the pipe takes them."""

    __slots__ = ("parts", "size")

    def __init__(self):
        self.parts = deque()
        self.size = 0

    def __len__(self):
        return self.size

    def append(self, data):
        """More bytes at the end (a bytes-like object; kept, not copied)."""
        if len(data):
            self.parts.append(memoryview(data).cast("B"))
            self.size += len(data)

    def clear(self):
        """Drop everything."""
        self.parts.clear()
        self.size = 0

    def write(self, fd):
        """Write what the descriptor takes now; returns the bytes written (BlockingIOError and
        other OSErrors as os.writev raises them)."""
        n = os.writev(fd, list(itertools.islice(self.parts, WRITEV_PARTS_MAX)))
        self.size -= n
        left = n
        while left:
            head = self.parts[0]
            if len(head) <= left:
                left -= len(head)
                self.parts.popleft()
            else:
                self.parts[0] = head[left:]
                left = 0
        return n


class Command:
    """A spawned command: its process group, pipes and stdin buffer, and its end."""

    def __init__(self, proc):
        self.proc = proc  # zpeer.daemon.process.Child
        self.pipes = {}  # stream number (1, 2) -> the daemon's end of its pipe
        for num, fd in ((1, proc.stdout_fd), (2, proc.stderr_fd)):
            if fd is None:  # a pseudo-terminal's one screen
                continue
            os.set_blocking(fd, False)
            try:
                fcntl.fcntl(fd, 1031, PIPE_SIZE_BYTES)  # F_SETPIPE_SZ: fewer wakeups
            except OSError:
                pass
            self.pipes[num] = fd
        self.stdin_fd = proc.stdin_fd
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
            try:  # a write (and its ack) per 1 MiB of stdin, not per 64 KiB
                fcntl.fcntl(self.stdin_fd, 1031, PIPE_SIZE_BYTES)
            except OSError:
                pass
        self.stdin_buf = StdinBuffer()
        self.stdin_eof = False
        self.pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
        self.exited_at = None
        self.lingered = False  # TargetJobs waited for its exit in place once (its _linger)
        self.last_data_at = None
        self.held_at_exit = {}  # stream -> bytes its pipe held when the shell exited
        self.read_after_exit = {}  # stream -> bytes read from it since
        self.how = "exit"  # or timeout / cancelled
        self.kill_at = None
        # in a pseudo-terminal: a session whose jobs are process groups of their own, all
        # stopped with it (the master stays open until then: no hangup, as with sshd)
        self.terminal = proc.stderr_fd is None

    @property
    def pid(self):
        """The shell's pid, which is also its process group's id."""
        return self.proc.pid

    def kill_group(self, sig):
        """Signal the whole process group (children and grandchildren); in a pseudo-terminal,
        every process group of its session (a shell's jobs have groups of their own)."""
        groups = session_groups(self.proc.pid) if self.terminal else {self.proc.pid}
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def resize(self, rows, cols):
        """A pseudo-terminal's new window size (its foreground group gets SIGWINCH)."""
        fd = self.pipes.get(1)
        if self.terminal and fd is not None:
            try:
                fcntl.ioctl(fd, termios.TIOCSWINSZ, winsize_bytes(rows, cols))
            except OSError:
                pass

    def stop(self, how):
        """Terminate the group for a timeout or a cancel; SIGKILL follows after a grace."""
        if self.how == "exit":
            self.how = how
        if self.terminal:  # as a terminal that hangs up: shells pass it on to their jobs
            self.kill_group(signal.SIGHUP)
        self.kill_group(signal.SIGTERM)
        self.kill_group(signal.SIGCONT)  # a stopped group must wake to die
        self.kill_at = time.monotonic() + KILL_GRACE_S

    def fds_to_poll(self, can_send):
        """(fd, want_write) pairs to wait on: the output pipes while output may be sent,
        stdin while bytes wait for it, the pidfd until the shell exited."""
        items = [(fd, False) for fd in self.pipes.values()] if can_send else []
        if self.stdin_fd is not None and self.stdin_buf:
            items.append((self.stdin_fd, True))
        if self.pidfd is not None and self.exited_at is None:
            items.append((self.pidfd, False))
        return items

    def read(self, num, limit):
        """Up to `limit` bytes of output stream `num`: the bytes, b"" at its end (the pipe is
        closed then), or None when it has nothing now."""
        try:
            data = os.read(self.pipes[num], limit)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.close_pipe(num)
            return b""
        self.last_data_at = time.monotonic()
        if self.exited_at is not None:
            self.read_after_exit[num] = self.read_after_exit.get(num, 0) + len(data)
        return data

    def drained(self, now, can_send):
        """After the shell's exit: close the pipes with nothing more to give (idle for a grace,
        or cut after EXIT_DRAIN_MAX_S; a killed command's only once its buffered output is
        out); True when none is left."""
        for num, fd in list(self.pipes.items()):
            pending = pending_bytes(fd)
            idle_since = max(self.exited_at, self.last_data_at or 0)
            if self.how != "exit":
                # killed: deliver what is already buffered if the reader keeps up, no more
                if pending == 0 or not can_send:
                    self.close_pipe(num)
            elif pending == 0 and now - idle_since > EXIT_IDLE_GRACE_S:
                self.close_pipe(num)  # a background child holds the pipe open but is silent
            elif (now - self.exited_at > EXIT_DRAIN_MAX_S and can_send
                  and self.read_after_exit.get(num, 0) > self.held_at_exit.get(num, 0)):
                self.close_pipe(num)  # a background child keeps writing after the shell exited
        return not self.pipes

    def close_pipe(self, num):
        """Stop reading one output pipe."""
        fd = self.pipes.pop(num, None)
        if fd is not None:
            os.close(fd)

    def close_stdin(self):
        """Close the child's stdin (EOF for it)."""
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def write_stdin(self):
        """Push buffered stdin into the child without blocking; bytes it took (None: pipe full)."""
        try:
            n = self.stdin_buf.write(self.stdin_fd)
        except BlockingIOError:
            return None
        except OSError:  # the child closed its stdin: drop the rest, like a pipe would
            n = len(self.stdin_buf)
            self.stdin_buf.clear()
            self.close_stdin()
        if not self.stdin_buf and self.stdin_eof:
            self.close_stdin()
        return n

    def reap(self):
        """Collect the shell's exit status once it is gone."""
        if self.exited_at is None and self.proc.poll() is not None:
            self.exited_at = time.monotonic()
            self.held_at_exit = {num: pending_bytes(fd) for num, fd in self.pipes.items()}
            if self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None

    def rc(self):
        """The status to report for this command."""
        if self.how == "timeout":
            return RC_TIMEOUT
        if self.how == "cancelled":
            return RC_CANCELLED
        return exit_status(self.proc.returncode)

    def release(self):
        """Close every fd this command holds."""
        for num in list(self.pipes):
            self.close_pipe(num)
        self.close_stdin()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
