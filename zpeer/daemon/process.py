"""How a command starts on the target: its user, environment and working directory, and the
spawn itself (a session of its own, stdout and stderr on pipes).

zpeer.daemon.target spawns through here; zpeer.daemon.command follows what was spawned.
"""
import fcntl
import grp
import logging
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import termios

from zpeer.errors import BadRequest, DirectoryDenied, DirectoryNotFound
from zpeer.wire.protocol import shown

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_MAX_VARIABLES = 256  # variables an exec may set (ssh's SendEnv/SetEnv): a few in practice
ENTER_CHECK_TIMEOUT_S = 5.0  # a --user's check of its directory (a hung network mount)

log = logging.getLogger(__name__)


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


def exec_env(value):
    """The variables an exec asks to set, checked: a map of names (no `=`, no NUL) to values (no
    NUL); BadRequest otherwise."""
    if not isinstance(value, dict) or len(value) > ENV_MAX_VARIABLES:
        raise BadRequest(f"env must map at most {ENV_MAX_VARIABLES} names to values")
    for name, text in value.items():
        if not (isinstance(name, str) and isinstance(text, str)) or not name or "=" in name \
                or "\x00" in name or "\x00" in text:
            raise BadRequest(f"bad environment variable {name!r}")
    return value


def command_argv(cmd, entry, login):
    """(program, argv) of an exec: `/bin/bash -c CMD`, or as sshd starts a session (`login`): the
    user's shell with `-c CMD`, or without CMD that shell as a login shell (argv[0] `-NAME`)."""
    if not login:
        return "/bin/bash", ["/bin/bash", "-c", cmd]
    shell = entry.pw_shell or "/bin/sh"
    name = os.path.basename(shell)
    return shell, ([name, "-c", cmd] if cmd else ["-" + name])


def exec_argv(program, argv):
    """argv to exec by path for (program, argv): a login shell (argv[0] `-NAME`) through bash's
    `exec -a`, which gives it that argv[0]."""
    if argv[0].startswith("-"):
        return ["/bin/bash", "-c", 'exec -a "$0" "$1"', argv[0], program]
    return [program] + argv[1:]


# Every disposition the command starts with is the default one, and no signal is blocked: the
# daemon's own (Python ignores SIGPIPE) or its launcher's (a shell's ignored SIGQUIT) do not leak.
# (glibc's posix_spawn leaves its own two reserved signals, 32 and 33, ignored: no program uses
# them.)
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_cwd_fd = None  # the daemon's own working directory, to come back to after a spawn


class Child:
    """A started command: its pid, the daemon's ends of its pipes, and its status once reaped."""

    def __init__(self, pid, stdin_fd, stdout_fd, stderr_fd, popen=None):
        self.pid = pid
        self.stdin_fd, self.stdout_fd, self.stderr_fd = stdin_fd, stdout_fd, stderr_fd
        self.popen = popen  # the --user path starts through subprocess (told the outcome below)
        self.returncode = None
        self.status_lost = False  # reaped by someone else: returncode is then 255, not the real one

    def poll(self):
        """Reap the child if it has exited (never blocks); its returncode or None."""
        if self.returncode is None:
            # waitpid for both paths: Popen.poll() would call a status lost to ECHILD exit 0
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                log.error("command pid %d was reaped by someone else: its exit code is lost",
                          self.pid)
                pid, status = self.pid, 255 << 8
                self.status_lost = True
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self.popen is not None:
                    self.popen.returncode = self.returncode  # done: subprocess must not wait for it
        return self.returncode


def working_directory(requested, entry, node_id, creds=None):
    """(directory, notice): the one asked for, else the user's home; a home that does not exist
    (nobody's /nonexistent) or that the user cannot enter gives / and a notice for the command's
    stderr, as ssh and su do. A directory asked for that does not exist is DirectoryNotFound, one
    the user of `creds` (--user) cannot enter DirectoryDenied: the command would start in it all
    the same, since the switch of user comes after the chdir."""
    if requested:
        directory = resolve_directory(requested, entry.pw_dir or "/")
        if not os.path.isdir(directory):
            raise DirectoryNotFound(f"Directory not found on {node_id}: {shown(directory)}")
        if creds and not _enters(directory, creds):
            raise DirectoryDenied(f"Permission denied on {node_id}: {entry.pw_name} cannot enter "
                                  f"{shown(directory)}")
        return directory, b""
    if os.path.isdir(entry.pw_dir or "") and (not creds or _enters(entry.pw_dir, creds)):
        return entry.pw_dir, b""
    notice = f"zpeer: cannot use home directory {entry.pw_dir} of {entry.pw_name}: running in /\n"
    return "/", notice.encode()


def _enters(directory, creds):
    """Whether `cd directory` works for the user of creds (as that user: only the kernel knows
    every rule, ACLs included). A process: --user commands start through subprocess anyway."""
    try:
        return subprocess.run(["/bin/sh", "-c", 'cd -- "$1"', "sh", directory], env={}, cwd="/",
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=ENTER_CHECK_TIMEOUT_S,
                              **creds).returncode == 0
    except (OSError, subprocess.SubprocessError):  # cannot tell: the command's own cd error will
        return True


def resolve_directory(path, home):
    """path (str or bytes) as `cd` in a login shell of the user whose home is home resolves it:
    `~` and `~/x` from home, `~name/x` from name's home (a relative path if there is no such
    user, as in bash), a relative path from home; never from the daemon's own working directory."""
    slash, tilde = ("/", "~") if isinstance(path, str) else (b"/", b"~")
    home = home if isinstance(path, str) else os.fsencode(home)
    if path.startswith(tilde):
        name, sep, rest = path[1:].partition(slash)
        if not name:
            path = home + sep + rest
        else:
            try:
                other = pwd.getpwnam(os.fsdecode(name)).pw_dir
                path = (other if isinstance(path, str) else os.fsencode(other)) + sep + rest
            except (KeyError, ValueError):  # ValueError: a NUL in the name
                pass
    return os.path.join(home, path)


def spawn(argv, cwd, env, with_stdin, creds=None, notice=b"", program=None):
    """Start argv (the program `program`, else argv[0]) in a session of its own, stdout and stderr
    on pipes (stdin too if asked, else /dev/null); OSError if it cannot start. `creds` (user,
    group, extra_groups) switch user; `notice` goes first on its stderr (a few bytes: the pipe
    holds them).

    The daemon's own user's commands go through posix_spawn (vfork + exec: less of the daemon's
    CPU per command than subprocess.Popen, which also wraps each pipe in a file object).
    posix_spawn has no chdir, so the daemon steps into `cwd` for the spawn and back out: its
    other threads (libzmq's, the ZAP handler) use no relative paths. Every fd of the daemon is
    close-on-exec (Python's, libzmq's, SQLite's; inherited ones are marked at start by
    `zpeer.daemon.inherited.prepare_spawning`), so the command gets exactly 0, 1 and 2."""
    fds = []
    try:
        stdin_r, stdin_w = os.pipe() if with_stdin else (None, None)
        fds += [stdin_r, stdin_w] if with_stdin else []
        out_r, out_w = os.pipe()
        fds += [out_r, out_w]
        err_r, err_w = os.pipe()
        fds += [err_r, err_w]
        if notice:  # before the command starts, so it comes first
            os.write(err_w, notice)
        if creds:
            popen = subprocess.Popen(argv, executable=program, cwd=cwd, env=env,
                                     stdin=stdin_r if with_stdin else subprocess.DEVNULL,
                                     stdout=out_w, stderr=err_w, start_new_session=True,
                                     close_fds=True, **creds)
            pid = popen.pid
        else:
            popen = None
            actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0) if with_stdin else
                       (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
            own_dir = hold_working_directory()
            os.chdir(cwd)
            try:
                pid = os.posix_spawn(program or argv[0], argv, env, file_actions=actions,
                                     setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
            finally:
                os.fchdir(own_dir)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (stdin_r, out_w, err_w):
        if fd is not None:
            os.close(fd)
    return Child(pid, stdin_w, out_r, err_r, popen)


def spawn_pty(argv, cwd, env, size, creds=None, notice=b""):
    """Start argv as the session leader of a new pseudo-terminal, its controlling terminal and
    its stdin, stdout and stderr (`size`: rows, cols); the daemon keeps the master, as stdout
    (the screen) and, through a second descriptor, stdin (the keystrokes). `creds` switch user
    (the slave is theirs then, as sshd makes it); `notice` is shown on the screen first.

    The child is not a process group leader when it starts (no setsid flag), so util-linux's
    `setsid --ctty` makes it one without forking (the pid stays the one followed here), takes
    the terminal on its stdin as the controlling one and execs argv."""
    setsid = shutil.which("setsid", path=env.get("PATH") or DEFAULT_PATH) or "/usr/bin/setsid"
    if not os.access(setsid, os.X_OK):
        raise OSError(f"no setsid (util-linux) to start a terminal session: {setsid}")
    master, slave = os.openpty()
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, winsize_bytes(*size))
        modes = termios.tcgetattr(slave)
        modes[0] |= getattr(termios, "IUTF8", 0)  # erase goes back over a whole UTF-8 character
        termios.tcsetattr(slave, termios.TCSANOW, modes)
        if creds:
            try:
                tty_gid = grp.getgrnam("tty").gr_gid
            except KeyError:
                tty_gid = creds["group"]
            os.fchown(slave, creds["user"], tty_gid)
            os.fchmod(slave, 0o620)
        if notice:  # written on the slave side: it is the first thing on the screen
            os.write(slave, notice)
        argv = [setsid, "--ctty"] + list(argv)
        if creds:
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave,
                                     stderr=slave, close_fds=True, **creds)
            pid = popen.pid
        else:
            popen = None
            actions = [(os.POSIX_SPAWN_DUP2, slave, 0), (os.POSIX_SPAWN_DUP2, slave, 1),
                       (os.POSIX_SPAWN_DUP2, slave, 2)]
            own_dir = hold_working_directory()
            os.chdir(cwd)
            try:
                pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsigmask=(),
                                     setsigdef=_DEFAULT_SIGNALS)
            finally:
                os.fchdir(own_dir)
        keys = os.dup(master)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    os.close(slave)  # the child's alone now: its last close is the master's EIO (the end)
    return Child(pid, keys, master, None, popen)


def winsize_bytes(rows, cols):
    """A struct winsize for TIOCSWINSZ."""
    return struct.pack("HHHH", rows, cols, 0, 0)


def hold_working_directory():
    """An fd of the daemon's working directory (opened once: it works even if that is deleted)."""
    global _cwd_fd
    if _cwd_fd is None:
        _cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return _cwd_fd
