"""Chaos: workers SIGKILLed or frozen mid-command, the CLI SIGKILLed mid-stream, a second daemon."""
import json
import os
import signal
import subprocess
import time

from fleet import (
    DETECT_LIMIT_S,
    Stream,
    kill_group,
    open_fds,
    pid_alive,
    report,
    status,
)
from helpers.nodes import d_command, wait_for

# the leader's sweep or the origin's own silence limit, whichever notices first
CLEAR = {p: (f"Peer {p} disconnected mid-command",
             f"Peer {p} was lost mid-command") for p in ("laptop", "desktop")}


def _long_command(marks):
    """Records its pid, says it started, then runs until killed."""
    return f"echo $$ > {marks}/pid; echo started; exec sleep 30"


def _started(stream):
    stream.wait_for_lines(lambda lines: b'"data": "started\\n"' in b"".join(lines),
                          what="remote start")


def _long_run(origin, target, marks):
    """A --json execOnPeer of the long command, once it runs remotely: (stream, remote pid)."""
    run = Stream(origin, "--json", "--peer", target, "--shellCmd", _long_command(marks))
    _started(run)
    return run, int((marks / "pid").read_text())


def _audit_of(node, command):
    """(rc, outcome) of each audit row of that command, from `d history --json` on the leader."""
    rows = json.loads(node.d("history", "--json", "--limit", "50", check=0).stdout)
    return [(r["rc"], r["outcome"]) for r in rows if r["command"] == command]


def test_worker_sigkill_mid_command(cluster, tmp_path):
    """Origin on a worker (desktop), target laptop SIGKILLed: a clear error, then laptop works."""
    run, pid = _long_run(cluster.desktop, "laptop", tmp_path)
    try:
        killed = time.monotonic()
        cluster.laptop.kill()
        rc = run.wait(timeout=10)
        detect = run.ended - killed
        errors = [e for e in run.events() if e["event"] == "error"]
        assert rc == 255 and [e["code"] for e in errors] == ["peer_lost"], (rc, run.events())
        assert errors[0]["message"].startswith(CLEAR["laptop"]), errors
        assert detect <= DETECT_LIMIT_S, detect
        assert pid_alive(pid)  # nobody can end it while the daemon is dead (SIGKILL)
        restarted = time.monotonic()
        cluster.laptop.start()  # ... but the next daemon on that home ends what it left behind
        wait_for(lambda: not pid_alive(pid), timeout=5,
                 what="the restarted daemon to end the leftover")
        orphan_ended = time.monotonic() - restarted
    finally:
        kill_group(pid)
    wait_for(lambda: cluster.online("laptop"), timeout=10, what="laptop back")
    recover = time.monotonic() - restarted
    # the leader's audit says how it ended for the origin (not "-" for ever)
    wait_for(lambda: _audit_of(cluster.vps, _long_command(tmp_path)) == [(255, "peer_lost")],
             timeout=10, what="the audit row to say peer_lost")
    out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo back", check=0)
    assert out.stdout == b"back\n"
    report("worker SIGKILL mid-command", detect=detect, recover_after_restart=recover,
           leftover_ended_after_restart=orphan_ended)


def test_worker_sigstop_then_sigcont_mid_command(cluster, tmp_path):
    """A frozen worker (half-open TCP link): the CLI is told in time; after SIGCONT it is usable."""
    run, pid = _long_run(cluster.vps, "desktop", tmp_path)
    try:
        stopped = time.monotonic()
        cluster.desktop.proc.send_signal(signal.SIGSTOP)
        rc = run.wait(timeout=10)
        detect = run.ended - stopped
        errors = [e for e in run.events() if e["event"] == "error"]
        assert rc == 255 and [e["code"] for e in errors] == ["peer_lost"], (rc, run.events())
        assert errors[0]["message"].startswith(CLEAR["desktop"]), errors
        assert detect <= DETECT_LIMIT_S, detect
        assert pid_alive(pid)  # frozen daemon: its child still runs until the daemon wakes
        resumed = time.monotonic()
        cluster.desktop.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: not pid_alive(pid), timeout=DETECT_LIMIT_S + 2,
                 what="stale job killed after SIGCONT")
        stale_killed = time.monotonic() - resumed
        wait_for(lambda: cluster.online("desktop"), timeout=10, what="desktop online after SIGCONT")
        recover = time.monotonic() - resumed
    finally:
        cluster.desktop.proc.send_signal(signal.SIGCONT)
        kill_group(pid)
    for origin in (cluster.vps, cluster.laptop):
        out = origin.d("execOnPeer", "--peer", "desktop", "--shellCmd", "echo back; echo e >&2",
                       check=0)
        assert (out.stdout, out.stderr) == (b"back\n", b"e\n")
    assert status(cluster.desktop)["running_jobs"] == 0
    report("worker SIGSTOP/SIGCONT mid-command", detect=detect,
           stale_job_killed_after_cont=stale_killed, recover_online=recover)


def test_cli_sigkill_mid_stream_frees_everything(cluster, tmp_path):
    """The CLI dies with SIGKILL while output streams: remote job killed, origin state freed."""
    base = {n: open_fds(cluster.nodes[n].proc.pid) for n in ("desktop", "laptop")}
    cmd = f"echo $$ > {tmp_path}/pid; while :; do echo tick; sleep 0.02; done"
    run = Stream(cluster.desktop, "--peer", "laptop", "--shellCmd", cmd)
    run.wait_for_lines(lambda lines: len(lines) >= 5, what="streaming output")
    pid = int((tmp_path / "pid").read_text())
    try:
        assert status(cluster.desktop)["exec_sessions"] == 1
        assert status(cluster.laptop)["running_jobs"] == 1
        killed = time.monotonic()
        run.kill()
        wait_for(lambda: not pid_alive(pid), timeout=10, what="remote job killed")
        remote_killed = time.monotonic() - killed
        wait_for(lambda: status(cluster.desktop)["exec_sessions"] == 0, timeout=10,
                 what="origin session freed")
        freed = time.monotonic() - killed
        wait_for(lambda: status(cluster.laptop)["running_jobs"] == 0, timeout=5,
                 what="target job freed")
        wait_for(lambda: all(open_fds(cluster.nodes[n].proc.pid) <= base[n] for n in base),
                 timeout=5, what="daemon fds back to their level")
    finally:
        kill_group(pid)
    assert all(line == b"tick\n" for line in run.lines)
    assert b"cancelled rc=130" in open(cluster.laptop.log_path, "rb").read()
    report("CLI SIGKILL mid-stream", remote_job_killed=remote_killed, origin_state_freed=freed)


def test_second_daemon_refuses_and_keeps_the_socket(cluster):
    """`d daemon` twice on one ZPEER_HOME: the second says why and exits 255; the first serves."""
    node = cluster.laptop
    sock = os.path.join(node.home, "d.sock")
    inode = os.stat(sock).st_ino
    # also while the first one is wedged (SIGSTOP): the lock still holds
    for frozen in (False, True):
        if frozen:
            node.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            second = subprocess.run(d_command() + ["daemon"], env=node.env, capture_output=True,
                                    timeout=10, stdin=subprocess.DEVNULL)
            refused = time.monotonic() - started
        finally:
            node.proc.send_signal(signal.SIGCONT)
        assert second.returncode == 255, second
        assert second.stderr == (f"Another daemon already runs for {node.home} (pid "
                                 f"{node.proc.pid})\n").encode()
        assert os.stat(sock).st_ino == inode
        assert node.d("execOnPeer", "--peer", "desktop", "--shellCmd", "echo still",
                      check=0).stdout == b"still\n"
    # a SIGKILLed daemon leaves its socket and pid file behind: the next one starts anyway
    node.kill()
    node.start()
    assert status(node)["pid"] == node.proc.pid
    wait_for(lambda: cluster.online("laptop"), timeout=10, what="laptop back")
    report("second daemon on the same ZPEER_HOME", refused_in=refused)
