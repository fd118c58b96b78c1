"""Standard streams of any kind for `d execOnPeer`: pipes, sockets, files, terminals, /dev/null,
closed, blocking or O_NONBLOCK (rsync hands its ssh non-blocking ones), for stdin, stdout and
stderr. Every byte arrives, or the call fails clearly with 255; a short write is never taken as
done."""
import fcntl
import hashlib
import os
import pty
import socket
import subprocess
import termios
import threading
import time

import pytest
from helpers.nodes import d_command

SIZE = 30_000_000
# the remote output: deterministic, so the local copy is made without a second remote run
PRODUCE = f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {SIZE}"
EXPECTED = hashlib.sha256((b"0123456789abcdefghijklmnopqrstuvwxyz\n" * (SIZE // 37 + 1))[:SIZE])


def nonblocking(fd):
    """Set O_NONBLOCK on fd, as a parent that shares it with an event loop does."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def slow_reader(fd, into):
    """Read fd to its end in small bites with pauses, so its writer finds it full again and
    again (the pace of a slow consumer, not a wait for state)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        if not chunk:
            return
        into.update(chunk)
        time.sleep(0.0005)


def run_d(node, args, **popen):
    """`d ARGS` started on node with the given standard streams (Popen keywords)."""
    return subprocess.Popen(d_command() + args, env=node.env, **popen)


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_a_nonblocking_stdout_with_a_slow_reader_gets_every_byte(shared_cluster, kind):
    if kind == "pipe":
        read_end, write_end = os.pipe()
    else:
        a, b = socket.socketpair()
        read_end, write_end = os.dup(a.fileno()), os.dup(b.fileno())
        a.close()
        b.close()
    nonblocking(write_end)
    got = hashlib.sha256()
    reader = threading.Thread(target=slow_reader, args=(read_end, got))
    reader.start()
    proc = run_d(shared_cluster.desktop, ["execOnPeer", "--peer", "laptop", "--shellCmd", PRODUCE],
                 stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    err = proc.stderr.read()
    assert proc.wait(60) == 0, err
    reader.join(60)
    os.close(read_end)
    assert (err, got.hexdigest()) == (b"", EXPECTED.hexdigest())


def test_a_nonblocking_stderr_gets_every_byte_too(shared_cluster):
    read_end, write_end = os.pipe()
    nonblocking(write_end)
    got = hashlib.sha256()
    reader = threading.Thread(target=slow_reader, args=(read_end, got))
    reader.start()
    proc = run_d(shared_cluster.desktop, ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                          f"{PRODUCE} >&2"],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    assert proc.wait(60) == 0
    reader.join(60)
    os.close(read_end)
    assert got.hexdigest() == EXPECTED.hexdigest()


def test_stdout_to_a_file_or_dev_null(shared_cluster, tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as f:
        proc = run_d(shared_cluster.desktop, ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                              PRODUCE], stdin=subprocess.DEVNULL, stdout=f)
        assert proc.wait(60) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == EXPECTED.hexdigest()
    proc = run_d(shared_cluster.desktop, ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                          PRODUCE], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert (proc.wait(60), proc.stderr.read()) == (0, b"")


def test_stdout_to_a_terminal(shared_cluster):
    leader, follower = pty.openpty()
    attrs = termios.tcgetattr(follower)
    attrs[1] &= ~termios.OPOST  # the bytes as sent, no \r added
    termios.tcsetattr(follower, termios.TCSANOW, attrs)
    got = hashlib.sha256()
    proc = run_d(shared_cluster.desktop, ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                          "head -c 3000000 /dev/zero"],
                 stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    total = 0
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        total += len(chunk)
        got.update(chunk)
    os.close(leader)
    assert proc.wait(60) == 0, proc.stderr.read()
    assert (total, got.hexdigest()) == (3_000_000, hashlib.sha256(b"\0" * 3_000_000).hexdigest())


def feeder(fd, data):
    """Write data into fd in pieces with pauses (a producer slower than the command)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view[:65536]):]
        except BlockingIOError:
            time.sleep(0.001)
            continue
        time.sleep(0.0002)
    os.close(fd)


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_a_nonblocking_stdin_fed_slowly_arrives_whole(shared_cluster, kind):
    data = os.urandom(3_000_000)
    if kind == "pipe":
        read_end, write_end = os.pipe()
    else:
        a, b = socket.socketpair()
        read_end, write_end = os.dup(a.fileno()), os.dup(b.fileno())
        a.close()
        b.close()
        socket.socket(fileno=os.dup(read_end)).shutdown(socket.SHUT_WR)  # one way only
    nonblocking(read_end)
    writer = threading.Thread(target=feeder, args=(write_end, data))
    writer.start()
    proc = run_d(shared_cluster.desktop, ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                          "sha256sum"],
                 stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(read_end)
    out, err = proc.communicate(timeout=60)
    writer.join(60)
    assert (proc.returncode, err) == (0, b"")
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdin_from_a_file_dev_null_or_closed(shared_cluster, tmp_path):
    data = os.urandom(2_000_000)
    path = tmp_path / "in"
    path.write_bytes(data)
    node = shared_cluster.desktop
    with open(path, "rb") as f:
        out = subprocess.run(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                            "sha256sum"], env=node.env, stdin=f,
                             capture_output=True, timeout=60)
    assert out.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    for stdin in (subprocess.DEVNULL, "closed"):
        argv = d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd", "wc -c"]
        if stdin == "closed":
            argv = ["bash", "-c", '"$@" <&-', "bash"] + argv
            stdin = None
        out = subprocess.run(argv, env=node.env, stdin=stdin, capture_output=True, timeout=60)
        assert (out.returncode, out.stdout, out.stderr) == (0, b"0\n", b""), stdin
