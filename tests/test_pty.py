"""Interactive sessions on real terminals: `d shell` and `d execOnPeer -t` driven through a
pseudo-terminal of the test's (and tmux), against real daemons."""
import json
import os
import shutil
import signal
import statistics
import subprocess
import time

import pytest
from helpers import netlab
from helpers.netlab import Lab
from helpers.nodes import Cluster, wait_for
from helpers.terminal import Terminal
from helpers.wan import WanCluster

PROMPT = rb"[#$] $"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A leader (vps), a worker (desktop) and one to lose (spare)."""
    c = Cluster(tmp_path_factory.mktemp("pty"))
    c.leader()
    c.desktop = c.worker("desktop", "127.0.0.2")
    c.spare = c.worker("spare", "127.0.0.5")
    yield c
    c.stop()


def open_term(node, *args, rows=24, cols=80, term="xterm-256color"):
    """`d ARGS` of node on a terminal of its own, TERM set."""
    env = dict(node.env, TERM=term, PS1="$ ")
    return Terminal(node.command + list(args), env, rows, cols)


def shell(node, peer, *args, **kw):
    """`d shell --peer PEER` at its first prompt."""
    t = open_term(node, "shell", "--peer", peer, *args, **kw)
    t.expect(PROMPT)
    return t


def test_shell_terminal_size_term_resize_and_exit_status(fleet):
    t = shell(fleet.vps, "desktop", rows=30, cols=100)
    try:
        t.send(b"tty; echo \"T=$TERM\"; stty size\r")
        t.expect(rb"/dev/pts/\d+\r\nT=xterm-256color\r\n30 100\r\n")
        t.resize(40, 120)
        t.expect(PROMPT)
        wait_for(lambda: (t.send(b"stty size\r"), t.expect(rb"(\d+ \d+)\r\n").group(1))[1]
                 == b"40 120", what="the new size on the peer")
        t.send(b"exit 3\r")
        assert t.wait() == 3
        assert t.modes_now() == t.modes  # raw mode undone
    finally:
        t.close()


def test_sigwinch_ctrl_c_ctrl_d_and_escapes(fleet):
    t = shell(fleet.vps, "desktop")
    try:
        # a program that traps SIGWINCH sees the new size
        t.send(b"bash -c 'trap \"echo winch \\$(stty size)\" WINCH; echo ready; "
               b"while :; do sleep 0.05; done'\r")
        t.expect(rb"ready\r\n")
        t.resize(50, 132)
        t.expect(rb"winch 50 132\r\n")
        # Ctrl-C reaches the remote foreground job, not this client: the shell lives on
        t.send(b"\x03")
        t.expect(PROMPT)
        t.send(b"echo go; sleep 30\r")
        t.expect(rb"go\r\n")
        t.send(b"\x03")
        t.expect(PROMPT, timeout=5)
        t.send(b"echo \"rc=$?\"\r")
        t.expect(rb"rc=130\r\n")
        # Ctrl-Z stops the remote job (the shell's job control), not this client
        t.send(b"echo go; sleep 30\r")
        t.expect(rb"go\r\n")
        t.send(b"\x1a")
        t.expect(rb"Stopped\s+sleep 30")
        t.send(b"kill %1; wait; echo killed\r")
        t.expect(rb"killed\r\n")
        # Ctrl-D ends a remote `cat`'s input
        t.send(b"echo go; cat; echo cat-done\r")
        t.expect(rb"go\r\n")
        t.send(b"abc\r")
        t.expect(rb"abc\r\n")
        t.send(b"\x04")
        t.expect(rb"cat-done\r\n")
        # ~~ sends one ~; ~? lists the escapes (locally); a ~ inside a line is just a ~
        t.send(b"echo go; read v; echo \"got[$v]\"\r")
        t.expect(rb"go\r\n")
        t.send(b"~~a~b\r")
        t.expect(rb"got\[~a~b\]\r\n")
        t.send(b"~?")
        t.expect(rb"Supported escape sequences:")
        t.expect(rb"~\.   - terminate connection")

        t.send(b"\r~.")
        assert t.wait() == 255
        assert b"Connection to desktop closed." in t.output
        assert t.modes_now() == t.modes
    finally:
        t.close()


def test_tilde_ctrl_z_suspends_the_client_as_a_job_of_the_local_shell(fleet):
    """`~^Z` stops `d shell` as a job of an interactive shell (a stop signal to a process group
    that no shell controls is discarded, as for ssh); `fg` brings it back, raw again."""
    env = dict(fleet.vps.env, TERM="xterm", PS1="outer$ ", HISTFILE="/dev/null")
    t = Terminal(["bash", "--norc", "--noprofile", "-i"], env)
    try:
        t.expect(rb"outer\$ ")
        t.send(" ".join(fleet.vps.command).encode() + b" shell --peer desktop\r")
        t.expect(PROMPT)
        t.send(b"echo remote-one\r")
        t.expect(rb"\rremote-one\r\n")
        t.send(b"\r~\x1a")
        t.expect(rb"Stopped")
        t.expect(rb"outer\$ ")
        t.send(b"echo outer-ok\r")  # the local shell, in its own modes: it echoes and runs
        t.expect(rb"[\r\n]outer-ok\r\n")
        t.send(b"fg\r")
        t.send(b"echo remote-two\r")
        t.expect(rb"\rremote-two\r\n")
        t.send(b"exit 7\r")
        t.expect(rb"outer\$ ")
        t.send(b"echo \"rc=$?\"; exit\r")
        t.expect(rb"rc=7\r\n")
        assert t.wait() == 0
    finally:
        t.close()


def test_escape_none_and_another_escape_char(fleet):
    t = shell(fleet.vps, "desktop", "--escape", "none")
    try:
        t.send(b"echo go; read v; echo \"got[$v]\"\r")
        t.expect(rb"go\r\n")
        t.send(b"~.\r")
        t.expect(rb"got\[~\.\]\r\n")
        t.send(b"exit\r")
        assert t.wait() == 0
    finally:
        t.close()
    t = shell(fleet.vps, "desktop", "-e", "%")
    try:
        t.send(b"~.\r%.")
        assert t.wait() == 255
    finally:
        t.close()


def test_exec_tty_merges_streams_and_forwards_stdin(fleet):
    t = open_term(fleet.desktop, "execOnPeer", "-t", "--peer", "vps", "--shellCmd",
                  "tty; echo out; echo err >&2; read x; echo \"got $x\"; exit 4")
    try:
        t.expect(rb"/dev/pts/\d+\r\nout\r\nerr\r\n")
        t.send(b"hello\r")
        t.expect(rb"got hello\r\n")
        assert t.wait() == 4
        assert t.modes_now() == t.modes
    finally:
        t.close()
    # stdin that is no terminal still goes to a command that has one
    out = fleet.vps.d("execOnPeer", "-t", "--peer", "desktop", "--shellCmd",
                      "read x; [ -t 0 ] && echo \"tty got $x\"", input=b"piped\n")
    assert out.returncode == 0, out
    assert out.stdout.endswith(b"tty got piped\r\n"), out.stdout
    # another user's command gets a terminal of that user's
    out = fleet.vps.d("execOnPeer", "-t", "--peer", "desktop", "--user", "nobody", "--directory",
                      "/", "--shellCmd", "id -un; stat -c %U \"$(tty)\"", input=b"")
    assert (out.returncode, out.stdout) == (0, b"nobody\r\nnobody\r\n"), out
    out = fleet.vps.d("execOnPeer", "-t", "--peer", "desktop,vps", "--shellCmd", "true")
    assert out.returncode == 2 and b"-t runs on one peer" in out.stderr, out


@pytest.mark.skipif(not shutil.which("tmux"), reason="no tmux (apt-get install tmux)")
def test_full_screen_programs_in_tmux(fleet, tmp_path):
    sock = str(tmp_path / "tmux.sock")
    env = dict(fleet.vps.env, TERM="xterm-256color")
    tmux = ["tmux", "-S", sock, "-f", "/dev/null"]
    d = " ".join(fleet.vps.command)
    subprocess.run(tmux + ["new-session", "-d", "-x", "100", "-y", "30", "-s", "t",
                           f"{d} shell --peer desktop; echo \"status=$?\"; sleep 30"],
                   env=env, check=True, timeout=10)

    def screen():
        return subprocess.run(tmux + ["capture-pane", "-p", "-t", "t"], capture_output=True,
                              text=True, timeout=10).stdout

    def keys(*k):
        subprocess.run(tmux + ["send-keys", "-t", "t"] + list(k), check=True, timeout=10)

    try:
        wait_for(lambda: screen().rstrip().endswith(("#", "$")), what="the prompt in tmux")
        keys("top -d 0.5", "Enter")
        wait_for(lambda: "load average" in screen() and "PID" in screen(), what="top's screen")
        keys("q")
        wait_for(lambda: "load average" not in screen(), what="top to leave its screen")
        target = tmp_path / "notes.txt"
        keys(f"vi {target}", "Enter")
        wait_for(lambda: "notes.txt" in screen() and "\n~" in screen(), what="vi's screen")
        keys("i", "typed in vi", "Escape", ":wq", "Enter")
        wait_for(lambda: target.exists() and target.read_text() == "typed in vi\n",
                 what="vi to write the file")
        keys("exit", "Enter")
        wait_for(lambda: "status=0" in screen(), what="the shell's status")
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True, timeout=10)


def test_lost_peer_sigterm_and_sighup_restore_the_terminal(fleet):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        t = shell(fleet.vps, "desktop")
        try:
            t.proc.send_signal(sig)
            assert t.wait() == 255
            assert f"Killed by signal {int(sig)}.".encode() in t.output
            assert t.modes_now() == t.modes
        finally:
            t.close()
    t = shell(fleet.vps, "spare")
    try:
        t.send(b"sleep 60\r")
        fleet.spare.kill()
        assert t.wait(timeout=20) == 255
        assert b"Peer spare disconnected mid-command" in t.output, t.output
        assert t.modes_now() == t.modes
    finally:
        t.close()


def test_sessions_in_history_recorded_replayed_and_rotated(fleet):
    vps = fleet.vps
    vps.d("setPeerConfig", "--record-sessions", check=0)
    try:
        t = shell(fleet.desktop, "vps", rows=20, cols=70)
        try:
            t.send(b"echo rec-one; sleep 0.3; echo rec-two\r")
            t.expect(rb"rec-two\r\n")
            t.resize(21, 71)
            t.send(b"stty size; exit 5\r")
            assert t.wait() == 5
        finally:
            t.close()
        rows = json.loads(vps.d("history", "--json", "--limit", "5", check=0).stdout)
        row = next(r for r in rows if r["tty"] and r["origin"] == "desktop")
        assert (row["target"], row["rc"], row["outcome"], row["recorded"]) == ("vps", 5, "exit",
                                                                               True)
        assert row["bytes_out"] > 0 and row["duration_s"] > 0.3
        assert row["ended"] == pytest.approx(row["time"] + row["duration_s"])
        table = vps.d("history", "--limit", "5", check=0).stdout
        assert b"[tty rec] exec -l" in table
        cast = os.path.join(vps.home, "casts", row["job"] + ".cast")
        with open(cast) as f:
            lines = [json.loads(line) for line in f]
        assert lines[0]["version"] == 2 and (lines[0]["width"], lines[0]["height"]) == (70, 20)
        assert ["r", "71x21"] in [e[1:] for e in lines[1:]]
        screen = "".join(e[2] for e in lines[1:] if e[1] == "o")
        assert "rec-one\r\n" in screen and "21 71\r\n" in screen
        # played back from a worker too (through the leader), at its pace: rec-two ~0.3 s later
        start = time.monotonic()
        out = fleet.desktop.d("history", "--replay", row["job"], "--speed", "1")
        assert out.returncode == 0, out
        assert time.monotonic() - start >= 0.3
        assert b"rec-one\r\n" in out.stdout and b"21 71\r\n" in out.stdout
        out = vps.d("history", "--replay", "nosuchjob.0")
        assert out.returncode == 1 and out.stderr.startswith(b"No recording of job nosuchjob.0")
        # rotated with the history: its row pruned, the recording goes too
        vps.d("setPeerConfig", "--history-rows", "1", check=0)
        vps.d("execOnPeer", "--peer", "vps", "--shellCmd", "true", check=0)
        vps.d("history", "--limit", "1", check=0)
        wait_for(lambda: not os.path.exists(cast), what="the recording to go with its row")
    finally:
        vps.d("setPeerConfig", "--no-record-sessions", "--history-rows", "100000", check=0)


@pytest.mark.timeout(90)
@pytest.mark.skipif(netlab.unavailable() is not None, reason=netlab.unavailable() or "")
def test_typing_stays_responsive_while_a_stream_fills_the_same_slow_uplink(tmp_path):
    """A peer on a 1 Mbit/s uplink streams flat out to the leader while a shell on it echoes
    keystrokes over the same hop: each echo comes within a fraction of a second (bench's
    pty_echo_ms measures it on loopback)."""
    with Lab() as lab:
        c = WanCluster(tmp_path, lab, heartbeat_s=1.0)
        try:
            c.leader()
            c.worker("laptop", uplink_mbit=1)
            t = shell(c.vps, "laptop")
            out_path = tmp_path / "stream.out"
            with open(out_path, "wb") as out:
                stream = subprocess.Popen(c.vps.command + ["execOnPeer", "--peer", "laptop",
                                                           "--shellCmd", "seq 1 2000000"],
                                          env=c.vps.env, stdout=out, stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda: out_path.stat().st_size > 64 << 10, timeout=20,
                         what="the stream to flow")
                echoes = []
                for _ in range(12):
                    started = time.monotonic()
                    t.send(b"x")
                    t.expect(rb"x")
                    echoes.append(time.monotonic() - started)
                assert stream.poll() is None  # the stream ran all along
                flowed = out_path.stat().st_size
            finally:
                stream.send_signal(signal.SIGINT)
                stream.wait(10)
            t.send(b"\x15exit\r")
            assert t.wait() == 0
            t.close()
            print(f"echo under a 1 Mbit/s stream: median {statistics.median(echoes) * 1000:.0f}"
                  f" ms, max {max(echoes) * 1000:.0f} ms, stream {flowed} bytes")
            assert statistics.median(echoes) < 0.5, echoes
            assert max(echoes) < 2.0, echoes
        finally:
            c.stop()
