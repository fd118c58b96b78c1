"""Node state directory, persisted configuration and address parsing.

The configuration is a small JSON file (`config.json` in ZPEER_HOME) written atomically by the
CLI (`d setPeerConfig`, `d registerWorker`), so it works whether or not the daemon runs; a running
daemon is told to reload it over the IPC socket. This module imports nothing heavy: the CLI uses it.
"""
import errno
import json
import os
import stat

from zpeer.errors import BadConfig, BadHome

DEFAULT_PORT = 3520
DEFAULT_BIND = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
# Heartbeats per second the leader takes from the whole fleet: a larger fleet is told to beat less
# often (as Consul stretches its TTLs), so that an idle fleet's cost to the leader stays flat.
DEFAULT_HEARTBEAT_BUDGET_PER_S = 350
HEARTBEAT_RANGE_S = (0.05, 60)
HEARTBEAT_BUDGET_RANGE = (1, 1000000)
# Audit rows a leader keeps for `d history` (0: all): about 110 bytes each on disk, so 100,000 rows
# (a month of a 300-peer fleet polled hourly) take some 11 MB and `d history` stays fast.
DEFAULT_HISTORY_ROWS = 100_000
HISTORY_ROWS_RANGE = (0, 1_000_000_000)
JOIN_TOKENS_MAX = 10_000  # `d joinToken --count N`: a fleet's worth in one call
CONFIG_FILE = "config.json"
SOCKET_FILE = "d.sock"
DB_FILE = "zpeer.db"
PEERS_CACHE_FILE = "peers.cache"
PID_FILE = "daemon.pid"

ROLES = ("leader", "worker")

# Keys a user may set with `d setPeerConfig`; everything else in the file is managed state.
DEFAULTS = {
    "role": None,
    "id": None,
    "bind": DEFAULT_BIND,
    "advertise": None,
    "leader": None,
    "leader_key": None,
    "source_ip": None,
    "group": None,
    "heartbeat_s": DEFAULT_HEARTBEAT_INTERVAL_S,
    "heartbeat_budget": DEFAULT_HEARTBEAT_BUDGET_PER_S,
    "history_rows": DEFAULT_HISTORY_ROWS,
    "record_sessions": False,  # leader: asciicast recordings of pty sessions (zpeer.daemon.casts)
    "repo": None,
    "pull_cmd": None,
    "build_cmd": None,
    "restart_cmd": None,
    "token": None,
}


def default_home():
    """The SPEC default state directory: /var/lib/zpeer for root, else XDG state dir."""
    if os.geteuid() == 0:
        return "/var/lib/zpeer"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "zpeer")


def home_dir():
    """The node's state directory: $ZPEER_HOME or the default."""
    return os.path.abspath(os.environ.get("ZPEER_HOME") or default_home())


def ensure_home(path=None):
    """Create the state directory with mode 0700; close it to others if it was opened up.

    Group bits are left alone: `--group` gives a group traverse access (0710) to reach d.sock.
    """
    path = path or home_dir()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:  # a file, or a link to one
        raise BadHome(path, os.strerror(errno.ENOTDIR)) from None
    except OSError as exc:
        raise BadHome(path, exc.strerror) from None
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o007 and os.stat(path).st_uid == os.geteuid():
        os.chmod(path, mode & 0o770)
    return path


def check_home_is_ours(path):
    """A daemon's state directory must be its user's alone to write: another user who could
    write there could plant what the daemon (often root) reads and runs (jobs.journal,
    config.json, a link where a file is written). BadHome otherwise."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(path)  # a link to the directory: what counts is the directory
    if st.st_uid != os.geteuid():
        raise BadHome(path, f"it belongs to uid {st.st_uid}, not to this daemon's user (uid "
                            f"{os.geteuid()}); chown it, or give the daemon a directory of its own")
    if st.st_mode & 0o022:
        raise BadHome(path, f"its group or others may write in it (mode "
                            f"{st.st_mode & 0o777:04o}); chmod go-w it")


def lock_home(home):
    """One daemon per ZPEER_HOME: an exclusive lock on daemon.pid, held by the returned fd."""
    import fcntl

    from zpeer.errors import Busy

    fd = os.open(path_in_home(PID_FILE, home),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Busy(f"Another daemon already runs for {home} (pid {other})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def path_in_home(name, home=None):
    """Path of a file in the state directory."""
    return os.path.join(home or home_dir(), name)


def socket_path(home=None):
    """Path of the CLI's IPC socket."""
    return path_in_home(SOCKET_FILE, home)


SOCKET_PATH_MAX = 107  # a Unix socket's path: sockaddr_un.sun_path (108 bytes) holds it and a NUL


def socket_path_too_long(path):
    """Why the CLI socket cannot live at path (it is too long for a Unix socket), or None."""
    size = len(os.fsencode(path))
    if size <= SOCKET_PATH_MAX:
        return None
    return (f"ZPEER_HOME is too deep for the CLI's socket: {path} has {size} characters, "
            f"a Unix socket's path at most {SOCKET_PATH_MAX}")


UNREADABLE_CONFIG_HINT = ("fix the file, or remove it and set this node up again "
                          "(`d setPeerConfig`, `d registerWorker`)")


def load(home=None, check=True):
    """Read the configuration, filling defaults for missing keys. BadConfig if the file is not a
    JSON object or (check) holds a value zpeer cannot use."""
    cfg = dict(DEFAULTS)
    path = path_in_home(CONFIG_FILE, home)
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except FileNotFoundError:
        return cfg
    except NotADirectoryError as exc:
        raise BadHome(home or home_dir(), exc.strerror) from None
    # a --group member: the socket is open to them, the settings are not
    except PermissionError as exc:
        raise BadHome(home or home_dir(), f"{CONFIG_FILE}: {exc.strerror}",
                      "this node's settings are its "
                      "owner's: run the command as that user (e.g. `sudo d ...`)") from None
    except (OSError, ValueError) as exc:
        reason = f"not JSON: {exc}" if isinstance(exc, ValueError) else exc.strerror
        raise BadConfig(path, reason, UNREADABLE_CONFIG_HINT) from None
    if not isinstance(stored, dict):
        raise BadConfig(path, "not a JSON object", UNREADABLE_CONFIG_HINT)
    cfg.update({k: v for k, v in stored.items() if k in DEFAULTS})
    problem = check and config_problem(cfg)
    if problem:
        raise BadConfig(path, problem)
    return cfg


def config_problem(cfg):
    """What in cfg zpeer cannot use (a hand edit of config.json), or None."""
    low, high = HEARTBEAT_RANGE_S
    beat = cfg["heartbeat_s"]
    if isinstance(beat, bool) or not isinstance(beat, (int, float)) or not low <= beat <= high:
        return f"heartbeat_s must be a number of seconds from {low} to {high}, not {beat!r}"
    for name, (low, high) in (("heartbeat_budget", HEARTBEAT_BUDGET_RANGE),
                              ("history_rows", HISTORY_ROWS_RANGE)):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"{name} must be a whole number from {low} to {high}, not {value!r}"
    if not isinstance(cfg["record_sessions"], bool):
        return f"record_sessions must be true or false, not {cfg['record_sessions']!r}"
    if cfg["role"] not in (None,) + ROLES:
        return f"role must be leader or worker, not {cfg['role']!r}"
    if cfg["id"] is not None and not valid_peer_id(cfg["id"], new=False):
        return f"invalid peer id {cfg['id']!r}"
    for name in ("bind", "leader"):
        if cfg[name] is not None:
            try:
                if not isinstance(cfg[name], str):
                    raise ValueError("not HOST[:PORT]")
                split_host_port(cfg[name])
            except ValueError as exc:
                return f"{name} {cfg[name]!r}: {exc}"
    for name in ("advertise", "leader_key", "source_ip", "group", "repo", "pull_cmd", "build_cmd",
                 "restart_cmd", "token"):
        if cfg[name] is not None and not isinstance(cfg[name], str):
            return f"{name} must be a string, not {cfg[name]!r}"
    for name in ("advertise", "source_ip"):
        if cfg[name] is not None and not valid_ip(cfg[name]):
            return f"{name} {cfg[name]!r}: not an IP address"
    return None


def valid_ip(text):
    """True for an IPv4 or IPv6 address (what --source-ip and --advertise take)."""
    import ipaddress  # here, not at the top: only a config that names one pays for it

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def save(cfg, home=None):
    """Write the configuration atomically, mode 0600."""
    text = json.dumps({k: cfg.get(k) for k in DEFAULTS}, indent=1, sort_keys=True) + "\n"
    write_private(path_in_home(CONFIG_FILE, ensure_home(home)), text.encode())


def open_private(path, append=False, mode=0o600):
    """Open a file of this node's state for writing (created with `mode`, appended to or
    truncated), never through a symbolic link: a link planted under its name is removed, and
    a new file made in its place."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
             | (os.O_APPEND if append else os.O_TRUNC))
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    os.unlink(path)  # the link, not what it points to
    return os.open(path, flags | os.O_EXCL, mode)


def write_private(path, data, mode=0o600):
    """Write a file of this node's state atomically (temp file + rename: a crash leaves the old
    or the new one), `mode` from its creation, never through a link."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with os.fdopen(open_private(tmp, mode=mode), "wb") as f:
        os.fchmod(f.fileno(), mode)  # whatever the umask
        f.write(data)
    os.replace(tmp, path)


def update(changes, home=None):
    """Apply `changes` (None values are ignored) to the stored configuration and return it; a
    value that a hand edit broke can be set again this way (BadConfig if one is still bad)."""
    cfg = load(home, check=False)
    cfg.update({k: v for k, v in changes.items() if v is not None})
    problem = config_problem(cfg)
    if problem:
        raise BadConfig(path_in_home(CONFIG_FILE, home), problem)
    save(cfg, home)
    return cfg


def split_host_port(text, default_port=DEFAULT_PORT):
    """Parse `HOST` or `HOST:PORT` (IPv6 as `[::1]:PORT`) into (host, port)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in {text!r}")
        return host, int(port)
    return host, default_port


def join_host_port(host, port):
    """Inverse of split_host_port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_endpoint(host, port):
    """A ZeroMQ TCP endpoint for host/port (IPv6 in brackets)."""
    return f"tcp://{join_host_port(host, port)}"


def default_peer_id():
    """The hostname's first label: the default peer id."""
    import socket  # here, not at the top: the CLI imports this module on every command

    return socket.gethostname().split(".")[0] or "peer"


PEER_ID_RULE = ("ASCII letters, digits, '-', '_', '.', starting with a letter or digit; "
                "at most 64; not 'all'")


def valid_peer_id(peer_id, new=True):
    """Peer ids are short printable words (no spaces, commas or colons: they appear in prefixes).

    A new id starts with a letter or digit, as a hostname does, so that `d acceptPeer ID` or
    `ssh`-style scripts never read it as an option, and is ASCII, as a hostname is, so that no
    id can pass for another one (a Cyrillic 'р' in 'vрs'); ids enrolled before keep working."""
    return (isinstance(peer_id, str) and 0 < len(peer_id) <= 64 and peer_id != "all"
            and all(c.isalnum() or c in "-_." for c in peer_id)
            and (not new or (peer_id[0].isalnum() and peer_id.isascii())))
