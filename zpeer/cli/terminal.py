"""Interactive sessions: a command (or a login shell) in a pseudo-terminal on a peer, this
terminal in raw mode in front of it (`d shell`, `d execOnPeer -t`, and zpeer-ssh's -t).

`run_tty` is the one entry. The session is an exec whose spec carries `pty` (term, rows,
cols): the target daemon runs it as the session leader of a new pseudo-terminal, whose screen
comes back as stream 1 (stdout and stderr merged, as with ssh -t). Two connections to the local
daemon: one holds a long poll for the screen, the other carries keystrokes and window sizes
(`exec_input`) the moment they come, so that neither ever waits for the other. Escapes are
ssh's, after a newline: `~.` ends the session (255), `~^Z` suspends this client, `~?` lists
them, `~~` sends one `~`.
"""
import errno
import os
import signal
import struct
import sys
import termios
import tty

from zpeer.cli.lines import say
from zpeer.cli.stdio import binary, local_user, report, write_all
from zpeer.errors import EXIT_ZPEER_FAILURE, FailedToConnect, ZpeerError
from zpeer.wire.protocol import os_text

POLL_WAIT_S = 0.5
POLL_GRACE_S = 10.0  # a daemon that does not answer in wait + grace is gone
READ_BYTES = 64 << 10
CANCEL_WAIT_S = 2.0  # after `~.` or a signal, how long the remote end may take to be told
DEFAULT_SIZE = (24, 80)
# what the login shell runs as: `exec -l` makes it a login shell (argv[0] "-bash"), and it keeps
# the pid, so the shell is the terminal's session leader
LOGIN_SHELL = 'exec -l "${SHELL:-/bin/sh}"'
RC_INTERRUPTED = 130
LEAVE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def escape_of(text):
    """The escape character ssh's -e names: one character, ^X for a control character, or None
    for `none` (ValueError for anything else)."""
    if text == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 64 <= ord(text[1].upper()) < 96:
        return chr(ord(text[1].upper()) & 0x1f)
    if len(text) != 1:
        raise ValueError(text)
    return text


def run_tty(peer, command=None, directory=None, user=None, escape="~", env=None, *,
            timeout=None, no_stdin=False, client=None, login=False):
    """Run `command` (None: the login shell of the remote user) on `peer` in a pseudo-terminal,
    this process's terminal in raw mode in front of it until it ends; returns the exit status
    (the remote one; 255 for zpeer's own failures, `~.`, SIGTERM or SIGHUP). `escape` is one
    character or None (no escapes); `env` extra variables for the remote side (a mapping),
    for a daemon that takes them; `login`: as sshd runs a session (the remote user's shell, with
    `-c command` when there is one)."""
    if client is None:
        from zpeer.wire.ipc import Client

        client = Client()
    session = TtySession(client, peer, escape, no_stdin)
    try:
        return session.run(command, directory, user, env, timeout, login)
    finally:
        session.close()


class EscapeFilter:
    """ssh's escapes in what the user types: recognised right after a newline (or at the start),
    the escape character, then one more."""

    def __init__(self, char):
        self.char = char.encode() if isinstance(char, str) else char  # None: no escapes
        self.at_line_start = True
        self.pending = False

    def feed(self, data):
        """(bytes for the remote, local actions in order: "close", "suspend", "help")."""
        if self.char is None:
            return data, []
        out, actions = bytearray(), []
        esc = self.char[0]
        for byte in data:
            if self.pending:
                self.pending = False
                if byte == ord("."):
                    actions.append("close")
                    break
                if byte == 0x1a:  # ^Z
                    actions.append(("suspend", bytes(out)))
                    out.clear()
                    continue
                if byte == ord("?"):
                    actions.append("help")
                    continue
                if byte != esc:  # not an escape: both characters go, as they were typed
                    out.append(esc)
            elif self.at_line_start and byte == esc:
                self.pending = True
                continue
            self.at_line_start = byte in (0x0d, 0x0a)
            out.append(byte)
        return bytes(out), actions

    def help(self):
        """The list `~?` prints (in raw mode: CR LF)."""
        c = self.char.decode(errors="replace")
        lines = ["Supported escape sequences:", f" {c}.   - terminate connection",
                 f" {c}^Z  - suspend zpeer", f" {c}?   - this message",
                 f" {c}{c}   - send the escape character by typing it twice",
                 "(Note that escapes are only recognized immediately after newline.)"]
        return ("\r\n".join(lines) + "\r\n").encode()


class LocalTerminal:
    """This process's terminal: its modes, saved once and put back on every way out."""

    def __init__(self, fd):
        self.fd = fd if fd is not None and os.isatty(fd) else None
        self.saved = None

    def raw(self):
        """Raw mode (no echo, no line editing, no signals from keys, no output processing)."""
        if self.fd is None:
            return
        if self.saved is None:
            self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSADRAIN)

    def restore(self):
        """The modes as they were (a terminal that went away is left alone)."""
        if self.fd is not None and self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except (OSError, termios.error):
                pass


def window_size(*fds):
    """(rows, cols) of the first of fds that is a terminal with a size, else DEFAULT_SIZE."""
    for fd in fds:
        if fd is None:
            continue
        try:
            import fcntl

            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        except (OSError, ValueError):
            continue
        if rows and cols:
            return rows, cols
    return DEFAULT_SIZE


class _Leave(Exception):
    """The session ends here: this status (the message is printed once the terminal is back)."""

    def __init__(self, status, message=""):
        super().__init__(message)
        self.status, self.message = status, message


class TtySession:
    """One interactive session of this CLI process."""

    def __init__(self, client, peer, escape, no_stdin=False):
        self.client, self.peer = client, peer
        self.input = None  # the second connection: keystrokes and sizes
        self.stdin_fd = None if no_stdin or sys.stdin is None else _fileno(sys.stdin)
        self.stdout = binary("stdout")
        self.stdout_fd = _fileno(sys.stdout)
        self.terminal = LocalTerminal(self.stdin_fd)
        self.escapes = EscapeFilter(escape)
        self.sid = None
        self.signals = []  # caught, not handled yet
        self.wake_r = self.wake_w = None
        self.old_handlers = {}
        self.rc = None  # the remote status once it came

    # --- the session -----------------------------------------------------------------------
    def run(self, command, directory, user, env, timeout, login=False):
        """Open, follow to the end; the exit status."""
        self._catch_signals()
        try:
            try:
                self._open(command, directory, user, env, timeout, login)
                self.terminal.raw()
                self._follow()
                status = self.rc
            except _Leave as leave:
                self.terminal.restore()
                if leave.message:
                    say(leave.message)
                status = leave.status
            except ZpeerError as err:
                self.terminal.restore()
                if isinstance(err, FailedToConnect) and self.sid is not None:
                    err = FailedToConnect("Failed to connect: the local daemon stopped answering "
                                          "mid-session")
                status = report(err)
        finally:
            self.terminal.restore()
            self._release_signals()
        return status

    def _open(self, command, directory, user, env, timeout, login=False):
        """exec_open with a pty spec; the first events are handled."""
        rows, cols = window_size(self.stdin_fd, self.stdout_fd)
        term = os.environ.get("TERM") or "dumb"
        command = (command or "") if login else (command or LOGIN_SHELL)
        args = dict(targets=[self.peer], cmd=os_text(command),
                    dir=os_text(directory), user=user, timeout=timeout, exclude=[], batch=0,
                    stdin=True, pid=os.getpid(), ouser=local_user(), wait_s=0, raw=True,
                    pty={"term": term, "rows": rows, "cols": cols})
        if env:
            args["env"] = dict(env)
        if login:
            args["login"] = True
        reply = self.client.call("exec_open", timeout_s=POLL_GRACE_S, **args)
        self.sid = reply["sid"]
        self.room = reply.get("room", 0)
        self._events(reply)

    def _follow(self):
        """The loop: screen output from the held poll, keystrokes and sizes out on the other
        connection, signals, until the remote end is done."""
        import time

        import zmq

        self.input = self.client.twin()
        poll_out = input_out = False
        pending = bytearray()
        size = None  # a window size to send
        eof = eof_sent = False
        stdin_open = self.stdin_fd is not None
        poll_deadline = None
        while self.rc is None:
            if not poll_out:
                self.client.begin("exec_poll", sid=self.sid, wait_s=POLL_WAIT_S, raw=True,
                                  need_room=bool(pending) and self.room <= 0,
                                  timeout_s=POLL_WAIT_S + POLL_GRACE_S)
                poll_out, poll_deadline = True, time.monotonic() + POLL_WAIT_S + POLL_GRACE_S
            if not input_out and (pending and self.room > 0 or size or (eof and not eof_sent)):
                chunk = bytes(pending[:max(0, self.room)])
                del pending[:len(chunk)]
                last = eof and not pending
                self.input.begin("exec_input", sid=self.sid, stdin=chunk or None, eof=last,
                                 size=list(size) if size else None, timeout_s=POLL_GRACE_S)
                self.room -= len(chunk)
                eof_sent = eof_sent or last
                input_out, size = True, None
            poller = zmq.Poller()
            poller.register(self.client.sock, zmq.POLLIN)
            if input_out:
                poller.register(self.input.sock, zmq.POLLIN)
            if stdin_open and len(pending) < READ_BYTES:
                poller.register(self.stdin_fd, zmq.POLLIN)
            poller.register(self.wake_r, zmq.POLLIN)
            left_ms = max(0, int((poll_deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(left_ms))
            if not ready and time.monotonic() >= poll_deadline:
                self.client.finish(0)  # raises FailedToConnect: the daemon is gone
            if self.wake_r in ready:
                size = self._on_signals() or size
            if self.stdin_fd in ready and stdin_open:
                data = self._read_stdin()
                if data is None:
                    pass
                elif not data:
                    stdin_open, eof = False, True
                else:
                    pending += self._typed(data)
            if input_out and self.input.sock in ready:
                input_out = False
                try:
                    self.room = self.input.finish(int(POLL_GRACE_S * 1000)).get("room", self.room)
                except ZpeerError as err:
                    if err.code != "bad_request":  # the session just ended: its poll says how
                        raise
            if self.client.sock in ready:
                reply = self.client.finish(int(POLL_GRACE_S * 1000))
                poll_out = False
                self.room = reply.get("room", self.room)
                self._events(reply)
                if reply.get("done") and self.rc is None:
                    raise _Leave(EXIT_ZPEER_FAILURE, f"Connection to {self.peer} closed.")

    def _typed(self, data):
        """Keystrokes through the escape filter: what goes to the remote side."""
        out, actions = self.escapes.feed(data)
        sent = bytearray()
        for action in actions:
            if action == "close":
                self.cancel()
                raise _Leave(EXIT_ZPEER_FAILURE, f"Connection to {self.peer} closed.")
            if action == "help":
                self._write_local(self.escapes.help())
            else:  # ("suspend", typed before it)
                sent += action[1]
                self._suspend()
        return bytes(sent) + out

    def _events(self, reply):
        """A poll reply's events: screen bytes out, the end noted."""
        frames = reply.get("frames", ())
        for event in reply["events"]:
            kind = event[1]
            if kind in ("o", "e"):
                data = event[2]
                write_all(self.stdout, frames[data] if isinstance(data, int) else data)
            elif kind == "x":
                self.rc = event[2]
            elif kind == "f":
                message, hint = event[3], event[4]
                raise _Leave(EXIT_ZPEER_FAILURE,
                             message + (f"\n  hint: {hint}" if hint else ""))

    def _read_stdin(self):
        """What stdin has now: bytes, b"" at its end, None if nothing after all."""
        try:
            return os.read(self.stdin_fd, READ_BYTES)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:  # the terminal went away (a SIGHUP follows)
                return b""
            raise

    def _write_local(self, data):
        """Something of ours on this terminal (not from the remote side)."""
        try:
            os.write(self.stdout_fd if self.stdout_fd is not None else 2, data)
        except OSError:
            pass

    # --- signals ----------------------------------------------------------------------------
    def _catch_signals(self):
        """SIGWINCH, SIGTERM, SIGHUP (and SIGINT, which a raw terminal does not send) are
        noted and handled in the loop."""
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)

        def note(signum, _frame):
            self.signals.append(signum)
            try:
                os.write(self.wake_w, b"s")
            except OSError:
                pass

        for signum in (signal.SIGWINCH, signal.SIGINT) + LEAVE_SIGNALS:
            self.old_handlers[signum] = signal.signal(signum, note)

    def _release_signals(self):
        """The handlers as they were."""
        for signum, handler in self.old_handlers.items():
            signal.signal(signum, handler)
        self.old_handlers = {}
        for fd in (self.wake_r, self.wake_w):
            if fd is not None:
                os.close(fd)
        self.wake_r = self.wake_w = None

    def _on_signals(self):
        """Handle the signals caught; returns a new window size to send, or None."""
        try:
            os.read(self.wake_r, 512)
        except BlockingIOError:
            pass
        caught, self.signals = self.signals, []
        size = None
        for signum in caught:
            if signum == signal.SIGWINCH:
                size = window_size(self.stdin_fd, self.stdout_fd)
            elif signum == signal.SIGINT:  # stdin is no terminal: Ctrl-C is ours, as execOnPeer
                self.cancel()
                raise _Leave(RC_INTERRUPTED)
            else:
                self.cancel()
                raise _Leave(EXIT_ZPEER_FAILURE, f"Killed by signal {signum}.")
        return size

    def _suspend(self):
        """`~^Z`: this client stops (its terminal as it was); once continued, raw again and the
        window size sent, which may have changed meanwhile."""
        self.terminal.restore()
        self._write_local(b"\r\n")
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, previous)
        self.terminal.raw()
        self.signals.append(signal.SIGWINCH)
        os.write(self.wake_w, b"s")

    # --- the end -----------------------------------------------------------------------------
    def cancel(self):
        """Stop the remote side (best effort: the daemon also kills it once this CLI is gone)."""
        if self.sid is None:
            return
        from zpeer.wire.ipc import Client

        other = Client(self.client.home, self.client.ctx)
        try:
            other.call("exec_cancel", sid=self.sid, timeout_s=CANCEL_WAIT_S)
        except ZpeerError:
            pass
        finally:
            other.close()

    def close(self):
        """Close both connections."""
        if self.input is not None:
            self.input.close()
        self.client.close()


def _fileno(stream):
    """A stream's descriptor, or None."""
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


