"""One root exception with stable codes; the CLI maps codes to SPEC messages and exit codes.

Daemons raise `ZpeerError` subclasses; the IPC boundary turns them into
`{"err": code, "msg": text, "hint": hint}` replies and the CLI renders them.
"""

EXIT_ZPEER_FAILURE = 255  # like ssh: zpeer's own failure, not the remote command's
EXIT_USAGE = 2

HINT_PEER_NOT_FOUND = ("run `d listPeers`; the peer must register with the leader first "
                       "(`d registerWorker` on that peer)")
HINT_FAILED_TO_CONNECT = ("is `d daemon` running for this ZPEER_HOME? check `systemctl status "
                          "zpeer`, `wg show`, `ping LEADER`")
HINT_NOT_CONNECTED = ("the local daemon runs but has no link to its leader: check `d "
                      "getPeerStatus`, `wg show`, `ping LEADER`, or restart the daemon")


class ZpeerError(Exception):
    """Root of every zpeer failure; `code` is stable and travels over the wire."""

    code = "internal"
    exit_code = EXIT_ZPEER_FAILURE
    hint = ""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def to_reply(self):
        """Encode for an IPC or peer reply."""
        return {"err": self.code, "msg": self.message, "hint": self.hint}


class PeerNotFound(ZpeerError):
    """The registry has no peer with that id (or IP)."""

    code = "peer_not_found"
    hint = HINT_PEER_NOT_FOUND

    def __init__(self, peer_id, hint=None):
        super().__init__(f"Peer not found: {peer_id}", hint)


class PeerOffline(ZpeerError):
    """The registry knows the peer but it is not connected."""

    code = "peer_offline"
    hint = "the peer's daemon is not connected to the leader: check it with `d listPeers`"


class FailedToConnect(ZpeerError):
    """The local daemon (or the leader behind it) cannot be reached."""

    code = "failed_to_connect"
    hint = HINT_FAILED_TO_CONNECT

    def __init__(self, message="Failed to connect", hint=None):
        super().__init__(message, hint)


class NotConnected(ZpeerError):
    """A worker daemon runs but its leader link is down."""

    code = "not_connected"
    hint = HINT_NOT_CONNECTED

    def __init__(self, message="Not connected to leader", hint=None):
        super().__init__(message, hint)


class DirectoryNotFound(ZpeerError):
    """The --directory of an exec does not exist on the target."""

    code = "dir_not_found"


class DirectoryDenied(ZpeerError):
    """The --user of an exec cannot enter its --directory on the target."""

    code = "dir_denied"


class KeyMismatch(ZpeerError):
    """The leader presented another key than the pinned one."""

    code = "key_mismatch"
    hint = ("the leader's key is not the one this worker pinned; if the leader was re-keyed, "
            "enrol again with a new `d joinToken`")


class NotAuthorized(ZpeerError):
    """The peer's key is pending, removed or unknown to the leader."""

    code = "not_authorized"
    hint = "run `d acceptPeer ID` on the leader, or register with a token from `d joinToken`"


class NotAllowed(ZpeerError):
    """The leader's access policy refuses the request (`d policy`)."""

    code = "not_allowed"
    hint = "the leader's access policy refuses it: `d policy` on the leader shows the rules"


class TooManyJobs(ZpeerError):
    """A peer has as many commands running through the leader as it may have at once."""

    code = "too_many_jobs"
    hint = "wait for some of them to end (`d history` shows what runs)"


class QueueFull(ZpeerError):
    """The leader holds as much as it may for a peer (or for all): a job's data did not fit."""

    code = "queue_full"
    hint = ("the peer takes data slower than it is sent to it: check its link (`d listPeers`, "
            "`ping`), then run the command again")


class InvalidToken(ZpeerError):
    """A join token that is malformed, expired, already used or forged."""

    code = "invalid_token"
    exit_code = EXIT_USAGE


class NotLeader(ZpeerError):
    """A leader-only command was sent to a worker or an unconfigured node."""

    code = "not_leader"
    hint = "run it on the leader, or make this node one: `d setPeerConfig --role leader --id ID`"


class NotConfigured(ZpeerError):
    """The node has no role yet."""

    code = "not_configured"
    exit_code = EXIT_USAGE
    hint = "`d setPeerConfig --role leader --id ID` or `d registerWorker --token TOKEN`"


class BadRequest(ZpeerError):
    """A request with missing or malformed fields."""

    code = "bad_request"


class RequestTimeout(ZpeerError):
    """A request got no answer before its deadline."""

    code = "timeout"


class TooLate(ZpeerError):
    """An exec reached its target after the time its origin waits for a sign of it: it is not
    started, so a command the CLI gave up on never runs later."""

    code = "too_late"
    hint = ("nothing ran: the link to that peer is slow or was interrupted; run the command again "
            "(`d listPeers` shows whether the peer is online)")


class ExitLost(ZpeerError):
    """The command ran but its exit status was reaped by something else in the daemon."""

    code = "exit_lost"
    hint = "the command did run; something in the daemon's process reaped it (see the daemon's log)"


class BindFailed(ZpeerError):
    """The leader cannot listen on its --bind address (port taken, address not this host's)."""

    code = "bind_failed"
    hint = ("another process may hold the port (`ss -ltnp`), or the address is not one of this "
            "host's (`ip addr`; WireGuard up?): fix it with `d setPeerConfig --bind HOST:PORT`")


class OutputFailed(ZpeerError):
    """The CLI cannot write what it got: stdout or stderr on a full disk, closed, or failing."""

    code = "output_failed"

    def __init__(self, reason):
        super().__init__(f"Cannot write the output: {reason}")


class _AtPath(ZpeerError):
    """A file or directory of this node that zpeer cannot use: `form` says which, with why."""

    form = "{path}: {reason}"

    def __init__(self, path, reason, hint=None):
        self.path, self.reason = path, str(reason)
        super().__init__(self.form.format(path=path, reason=reason), hint)


class BadConfig(_AtPath):
    """config.json is not JSON, or holds a value zpeer cannot use (a hand edit)."""

    code = "bad_config"
    form = "Bad configuration in {path}: {reason}"
    hint = "set it again with `d setPeerConfig` (see `d setPeerConfig --help`), or edit the file"


class BadDatabase(_AtPath):
    """The node's SQLite file is damaged or is not a database."""

    code = "bad_database"
    form = "Bad database {path}: {reason}"

    def __init__(self, path, reason, hint=None):
        super().__init__(path, reason, hint or (
            f"restore it from a backup, or move it away (`mv {path} {path}.bad`) to start with an "
            "empty registry: every worker must then enrol again (`d joinToken`)"))


class BadHome(_AtPath):
    """ZPEER_HOME cannot be the node's state directory (a file, not creatable)."""

    code = "bad_home"
    form = "Cannot use ZPEER_HOME {path}: {reason}"
    hint = "ZPEER_HOME names the node's state directory: point it at a directory (or at none)"


class BadKey(_AtPath):
    """The node's CURVE secret key file is damaged."""

    code = "bad_key"
    form = "Bad key file {path}: {reason}"
    hint = ("restore it from a backup, or remove it and curve.pub to make a new key pair: a new "
            "key is a new identity (a worker enrols again; a leader's workers all do)")


class Busy(ZpeerError):
    """Another daemon already serves this ZPEER_HOME."""

    code = "busy"


class NoRecording(ZpeerError):
    """`d history --replay JOB`: the leader has no recording of that job (exit 1, as a lookup
    that finds nothing)."""

    code = "no_recording"
    exit_code = 1


_BY_CODE = {cls.code: cls for cls in (
    ZpeerError, PeerNotFound, PeerOffline, FailedToConnect, NotConnected, DirectoryNotFound,
    DirectoryDenied, KeyMismatch, NotAuthorized, NotAllowed, InvalidToken, NotLeader,
    NotConfigured, BadRequest, RequestTimeout, TooLate, ExitLost, BindFailed, OutputFailed,
    BadConfig, BadDatabase, BadHome, BadKey, Busy, NoRecording, TooManyJobs, QueueFull)}


def from_reply(reply):
    """Rebuild the exception a daemon encoded with `to_reply`."""
    cls = _BY_CODE.get(reply.get("err"), ZpeerError)
    err = ZpeerError.__new__(cls)
    ZpeerError.__init__(err, str(reply.get("msg") or reply.get("err")),
                        reply.get("hint") or cls.hint)
    return err
