"""Remote execution: routes, exit statuses, streams, stdin, timeouts, cancel, fan-out, JSON."""
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from helpers.nodes import ROOT, d_command, wait_for

from zpeer.daemon.origin import STDIN_REPLAY_MAX_BYTES

ROUTES = [("vps", "desktop"), ("desktop", "vps"), ("desktop", "laptop"), ("laptop", "laptop"),
          ("vps", "vps")]


@pytest.mark.parametrize("origin,target", ROUTES)
def test_every_route(shared_cluster, origin, target):
    node = shared_cluster.nodes[origin]
    out = node.d("execOnPeer", "--peer", target, "--directory", "/tmp", "--shellCmd",
                 "echo out:$PWD; echo err >&2; exit 3", check=3)
    assert out.stdout == b"out:/tmp\n"
    assert out.stderr == b"err\n"


@pytest.mark.parametrize("cmd,rc", [("true", 0), ("false", 1), ("exit 7", 7), ("kill -9 $$", 137),
                                    ("kill -TERM $$", 143)])
def test_exit_statuses(shared_cluster, cmd, rc):
    shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", cmd, check=rc)


def test_default_directory_is_home_and_environment(shared_cluster):
    out = shared_cluster.laptop.d("execOnPeer", "--peer", "desktop", "--shellCmd",
                                  'echo "$PWD|$HOME|$USER|$LOGNAME|$SHELL"; test -n "$PATH"',
                                  check=0)
    home = os.path.expanduser("~")
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                    text=True).stdout.strip()
    assert out.stdout.decode().split("|")[:4] == [home, home, user, user]


def test_missing_directory(shared_cluster):
    out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop", "--directory", "/no/such/dir",
                               "--shellCmd", "true", check=255)
    assert out.stderr == b"Directory not found on laptop: /no/such/dir\n"


def test_directory_is_resolved_from_the_home_as_cd_in_a_login_shell(shared_cluster):
    """`~`, `~/x`, `~user` and a relative path are the target user's, never the daemon's own cwd
    (the tests' daemons run in the checkout, which has tests/chaos)."""
    home = os.path.expanduser("~")
    root_home = subprocess.run(["getent", "passwd", "root"], capture_output=True,
                               text=True).stdout.split(":")[5]
    sub = tempfile.mkdtemp(prefix="zp-dir-", dir=home)
    name = os.path.basename(sub)
    try:
        for asked, where in (("~", home), (f"~/{name}", sub), (name, sub), ("~root", root_home),
                             ("/tmp", "/tmp")):
            out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop", "--directory", asked,
                                       "--shellCmd", "pwd", check=0)
            assert out.stdout == f"{where}\n".encode(), asked
        for asked, shown in (("tests/chaos", f"{home}/tests/chaos"),
                             ("~/no-such-zp", f"{home}/no-such-zp"),
                             ("~no-such-user-zp/x", f"{home}/~no-such-user-zp/x")):
            out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop", "--directory", asked,
                                       "--shellCmd", "pwd", check=255)
            assert out.stderr == f"Directory not found on laptop: {shown}\n".encode(), asked
    finally:
        os.rmdir(sub)


def test_binary_output_50mb_exact(shared_cluster, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(50 * 1024 * 1024))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    proc = subprocess.run(d_command()
                          + ["execOnPeer", "--peer", "laptop", "--shellCmd", f"cat {blob}"],
                          env=shared_cluster.desktop.env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(proc.stdout).hexdigest() == digest


def test_non_utf8_and_stderr_kept_apart(shared_cluster):
    out = shared_cluster.vps.d("execOnPeer", "--peer", "desktop", "--shellCmd",
                               r"printf '\xff\xfe\x00A'; printf '\x80err' >&2", check=0)
    assert out.stdout == b"\xff\xfe\x00A"
    assert out.stderr == b"\x80err"


def test_command_and_directory_bytes_that_are_not_utf8_pass_exactly(shared_cluster, tmp_path):
    """argv is bytes: a Latin-1 file name or command reaches bash byte for byte, as with ssh."""
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(odd)
    cmd = b"printf '%s|' \xe9t\xe9 \"$PWD\"; exit 3"
    nodes = shared_cluster.nodes
    # through the leader; a worker on itself
    for origin, target in (("vps", "desktop"), ("laptop", "laptop")):
        out = nodes[origin].d("execOnPeer", "--peer", target, "--directory", odd, "--shellCmd",
                              cmd, check=3)
        assert (out.stdout, out.stderr) == (b"\xe9t\xe9|" + odd + b"|", b"")
    out = nodes["vps"].d("execOnPeer", "--peer", "desktop", "--directory", odd + b"x",
                         "--shellCmd", "true", check=255)
    shown = odd.replace(b"\xe9", b"\\xe9")
    assert out.stderr == b"Directory not found on desktop: " + shown + b"x\n"
    out = nodes["vps"].d("execOnPeer", "--peer", "desktop", "--user", b"r\xffoot", "--shellCmd",
                         "true", check=255)
    assert out.stderr == (b"Not valid UTF-8: r\\xffoot\n"
                          b"  hint: only --shellCmd and --directory of execOnPeer may hold any "
                          b"bytes\n")

    # the audit shows the bytes as \xNN (laptop's own run reaches it as a copy, a moment later)
    def audited():
        rows = json.loads(shared_cluster.vps.d("history", "--json", "--limit", "100",
                                               check=0).stdout)
        return sorted((r["target"], r["directory"], r["rc"]) for r in rows
                      if r["command"] == "printf '%s|' \\xe9t\\xe9 \"$PWD\"; exit 3")
    expected = [(t, str(tmp_path) + "/caf\\xe9", 3) for t in ("desktop", "laptop")]
    wait_for(lambda: audited() == expected, timeout=5, what="both runs in the audit")


def test_stdin_forwarding(shared_cluster):
    data = os.urandom(3 * 1024 * 1024)
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "sha256sum",
                                   input=data, check=0)
    assert out.stdout.decode().split()[0] == hashlib.sha256(data).hexdigest()
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "desktop", "--shellCmd", "wc -c",
                                   input=b"abc", check=0)
    assert out.stdout.strip() == b"3"


def test_no_stdin_means_dev_null(shared_cluster):
    out = shared_cluster.laptop.d("execOnPeer", "--peer", "vps", "--shellCmd", "cat; echo done",
                                  check=0)
    assert out.stdout == b"done\n"


def test_no_stdin_flag_leaves_a_while_read_loops_input_alone(shared_cluster):
    d = " ".join(shlex.quote(a) for a in d_command())
    loop = (f'while read -r p; do echo "== $p"; {d} execOnPeer {{}} --peer "$p" --shellCmd "cat; '
            'echo ran"; done')
    # without -n, as with ssh, the first command reads what the loop had left
    for flag, expected in (("-n", b"== vps\nran\n== laptop\nran\n"),
                           ("--no-stdin", b"== vps\nran\n== laptop\nran\n"),
                           ("", b"== vps\nlaptop\nran\n")):
        out = subprocess.run(["bash", "-c", loop.format(flag)], input=b"vps\nlaptop\n",
                             env=shared_cluster.desktop.env, capture_output=True, timeout=30)
        assert (out.returncode, out.stdout, out.stderr) == (0, expected, b""), flag


def test_output_that_cannot_be_written_is_an_error_and_stops_the_remote_command(
        shared_cluster, tmp_path):
    d = " ".join(shlex.quote(a) for a in d_command())
    cmd = f"echo $$ > {tmp_path}/pid; echo hi; exec sleep 30"
    for redirect, why in ((">/dev/full", "No space left on device"), (">&-", "stdout is closed")):
        out = subprocess.run(["bash", "-c",
                              f"{d} execOnPeer --peer laptop --shellCmd {shlex.quote(cmd)} "
                              f"{redirect}"],
                             env=shared_cluster.desktop.env, capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        said = f"Cannot write the output: {why}\n".encode()
        assert (out.returncode, out.stderr) == (255, said), redirect
        pid = int((tmp_path / "pid").read_text())
        wait_for(lambda pid=pid: _pid_gone(pid), timeout=5, what="the remote command stopped")
    out = subprocess.run(["bash", "-c",
                          f"{d} execOnPeer --peer laptop --shellCmd true >&-; {d} listPeers "
                          ">/dev/full"],
                         env=shared_cluster.desktop.env, capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=30)
    assert (out.returncode, out.stderr) == (255,
                                            b"Cannot write the output: No space left on device\n")


def test_closed_stderr_is_not_an_error_of_its_own(shared_cluster):
    # `2>&-`: the exit status is still the command's (every command exited 1 at its last flush)
    d = " ".join(shlex.quote(a) for a in d_command())
    script = (f"{d} execOnPeer --peer laptop --shellCmd 'echo out; exit 3' 2>&-; echo rc=$?; "
              f"{d} listPeers --ids 2>&-; echo rc=$?; "
              f"{d} execOnPeer --peer nobody-here --shellCmd true 2>&-; echo rc=$?")
    out = subprocess.run(["bash", "-c", script], env=shared_cluster.desktop.env,
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    expected = b"out\nrc=3\ndesktop\nlaptop\nvps\nrc=0\nrc=255\n"
    assert (out.returncode, out.stdout, out.stderr) == (0, expected, b"")


def _pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie counts as gone
        return f.read().split()[2] == "Z"


def test_timeout_kills_grandchild(shared_cluster, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    start = time.monotonic()
    out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop", "--timeout", "0.5", "--shellCmd",
                               f"bash -c 'sleep 60 & echo $! > {pidfile}; wait'; echo never",
                               check=124)
    assert time.monotonic() - start < 10
    assert b"never" not in out.stdout
    pid = int(pidfile.read_text())
    wait_for(lambda: _pid_gone(pid), timeout=5, what="grandchild killed")


def test_ctrl_c_kills_remote_group(shared_cluster, tmp_path):
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "desktop", "--shellCmd",
                                           f"sleep 60 & echo $! > {pidfile}; echo ready; wait"],
                            env=shared_cluster.laptop.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    pid = int(pidfile.read_text())
    wait_for(lambda: _pid_gone(pid), timeout=5, what="remote child killed")


@pytest.mark.parametrize("end", ["ctrl-c", "client killed"])
def test_ctrl_c_or_a_killed_cli_while_stdin_streams_ends_the_remote_command(shared_cluster,
                                                                            tmp_path, end):
    """Stdin streaming without end (/dev/zero) on its own connection while output is polled:
    Ctrl-C (exit 130) and a SIGKILLed CLI both end the remote command."""
    pidfile = tmp_path / "cat.pid"
    with open("/dev/zero", "rb") as zero:
        proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                               f"echo $$ > {pidfile}; echo ready; "
                                               "exec cat >/dev/null"],
                                env=shared_cluster.desktop.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=zero)
    try:
        assert proc.stdout.readline() == b"ready\n"
        pid = int(pidfile.read_text())
        assert not _pid_gone(pid)  # cat reads the stream (it never ends by itself)
        if end == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 130
        else:
            proc.kill()
            proc.wait(10)
        wait_for(lambda: _pid_gone(pid), timeout=5, what="remote cat killed")
    finally:
        proc.kill()
        proc.wait()


STUBBORN = '(trap "" TERM; exec sleep 60) & echo $! > {pidfile}; echo ready; sleep 100'


@pytest.mark.parametrize("end", ["timeout", "ctrl-c", "client killed"])
def test_the_whole_group_ends_with_members_that_ignore_sigterm(shared_cluster, tmp_path, end):
    """--timeout, Ctrl-C and a CLI that dies: the remote process group ends whole, also a member
    that ignores SIGTERM and outlives bash (it gets the SIGKILL that follows the grace)."""
    pidfile = tmp_path / f"{end.replace(' ', '-')}.pid"
    args = ["execOnPeer", "--peer", "laptop", "--shellCmd", STUBBORN.format(pidfile=pidfile)]
    if end == "timeout":
        args[1:1] = ["--timeout", "1"]
    proc = subprocess.Popen(d_command() + args, env=shared_cluster.desktop.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"
    member = int(pidfile.read_text())
    if end == "ctrl-c":
        proc.send_signal(signal.SIGINT)
    elif end == "client killed":
        proc.kill()
    assert proc.wait(20) == {"timeout": 124, "ctrl-c": 130, "client killed": -9}[end]
    wait_for(lambda: _pid_gone(member), timeout=10, what="the stubborn member killed")


def test_a_second_ctrl_c_leaves_at_once_even_if_the_daemon_does_not_answer(cluster):
    """As ssh's `~.`: the first Ctrl-C asks for the remote command's end and waits for it; a second
    one leaves now (here the origin's daemon is frozen: no answer would come for 10 s)."""
    proc = subprocess.Popen(d_command()
                            + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                               "echo ready; sleep 60"],
                            env=cluster.desktop.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == b"ready\n"
        cluster.desktop.stop(sig=signal.SIGSTOP)
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)  # again and again: two at once would make one signal
            try:
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
        assert (proc.returncode, proc.stderr.read()) == (130, b"")
    finally:
        cluster.desktop.proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_cli_sigkill_kills_remote_job(shared_cluster, tmp_path):
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                           f"echo $$ > {pidfile}; echo ready; sleep 60"],
                            env=shared_cluster.desktop.env, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"
    proc.kill()
    proc.wait()
    pid = int(pidfile.read_text())
    wait_for(lambda: _pid_gone(pid), timeout=8, what="orphaned remote job killed")


def test_streamed_as_produced(shared_cluster):
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                           "echo first; sleep 2; echo second"],
                            env=shared_cluster.vps.env, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    start = time.monotonic()
    assert proc.stdout.readline() == b"first\n"
    assert time.monotonic() - start < 1.5  # well before the command ends
    assert proc.stdout.readline() == b"second\n"
    assert proc.wait(10) == 0


def test_background_child_does_not_hold_the_call(shared_cluster):
    start = time.monotonic()
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd",
                                   "sleep 30 & echo started", check=0)
    assert out.stdout == b"started\n"
    assert time.monotonic() - start < 5


def test_background_child_output_follows_while_it_keeps_coming(shared_cluster):
    # gaps of 0.1 s, under the 0.3 s idle grace: every tick arrives, after bash's exit
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd",
                                   "(for i in 1 2 3; do sleep 0.1; echo tick$i; done) & echo "
                                   "started", check=0)
    assert out.stdout == b"started\ntick1\ntick2\ntick3\n"


def test_background_child_that_writes_after_the_call_ended_gets_sigpipe(shared_cluster, tmp_path):
    mark = tmp_path / "status"
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd",
                                   f"( (sleep 1.5; echo late); echo $? > {mark} ) & echo started",
                                   check=0)
    assert out.stdout == b"started\n"
    wait_for(lambda: mark.exists() and mark.read_text(), timeout=10)
    assert mark.read_text() == "141\n"  # 128 + SIGPIPE: the pipe was closed when the call ended


def test_nested_d_call(shared_cluster):
    out = shared_cluster.vps.d("execOnPeer", "--peer", "desktop", "--shellCmd",
                               "d listPeers --ids && d execOnPeer --peer laptop --shellCmd 'echo "
                               "deep; exit 4'",
                               check=4)
    assert out.stdout == b"desktop\nlaptop\nvps\ndeep\n"


def test_concurrent_execs_exact(shared_cluster):
    procs = []
    for i in range(30):
        node = shared_cluster.nodes[["vps", "desktop", "laptop"][i % 3]]
        target = ["laptop", "vps", "desktop"][i % 3]
        procs.append((i, subprocess.Popen(
            d_command()
                                          + ["execOnPeer", "--peer", target, "--shellCmd",
                                             f"seq 1 {1000 + i}; exit {i % 5}"],
            env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL)))
    for i, proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == i % 5, stderr
        assert stdout == "".join(f"{n}\n" for n in range(1, 1001 + i)).encode()


def test_fanout_prefixes_summary_and_max_status(shared_cluster):
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--peer", "vps,desktop",
                                   "--shellCmd",
                                   "printf 'a\\nb'; [ $(cat /proc/sys/kernel/hostname) ] ; "
                                   "case $ZPEER_HOME in *laptop) exit 3;; esac")
    assert out.returncode == 3
    lines = out.stdout.decode().splitlines()
    expected = [f"{p}: {x}" for p in ("laptop", "vps", "desktop") for x in "ab"]
    assert sorted(lines) == sorted(expected)
    for peer in ("laptop", "vps", "desktop"):
        assert [line for line in lines if line.startswith(peer)] == [f"{peer}: a", f"{peer}: b"]
    assert out.stderr.decode().endswith("--\nlaptop: rc 3\nvps: ok\ndesktop: ok\n")


@pytest.mark.parametrize("given", ["laptop desktop", "laptop\ndesktop\n", "laptop, desktop"])
def test_peer_lists_may_be_separated_by_blanks_or_newlines_as_listpeers_ids_prints_them(
        shared_cluster, given):
    """`--peer "$(d listPeers --ids --online)"`: peer ids hold no blanks, so blanks separate."""
    for origin, dash in (("vps", []), ("laptop", ["-n"])):
        out = shared_cluster.nodes[origin].d("execOnPeer", *dash, "--peer", given, "--shellCmd",
                                             "echo hi", check=0)
        assert (sorted(out.stdout.splitlines()), out.stderr) == (
            [b"desktop: hi", b"laptop: hi"], b"--\nlaptop: ok\ndesktop: ok\n")


def test_peer_names_and_when_lines_get_prefixes():
    """The one parser behind execOnPeer, remotePull, remoteBd and remoteDeployDaemon."""
    from zpeer.targets import many_peers, peer_names

    assert peer_names(["a,b", " c\nd ", "", "e,", ",all"]) == ["a", "b", "c", "d", "e", "all"]
    assert [many_peers(given) for given in (["a"], [" a\n"], ["a,"], ["a b"], ["a", "b"],
                                            ["all"])] == [
        False, False, True, True, True, True]


@pytest.mark.parametrize("peer", ["", " ", ",", " , ", "\n"])
def test_an_empty_peer_is_an_error_not_a_silent_success(shared_cluster, tmp_path, peer):
    # the leader, and a worker (which may ask the leader for `all`)
    for origin in ("vps", "laptop"):
        out = shared_cluster.nodes[origin].d("execOnPeer", "--peer", peer, "--shellCmd",
                                             f"touch {tmp_path}/ran", check=255)
        assert (out.stdout, out.stderr) == (b"", b"No peer given: --peer is empty\n")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("flag,what",
                         [("--directory", "directory"), ("--user", "user"),
                          ("--shellCmd", "command")])
def test_an_empty_directory_user_or_command_is_an_error(shared_cluster, tmp_path, flag, what):
    """`--directory "$BUILD_DIR" --shellCmd 'rm -rf ./*'` with BUILD_DIR unset must not run in the
    home directory; `--user "$U"` with U unset must not run as the daemon's user (root); an unset
    `--shellCmd "$CMD"` must not "succeed" at running nothing."""
    args = {"--shellCmd": f"touch {tmp_path}/ran", flag: ""}
    out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop",
                               *[x for kv in args.items() for x in kv], check=255)
    assert (out.stdout, out.stderr) == (b"", f"No {what} given: {flag} is empty\n".encode())
    assert not (tmp_path / "ran").exists()


def test_an_unquoted_command_is_refused_with_the_quoted_form(shared_cluster, tmp_path):
    # `--shellCmd touch X Y` would run `touch` with no operand: say how to quote it, run nothing
    out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop", "--shellCmd", "touch",
                               f"{tmp_path}/ran", "it's", check=2)
    assert out.stdout == b""
    assert out.stderr.endswith(
        f"Error: Got unexpected extra arguments ({tmp_path}/ran it's): --shellCmd takes the whole "
        "command line as "
        f"one argument; quote it: --shellCmd 'touch {tmp_path}/ran it'\"'\"'s'\n".encode())
    assert not (tmp_path / "ran").exists()


def test_fanout_cuts_a_line_longer_than_a_mebibyte_so_memory_stays_bounded(shared_cluster):
    """A peer that prints a blob with no newline in a fan-out: its `ID: ` lines are cut every
    1 MiB (pdsh-style prefixes need whole lines; an unbounded one would be held in memory)."""
    size = 2 * 1048576 + 123
    out = shared_cluster.vps.d("execOnPeer", "--peer", "laptop,desktop", "--shellCmd",
                               f"head -c {size} /dev/zero | tr '\\0' a; printf 'b\\nc'", check=0)
    for peer in ("desktop", "laptop"):
        prefix = f"{peer}: ".encode()
        lines = [line[len(prefix):] for line in out.stdout.split(b"\n") if line.startswith(prefix)]
        assert [len(line) for line in lines] == [1048576, 1048576, 124, 1], peer
        assert lines[:2] == [b"a" * 1048576] * 2 and lines[2:] == [b"a" * 123 + b"b", b"c"]
    assert len(out.stdout) == sum(size + 2
                                  + 4 * (len(peer) + 2 + 1) for peer in ("desktop", "laptop"))


def test_fanout_all_with_one_offline(cluster):
    cluster.laptop.kill()
    wait_for(lambda: not cluster.online("laptop"), timeout=5, what="laptop offline")
    start = time.monotonic()
    out = cluster.desktop.d("execOnPeer", "--peer", "all", "--batch", "1", "--shellCmd", "echo hi")
    assert time.monotonic() - start < 5
    assert out.returncode == 255
    assert sorted(out.stdout.decode().splitlines()) == ["desktop: hi", "vps: hi"]
    err = out.stderr.decode()
    assert "laptop: Peer offline: laptop (last seen " in err
    assert err.endswith("--\ndesktop: ok\nlaptop: offline\nvps: ok\n")


def test_batch_gives_each_later_batch_the_same_stdin_or_does_not_run_it(shared_cluster):
    """--batch 1 with stdin: the peer of the second batch reads what the first read (on
    efa0309 its command waited for an end of input that never came); stdin larger than what is
    kept for later batches: those peers do not run it, and say why."""
    c = shared_cluster
    out = c.vps.d("execOnPeer", "--peer", "desktop,laptop", "--batch", "1", "--shellCmd",
                  "sha256sum", input=b"same input\n" * 1000)
    digest = hashlib.sha256(b"same input\n" * 1000).hexdigest()
    assert (out.returncode, out.stdout.decode()) == (
        0, f"desktop: {digest}  -\nlaptop: {digest}  -\n")
    big = b"x" * (STDIN_REPLAY_MAX_BYTES + 1)
    out = c.vps.d("execOnPeer", "--peer", "desktop,laptop", "--batch", "1", "--shellCmd",
                  "wc -c", input=big)
    assert (out.returncode, out.stdout) == (255, b"desktop: %d\n" % len(big))
    assert out.stderr.decode().startswith(
        f"laptop: Not run on laptop: its stdin (more than {STDIN_REPLAY_MAX_BYTES >> 20} MiB) "
        "cannot be kept for a later batch\n"), out.stderr


def test_json_lines(shared_cluster):
    out = shared_cluster.vps.d("execOnPeer", "--peer", "desktop,laptop", "--json", "--shellCmd",
                               r"echo hi; printf '\xff' >&2; exit 2", check=2)
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    by_peer = {}
    for event in events:
        by_peer.setdefault(event["peer"], []).append(event)
    for peer in ("desktop", "laptop"):
        kinds = [e["event"] for e in by_peer[peer]]
        assert kinds[0] == "start" and kinds[-1] == "exit"
        assert {"event": "stdout", "peer": peer, "data": "hi\n"} in by_peer[peer]
        assert {"event": "stderr", "peer": peer, "data": "/w==",
                "encoding": "base64"} in by_peer[peer]
        assert by_peer[peer][-1]["rc"] == 2
    out = shared_cluster.vps.d("execOnPeer", "--peer", "ghost", "--json", "--shellCmd", "true",
                               check=255)
    event = json.loads(out.stdout)
    assert event["event"] == "error" and event["code"] == "peer_not_found"


def test_flow_control_slow_reader_bounded_memory(shared_cluster):
    def rss_kb(pid):
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    daemons = [shared_cluster.nodes[n].proc.pid for n in ("vps", "desktop", "laptop")]
    before = {pid: rss_kb(pid) for pid in daemons}
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                           "head -c 400000000 /dev/zero"],
                            env=shared_cluster.desktop.env, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    got = 0
    peak = dict(before)
    while True:
        chunk = proc.stdout.read(1 << 20)
        if not chunk:
            break
        got += len(chunk)
        if got % (40 << 20) < (1 << 20):
            time.sleep(0.05)  # a slow reader now and then
            for pid in daemons:
                peak[pid] = max(peak[pid], rss_kb(pid))
    assert proc.wait(30) == 0
    assert got == 400000000
    for pid in daemons:
        assert peak[pid] - before[pid] < 64 * 1024, (pid, before[pid], peak[pid])


def test_stdin_to_a_command_that_does_not_read_is_held_back_not_buffered(shared_cluster,
                                                                         tmp_path):
    """`cat big | d execOnPeer ...` into a command that reads nothing yet: the CLI stops taking
    stdin once the window, the pipes and one chunk in hand are full (a few MiB), no daemon
    grows, and every byte arrives once the command reads."""
    def rss_kb(pid):
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    go = tmp_path / "go"
    daemons = [shared_cluster.nodes[n].proc.pid for n in ("desktop", "laptop")]
    before = {pid: rss_kb(pid) for pid in daemons}
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                           f"while [ ! -e {go} ]; do sleep 0.02; done; wc -c"],
                            env=shared_cluster.desktop.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    total, taken = 64 << 20, 0
    block = b"z" * (1 << 16)
    try:
        os.set_blocking(proc.stdin.fileno(), False)
        stalled_since = None
        while stalled_since is None or time.monotonic() - stalled_since < 1.0:
            try:
                taken += os.write(proc.stdin.fileno(), block)
                stalled_since = None
            except BlockingIOError:  # the CLI takes no more: see that it stays so
                stalled_since = stalled_since or time.monotonic()
                time.sleep(0.01)
            assert taken < 32 << 20, "the CLI keeps taking stdin nobody reads"
        peak = {pid: rss_kb(pid) for pid in daemons}
        go.touch()
        os.set_blocking(proc.stdin.fileno(), True)
        while taken < total:
            taken += os.write(proc.stdin.fileno(), block[:total - taken])
        proc.stdin.close()
        out = proc.stdout.read()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert out.strip() == str(total).encode()
    for pid in daemons:
        assert peak[pid] - before[pid] < 32 * 1024, (pid, before[pid], peak[pid])


def test_target_killed_mid_command(cluster):
    proc = subprocess.Popen(d_command()
                            + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                               "echo ready; sleep 60"],
                            env=cluster.desktop.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"
    start = time.monotonic()
    cluster.laptop.kill()
    rc = proc.wait(10)
    assert rc == 255
    assert time.monotonic() - start < 3 * 0.3 + 2.0
    assert b"laptop" in proc.stderr.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs a root daemon")
def test_user_option_runs_as_that_user(shared_cluster):
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--user", "nobody",
                                   "--directory", "/tmp", "--shellCmd",
                                   'echo "$(id -un) $(id -u) $HOME $USER"', check=0)
    home = subprocess.run(["getent", "passwd", "nobody"], capture_output=True,
                          text=True).stdout.split(":")[5]
    assert out.stdout.decode() == f"nobody 65534 {home} nobody\n"
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--user", "no-such-user-zp",
                                   "--shellCmd", "true", check=255)
    assert out.stderr.startswith(b"No such user on laptop: no-such-user-zp\n")


def test_a_user_whose_home_does_not_exist_runs_in_root_with_a_notice(shared_cluster):
    """As ssh and su do; an explicit --directory that does not exist is still an error."""
    home = subprocess.run(["getent", "passwd", "nobody"], capture_output=True,
                          text=True).stdout.split(":")[5]
    if os.path.isdir(home):
        pytest.skip(f"nobody's home {home} exists here")
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--user", "nobody",
                                   "--shellCmd", "pwd; echo err >&2; exit 5", check=5)
    assert out.stdout == b"/\n"
    notice = f"zpeer: cannot use home directory {home} of nobody: running in /\n"
    assert out.stderr == notice.encode() + b"err\n"
    out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--user", "nobody",
                                   "--directory", home, "--shellCmd", "pwd", check=255)
    assert out.stderr == f"Directory not found on laptop: {home}\n".encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs a root daemon")
def test_a_user_who_cannot_enter_the_directory_is_refused_before_anything_runs(shared_cluster):
    # the switch of user comes after the chdir: checked as the user, or the command ran in it
    private = tempfile.mkdtemp(prefix="zpeer-private-")  # mode 0700, root's
    try:
        out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--user", "nobody",
                                       "--directory", private, "--shellCmd", "pwd", check=255)
        assert (out.stdout, out.stderr) == (b"",
                                            "Permission denied on laptop: nobody cannot enter "
                                            f"{private}\n".encode())
        os.chmod(private, 0o711)  # searchable now: the same command runs there
        out = shared_cluster.desktop.d("execOnPeer", "--peer", "laptop", "--user", "nobody",
                                       "--directory", private, "--shellCmd", "pwd", check=0)
        assert out.stdout == f"{private}\n".encode()
    finally:
        os.rmdir(private)


def test_line_latency_under_100ms(shared_cluster):
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                           "for i in 1 2 3 4 5; do date +%s.%N; sleep 0.2; done"],
                            env=shared_cluster.desktop.env, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    delays = []
    for line in iter(proc.stdout.readline, b""):
        delays.append(time.time() - float(line))
    assert proc.wait(10) == 0 and len(delays) == 5
    assert sorted(delays)[2] < 0.1, delays  # median: a loaded CI machine may delay one line


def test_stdin_that_comes_slowly_is_forwarded_at_once(shared_cluster):
    """`tail -f log | d execOnPeer ... grep`: a line typed into stdin reaches the command at once,
    not when the CLI's long poll for output next ends; so does the end of stdin."""
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "laptop", "--shellCmd", "cat"],
                            env=shared_cluster.desktop.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        delays = []
        for i in range(5):
            # the producer is slow: the CLI is waiting in a poll when the line comes
            time.sleep(0.2)
            start = time.monotonic()
            proc.stdin.write(b"line %d\n" % i)
            proc.stdin.flush()
            assert proc.stdout.readline() == b"line %d\n" % i
            delays.append(time.monotonic() - start)
        time.sleep(0.2)
        start = time.monotonic()
        proc.stdin.close()
        assert proc.wait(10) == 0
        delays.append(time.monotonic() - start)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(delays)[3] < 0.1, delays  # median of 6: a loaded CI machine may delay one


def test_daemon_stopped_mid_command_reports_interrupted(cluster):
    remote = subprocess.Popen(d_command()
                              + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                 "echo ready; sleep 60"],
                              env=cluster.desktop.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    local = subprocess.Popen(d_command()
                             + ["execOnPeer", "--peer", "desktop", "--shellCmd",
                                "echo ready; sleep 60"],
                             env=cluster.desktop.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert remote.stdout.readline() == b"ready\n" and local.stdout.readline() == b"ready\n"
    start = time.monotonic()
    cluster.laptop.stop()  # SIGTERM: the target reports its job instead of vanishing
    assert remote.wait(10) == 255
    assert time.monotonic() - start < 2.0
    assert remote.stderr.read().startswith(b"Interrupted: the daemon on laptop stopped while the "
                                           b"command ran\n")
    cluster.desktop.stop()  # SIGTERM on the origin, with a local CLI waiting
    assert local.wait(10) == 255
    assert local.stderr.read().startswith(b"Interrupted: the daemon on desktop stopped while the "
                                          b"command ran\n")


def test_exec_open_with_a_wait_is_the_first_poll(shared_cluster):
    """The CLI's one-round-trip exec: a short command's whole result comes with the open."""
    from zpeer.wire.ipc import Client

    client = Client(shared_cluster.desktop.home)
    try:
        reply = client.call("exec_open", targets=["laptop"], cmd="exit 4", dir=None, user=None,
                            timeout=None, batch=0, stdin=False, pid=os.getpid(), ouser="test",
                            wait_s=5, timeout_s=10)
        assert reply["targets"] == ["laptop"] and reply["done"] is True, reply
        assert [e[1] for e in reply["events"]] == ["s", "x"]
        assert reply["events"][1] == ["laptop", "x", 4, "exit"]
        # without a wait, the open answers at once and the output comes by polling
        reply = client.call("exec_open", targets=["laptop"], cmd="echo two", dir=None, user=None,
                            timeout=None, batch=0, stdin=False, pid=os.getpid(), ouser="test")
        assert set(reply) == {"sid", "targets", "room", "rid", "stdin_frame"}
        events = []
        while True:
            polled = client.call("exec_poll", sid=reply["sid"], wait_s=1, timeout_s=10)
            events += [e[1:] for e in polled["events"] if e[1] != "s"]
            if polled["done"]:
                break
        assert events == [["o", b"two\n"], ["x", 0, "exit"]]
    finally:
        client.close()


def test_stdin_as_a_frame_after_the_map_or_inside_it_reaches_the_command(shared_cluster):
    """A poll's stdin may travel as a frame of its own (what the CLI sends once the open said
    stdin_frame) or in the map (a CLI from before): both give the command the exact bytes."""
    from zpeer.wire.ipc import Client

    client = Client(shared_cluster.desktop.home)
    big = os.urandom(3 << 20)  # several 1 MiB messages on the hop
    try:
        reply = client.call("exec_open", targets=["laptop"], cmd="sha256sum", dir=None,
                            user=None, timeout=None, batch=0, stdin=True, pid=os.getpid(),
                            ouser="test", wait_s=0, raw=True, timeout_s=10)
        assert reply["stdin_frame"] is True
        sid, out, sent = reply["sid"], b"", [(None, big), (b"in the map", None)]
        while not reply["done"]:
            stdin, data, eof = None, None, False
            if sent and reply["room"] >= (3 << 20):
                stdin, data = sent.pop(0)
                eof = not sent
            reply = client.call("exec_poll", sid=sid, stdin=stdin, data=data, eof=eof,
                                wait_s=0.2, raw=True, timeout_s=10)
            frames = reply.get("frames", ())
            out += b"".join(bytes(frames[e[2]]) for e in reply["events"] if e[1] == "o")
        assert out.split()[0].decode() == hashlib.sha256(big + b"in the map").hexdigest()
    finally:
        client.close()


def test_raw_polls_carry_output_as_frames_after_the_map(shared_cluster):
    """With raw=True the output bytes travel as frames after the reply map (no copies into
    msgpack); without it they are inline. Both give the exact bytes."""
    from zpeer.wire.ipc import Client

    cmd = "head -c 300000 /dev/zero | tr '\\0' '\\377'; printf 'tail\\n' >&2"
    expected = {"o": b"\xff" * 300000, "e": b"tail\n"}
    client = Client(shared_cluster.vps.home)
    try:
        for raw in (True, False):
            reply = client.call("exec_open", targets=["desktop"], cmd=cmd, dir=None, user=None,
                                timeout=None, batch=0, stdin=False, pid=os.getpid(), ouser="test",
                                wait_s=5, raw=raw, timeout_s=10)
            got, kinds, sid = {"o": b"", "e": b""}, set(), reply["sid"]
            while True:
                frames = reply.get("frames", [])
                for event in reply["events"]:
                    if event[1] in ("o", "e"):
                        kinds.add(type(event[2]))
                        got[event[1]] += bytes(frames[event[2]]) if raw else event[2]
                if reply["done"]:
                    break
                reply = client.call("exec_poll", sid=sid, wait_s=1, raw=raw, timeout_s=10)
            assert got == expected
            assert kinds == ({int} if raw else {bytes})
    finally:
        client.close()


def test_a_big_fanout_summary_counts_the_peers_that_ended_well(empty_cluster):
    """Beyond SUMMARY_OK_PEERS_MAX the ok peers are one count; the others keep their own line."""
    vps = empty_cluster.leader()
    tokens = [vps.d("joinToken", check=0).stdout.decode().strip() for _ in range(12)]
    swarm = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "swarm.py"), "--first-ip",
                              "127.0.2.1", "--prefix", "s", "--heartbeat", "0.3", "--ready-timeout",
                              "20"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=vps.env)
    try:
        swarm.stdin.write(("\n".join(tokens) + "\n\n").encode())
        swarm.stdin.flush()
        assert json.loads(swarm.stdout.readline())["ok"]
        wait_for(lambda: len(vps.d("listPeers", "--ids", "--online", check=0).stdout.split()) == 13,
                 timeout=10, what="12 swarm peers online")
        out = vps.d("execOnPeer", "--peer", "all", "--shellCmd",
                    "case $ZPEER_HOME in */vps) exit 3;; esac", check=3)
        assert out.stderr == b"--\nvps: rc 3\n12 peers: ok\n"
        out = vps.d("execOnPeer", "--peer", "all", "--shellCmd", "true", check=0)
        assert out.stderr == b"--\n13 peers: ok\n"
        out = vps.d("execOnPeer", "--peer", "vps,s0001", "--shellCmd", "true", check=0)
        assert out.stderr == b"--\nvps: ok\ns0001: ok\n"  # a few: each by name, as before
        # ranges and patterns, as pdsh and clush take them
        out = vps.d("execOnPeer", "--peer", "s[0000-0002,0011]", "--shellCmd", "true", check=0)
        assert out.stderr == b"--\ns0000: ok\ns0001: ok\ns0002: ok\ns0011: ok\n"
        out = vps.d("execOnPeer", "--peer", "s*", "--exclude", "s000?", "--shellCmd", "true",
                    check=0)
        assert out.stderr == b"--\ns0010: ok\ns0011: ok\n"
    finally:
        swarm.stdin.close()  # EOF: the swarm stops its workers and exits
        try:
            swarm.wait(20)
        finally:
            if swarm.poll() is None:
                swarm.kill()
                swarm.wait()
            swarm.stdout.close()


def test_exclude_leaves_peers_out_and_a_typo_runs_nothing(shared_cluster, tmp_path):
    for origin in ("vps", "desktop"):  # the leader, and a worker (which asks the leader for `all`)
        node = shared_cluster.nodes[origin]
        out = node.d("execOnPeer", "--peer", "all", "--exclude", "vps", "--shellCmd", "echo hi",
                     check=0)
        assert sorted(out.stdout.splitlines()) == [b"desktop: hi", b"laptop: hi"]
        out = node.d("execOnPeer", "--peer", "all", "--exclude", "vsp", "--shellCmd",
                     f"touch {tmp_path}/ran", check=255)
        assert (out.stdout, out.stderr) == (b"",
                                            b"Peer not found: vsp\n  hint: --exclude names a peer "
                                            b"that --peer "
                                                 b"does not select (`d listPeers`)\n")
        out = node.d("execOnPeer", "--peer", "laptop,vps", "--exclude", "vps", "--exclude",
                     "laptop", "--shellCmd", f"touch {tmp_path}/ran", check=255)
        assert out.stderr == b"No peer left: --exclude removes every peer --peer selects\n"
        out = node.d("execOnPeer", "--peer", "all", "--exclude", "", "--shellCmd",
                     f"touch {tmp_path}/ran", check=255)  # `--exclude "$PROD"` with PROD unset
        assert out.stderr == b"No peer given: --exclude is empty\n"
    assert not (tmp_path / "ran").exists()


def test_a_pattern_selects_the_peers_it_matches_and_one_that_matches_none_runs_nothing(
        shared_cluster, tmp_path):
    for origin in ("vps", "desktop"):  # a worker asks the leader for the ids, as for `all`
        out = shared_cluster.nodes[origin].d("execOnPeer", "--peer", "*top", "--shellCmd",
                                             "echo hi", check=0)
        assert sorted(out.stdout.splitlines()) == [b"desktop: hi", b"laptop: hi"]
        out = shared_cluster.nodes[origin].d("execOnPeer", "--peer", "lpa*", "--shellCmd",
                                             f"touch {tmp_path}/ran", check=255)
        assert out.stderr == (b"Peer not found: lpa*\n  hint: no peer id matches this pattern (`d "
                              b"listPeers`)\n")
    assert not (tmp_path / "ran").exists()


def test_exclude_is_refused_by_a_daemon_from_before_it(tmp_path):
    """A daemon still running the previous release ignores a field it does not know: it would
    run on the excluded peers. This one answers as such a daemon does (a ping without
    "features"), on the real socket path; the CLI must refuse before it asks for any exec."""
    import zmq

    from zpeer.wire import protocol
    from zpeer.wire.ipc import reply_frames

    home = tmp_path / "old"
    home.mkdir(mode=0o700)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(f"ipc://{home}/d.sock")
    asked = []
    cli = subprocess.Popen(d_command()
                           + ["execOnPeer", "--peer", "all", "--exclude", "db1", "--shellCmd",
                              "reboot"],
                           env=dict(os.environ, ZPEER_HOME=str(home)), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while cli.poll() is None:
            if sock.poll(100):
                identity, _, *request = sock.recv_multipart()
                header = protocol.decode_request(request)
                asked.append(header["op"])
                if header["op"] == "ping":
                    answer = {"pong": True, "version": "0.0.9"}
                else:
                    answer = {"sid": "s", "targets": []}
                sock.send_multipart(reply_frames(identity, header["rid"], answer))
        out, err = cli.communicate(timeout=10)
        assert (cli.returncode, out, asked) == (255, b"", ["ping"])
        assert err == (b"The local daemon is too old for --exclude: nothing was run\n"
                       b"  hint: restart it to run the installed zpeer (`d restartDaemon`)\n")
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate()
        sock.close(0)
        ctx.term()
