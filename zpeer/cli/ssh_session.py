"""zpeer-ssh's session: what sshd would run, on one peer, through the local daemon.

The command words joined with spaces run by the remote user's shell with `-c` in their home, no
command a login shell, `-s sftp` the peer's sftp-server; SendEnv/SetEnv (and GIT_PROTOCOL always)
set there. Standard streams pass byte for byte whatever they are (zpeer.cli.stdio); the exit
status is the remote command's, 128+N for a signal, 255 for zpeer's own failure with one line on
stderr (its hint only with -v). A signal to this process, or its parent going away, cancels the
remote command (its process group is killed).
"""
import os
import signal
import stat
import sys

from zpeer.cli.exec_client import ExecClient
from zpeer.cli.lines import say
from zpeer.cli.sink import OutputSink
from zpeer.cli.ssh_args import PROG, SshExit, peer_of
from zpeer.cli.stdio import binary, widen_pipe, write_all
from zpeer.config import valid_peer_id
from zpeer.errors import EXIT_ZPEER_FAILURE, OutputFailed, ZpeerError

RC_BROKEN_PIPE = 141  # 128 + SIGPIPE: our stdout's reader went away
ALWAYS_SENT = ("GIT_PROTOCOL",)  # git's protocol v2 needs it; sshd accepts it (AcceptEnv)
# where distributions install sftp-server (Debian, Fedora, Arch and Alpine, the BSDs and macOS,
# Gentoo, openSUSE, OpenSSH's own default prefix)
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/lib/ssh/sftp-server", "/usr/libexec/sftp-server",
                "/usr/lib64/misc/sftp-server", "/usr/lib64/ssh/sftp-server",
                "/usr/local/libexec/sftp-server", "/usr/libexec/ssh/sftp-server")
SFTP_PACKAGES = "openssh-sftp-server (Debian, Ubuntu) or openssh-server (Fedora, Arch, Alpine)"

class _Leave(Exception):
    """A second signal: stop waiting for the remote side."""


class SshSink(OutputSink):
    """One peer's output, byte for byte, to our stdout and stderr; zpeer's failures in one line."""

    def __init__(self, verbose):
        super().__init__()
        self.verbose = verbose
        self.out, self.err = binary("stdout"), binary("stderr")
        self.err_ok = True
        self.heard = False  # the remote command started, or failed (ConnectTimeout is over)
        self.quiet = False  # ConnectTimeout struck: its line is the one said

    def started(self, peer, pid):
        """The remote command runs."""
        self.heard = True

    def data(self, peer, stream, data):
        """Output bytes: stdout must take them (else the call ends), stderr may fail (ssh drops
        what it cannot write there)."""
        self.heard = True
        if stream == "o":
            write_all(self.out, data)
        elif self.err_ok:
            try:
                write_all(self.err, data)
            except (OutputFailed, BrokenPipeError):
                self.err_ok = False

    def exited(self, peer, rc, how):
        """The remote command ended."""
        self.results[peer] = (rc, how)

    def failed(self, peer, code, message, hint):
        """zpeer could not run it or lost it: one line (and the hint with -v)."""
        self.results[peer] = (EXIT_ZPEER_FAILURE, code)
        self.heard = True
        if not self.quiet:
            fail_line(message, hint, self.verbose)


def fail_line(message, hint, verbose):
    """zpeer's failure as ssh reports its own: `zpeer-ssh: MESSAGE`, one line."""
    say(f"{PROG}: " + " ".join(str(message).split("\n")))
    if hint and verbose:
        say(f"{PROG}: hint: {hint}")


def is_ip(text):
    """True for an IPv4 or IPv6 address as written (peer ids hold no ':' and are not all
    digits and dots)."""
    if ":" in text:
        return True
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def resolve_peer(client, name):
    """The peer id a destination names: an id, or the IP a peer registered from."""
    if is_ip(name):
        try:
            ids = client.call("peer_by_ip", ip=name)["ids"]
        except ZpeerError as err:
            if err.code != "peer_not_found":
                raise
            ids = []
        if len(ids) > 1:
            raise SshExit(255, f"{PROG}: several peers connect from {name}: {', '.join(ids)}")
        if ids:
            return ids[0]
    if not valid_peer_id(name, new=False):
        raise SshExit(255, f"{PROG}: Peer not found: {name}")
    return name


def environment(settings):
    """The variables sent, as ssh sends them: SendEnv's matches from ours, then SetEnv's; and
    GIT_PROTOCOL whenever we have it."""
    patterns = []
    for pattern in settings.send_env:
        if pattern.startswith("-"):  # `SendEnv -PATTERN` takes back what was listed before
            patterns = [p for p in patterns if not _matches(pattern[1:], p)]
        else:
            patterns.append(pattern)
    env = {name: os.environ[name] for name in ALWAYS_SENT if name in os.environ}
    for name, value in os.environ.items():
        if any(_matches(p, name) for p in patterns):
            env[name] = value
    for item in settings.set_env or ():
        name, _, value = item.partition("=")
        env[name] = value
    return env


def _matches(pattern, name):
    """ssh's pattern match (`*` and `?`)."""
    if "*" not in pattern and "?" not in pattern:
        return pattern == name
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def sftp_command(peer):
    """The subsystem `sftp`: the peer's sftp-server, wherever its distribution put it."""
    # (a peer id holds no quote: the line needs no escaping inside single quotes)
    missing = f"{PROG}: no sftp-server on {peer}: install the package {SFTP_PACKAGES} there"
    return ("for p in " + " ".join(SFTP_SERVERS) + ' $(command -v sftp-server); do '
            f'[ -x "$p" ] && exec "$p"; done; echo \'{missing}\' >&2; exit 255')


def wants_terminal(settings, has_command, stdin_tty):
    """ssh's rule for a pseudo-terminal: RequestTTY (-t, -tt, -T), else one for a login shell;
    never when stdin is not a terminal unless forced (then ssh says so)."""
    request = settings.tty()
    if request == "no" or settings.session_type == "none":
        return False
    tty = request in ("yes", "force") or (not has_command and not settings.session_type)
    if tty and not stdin_tty and request != "force":
        if settings.warnings():
            say("Pseudo-terminal will not be allocated because stdin is not a terminal.")
        return False
    return tty


def terminal_session(settings, peer, cmd, login, env):
    """A session in a pseudo-terminal (zpeer.cli.terminal): the local terminal raw in front of
    it, ssh's escapes; returns the exit status."""
    from zpeer.cli.terminal import escape_of, run_tty
    from zpeer.wire.ipc import Client

    client = Client()
    try:
        peer = resolve_peer(client, peer)
    except ZpeerError as err:
        client.close()
        fail_line(err.message, err.hint, settings.verbose)
        return EXIT_ZPEER_FAILURE
    return run_tty(peer, cmd or None, None, settings.user, escape_of(settings.escape or "~"),
                   env, no_stdin=settings.stdin_null, client=client, login=login)


def stdin_of(settings):
    """The descriptor whose bytes go to the remote command, or None (it reads /dev/null): ssh
    forwards stdin whatever it is, unless -n (or -f)."""
    if settings.stdin_null or settings.fork or sys.stdin is None:
        return None
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return None
    if stat.S_ISCHR(mode.st_mode) and mode.st_rdev == os.makedev(1, 3):
        return None  # /dev/null: the remote command's own is the same, without a round trip
    widen_pipe(fd)
    return fd


def run(settings):
    """Run the session settings describe; returns the exit status."""
    try:
        cmd = " ".join(settings.command)
        if settings.remote_command is not None and settings.remote_command.lower() != "none":
            if cmd:
                raise SshExit(255, "Cannot execute command-line and remote command.")
            cmd = settings.remote_command
        if settings.session_type == "none":  # -N: nothing to run, ssh waits to be stopped
            return wait_for_signal()
        peer = peer_of(settings)
        login = True
        if settings.session_type == "subsystem":
            if cmd != "sftp":
                raise SshExit(255, f"{PROG}: subsystem request failed: {cmd or '(none)'} (zpeer "
                                   "runs the subsystem sftp only)")
            cmd, login = sftp_command(peer), False
        env = environment(settings)
        stdin_tty = sys.stdin is not None and _isatty(sys.stdin)
        if wants_terminal(settings, bool(cmd) or not login, stdin_tty):
            return terminal_session(settings, peer, cmd, login, env)
        if settings.fork:
            background()
        return session(settings, peer, cmd, login, env)
    except SshExit as done:
        if done.message:
            say(done.message)
        return done.code


def _isatty(stream):
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def background():
    """-f: go on in the background (the caller gets its exit status 0 at once), as ssh -f."""
    if os.fork():
        os._exit(0)
    os.setsid()


def wait_for_signal():
    """-N without anything to forward: wait until stopped, then exit as ssh does (255)."""
    caught = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda num, _frame: caught.append(num))
    while not caught:
        signal.pause()
    return 255


def session(settings, peer, cmd, login, env):
    """Open the exec on the peer and follow it to its end; returns the exit status."""
    from zpeer.wire.ipc import Client

    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)
        if len(interrupted) > 1:
            raise _Leave

    timed_out = []

    def on_alarm(_signum, _frame):
        if not sink.heard and not interrupted:
            timed_out.append(True)
            sink.quiet = True
            interrupted.append(signal.SIGALRM)

    parent = os.getppid()

    def watch():  # a vanished parent (its child reparented) cancels as a signal would
        return "parent gone" if parent != 1 and not settings.fork and os.getppid() != parent \
            else None

    sink = SshSink(settings.verbose)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    if settings.connect_timeout_s:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, settings.connect_timeout_s)
    client = Client()
    call = ExecClient(client, interrupted=interrupted, watch=watch)
    try:
        peer = resolve_peer(client, peer)
        call.open([peer], cmd, None, None, settings.user, 0, (), stdin_of(settings), login=login,
                  env=env)
        call.follow(sink)
    except BrokenPipeError:  # our stdout's reader went away: the remote command ends too
        call.cancel()
        return RC_BROKEN_PIPE
    except OutputFailed as err:
        call.cancel()
        fail_line(err.message, err.hint, settings.verbose)
        return EXIT_ZPEER_FAILURE
    except ZpeerError as err:
        fail_line(err.message, err.hint, settings.verbose)
        return EXIT_ZPEER_FAILURE
    except SshExit:
        raise
    except _Leave:
        return 128 + interrupted[0]
    finally:
        if settings.connect_timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
        call.close()
        for signum, handler in old.items():
            signal.signal(signum, handler)
    if timed_out:
        fail_line(f"connect to peer {peer}: Connection timed out", "", 0)
        return EXIT_ZPEER_FAILURE
    if interrupted:
        return 128 + interrupted[0] if isinstance(interrupted[0], int) else EXIT_ZPEER_FAILURE
    if peer not in sink.results:
        fail_line(f"no exit status came from {peer}", "", 0)
        return EXIT_ZPEER_FAILURE
    return sink.results[peer][0]
