"""d pushFile and d pullFile on real daemons: trees kept entry by entry, reruns that rewrite
nothing, fan-out, a full disk, symbolic links on the target, Ctrl-C, the access policy."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest
from helpers.nodes import d_command, wait_for

from zpeer import filecopy
from zpeer.daemon.origin import OriginSessions

OLD_NS = 1_500_000_000_123_456_789  # 2017: far from now, with nanoseconds


def make_tree(root):
    """A tree with modes, times, owners, links, spaces, a non-UTF-8 name, an empty dir."""
    top = os.path.join(root, b"tree")
    os.makedirs(os.path.join(top, b"sub dir", b"deep"))
    os.mkdir(os.path.join(top, b"empty"))
    files = {b"plain.txt": (b"hello\n", 0o644), b"run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
             b"secret": (b"s" * 5000, 0o600), b"caf\xe9 latin1": (b"\xff\xfe", 0o640),
             b"sub dir/with space.bin": (os.urandom(300_000), 0o664),
             b"sub dir/deep/empty": (b"", 0o444), b"sub dir/setuid": (b"x", 0o4755)}
    for name, (data, mode) in files.items():
        path = os.path.join(top, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    os.symlink(b"plain.txt", os.path.join(top, b"rel link"))
    os.symlink(b"/nonexistent/dangling", os.path.join(top, b"sub dir", b"abs link"))
    os.chown(os.path.join(top, b"secret"), 4242, 4343)
    os.lchown(os.path.join(top, b"rel link"), 4242, 4343)
    os.chmod(os.path.join(top, b"sub dir", b"deep"), 0o750)
    for n, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(top), reverse=True)):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(OLD_NS, OLD_NS + n), follow_symlinks=False)
        os.utime(dirpath, ns=(OLD_NS, OLD_NS - n))
    return top


def entries(top):
    """{relative path: what a copy must keep} of a tree, links not followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames + ([b"."] if dirpath == top else []):
            path = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(path)
            kind = ("l" if os.path.islink(path) else "d" if os.path.isdir(path) else "f")
            what = (os.readlink(path) if kind == "l" else
                    hashlib.sha256(open(path, "rb").read()).hexdigest() if kind == "f" else None)
            mode = None if kind == "l" else st.st_mode & 0o7777
            found[os.path.relpath(path, top)] = (kind, mode, st.st_mtime_ns, st.st_uid,
                                                 st.st_gid, what)
    return found


def inodes(top):
    """{relative path: inode} of a tree."""
    return {rel: os.lstat(os.path.join(top, rel)).st_ino for rel in entries(top)}


def leftovers(top):
    """Temporary files a copy left anywhere under top."""
    return [os.path.join(d, n) for d, _, names in os.walk(top) for n in names
            if b".zpeer-" in os.fsencode(n)]


def test_push_then_pull_keep_a_tree_entry_by_entry_and_a_rerun_rewrites_nothing(
        shared_cluster, tmp_path):
    c = shared_cluster
    src = make_tree(os.fsencode(tmp_path / "src"))
    dest = os.fsencode(tmp_path / "dest")
    os.mkdir(dest)
    out = c.desktop.d("pushFile", "--peer", "laptop", "--dest", dest, src)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    assert entries(os.path.join(dest, b"tree")) == entries(src)
    before = inodes(os.path.join(dest, b"tree"))
    for flags in ([], ["--checksum"]):
        again = c.desktop.d("pushFile", "--peer", "laptop", "--dest", dest, *flags, src,
                            "--json", check=0)
        events = [json.loads(line) for line in again.stdout.splitlines()]
        assert [e["event"] for e in events] == ["start", "done"], events
        assert events[-1]["written"] == 0 and events[-1]["skipped"] == 7, events
    assert inodes(os.path.join(dest, b"tree")) == before
    assert entries(os.path.join(dest, b"tree")) == entries(src)
    pulled = os.fsencode(tmp_path / "pulled")
    out = c.vps.d("pullFile", "--peer", "laptop", "--dest", pulled, os.path.join(dest, b"tree"))
    assert (out.returncode, out.stderr) == (0, b"")
    assert entries(pulled) == entries(src)  # a missing DIR becomes the one source, as cp
    assert leftovers(tmp_path) == []
    rows = json.loads(c.vps.d("history", "--json", "--peer", "laptop", check=0).stdout)
    assert any(r["command"].startswith("pushFile -> ") and r["rc"] == 0 for r in rows), rows
    assert any(r["command"].startswith("pullFile ") and r["rc"] == 0 for r in rows), rows


def test_fan_out_to_all_peers_and_pull_from_all_into_one_dir_each(shared_cluster, tmp_path):
    c = shared_cluster
    src = make_tree(os.fsencode(tmp_path / "src"))
    os.makedirs(os.fsencode(tmp_path / "to" / "vps"))
    # (the peers share this machine and this directory: two receivers at once, in one place)
    out = c.desktop.d("pushFile", "--peer", "all", "--exclude", "desktop", "--dest",
                      os.fsencode(tmp_path / "to" / "vps"), src, check=0)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith(b"--\nlaptop: ok, 7 files") and b"\nvps: ok, 7 files" in out.stderr
    assert entries(os.fsencode(tmp_path / "to" / "vps" / "tree")) == entries(src)
    out = c.laptop.d("pullFile", "--peer", "vps,desktop", "--dest", tmp_path / "from",
                     os.fsencode(tmp_path / "to" / "vps" / "tree"), check=0)
    assert out.returncode == 0, out.stderr
    for peer in ("vps", "desktop"):
        assert entries(os.fsencode(tmp_path / "from" / peer / "tree")) == entries(src)
    assert sorted(os.listdir(tmp_path / "from")) == ["desktop", "vps"]


def test_a_worker_fans_a_push_out_once_through_the_leader():
    """The origin's actions for three targets from a worker: one fan message, not three."""
    sessions = OriginSessions("desktop", 1.0)
    sessions.relay = True
    spec = {"cmd": "pushFile -> x", "dir": None, "user": None, "timeout": None, "stdin": True,
            "file": {"op": "recv", "dest": "x", "checksum": False}}
    sid, actions = sessions.open(spec, ["vps", "laptop", "desktop"], 0, os.getpid())
    assert [a.header["t"] for a in actions] == ["exec"] * 3
    actions = sessions.poll(sid, b"cli", "r1", stdin=b"bytes", wait_s=0, raw=True)
    sent = [(a.header["t"], a.header["to"], a.header.get("jobs"), a.data) for a in actions
            if hasattr(a, "header")]
    assert sent == [("fan", "vps", [[f"{sid}.0", "vps", 0], [f"{sid}.1", "laptop", 0]], b"bytes"),
                    ("stdin", "desktop", None, b"bytes")]


def test_a_full_disk_fails_that_file_names_it_and_leaves_nothing(shared_cluster, tmp_path):
    c = shared_cluster
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "big").write_bytes(os.urandom(2 << 20))
        (src / "note").write_bytes(b"fits\n")
        out = c.desktop.d("pushFile", "--peer", "laptop", "--dest", small, src / "big",
                          src / "note")
        assert out.returncode == 1
        assert out.stderr == f"laptop: No space left on device: {small}/big\n".encode()
        assert sorted(os.listdir(small)) == ["note"]
        out = c.desktop.d("pullFile", "--peer", "laptop", "--dest", small, src / "big")
        assert out.returncode == 1
        assert out.stderr == f"laptop: No space left on device: {small}/big\n".encode()
        assert sorted(os.listdir(small)) == ["note"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_push_never_writes_through_a_link_on_the_target(shared_cluster, tmp_path):
    c = shared_cluster
    outside, dest, src = tmp_path / "outside", tmp_path / "dest", tmp_path / "src"
    for d in (outside, dest, src / "conf"):
        d.mkdir(parents=True)
    (src / "conf" / "passwd").write_bytes(b"mine\n")
    (src / "file.txt").write_bytes(b"new\n")
    (outside / "file.txt").write_bytes(b"theirs\n")
    os.symlink(outside, dest / "conf")
    os.symlink(outside / "file.txt", dest / "file.txt")
    out = c.desktop.d("pushFile", "--peer", "laptop", "--dest", dest, src / "conf",
                      src / "file.txt")
    assert out.returncode == 1
    assert out.stderr == f"laptop: File exists (not a directory): {dest}/conf\n".encode()
    assert sorted(os.listdir(outside)) == ["file.txt"]
    assert (outside / "file.txt").read_bytes() == b"theirs\n"
    assert not os.path.islink(dest / "file.txt") and (dest / "file.txt").read_bytes() == b"new\n"


def test_the_access_policy_applies_to_copies_and_history_says_so(shared_cluster, tmp_path):
    c = shared_cluster
    (tmp_path / "f").write_bytes(b"x")
    c.vps.d("policy", "deny", "laptop", "desktop", check=0)
    try:
        for verb in ("pushFile", "pullFile"):
            out = c.laptop.d(verb, "--peer", "desktop", "--dest", tmp_path / "g", tmp_path / "f")
            assert out.returncode == 255
            assert out.stderr.startswith(b"desktop: Not allowed: laptop may not run on desktop\n")
    finally:
        c.vps.d("policy", "reset", check=0)
    assert not (tmp_path / "g").exists()
    rows = json.loads(c.vps.d("history", "--json", "--peer", "desktop", check=0).stdout)
    refused = [r for r in rows if r["origin"] == "laptop" and str(tmp_path) in r["command"]]
    assert len(refused) == 2 and all(r["rc"] == 255 for r in refused), refused


def test_user_writes_as_that_user(shared_cluster, tmp_path):
    c = shared_cluster
    (tmp_path / "f").write_bytes(b"x")
    place = tempfile.mkdtemp(prefix="zpeer-test-user-")  # pytest's own are root's alone (0700)
    try:
        os.chmod(place, 0o755)
        closed, opened = os.path.join(place, "closed"), os.path.join(place, "open")
        os.mkdir(closed, 0o755)
        os.mkdir(opened)
        os.chmod(opened, 0o777)
        out = c.desktop.d("pushFile", "--peer", "laptop", "--user", "nobody", "--dest", closed,
                          tmp_path / "f")
        assert (out.returncode, out.stderr) == (
            1, f"laptop: Permission denied: {closed}/f\n".encode())
        c.desktop.d("pushFile", "--peer", "laptop", "--user", "nobody", "--dest", opened,
                    tmp_path / "f", check=0)
        st = os.stat(os.path.join(opened, "f"))
        assert st.st_uid == int(subprocess.check_output(["id", "-u", "nobody"]))
        assert leftovers(os.fsencode(place)) == []
    finally:
        shutil.rmtree(place)


def test_a_source_that_changes_while_read_is_reported(tmp_path):
    path = tmp_path / "growing"
    path.write_bytes(b"a" * (3 << 20))
    entry, = filecopy.walk([str(path)])[0]
    problems = []
    pieces = filecopy.file_records(0, entry, os.fsencode(path), problems)
    next(pieces), next(pieces), next(pieces)  # its start and its first chunk
    with open(path, "ab") as f:
        f.write(b"more")
    last = filecopy.unpacker()
    for piece in pieces:
        tail = piece
    last.feed(tail)
    assert list(last) == [["e", 0, None, f"File changed while read: {path}"]]
    assert problems == [f"File changed while read: {path}"]


def _agent_pids(marker, peer=None):
    """The file agents whose command line names marker (a path of this test's own), on
    `peer` or any."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"zpeer.daemon.file_agent" in argv and any(marker in a for a in argv) and (
                peer is None or argv[argv.index(b"--peer") + 1] == peer):
            pids.append(int(name))
    return pids


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ctrl_c_mid_copy_leaves_nothing_on_either_side(shared_cluster, tmp_path, direction):
    c = shared_cluster
    src, dest = os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "dest")
    os.mkdir(src)
    os.mkdir(dest)
    with open(os.path.join(src, b"big"), "wb") as f:
        f.truncate(256 << 20)
    verb = "pushFile" if direction == "push" else "pullFile"
    cli = subprocess.Popen(d_command() + [verb, "--peer", "laptop", "--dest", dest,
                                          os.path.join(src, b"big")], env=c.desktop.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    agent = []
    try:
        wait_for(lambda: leftovers(dest), what="a file half written")
        marker = dest if direction == "push" else src
        agent = wait_for(lambda: _agent_pids(marker), what="the agent")
        for pid in agent:
            os.kill(pid, signal.SIGSTOP)  # mid-copy, and it stays there
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=20)
        assert cli.returncode == 130, err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in agent),
             what="the agent to be gone")
    assert leftovers(dest) == [] and os.listdir(dest) == []


def test_more_json_and_a_missing_source(shared_cluster, tmp_path):
    c = shared_cluster
    (tmp_path / "a").write_bytes(b"a")
    out = c.desktop.d("pushFile", "--peer", "laptop", "--json", "--dest", tmp_path / "to",
                      tmp_path / "a", tmp_path / "missing")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1
    assert events[0] == {"event": "error", "peer": None,
                         "message": f"No such file or directory: {tmp_path}/missing"}
    assert [e["event"] for e in events[1:]] == ["start", "file", "done"]
    assert (tmp_path / "to").read_bytes() == b"a"


def test_a_stopped_peer_is_left_behind_and_the_others_finish(shared_cluster, tmp_path):
    c = shared_cluster
    src, dest = os.fsencode(tmp_path / "big"), os.fsencode(tmp_path / "dest")
    with open(src, "wb") as f:
        f.truncate(64 << 20)
    os.mkdir(dest)
    cli = subprocess.Popen(d_command() + ["pushFile", "--peer", "vps,laptop", "--dest", dest,
                                          src, "--stall", "1"], env=c.desktop.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        laptops = wait_for(lambda: _agent_pids(dest, b"laptop"), what="laptop's agent")
        wait_for(lambda: len(leftovers(dest)) == 2, what="both writing")
        os.kill(laptops[0], signal.SIGSTOP)
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 1
    assert err.splitlines()[0].startswith(
        b"laptop: Peer laptop took no data for 1.0s: left behind so that the others go on"), err
    assert err.splitlines()[-2:] == [b"vps: ok, 1 files (1 written, 0 skipped), 67.1 MB",
                                     b"laptop: failed"], err
    wait_for(lambda: not _agent_pids(dest, b"laptop"), what="the stopped agent to be gone")
    assert os.listdir(dest) == [b"big"] and os.path.getsize(os.path.join(dest, b"big")) == 64 << 20
