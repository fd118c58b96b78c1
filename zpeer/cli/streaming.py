"""CLI side of execOnPeer: open a session, long-poll its output, render, compute the exit code.

The REQ lockstep is the flow control: the next poll is sent only after the previous output was
written, and the daemon returns credit to the remote command as we consume.
"""
import base64
import errno
import fcntl
import json
import os
import select
import signal
import stat
import sys

from zpeer.errors import EXIT_ZPEER_FAILURE, FailedToConnect, OutputFailed, ZpeerError
from zpeer.targets import many_peers
from zpeer.wire.protocol import os_text

POLL_WAIT_S = 0.5
POLL_GRACE_S = 10.0  # a daemon that does not answer a poll in wait + grace is gone
STDIN_CHUNK_BYTES = 256 * 1024
STDIN_PIPE_BYTES = 1 << 20  # the default /proc/sys/fs/pipe-max-size
LINE_MAX_BYTES = 1 << 20  # a longer line of a fan-out (a blob with no newline) is cut there
SUMMARY_OK_PEERS_MAX = 10  # a fan-out summary names this many peers that ended well; beyond, it counts them
CANCEL_WAIT_POLLS = 20


class _Closed:
    """Stands for a standard stream the CLI was started without (`>&-`): writing to it fails."""

    def __init__(self, name):
        self.name = name

    def write(self, data):
        """Fail as a write to a closed descriptor does."""
        raise OSError(errno.EBADF, f"{self.name} is closed")

    def flush(self):
        """Nothing buffered."""


def _write(target, data):
    """Write and flush; a stream that fails (full disk, closed, I/O error) is OutputFailed, except
    a closed pipe, which ends the CLI as SIGPIPE would."""
    try:
        target.write(data)
        target.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: the file object was closed
        raise OutputFailed(getattr(exc, "strerror", None) or exc) from None


class Renderer:
    """Writes events: raw for one peer, `ID: ` line prefixes for many, or JSON Lines."""

    def __init__(self, multi, as_json):
        self.multi, self.as_json = multi, as_json
        self.partial = {}  # (peer, stream) -> bytes without newline yet
        self.results = {}  # peer -> (status, summary word)
        self.out = sys.stdout.buffer if sys.stdout is not None else _Closed("stdout")
        self.err = sys.stderr.buffer if sys.stderr is not None else _Closed("stderr")

    def _json(self, obj):
        """One JSON Lines record."""
        _write(self.out, json.dumps(obj).encode() + b"\n")

    def data(self, peer, stream, data):
        """Output bytes from a peer."""
        if self.as_json:
            data = bytes(data)  # a frame's memoryview has no decode()
            try:
                record = {"event": "stdout" if stream == "o" else "stderr", "peer": peer,
                          "data": data.decode("utf-8")}
            except UnicodeDecodeError:
                record = {"event": "stdout" if stream == "o" else "stderr", "peer": peer,
                          "data": base64.b64encode(data).decode(), "encoding": "base64"}
            self._json(record)
            return
        target = self.out if stream == "o" else self.err
        if not self.multi:
            _write(target, data)
            return
        key = (peer, stream)
        buf = self.partial.get(key)  # a line that has no newline yet
        if buf is not None:
            held = len(buf)
            buf += data  # amortized: a blob that trickles in costs linear time
            if buf.find(b"\n", held) < 0 and len(buf) < LINE_MAX_BYTES:
                return
            del self.partial[key]
        whole = bytes(data) if buf is None else bytes(buf)
        lines = whole.split(b"\n")
        rest = lines.pop()
        if len(whole) >= LINE_MAX_BYTES and (len(rest) >= LINE_MAX_BYTES or max(map(len, lines), default=0)
                                             > LINE_MAX_BYTES):
            lines = [piece for line in lines + [rest] for piece in _cut(line)]
            rest = lines.pop() if len(lines[-1]) < LINE_MAX_BYTES else b""  # memory stays bounded
        if rest:
            self.partial[key] = bytearray(rest)
        if lines:
            prefix = peer.encode() + b": "
            _write(target, b"".join(prefix + line + b"\n" for line in lines))

    def flush_peer(self, peer):
        """Terminate a peer's last partial lines (multi-peer mode)."""
        for stream, target in (("o", self.out), ("e", self.err)):
            rest = self.partial.pop((peer, stream), b"")
            if rest:
                _write(target, peer.encode() + b": " + bytes(rest) + b"\n")

    def started(self, peer, pid):
        """A remote command started."""
        if self.as_json:
            self._json({"event": "start", "peer": peer, "pid": pid})

    def exited(self, peer, rc, how):
        """A remote command ended."""
        self.flush_peer(peer)
        word = {"timeout": "timeout", "cancelled": "cancelled"}.get(how, "ok" if rc == 0 else f"rc {rc}")
        self.results[peer] = (rc, word)
        if self.as_json:
            self._json({"event": "exit", "peer": peer, "rc": rc, "how": how})

    def failed(self, peer, code, message, hint):
        """zpeer could not run (or finish) the command on a peer."""
        self.flush_peer(peer)
        word = {"peer_offline": "offline", "peer_not_found": "not found"}.get(code, "error")
        self.results[peer] = (EXIT_ZPEER_FAILURE, word)
        if self.as_json:
            self._json({"event": "error", "peer": peer, "code": code, "message": message, "hint": hint})
            return
        line = f"{peer}: {message}" if self.multi else message
        _write(self.err, line.encode() + b"\n" + (f"  hint: {hint}\n".encode() if hint and not self.multi else b""))

    def summary(self, targets):
        """Per-peer outcome on stderr when more than one peer."""
        if not self.multi or self.as_json:
            return
        outcomes = [(peer, self.results.get(peer, (255, "no result"))[1]) for peer in targets]
        ok = [peer for peer, word in outcomes if word == "ok"]
        lines = [f"{peer}: {word}" for peer, word in outcomes if word != "ok" or len(ok) <= SUMMARY_OK_PEERS_MAX]
        if len(ok) > SUMMARY_OK_PEERS_MAX:  # hundreds of "ID: ok" lines would bury the ones that matter
            lines.append(f"{len(ok)} peers: ok")
        _write(self.err, ("--\n" + "\n".join(lines) + "\n").encode())

    def release(self):
        """Print what is held back until the end (nothing here; see gather.Gatherer)."""

    def status(self, targets):
        """The exit status: the largest of the peers' statuses."""
        return max((self.results.get(p, (EXIT_ZPEER_FAILURE, ""))[0] for p in targets), default=0)


def _cut(line):
    """A line in pieces of at most LINE_MAX_BYTES (an empty line stays one)."""
    return [line[i:i + LINE_MAX_BYTES] for i in range(0, len(line), LINE_MAX_BYTES)] or [b""]


def deliver(sink, events, frames=()):
    """Hand a poll reply's events to a Renderer-like sink (output: bytes, or the index of a raw
    frame of the reply when polled with raw=True)."""
    for event in events:
        kind = event[1]
        if kind in ("o", "e"):
            data = event[2]
            sink.data(event[0], kind, frames[data] if isinstance(data, int) else data)
        elif kind == "s":
            sink.started(event[0], event[2])
        elif kind == "x":
            sink.exited(event[0], event[2], event[3])
        elif kind == "f":
            sink.failed(event[0], event[2], event[3], event[4])


def _read_stdin(fd, size):
    """Whatever stdin has now, up to size (b'' at EOF, None if nothing ready). A pipe gives at
    most 64 KiB a read: reading on while more is there sends fewer, bigger chunks."""
    parts, got = [], 0
    while got < size and select.select([fd], [], [], 0)[0]:
        part = os.read(fd, size - got)
        if not part:
            if not parts:
                return b""
            break  # the end of stdin: the next call says so
        parts.append(part)
        got += len(part)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _widen_pipe(fd):
    """Let a pipe on stdin hold 1 MiB, not 64 KiB: its writer fills it while a chunk travels, so
    each poll carries more (200 MB through `wc -c`: 1.5 s -> 0.75 s). Best effort: a pipe-size
    limit or another kind of stdin leaves it as it is."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, STDIN_PIPE_BYTES)
    except (OSError, AttributeError):  # AttributeError: no F_SETPIPE_SZ (not Linux)
        pass


def run_exec(client, peers, cmd, directory, timeout, user, batch, as_json, no_stdin=False, exclude=(),
             gather=False):
    """Run a command on peers through the local daemon; returns the exit status. Local stdin
    goes to the command when it is not a terminal, unless `no_stdin` (the command gets EOF);
    `gather` prints identical stdouts once, at the end (gather.py)."""
    stdin_fd = sys.stdin.fileno() if sys.stdin is not None and not no_stdin else None
    forward_stdin = stdin_fd is not None and not os.isatty(stdin_fd)
    if forward_stdin:
        _widen_pipe(stdin_fd)
    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)
        if len(interrupted) > 1:  # a second Ctrl-C leaves now, as ssh's `~.` (the first asked for an end)
            raise _LeaveNow

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    # the open is also the first poll (`true` costs one round trip), unless stdin must go first
    wait = 0 if forward_stdin else POLL_WAIT_S
    try:
        if exclude and "exclude" not in client.call("ping").get("features", ()):
            # a daemon from before --exclude would ignore it and run on the peers it names
            raise ZpeerError("The local daemon is too old for --exclude: nothing was run",
                             hint="restart it to run the installed zpeer (`d restartDaemon`)")
        reply = client.call("exec_open", targets=peers, cmd=os_text(cmd), dir=os_text(directory), user=user,
                            timeout=timeout, exclude=list(exclude),
                            batch=batch or 0, stdin=forward_stdin, pid=os.getpid(), ouser=_local_user(),
                            wait_s=wait, raw=True, timeout_s=wait + POLL_GRACE_S)
    except ZpeerError as err:
        _restore(old)
        return _report(err)
    except _LeaveNow:
        _restore(old)
        return 130
    sid, targets = reply["sid"], reply["targets"]
    if gather:
        from zpeer.cli.gather import Gatherer

        render = Gatherer()
    else:
        render = Renderer(len(targets) > 1 or many_peers(peers), as_json)
    stdin_eof = not forward_stdin
    room = reply.get("room", STDIN_CHUNK_BYTES)
    cancel_polls = 0
    waker = _Waker(client, sid)
    try:
        deliver(render, reply["events"], reply.get("frames", ()))
        while not reply["done"]:
            chunk, eof = None, False
            if interrupted and cancel_polls == 0:
                client.call("exec_cancel", sid=sid, timeout_s=POLL_GRACE_S)
            if interrupted:
                cancel_polls += 1
                if cancel_polls > CANCEL_WAIT_POLLS:
                    break
            if not stdin_eof and room > 0:
                chunk = _read_stdin(stdin_fd, min(room, STDIN_CHUNK_BYTES))
                if chunk == b"":
                    stdin_eof = eof = True
            # more stdin to send: do not wait for output; otherwise wait for output or room
            wait = 0 if (chunk and not stdin_eof) else POLL_WAIT_S
            # stdin that comes while the poll waits for output must not wait for its end
            wake_fd = stdin_fd if wait and not stdin_eof and room > 0 and not interrupted else None
            reply = client.call("exec_poll", sid=sid, stdin=chunk or None, eof=eof, wait_s=wait,
                                need_room=not stdin_eof and room <= 0, raw=True, timeout_s=wait + POLL_GRACE_S,
                                wake_fd=wake_fd, on_wake=waker.wake)
            room = reply.get("room", 0)
            deliver(render, reply["events"], reply.get("frames", ()))
    except BrokenPipeError:
        _cancel_quietly(client, sid)
        os._exit(141)  # like a process killed by SIGPIPE
    except OutputFailed as err:  # the output has nowhere to go: stop the remote side too
        _cancel_quietly(client, sid)
        return _report(err)
    except FailedToConnect:
        return _report(FailedToConnect("Failed to connect: the local daemon stopped answering mid-command"))
    except ZpeerError as err:
        return _report(err)
    except _LeaveNow:
        return 130
    finally:
        waker.close()
        _restore(old)
        try:
            render.release()  # (gathered output is printed even when the run ends early)
        except (OutputFailed, BrokenPipeError):
            pass
    if interrupted:
        return 130
    try:
        render.summary(targets)
    except OutputFailed:
        pass  # stderr itself fails: the exit status still tells how it went
    return render.status(targets)


class _LeaveNow(Exception):
    """A second Ctrl-C (or SIGTERM, SIGHUP): stop waiting for the remote side."""


class _Waker:
    """A second connection to the daemon, opened on first use: while the REQ lockstep waits for
    output, it asks the daemon to answer that poll at once, so that stdin can go out."""

    def __init__(self, client, sid):
        self.client, self.sid, self.conn = client, sid, None

    def wake(self):
        """Cut the session's held poll short (if it fails, the poll ends at its own deadline)."""
        if self.conn is None:
            self.conn = self.client.twin()
        try:
            self.conn.call("exec_wake", sid=self.sid, timeout_s=POLL_GRACE_S)
        except ZpeerError:
            pass

    def close(self):
        """Close the connection if one was opened."""
        if self.conn is not None:
            self.conn.close()


def _restore(handlers):
    """Put back the signal handlers run_exec replaced."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _cancel_quietly(client, sid):
    """Best-effort cancel when we cannot go on (stdout closed)."""
    try:
        client.call("exec_cancel", sid=sid, timeout_s=2)
    except ZpeerError:
        pass


def _report(err):
    """Print a zpeer failure and return its exit status (a stderr that fails too stays silent)."""
    try:
        sys.stderr.write(err.message + "\n" + (f"  hint: {err.hint}\n" if err.hint else ""))
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: started without stderr
        pass
    return err.exit_code


def _local_user():
    """The invoking user's name (or uid when it has none), for the leader's audit log."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry is still someone: record the number
        return f"uid {os.getuid()}"
