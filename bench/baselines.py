"""What zpeer is compared to, measured in the same run: process spawns, Python's floor, ssh.

ssh runs against a private sshd on a loopback port (own host key, config and authorized key in
a temp dir, key auth as the current user to 127.0.0.1), with and without a ControlMaster.
"""
import getpass
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.cluster import free_port, wait_for
from bench.measure import repeat, run_timed

SSHD = "/usr/sbin/sshd"


def spawn_rows(runs):
    """(name, seconds list) for `sh -c true`, `bash -c true` (what a peer runs), `python -c pass`
    and the import floor."""
    py = sys.executable
    return [
        ("sh_c_true", repeat(lambda: run_timed(["sh", "-c", "true"])[0], runs * 3, warmup=3)),
        ("bash_c_true",
         repeat(lambda: run_timed(["/bin/bash", "-c", "true"])[0], runs * 3, warmup=3)),
        ("python_c_pass", repeat(lambda: run_timed([py, "-c", "pass"])[0], runs, warmup=2)),
        ("import_floor",
         repeat(lambda: run_timed([py, "-c", "import zmq, msgpack, click"])[0], runs, warmup=2)),
    ]


def posix_spawn_s(argv):
    """Seconds to start argv with posix_spawn (stdio on /dev/null, a session of its own) and reap
    it: how a worker starts a command, so the floor of its part of an exec."""
    start = time.perf_counter()
    actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status:
        raise RuntimeError(f"{' '.join(argv)} -> wait status {status}")
    return elapsed


def spawn_many(count):
    """Seconds for one Python process to start `count` `/bin/bash -c true` and reap them all
    (the floor of a fan-out whose peers all live on this machine)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["/bin/bash", "-c", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True) for _ in range(count)]
    for proc in procs:
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return time.perf_counter() - start


def _curve_dealer(ctx, server_public):
    """A DEALER that speaks CURVE to the server with this public key (with a fresh key pair)."""
    import zmq

    public, secret = zmq.curve_keypair()
    dealer = ctx.socket(zmq.DEALER)
    dealer.curve_serverkey = server_public
    dealer.curve_publickey, dealer.curve_secretkey = public, secret
    return dealer


def curve_mb_s(total_bytes, chunk_bytes=256 * 1024):
    """MB/s of CurveZMQ alone: a DEALER streams to a ROUTER over loopback TCP in this process
    (encryption, decryption and libzmq, no zpeer): the ceiling of any stream over the peer link."""
    import threading

    import zmq

    ctx = zmq.Context()
    try:
        server_public, server_secret = zmq.curve_keypair()
        router = ctx.socket(zmq.ROUTER)
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = server_public, server_secret
        dealer = _curve_dealer(ctx, server_public)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        router.recv_multipart()
        chunk, count = os.urandom(chunk_bytes), max(1, total_bytes // chunk_bytes)
        def send_all():
            for _ in range(count):
                dealer.send(chunk, copy=False)
        sender = threading.Thread(target=send_all)
        start = time.perf_counter()
        sender.start()
        for _ in range(count):
            router.recv_multipart(copy=False)
        sender.join()
        return count * chunk_bytes / (time.perf_counter() - start) / 1_000_000
    finally:
        ctx.destroy(0)


_ECHO_SERVER = """
import sys, zmq
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER)
router.curve_server = True
router.curve_publickey, router.curve_secretkey = sys.argv[1].encode(), sys.argv[2].encode()
print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
while True:
    frames = router.recv_multipart()
    if frames[-1] == b"stop":
        break
    router.send_multipart(frames)
"""


class CurveEcho:
    """A CurveZMQ ROUTER echo in another process and a DEALER here, over loopback (libzmq and
    CURVE, no zpeer): `rtt()` times the round trip of one small message, the floor of one hop on
    the peer link. Stop it with close()."""

    def __init__(self):
        import zmq

        self.server_public, server_secret = zmq.curve_keypair()
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER, self.server_public,
                                      server_secret],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.ctx = zmq.Context()
        self.dealer = _curve_dealer(self.ctx, self.server_public)
        self.endpoint = f"tcp://127.0.0.1:{int(self.proc.stdout.readline())}"
        self.dealer.connect(self.endpoint)
        repeat(self.rtt, 0, warmup=20)

    def rtt(self):
        """Seconds for a 100-byte message (about an exec or exit header) to come back."""
        start = time.perf_counter()
        self.dealer.send(b"x" * 100)
        if not self.dealer.poll(5000):
            raise RuntimeError("the CurveZMQ echo did not answer")
        self.dealer.recv()
        return time.perf_counter() - start

    def close(self):
        """Stop the echo process and close the socket."""
        try:
            self.dealer.send(b"stop")
            self.proc.wait(5)
        except Exception:  # noqa: BLE001 - whatever went wrong, the process must not outlive us
            self.proc.kill()
            self.proc.wait()
        finally:
            self.ctx.destroy(0)
            self.proc.stdout.close()


def heartbeat_floor_percent(peers, beat_s, windows):
    """CPU % of one core that the CurveZMQ echo process (libzmq, CURVE and a Python recv/send loop,
    no zpeer) spends answering `peers` DEALERs here that each send a heartbeat-sized message every
    `beat_s`: one figure per (seconds, tick_s) window. The messages due go out together every
    tick_s (0: each at its own time, as independent hosts send them); fewer wake-ups cost less."""
    from bench.cluster import cpu_seconds
    from bench.swarm import _raise_fd_limit

    _raise_fd_limit(2 * peers + 256)  # (the echo process inherits it too)
    echo, dealers, out = CurveEcho(), [], []
    try:
        echo.ctx.max_sockets = peers + 64
        # a worker's hb: signature, header
        beat = [b"ZP\x01", b"\x82\xa1t\xa2hb\xa3rid\xb0" + b"0" * 16]
        for _ in range(peers):
            dealers.append(_curve_dealer(echo.ctx, echo.server_public))
            dealers[-1].connect(echo.endpoint)
            dealers[-1].send_multipart(beat)
        for dealer in dealers:  # every handshake done and answered before a window opens
            if not dealer.poll(30000):
                raise RuntimeError("the CurveZMQ echo did not answer a heartbeat")
            dealer.recv_multipart()
        for seconds, tick_s in windows:
            step_s, sent = tick_s or beat_s / peers, 0
            start, before = time.monotonic(), cpu_seconds(echo.proc.pid)
            while time.monotonic() < start + seconds:
                due = int((time.monotonic() - start) * peers / beat_s) + 1
                for dealer in (dealers[i % peers] for i in range(sent, due)):
                    while dealer.poll(0):  # its previous answer
                        dealer.recv_multipart()
                    dealer.send_multipart(beat)
                sent = max(sent, due)
                # pacing, not a wait for state: the heartbeats are spread over the interval
                elapsed = time.monotonic() - start
                time.sleep(max(0.0, (elapsed // step_s + 1) * step_s - elapsed))
            out.append(100.0 * (cpu_seconds(echo.proc.pid) - before) / (time.monotonic() - start))
        return out
    finally:
        for dealer in dealers:
            dealer.close(0)
        echo.close()


_BARE_CHAIN = """
import os, sys, zmq
ctx = zmq.Context()
# the worker's part: CURVE ROUTER, posix_spawn, waitpid, reply the exit code
if sys.argv[1] == "exec":
    sock = ctx.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = sys.argv[2].encode(), sys.argv[3].encode()
    print(sock.bind_to_random_port("tcp://127.0.0.1"), flush=True)
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    while True:
        frames = sock.recv_multipart()
        if frames[-1] == b"stop":
            break
        pid = os.posix_spawn("/bin/bash", ["/bin/bash", "-c", frames[-1].decode()], os.environ,
                             file_actions=devnull, setsid=True)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        sock.send_multipart(frames[:-1] + [str(code).encode()])
else:  # the leader's part: a ROUTER on IPC for the client, a CURVE DEALER to the exec process
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    front.bind("ipc://" + sys.argv[4])
    back.curve_serverkey = sys.argv[2].encode()
    back.curve_publickey, back.curve_secretkey = zmq.curve_keypair()
    back.connect("tcp://127.0.0.1:" + sys.argv[3])
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    print("ready", flush=True)
    while True:
        for sock, _ in poller.poll():
            if sock is front:
                identity, _, body = front.recv_multipart()
                back.send_multipart([identity, body])
                if body == b"stop":
                    sys.exit(0)
            else:
                identity, code = back.recv_multipart()
                front.send_multipart([identity, b"", code])
"""


class BareChain:
    """api_exec_true's path with no zpeer in it: a REQ client here, a relay process (ROUTER on
    IPC, CURVE DEALER: the leader's part) and an exec process (CURVE ROUTER that posix_spawns
    `/bin/bash -c CMD` and waits for it: the worker's part); 3 processes and 4 hops, as an exec
    through the daemons. `exec_s()` times one command: the floor of this design on this machine,
    with each hop paid as an exec pays it (after the receivers idled through the command). The
    exec process waits with waitpid and captures no output, so it is a lower bound."""

    def __init__(self):
        import zmq

        public, secret = zmq.curve_keypair()
        self.dir = tempfile.mkdtemp(prefix="zpeer-bench-bare-")
        path = os.path.join(self.dir, "relay.ipc")
        self.procs = []
        self.ctx = zmq.Context()
        try:
            worker = self._start("exec", public, secret)
            port = worker.stdout.readline().strip().decode()
            self._start("relay", public, port, path).stdout.readline()
            self.req = self.ctx.socket(zmq.REQ)
            self.req.connect("ipc://" + path)
            repeat(self.exec_s, 0, warmup=10)
        except BaseException:
            self.close()
            raise

    def _start(self, *args):
        """One process of the chain, its stdout a pipe (it says when it is ready)."""
        proc = subprocess.Popen([sys.executable, "-c", _BARE_CHAIN, *args], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def exec_s(self, cmd=b"true"):
        """Seconds for one `bash -c CMD` through the chain, from the request to the exit code."""
        start = time.perf_counter()
        self.req.send(cmd)
        if not self.req.poll(5000):
            raise RuntimeError("the bare chain did not answer")
        code = self.req.recv()
        elapsed = time.perf_counter() - start
        if code != b"0":
            raise RuntimeError(f"bare chain: {cmd!r} exited {code!r}")
        return elapsed

    def close(self):
        """Stop both processes (the relay passes "stop" on) and remove the socket's directory."""
        try:
            if len(self.procs) == 2:
                self.req.send(b"stop")
                for proc in self.procs:
                    proc.wait(5)
        except Exception:  # noqa: BLE001 - whatever went wrong, no process may outlive us
            pass
        finally:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            self.ctx.destroy(0)
            shutil.rmtree(self.dir, ignore_errors=True)


class LocalSsh:
    """A private sshd on 127.0.0.1 and the ssh command lines that reach it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="zpeer-bench-ssh-")
        self.port = free_port()
        self.proc = self.master = None
        self.reason = None

    def start(self):
        """Start sshd; False (with self.reason) when it cannot be had here."""
        if not os.path.exists(SSHD) or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
            self.reason = "no sshd/ssh (apt-get install -y openssh-server openssh-client)"
            return False
        host_key, user_key = os.path.join(self.dir, "host_key"), os.path.join(self.dir, "id")
        for path in (host_key, user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
        shutil.copy(user_key + ".pub", os.path.join(self.dir, "authorized_keys"))
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                    f"AuthorizedKeysFile {self.dir}/authorized_keys\nPidFile {self.dir}/sshd.pid\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                    "PermitRootLogin prohibit-password\nStrictModes no\nUseDNS no\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "sshd.log"), "wb"))
        try:
            wait_for(lambda: self.proc.poll() is not None or self._fresh_ok(), timeout=10,
                     what="sshd")
        except RuntimeError:
            pass
        if self.proc.poll() is not None or not self._fresh_ok():
            with open(os.path.join(self.dir, "sshd.log"), errors="replace") as f:
                self.reason = "sshd did not accept our key: " + f.read()[-300:].strip()
            return False
        return True

    def base(self):
        """ssh options shared by every call (nothing from the user's own ssh config)."""
        return ["ssh", "-F", "/dev/null", "-i", os.path.join(self.dir, "id"), "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def target(self):
        """user@host of the login."""
        return f"{getpass.getuser()}@127.0.0.1"

    def _fresh_ok(self):
        return subprocess.run(self.base() + [self.target(), "true"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=10).returncode == 0

    def fresh(self):
        """Seconds of `ssh host true` over a new connection."""
        return run_timed(self.base() + [self.target(), "true"])[0]

    def start_master(self):
        """A ControlMaster in the foreground, stopped by its handle in close()."""
        path = os.path.join(self.dir, "cm")
        self.cm_opts = ["-o", f"ControlPath={path}"]
        self.master = subprocess.Popen(self.base() + self.cm_opts + ["-M", "-N", self.target()],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(path), timeout=10, what="ssh ControlMaster socket")

    def multiplexed(self):
        """Seconds of `ssh host true` through the ControlMaster."""
        return run_timed(self.base() + self.cm_opts
                         + ["-o", "ControlMaster=no", self.target(), "true"])[0]

    def close(self):
        """Stop the master and sshd by their handles; remove the temp dir."""
        for proc in (self.master, self.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def ssh_rows(runs):
    """[(name, seconds list or None, note)] for ssh fresh and multiplexed."""
    ssh = LocalSsh()
    try:
        if not ssh.start():
            return [("ssh_true", None, ssh.reason), ("ssh_cm_true", None, ssh.reason)]
        fresh = repeat(ssh.fresh, runs, warmup=1)
        ssh.start_master()
        cm = repeat(ssh.multiplexed, runs * 2, warmup=2)
        return [("ssh_true", fresh, "new connection each time"),
                ("ssh_cm_true", cm, "through a ControlMaster")]
    finally:
        ssh.close()

