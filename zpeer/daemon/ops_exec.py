"""CLI requests of an exec session: open, poll (with stdin), wake, cancel (zpeer.daemon.origin
holds the sessions)."""
from zpeer import filecopy
from zpeer.daemon.fields import arg
from zpeer.daemon.origin import STDIN_WINDOW_BYTES
from zpeer.daemon.process import exec_env
from zpeer.errors import BadRequest, NotConfigured, ZpeerError
from zpeer.targets import needs_known, peer_names, resolve_targets
from zpeer.wire import protocol

# the spec fields that name something on the target, and how the CLI's flags call them
NAMED_FIELDS = (("cmd", "command", "shellCmd"), ("dir", "directory", "directory"),
                ("user", "user", "user"))


class ExecOps:
    """execOnPeer's requests."""

    def __init__(self, node):
        self.node = node

    def op_exec_open(self, identity, header):
        """execOnPeer: resolve targets and open a session. With a wait_s, the request is also
        the session's first poll (one round trip for a short command)."""
        requested = arg(header, "targets", list, required=True)
        if not all(isinstance(t, str) for t in requested):
            raise BadRequest("no --peer given")
        names = peer_names(requested)
        if not names:  # `--peer "$P"` with P unset must not "succeed" at running nothing
            raise BadRequest("No peer given: --peer is empty")
        spec = _spec(header)
        batch = arg(header, "batch", int, 0)
        pid = arg(header, "pid", int, 0)
        wait_s = arg(header, "wait_s", (int, float))
        reply = (identity, header["rid"], wait_s, bool(header.get("raw")))
        if self.node.id is None:
            raise NotConfigured("This node has no id yet")
        exclude = arg(header, "exclude", list, [])
        if not needs_known(names):  # named targets need no registry read
            return self._open(spec, resolve_targets(requested, [], exclude), batch, pid, reply)

        def expand(known, error):  # `all` or a pattern: matched against the fleet's ids
            try:
                if error is not None:
                    raise error
                opened = self._open(spec, resolve_targets(requested, known, exclude), batch, pid,
                                    reply)
            except ZpeerError as exc:
                opened = exc.to_reply()
            if opened is not None:
                self.node.reply(identity, header["rid"], opened)
        self.node.link.known_ids(expand)
        return None

    def _open(self, spec, targets, batch, pid, reply):
        """Open the session; unreachable targets fail at once. Answered now, or (with a
        wait) held as the session's first poll (None returned)."""
        node = self.node
        if spec.get("pty") is not None and len(targets) != 1:
            raise BadRequest("A pseudo-terminal runs on one peer only, not "
                             f"{len(targets)}: drop -t to run on several")
        spec["fanout"] = len(targets)
        failures = node.link.precheck(targets)
        # stdin_frame: polls may bring their stdin as a frame of their own (no copy on either side)
        opened = {"targets": targets, "room": STDIN_WINDOW_BYTES, "stdin_frame": True}
        identity, rid, wait_s, raw = reply
        first_poll = None if wait_s is None else (identity, rid, float(wait_s), raw, opened)
        sid, actions = node.sessions.open(spec, targets, batch, pid, failures, first_poll)
        node.dispatch(actions)
        return dict(opened, sid=sid) if wait_s is None else None

    def op_exec_poll(self, identity, header):
        """Long poll for a session's next output (and carry stdin: in the request's data
        frame, or in its map from an older CLI)."""
        stdin = header.get("data")
        if stdin is None:
            stdin = header.get("stdin")
            if stdin is not None and not isinstance(stdin, bytes):
                raise BadRequest("stdin must be bytes")
        self.node.dispatch(self.node.sessions.poll(
            arg(header, "sid", str, required=True), identity, header["rid"], stdin,
            bool(header.get("eof")), float(arg(header, "wait_s", (int, float), 0.5)),
            bool(header.get("need_room")), bool(header.get("raw"))))

    def op_exec_input(self, identity, header):
        """A CLI's stdin (keystrokes, a stream: in the data frame or the map) and window size,
        sent at once while its poll waits for output; with wait_room, answered once more may
        go."""
        stdin = header.get("data")
        if stdin is None:
            stdin = header.get("stdin")
            if stdin is not None and not isinstance(stdin, bytes):
                raise BadRequest("stdin must be bytes")
        size = header.get("size")
        if size is not None:
            if not (isinstance(size, list) and len(size) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) for n in size)):
                raise BadRequest("size must be [rows, cols]")
            size = tuple(size)
        self.node.dispatch(self.node.sessions.feed(
            arg(header, "sid", str, required=True), identity, header["rid"], stdin,
            bool(header.get("eof")), size, bool(header.get("wait_room"))))

    def op_exec_wake(self, identity, header):
        """The CLI's stdin has bytes while its poll waits for output: end that poll now."""
        self.node.dispatch(self.node.sessions.wake(arg(header, "sid", str, required=True)))
        return {"ok": True}

    def op_exec_cancel(self, identity, header):
        """Ctrl-C: kill the session's remote jobs."""
        self.node.dispatch(self.node.sessions.cancel(arg(header, "sid", str, required=True)))
        return {"ok": True}


def _spec(header):
    """What the exec runs, checked: no NUL where the OS would refuse one, nothing empty that
    would silently mean a default (but a login's empty command: its shell, as ssh without one)."""
    spec = {"cmd": arg(header, "cmd", (str, bytes), required=True),
            "dir": arg(header, "dir", (str, bytes)),
            "user": arg(header, "user", str), "timeout": arg(header, "timeout", (int, float)),
            "stdin": bool(header.get("stdin")), "ouser": arg(header, "ouser", str)}
    copy = arg(header, "file", dict)
    if copy is not None:  # the file agent runs, not a shell (zpeer.filecopy)
        spec["file"] = filecopy.check_spec(copy)
    pty = arg(header, "pty", dict)
    if pty is not None:  # a pseudo-terminal: its type and size (the target checks them)
        spec["pty"] = {"term": str(pty.get("term") or "dumb"), "rows": pty.get("rows"),
                       "cols": pty.get("cols")}
    # as sshd runs a session (zpeer-ssh): the user's shell, with these variables set
    login = header.get("login") is True
    if login:
        spec["login"] = True
    if header.get("env"):
        spec["env"] = exec_env(header["env"])
    for name in ("cmd", "dir", "user", "ouser"):
        if spec[name] and protocol.has_nul(spec[name]):  # execve/chdir/getpwnam raise on NUL
            raise BadRequest(f"--{name} contains a NUL byte")
    for name, what, flag in NAMED_FIELDS:
        # `--directory "$D"` with D unset: not home
        if spec[name] is not None and not spec[name] and not (login and name == "cmd"):
            raise BadRequest(f"No {what} given: --{flag} is empty")
    return spec
