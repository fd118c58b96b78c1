"""One command's child process on the target: its environment, process group, pipes and
output credit, and how it is stopped (SIGTERM to the group, SIGKILL after a grace).

`zpeer.execution.TargetJobs` spawns these and drives them from the daemon loop.
"""
import array
import fcntl
import os
import signal
import sys
import termios
import time

PIPE_SIZE_BYTES = 1 << 20
KILL_GRACE_S = 1.0       # SIGTERM to the group, then SIGKILL
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RC_TIMEOUT = 124
RC_CANCELLED = 130


def exit_status(returncode):
    """Shell convention: the exit code, or 128+N for death by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def child_environment(user_entry, home):
    """A sane login-like environment for the command (HOME, USER, LOGNAME, PATH, SHELL...)."""
    env = {
        "HOME": user_entry.pw_dir,
        "USER": user_entry.pw_name,
        "LOGNAME": user_entry.pw_name,
        "SHELL": user_entry.pw_shell or "/bin/bash",
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "ZPEER_HOME": home,
        "ZPEER_PYTHON": sys.executable,  # the daemon's interpreter: deploy steps run zpeer with it
    }
    for name in ("LANG", "LC_ALL", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    runtime = f"/run/user/{user_entry.pw_uid}"
    if os.path.isdir(runtime):
        env["XDG_RUNTIME_DIR"] = runtime
        if os.path.exists(os.path.join(runtime, "bus")):
            env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={runtime}/bus"
    return env


def pending_bytes(fd):
    """Bytes waiting in a pipe (FIONREAD)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return 0
    return buf[0]


class RunningJob:
    """One command running for an origin: its process group, pipes and output credit."""

    def __init__(self, job, origin, proc, timeout_s, credit):
        self.job, self.origin, self.proc = job, origin, proc
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s if timeout_s else None
        self.credit = credit
        self.pipes = {}  # fd number (1/2) -> file descriptor
        for num, stream in ((1, proc.stdout), (2, proc.stderr)):
            fd = stream.fileno()
            os.set_blocking(fd, False)
            try:
                fcntl.fcntl(fd, 1031, PIPE_SIZE_BYTES)  # F_SETPIPE_SZ: fewer wakeups
            except OSError:
                pass
            self.pipes[num] = fd
        self.stdin_fd = proc.stdin.fileno() if proc.stdin else None
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
        self.exited_at = None
        self.last_data_at = None
        self.how = "exit"  # or timeout / cancelled
        self.kill_at = None
        self.bytes_out = 0
        self.seq = 0  # out messages sent: lets the origin prove it got every chunk, in order
        self.last_origin_word = self.started
        self.announce_at = None  # when the target must say "started" at the latest (TargetJobs)
        self.recorded = False  # its process group is in $ZPEER_HOME/jobs (zpeer.leftovers)

    def kill_group(self, sig):
        """Signal the whole process group (children and grandchildren)."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, how):
        """Terminate the group for a timeout or a cancel; SIGKILL follows after a grace."""
        if self.how == "exit":
            self.how = how
        self.kill_group(signal.SIGTERM)
        self.kill_group(signal.SIGCONT)  # a stopped group must wake to die
        self.kill_at = time.monotonic() + KILL_GRACE_S

    def close_pipe(self, num):
        """Stop reading one output pipe."""
        fd = self.pipes.pop(num, None)
        if fd is not None:
            (self.proc.stdout if num == 1 else self.proc.stderr).close()

    def close_stdin(self):
        """Close the child's stdin (EOF for it)."""
        if self.stdin_fd is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.stdin_fd = None

    def rc(self):
        """The status to report for this job."""
        if self.how == "timeout":
            return RC_TIMEOUT
        if self.how == "cancelled":
            return RC_CANCELLED
        return exit_status(self.proc.returncode)

    def release(self):
        """Close every fd this job holds."""
        for num in list(self.pipes):
            self.close_pipe(num)
        self.close_stdin()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
