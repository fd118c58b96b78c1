"""The CLI's one exec client: it opens an exec session on the local daemon, long-polls its
events into an OutputSink, feeds it stdin and cancels it.

execOnPeer, the deploy steps, and whatever else runs remote work from the CLI go through
ExecClient. The REQ lockstep is the flow control: the next poll leaves only after the previous
output was written, and the daemon returns credit to the remote command as the CLI consumes.
Stdin goes on a second connection of its own (`exec_input`, each chunk a frame after the map),
so that input never waits for output nor output for input: the daemon answers each chunk once
there is room for the next (its window), and the CLI reads the next chunk while one travels. A
daemon from before that (its open says no `stdin_frame`) takes stdin with the polls, and a poll
that waits for output is cut short (`exec_wake`) when stdin has bytes.
"""
import os
import time

from zpeer.cli.sink import deliver
from zpeer.cli.stdio import local_user, read_available
from zpeer.errors import EXIT_ZPEER_FAILURE, ZpeerError
from zpeer.wire.protocol import os_text

POLL_WAIT_S = 0.5
POLL_GRACE_S = 10.0  # a daemon that does not answer a poll in wait + grace is gone
STDIN_CHUNK_BYTES = 1 << 20  # stdin one poll carries at most (the daemon's window bounds it too)
CANCEL_WAIT_POLLS = 20  # after a cancel, polls for the remote ends before the CLI leaves anyway


class ExecClient:
    """One exec session of this CLI process: open, follow to the end, cancel."""

    def __init__(self, client, grace_s=POLL_GRACE_S, interrupted=None, watch=None):
        self.client, self.grace_s = client, grace_s
        # signals the caller caught: the first one cancels the session (see follow)
        self.interrupted = interrupted if interrupted is not None else []
        # asked between polls: a reason to stop (zpeer-ssh: its parent went away), or None
        self.watch = watch
        self.sid, self.targets = None, []
        self.stdin_fd = None
        self.stdin_frame = False  # polls carry stdin as a frame of its own (the daemon said so)
        self._first = None  # the open's reply: also the session's first poll
        self._waker = None
        self._feeder = None  # the connection stdin goes on

    def open(self, peers, cmd, directory=None, timeout=None, user=None, batch=0, exclude=(),
             stdin_fd=None, login=False, env=None):
        """Open the session; returns the target peer ids. Stdin goes to the command when a
        stdin_fd is given. The open is also the first poll (a short command costs one round
        trip), unless stdin must go first. `login`: run as sshd does (the user's shell, an
        empty cmd a login shell), with the variables of `env` set (zpeer-ssh)."""
        self.stdin_fd = stdin_fd
        wait = 0 if stdin_fd is not None else POLL_WAIT_S
        extra = {"login": True} if login else {}
        if env:
            extra["env"] = env
        if exclude and "exclude" not in self.client.call("ping").get("features", ()):
            # a daemon from before --exclude would ignore it and run on the peers it names
            raise ZpeerError("The local daemon is too old for --exclude: nothing was run",
                             hint="restart it to run the installed zpeer (`d restartDaemon`)")
        reply = self.client.call(
            "exec_open", targets=list(peers), cmd=os_text(cmd), dir=os_text(directory),
            user=user, timeout=timeout, exclude=list(exclude), batch=batch or 0,
            stdin=stdin_fd is not None, pid=os.getpid(), ouser=local_user(), wait_s=wait,
            raw=True, timeout_s=wait + self.grace_s, **extra)
        self.sid, self.targets, self._first = reply["sid"], reply["targets"], reply
        self.stdin_frame = bool(reply.get("stdin_frame"))  # a daemon from before: in the map
        return self.targets

    def follow(self, sink):
        """Deliver the session's events to an OutputSink until it is done. After an interruption
        the session is cancelled; if the remote ends do not come within CANCEL_WAIT_POLLS
        polls, False (the CLI leaves without them)."""
        reply, self._first = self._first, None
        if self.stdin_fd is not None and self.stdin_frame:
            return self._follow_fed(sink, reply)
        stdin_eof = self.stdin_fd is None
        room = reply.get("room", STDIN_CHUNK_BYTES)
        cancel_polls = 0
        deliver(sink, reply["events"], reply.get("frames", ()))
        while not reply["done"]:
            chunk, eof = None, False
            cancel_polls = self._stop_asked(cancel_polls)
            if cancel_polls is None:
                return False
            if not stdin_eof and room > 0:
                chunk = read_available(self.stdin_fd, min(room, STDIN_CHUNK_BYTES))
                if chunk == b"":
                    stdin_eof = eof = True
            # more stdin to send: do not wait for output; otherwise wait for output or room
            wait = 0 if (chunk and not stdin_eof) else POLL_WAIT_S
            # stdin that comes while the poll waits for output must not wait for its end
            wake = wait and not stdin_eof and room > 0 and not self.interrupted
            framed = chunk if chunk and self.stdin_frame else None
            reply = self.client.call(
                "exec_poll", sid=self.sid, stdin=None if framed else chunk or None, data=framed,
                eof=eof, wait_s=wait,
                need_room=not stdin_eof and room <= 0, raw=True, timeout_s=wait + self.grace_s,
                wake_fd=self.stdin_fd if wake else None, on_wake=self._wake)
            room = reply.get("room", 0)
            deliver(sink, reply["events"], reply.get("frames", ()))
        return True

    def _stop_asked(self, cancel_polls):
        """Between polls: a reason to stop (watch), the cancel after an interruption; returns
        the count of polls since the cancel, or None when the CLI should leave without the
        remote ends."""
        if self.watch is not None and not self.interrupted:
            reason = self.watch()
            if reason is not None:
                self.interrupted.append(reason)
        if self.interrupted and cancel_polls == 0:
            self.client.call("exec_cancel", sid=self.sid, timeout_s=self.grace_s)
        if self.interrupted:
            cancel_polls += 1
            if cancel_polls > CANCEL_WAIT_POLLS:
                return None
        return cancel_polls

    def _follow_fed(self, sink, reply):
        """follow() with stdin on a connection of its own: output by the held polls of this one,
        stdin chunks by `exec_input`, each answered once there is room for more (so a slow
        command holds the CLI's reads back), the next chunk read while one travels."""
        import zmq  # (the CLI has it loaded already: the client is a zmq socket)

        if self._feeder is None:
            self._feeder = self.client.twin()
        feeder = self._feeder
        room = reply.get("room", STDIN_CHUNK_BYTES)
        deliver(sink, reply["events"], reply.get("frames", ()))
        done = reply["done"]
        poll_out = feed_out = False
        chunk, stdin_open, eof, eof_sent = None, True, False, False
        cancel_polls = 0
        poll_deadline = feed_deadline = None
        wait_ms = int((POLL_WAIT_S + self.grace_s) * 1000)
        while not done or poll_out:
            if not poll_out:
                cancel_polls = self._stop_asked(cancel_polls)
                if cancel_polls is None:
                    return False
                self.client.begin("exec_poll", sid=self.sid, wait_s=POLL_WAIT_S, raw=True,
                                  timeout_s=POLL_WAIT_S + self.grace_s)
                poll_out, poll_deadline = True, time.monotonic() + wait_ms / 1000
            feeding = not self.interrupted and not eof_sent
            if not feed_out and feeding and (chunk is not None or eof or room <= 0):
                # a chunk (a frame), the end, or (no room) a wait for room
                feeder.begin("exec_input", sid=self.sid, data=chunk, eof=eof, wait_room=True,
                             timeout_s=POLL_WAIT_S + self.grace_s)
                room -= len(chunk or b"")
                chunk, eof_sent = None, eof
                feed_out, feed_deadline = True, time.monotonic() + wait_ms / 1000
            poller = zmq.Poller()
            poller.register(self.client.sock, zmq.POLLIN)
            if feed_out:
                poller.register(feeder.sock, zmq.POLLIN)
            reading = feeding and stdin_open and chunk is None and room > 0
            if reading:
                poller.register(self.stdin_fd, zmq.POLLIN)
            deadline = min(poll_deadline, feed_deadline) if feed_out else poll_deadline
            ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000)) + 1))
            if reading and self.stdin_fd in ready:
                data = read_available(self.stdin_fd, min(room, STDIN_CHUNK_BYTES))
                if data == b"":
                    stdin_open, eof = False, True
                elif data:
                    chunk = data
            if feed_out and (feeder.sock in ready or time.monotonic() >= feed_deadline):
                feed_out = False
                try:
                    room = feeder.finish(0 if feeder.sock not in ready else wait_ms)["room"]
                except ZpeerError as err:
                    if err.code != "bad_request":  # the session just ended: its poll says so
                        raise
                    eof_sent = True
            if self.client.sock in ready or time.monotonic() >= poll_deadline:
                reply = self.client.finish(0 if self.client.sock not in ready else wait_ms)
                poll_out = False
                done = reply["done"]
                deliver(sink, reply["events"], reply.get("frames", ()))
        return True

    def run(self, peers, cmd, sink, timeout=None):
        """Open and follow a session with no stdin, events to sink; {target: exit status}.
        Ctrl-C (KeyboardInterrupt) cancels the remote jobs on its way out."""
        self.open(peers, cmd, timeout=timeout)
        try:
            self.follow(sink)
        except KeyboardInterrupt:
            self.cancel()
            raise
        finally:
            self.close()
        return {t: sink.results.get(t, (EXIT_ZPEER_FAILURE, ""))[0] for t in self.targets}

    def cancel(self):
        """Best-effort cancel when the CLI cannot go on (Ctrl-C, stdout closed)."""
        try:
            self.client.call("exec_cancel", sid=self.sid, timeout_s=2)
        except ZpeerError:
            pass

    def close(self):
        """Close the second connections if they were opened."""
        for name in ("_waker", "_feeder"):
            conn = getattr(self, name)
            if conn is not None:
                conn.close()
                setattr(self, name, None)

    def _wake(self):
        """Cut the session's held poll short (if it fails, the poll ends at its own deadline)."""
        if self._waker is None:
            self._waker = self.client.twin()  # a REQ socket holds one request at a time
        try:
            self._waker.call("exec_wake", sid=self.sid, timeout_s=self.grace_s)
        except ZpeerError:
            pass
