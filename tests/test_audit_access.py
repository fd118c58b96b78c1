"""Audit log (`d history`) and local access control of the CLI socket (`--group`)."""
import grp
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest
from helpers.nodes import Node, free_port, wait_for


def history(node, *args):
    return json.loads(node.d("history", "--json", *args, check=0).stdout)


def test_audit_of_local_remote_worker_self_and_fanout(cluster):
    cluster.vps.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo local", check=0)
    cluster.desktop.d("execOnPeer", "--peer", "laptop", "--directory", "/tmp", "--shellCmd",
                      "exit 3", check=3)
    cluster.laptop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo self", check=0)
    cluster.desktop.d("execOnPeer", "--peer", "all", "--shellCmd", "echo fan", check=0)

    def complete():
        rows = history(cluster.vps, "--limit", "50")
        return rows if len(rows) == 6 and all(r["rc"] is not None for r in rows) else None

    rows = wait_for(complete, timeout=5, what="6 audit rows with their rc")
    seen = sorted((r["origin"], r["target"], r["command"], r["rc"]) for r in rows)
    assert seen == sorted([
        ("vps", "vps", "echo local", 0), ("desktop", "laptop", "exit 3", 3),
                           ("laptop", "laptop", "echo self", 0),
        ("desktop", "desktop", "echo fan", 0), ("desktop", "laptop", "echo fan", 0),
                           ("desktop", "vps", "echo fan", 0)])
    remote = next(r for r in rows if r["command"] == "exit 3")
    assert remote["directory"] == "/tmp" and remote["user"] and remote["duration_s"] >= 0
    fan = [r for r in rows if r["command"] == "echo fan"]
    assert all(r["bytes_out"] == 4 for r in fan)
    # any node can read it (workers ask the leader), filtered by peer and limited
    only_self = history(cluster.laptop, "--peer", "laptop")
    assert {r["command"] for r in only_self} == {"exit 3", "echo self", "echo fan"}
    assert len(history(cluster.desktop, "--limit", "2")) == 2
    table = cluster.vps.d("history", "--limit", "1", check=0).stdout.decode().splitlines()
    assert table[0].split() == ["TIME", "ORIGIN", "TARGET", "RC", "DURATION",
                                "COMMAND"] and len(table) == 2


def test_worker_keeps_no_audit(cluster):
    cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "true", check=0)
    out = cluster.desktop.d("dbSanityCheck", "--dry-run", check=0).stdout.decode()
    assert "leader-only exec_log: 0 rows" in out and "leader-only peer: 0 rows" in out


def test_history_rows_keeps_the_newest_and_applies_at_once(empty_cluster):
    vps = empty_cluster.leader()
    status = vps.d("getPeerStatus", check=0).stdout.decode().splitlines()
    assert "history_rows: 100000" in status  # the default, shown
    for i in range(5):
        vps.d("execOnPeer", "--peer", "vps", "--shellCmd", f"echo {i}", check=0)
    assert [r["command"] for r in history(vps)] == [f"echo {i}" for i in (4, 3, 2, 1, 0)]
    out = vps.d("setPeerConfig", "--history-rows", "2", check=0)
    assert out.stdout == b"Saved: history_rows=2\nApplied by the running daemon.\n"
    wait_for(lambda: len(history(vps)) == 2, timeout=5, what="the oldest rows pruned")
    assert [r["command"] for r in history(vps)] == ["echo 4", "echo 3"]
    assert "history_rows: 2" in vps.d("getPeerStatus", check=0).stdout.decode().splitlines()
    out = vps.d("setPeerConfig", "--history-rows", "-1", check=2)
    assert (b"Invalid value for '--history-rows': -1 is not in the range 0<=x<=1000000000."
            in out.stderr)
    vps.d("setPeerConfig", "--history-rows", "0", check=0)  # 0 keeps everything from now on
    for i in range(5, 8):
        vps.d("execOnPeer", "--peer", "vps", "--shellCmd", f"echo {i}", check=0)
    assert [r["command"] for r in history(vps)] == ["echo 7", "echo 6", "echo 5", "echo 4",
                                                    "echo 3"]


def test_file_modes(cluster):
    for node in (cluster.vps, cluster.desktop):
        assert stat.S_IMODE(os.stat(node.home).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.join(node.home, "curve.key")).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.join(node.home, "zpeer.db")).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.join(node.home, "config.json")).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(os.path.join(node.home, "d.sock")).st_mode)


def _connect_as_nobody(sock_path, groups):
    """Try a raw connect() to the socket as user nobody with the given extra groups."""
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print('connected')\n"
            "except PermissionError: print('denied')\n")
    return subprocess.run(["/usr/bin/python3", "-c", code, sock_path], user=65534, group=65534,
                          extra_groups=groups, capture_output=True, text=True,
                          timeout=10).stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to act as another user) and a system python3")
def test_group_access_to_cli_socket():
    base = tempfile.mkdtemp(prefix="zpeer-group-")
    os.chmod(base, 0o711)  # others may traverse to the node's dir, nothing more
    node = Node(base, "g1")
    try:
        node.d("setPeerConfig", "--role", "leader", "--id", "g1", "--bind",
               f"127.0.0.1:{free_port()}", check=0)
        node.start()
        sock = os.path.join(node.home, "d.sock")
        gid = grp.getgrnam("users").gr_gid
        assert _connect_as_nobody(sock, [gid]) == "denied"
        node.d("setPeerConfig", "--group", "users", check=0)
        assert stat.S_IMODE(os.stat(node.home).st_mode) == 0o710
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o770 and os.stat(sock).st_gid == gid
        assert _connect_as_nobody(sock, [gid]) == "connected"
        assert _connect_as_nobody(sock, []) == "denied"
        assert stat.S_IMODE(os.stat(os.path.join(node.home, "curve.key")).st_mode) == 0o600
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


NOBODY_PYTHONPATH = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
                                    + [p for p in __import__("sys").path
                                       if p.endswith("site-packages")])


def _d_as_nobody(home, *args, groups=()):
    """`d ARGS` run as user nobody (system python3, this checkout and its venv's packages)."""
    env = {"PATH": "/usr/bin:/bin", "ZPEER_HOME": home, "PYTHONPATH": NOBODY_PYTHONPATH}
    return subprocess.run(["/usr/bin/python3", "-m", "zpeer", *args], user=65534, group=65534,
                          extra_groups=list(groups), env=env, cwd="/", capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to act as another user) and a system python3")
def test_a_user_outside_the_group_is_told_it_is_a_permission_not_a_missing_daemon():
    base = tempfile.mkdtemp(prefix="zpeer-perm-")
    os.chmod(base, 0o711)
    node = Node(base, "p1")
    try:
        probe = _d_as_nobody(base, "--version")
        if probe.returncode != 0:
            pytest.skip("the system python3 cannot run this checkout as nobody: "
                        f"{probe.stderr[-300:]}")
        node.d("setPeerConfig", "--role", "leader", "--id", "p1", "--bind",
               f"127.0.0.1:{free_port()}", check=0)
        node.start()
        gid = grp.getgrnam("users").gr_gid
        why = ("Failed to connect\n  hint: permission denied: {} is open to its owner and the "
               "daemon's --group "
               "only (as root: `d setPeerConfig --group GROUP`, then join that group)\n")
        for groups, path in (((), node.home), ((gid,), node.home)):
            out = _d_as_nobody(node.home, "listPeers", groups=groups)
            assert (out.returncode, out.stderr) == (255, why.format(path)), groups
        node.d("setPeerConfig", "--group", "users", check=0)  # dir 0710, socket 0770 for users
        out = _d_as_nobody(node.home, "listPeers", groups=[])
        assert (out.returncode, out.stderr) == (255, why.format(node.home)), "not in the group"
        out = _d_as_nobody(node.home, "listPeers", "--ids", groups=[gid])
        assert (out.returncode, out.stdout, out.stderr) == (0, "p1\n", "")
        # settings are root's
        out = _d_as_nobody(node.home, "setPeerConfig", "--heartbeat", "2", groups=[gid])
        assert (out.returncode, out.stderr) == (255, (
            f"Cannot use ZPEER_HOME {node.home}: config.json: Permission denied\n  hint: this "
            "node's settings are "
            "its owner's: run the command as that user (e.g. `sudo d ...`)\n"))
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_workers_exec_on_itself_that_ends_while_the_leader_is_down_reaches_the_history(cluster):
    """The copies a worker sends of what it runs on itself wait for the leader: the row gets
    its status once the leader is back (before, it stayed without one for ever)."""
    go = cluster.laptop.home + "/go"
    run = subprocess.Popen(cluster.laptop.command + ["execOnPeer", "--peer", "laptop",
                                                     "--shellCmd",
                                                     f"until [ -e {go} ]; do sleep 0.05; done; "
                                                     "exit 3"],
                           env=cluster.laptop.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: [r for r in history(cluster.vps) if r["target"] == "laptop"],
                 what="the exec's row")
        cluster.vps.stop()
        open(go, "w").close()
        assert run.wait(20) == 3, run.stderr.read()
    finally:
        run.kill()
        run.wait()
    cluster.vps.start()
    wait_for(lambda: cluster.online("laptop"), what="laptop back")
    rows = wait_for(lambda: [r for r in history(cluster.vps)
                             if r["target"] == "laptop" and r["rc"] is not None],
                    timeout=15, what="the row's status after the leader came back")
    assert [(r["origin"], r["rc"], r["outcome"]) for r in rows] == [("laptop", 3, "exit")]


def test_the_history_says_what_a_fan_outs_cli_said_for_each_peer(cluster):
    cluster.laptop.stop()
    wait_for(lambda: not cluster.online("laptop"), what="laptop offline")
    out = cluster.vps.d("execOnPeer", "--peer", "all", "--shellCmd", "echo said", check=255)
    assert b"laptop: Peer offline: laptop" in out.stderr
    rows = wait_for(lambda: [r for r in history(cluster.vps) if r["command"] == "echo said"
                             and r["rc"] is not None] or None, what="the fan-out's rows")
    seen = sorted((r["target"], r["rc"], r["outcome"]) for r in rows)
    assert seen == [("desktop", 0, "exit"), ("laptop", 255, "peer_offline"), ("vps", 0, "exit")]


def test_the_audit_records_the_user_the_kernel_names_not_the_one_a_client_claims(cluster):
    """On aec630a the audit's local user was whatever the CLI said (a `--group` member could be
    recorded as `alice`): the daemon asks the kernel who is on the other end of the socket."""
    import pwd

    from zpeer.wire.ipc import Client

    me = pwd.getpwuid(os.getuid()).pw_name
    client = Client(cluster.desktop.home)
    try:
        reply = client.call("exec_open", targets=["laptop"], cmd="echo claimed", dir=None,
                            user=None, timeout=None, exclude=[], batch=0, stdin=False,
                            pid=os.getpid(), ouser="alice", wait_s=0, raw=False)
        sid = reply["sid"]
        while not reply.get("done"):
            reply = client.call("exec_poll", sid=sid, wait_s=1.0, raw=False)
    finally:
        client.close()

    def row():
        rows = [r for r in history(cluster.vps) if r["command"] == "echo claimed"]
        return rows[0] if rows and rows[0]["rc"] is not None else None

    assert wait_for(row, what="the audit row")["user"] == me != "alice"
