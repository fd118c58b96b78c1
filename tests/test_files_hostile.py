"""A compromised peer answers a pull with whatever it likes: a raw client (RawPeer: an enrolled
CURVE key, no daemon) speaking the file protocol. Nothing ever lands outside DIR."""
import hashlib
import os
import subprocess
import time

import pytest
from helpers.nodes import Cluster, d_command
from test_security import RawPeer, public_key

from zpeer import filecopy
from zpeer.wire import keys, messages, protocol

HELLO = {"t": "hello", "rid": "m", "id": "mallory", "hostname": "m", "version": "m",
         "role": "worker", "pid": 1}


@pytest.fixture(scope="module")
def mallory(tmp_path_factory):
    """A leader, and mallory: an enrolled peer that is a raw socket."""
    c = Cluster(tmp_path_factory.mktemp("hostile"))
    c.leader()
    raw = RawPeer(c.port, public_key(c.vps), protocol.route_identity("mallory"), "127.0.0.91")
    try:
        raw.send(dict(HELLO, token=keys.parse_token(c.token())["secret"]))
        raw.barrier()
        assert raw.received[-1]["status"] == "accepted", raw.received
        raw.cluster = c
        yield raw
    finally:
        raw.close()
        c.stop()


def entry(path, kind="f", size=0, link=None):
    """A manifest entry as a sender writes it."""
    found = {"p": path, "k": kind, "m": 0o644, "s": size, "t": 10**18, "u": 0, "g": 0,
             "U": "", "G": ""}
    if link is not None:
        found["l"] = link
    return found


def stream(entries, files=()):
    """A forward stream: the manifest, then (index, bytes) files with their right digests."""
    out = [filecopy.pack(["m", entries]), filecopy.pack(["M"])]
    for i, data in files:
        out += [filecopy.pack(["f", i]), filecopy.pack(data),
                filecopy.pack(["e", i, hashlib.sha256(data).digest(), None])]
    return b"".join(out + [filecopy.pack(["q"])])


def pull_from_mallory(raw, dest, answer):
    """Run `d pullFile --peer mallory` on the leader; mallory answers its exec with `answer` on
    the agent's stdout, then exits 0. Returns the CLI's CompletedProcess."""
    c = raw.cluster
    cli = subprocess.Popen(d_command() + ["pullFile", "--peer", "mallory", "--dest", dest,
                                          "/etc/anything"], env=c.vps.env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        beat = 0.0
        while cli.poll() is None and time.monotonic() < deadline:
            if time.monotonic() >= beat:  # stay online for the leader
                raw.send({"t": "hb", "rid": os.urandom(4).hex()})
                beat = time.monotonic() + 0.1
            if not raw.sock.poll(20):
                continue
            header, _ = protocol.decode(raw.sock.recv_multipart())
            if header["t"] == "exec" and header.get("file"):
                origin = header["from"]
                raw.send(messages.output(header["job"], origin, 1, 1, pid=4242), answer)
                raw.send(messages.exit_status(header["job"], origin, 0, "exit", len(answer),
                                              0.1, 1))
        out, err = cli.communicate(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    return cli.returncode, err


CASES = {
    "dotdot": (stream([entry(b"../escape", size=4)], [(0, b"evil")]),
               "Refused the copy from mallory: unsafe name in manifest: ../escape"),
    "absolute": (stream([entry(b"/tmp/escape", size=4)], [(0, b"evil")]),
                 "Refused the copy from mallory: unsafe name in manifest: /tmp/escape"),
    "nul": (stream([entry(b"a\0b", size=4)], [(0, b"evil")]),
            "Refused the copy from mallory: unsafe name in manifest: a\\x00b"),
    "dot": (stream([entry(b"ok", kind="d"), entry(b"ok/./x", size=1)], [(1, b"x")]),
            "Refused the copy from mallory: unsafe name in manifest: ok/./x"),
    "too_much": (stream([entry(b"small", size=4)], [(0, b"evil and much more")]),
                 "Refused the copy from mallory: more data than announced for small"),
    "garbage": (b"\xc1\xc1\xc1 not msgpack",
                "Refused the copy from mallory: malformed stream (FormatError)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_peer_cannot_write_outside_dir(mallory, tmp_path, case):
    answer, message = CASES[case]
    dest = tmp_path / "dest"
    dest.mkdir()
    rc, err = pull_from_mallory(mallory, dest, answer)
    assert rc == 1
    assert err.decode().splitlines()[0] == f"mallory: {message}", err
    assert sorted(os.listdir(tmp_path)) == ["dest"] and os.listdir(dest) == []
    assert not os.path.exists("/tmp/escape")


def test_a_link_it_sends_is_never_followed_by_a_file_it_sends_after(mallory, tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    answer = stream([entry(b"ln", kind="l", link=os.fsencode(outside)),
                     entry(b"ln/evil", size=4), entry(b"ln", kind="d"), entry(b"ln/evil2", size=4),
                     entry(b"new\nline", size=2)],
                    [(1, b"evil"), (3, b"evil"), (4, b"ok")])
    rc, err = pull_from_mallory(mallory, dest, answer)
    assert rc == 1
    assert err.decode().splitlines() == [
        f"mallory: Not a directory: {dest}/ln/evil",
        f"mallory: File exists (not a directory): {dest}/ln"]
    assert os.listdir(outside) == []
    assert sorted(os.listdir(dest)) == ["ln", "new\nline"]  # a newline is a name like any
    assert os.readlink(dest / "ln") == str(outside)
    assert (dest / "new\nline").read_bytes() == b"ok"
