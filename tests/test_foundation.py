"""Foundation: config, registration, listPeers, liveness, restarts, errors, dbSanityCheck."""
import json
import os
import re
import signal
import stat
import subprocess
import time

from helpers.nodes import TEST_HEARTBEAT_S, Node, d_command, free_port, wait_for

OFFLINE_WITHIN_S = 3 * TEST_HEARTBEAT_S + 1.0  # 3 intervals + slack for process scheduling


def test_state_dir_is_private_and_config_persists(tmp_path):
    node = Node(tmp_path, "n1")
    out = node.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind", "127.0.0.1:45999",
                 check=0)
    assert b"Saved: role=leader, id=vps, bind=127.0.0.1:45999" in out.stdout
    assert b"The daemon is not running" in out.stdout
    assert stat.S_IMODE(os.stat(node.home).st_mode) == 0o700
    status = json.loads(node.d("getPeerStatus", "--json", check=0).stdout)
    assert (status["role"], status["id"], status["daemon"]) == ("leader", "vps", "not running")


def test_registration_and_list_peers_from_leader_and_worker(cluster):
    expected = [("desktop", "127.0.0.2", "worker"), ("laptop", "127.0.0.4", "worker"),
                ("vps", "127.0.0.1", "leader")]
    for node in (cluster.vps, cluster.desktop, cluster.laptop):
        peers = json.loads(node.d("listPeers", "--json", check=0).stdout)
        assert [(p["id"], p["ip"], p["role"]) for p in peers] == expected
        assert all(p["online"] is True for p in peers)
        # the contract's keys, and the wall clock's difference to the leader's (shown only)
        assert all(set(p) == {"id", "ip", "role", "online", "last_seen", "version",
                              "clock_offset_s"} for p in peers)
        assert node.d("listPeers", "--ids", check=0).stdout == b"desktop\nlaptop\nvps\n"
    table = cluster.desktop.d("listPeers", check=0).stdout.decode().splitlines()
    assert table[0].split() == ["PEER", "IP", "ROLE", "STATUS", "LAST", "SEEN", "VERSION"]
    assert table[1].split()[:4] == ["desktop", "127.0.0.2", "worker", "online"]


def test_peers_cache_on_leader_and_workers(cluster):
    for node in (cluster.vps, cluster.desktop, cluster.laptop):
        path = os.path.join(node.home, "peers.cache")
        wait_for(lambda path=path: os.path.exists(path)
                 and open(path).read() == "desktop\nlaptop\nvps\n",
                 what=f"peers.cache on {node.name}")
    cluster.worker("tablet", "127.0.0.6")
    path = os.path.join(cluster.laptop.home, "peers.cache")
    wait_for(lambda: open(path).read() == "desktop\nlaptop\ntablet\nvps\n",
             what="cache update on laptop")


def test_get_peer_id_by_ip(cluster):
    assert cluster.laptop.d("getPeerIdByIp", "127.0.0.2", check=0).stdout == b"desktop\n"
    assert cluster.vps.d("getPeerIdByIp", "127.0.0.4", check=0).stdout == b"laptop\n"
    out = cluster.desktop.d("getPeerIdByIp", "127.0.0.99", check=1)
    assert out.stderr.startswith(b"No peer found with IP: 127.0.0.99\n")


def test_get_peer_status_of_worker(cluster):
    status = json.loads(cluster.desktop.d("getPeerStatus", "--json", check=0).stdout)
    assert status["role"] == "worker" and status["id"] == "desktop"
    assert status["connected"] is True and status["leader"] == f"127.0.0.1:{cluster.port}"
    assert len(status["public_key"]) == 40
    text = cluster.desktop.d("getPeerStatus", check=0).stdout.decode()
    assert "connected: yes" in text and "role: worker" in text


def test_offline_after_sigkill_and_sigstop(cluster):
    assert cluster.online("laptop")
    start = time.monotonic()
    cluster.laptop.kill()
    wait_for(lambda: not cluster.online("laptop"), timeout=OFFLINE_WITHIN_S, what="laptop offline")
    assert time.monotonic() - start <= OFFLINE_WITHIN_S
    out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "true", check=255)
    assert out.stderr.startswith(b"Peer offline: laptop (last seen ")
    cluster.desktop.stop(signal.SIGSTOP)
    wait_for(lambda: not cluster.online("desktop"), timeout=OFFLINE_WITHIN_S,
             what="desktop offline")
    cluster.desktop.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: cluster.online("desktop"), timeout=5, what="desktop back after SIGCONT")


def test_leader_restart_gets_workers_back(cluster):
    cluster.vps.stop()
    wait_for(lambda: b"Not connected to leader" in cluster.desktop.d("listPeers").stderr, timeout=5,
             what="worker to notice")
    out = cluster.desktop.d("listPeers")
    assert out.returncode == 255 and out.stderr.startswith(b"Not connected to leader\n  hint: ")
    # what the hint says to check agrees at once (not after the link's grace for running jobs)
    status = cluster.desktop.d("getPeerStatus", check=0).stdout.decode().splitlines()
    assert "connected: no" in status and "link: registered" in status
    # not the enrolment's stale word ("enrolled with a join token"): since when the leader is silent
    assert re.fullmatch(r"link_reason: no answer from the leader for \d+ s",
                        next(line for line in status if line.startswith("link_reason: "))), status
    cluster.vps.start()
    up = time.monotonic()
    wait_for(lambda: cluster.online("desktop") and cluster.online("laptop"), timeout=5,
             what="workers re-registered")
    assert time.monotonic() - up < 5
    assert cluster.desktop.d("listPeers", "--ids", check=0).stdout == b"desktop\nlaptop\nvps\n"


def test_worker_restart_same_id(cluster):
    cluster.laptop.kill()
    cluster.laptop.start()
    wait_for(lambda: cluster.online("laptop"), timeout=5, what="laptop back")
    peers = json.loads(cluster.vps.d("listPeers", "--json", check=0).stdout)
    assert [p["id"] for p in peers] == ["desktop", "laptop", "vps"]


def test_error_phrases(tmp_path, cluster):
    lone = Node(tmp_path, "lone")
    start = time.monotonic()
    out = lone.d("listPeers")
    assert time.monotonic() - start < 3
    assert out.returncode == 255 and out.stderr.startswith(b"Failed to connect\n  hint: ")
    out = cluster.desktop.d("execOnPeer", "--peer", "ghost", "--shellCmd", "true", check=255)
    assert out.stderr.startswith(b"Peer not found: ghost\n  hint: run `d listPeers`")
    out = cluster.vps.d("execOnPeer", "--peer", "ghost", "--shellCmd", "true", check=255)
    assert out.stderr.startswith(b"Peer not found: ghost\n")
    cluster.vps.stop()
    wait_for(lambda: cluster.desktop.d("listPeers").returncode == 255, timeout=5, what="link down")
    out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "true", check=255)
    assert out.stderr.startswith(b"Not connected to leader\n")


def test_a_bind_address_in_use_is_a_clear_error_and_a_live_change_to_it_changes_nothing(
        cluster, tmp_path):
    import socket
    import subprocess

    from helpers.nodes import d_command

    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        why = f"Cannot listen on {taken}: Address already in use"
        hint = ("  hint: another process may hold the port (`ss -ltnp`), or the address is not one "
                "of this host's (`ip addr`; WireGuard up?): fix it with `d setPeerConfig --bind "
                "HOST:PORT`")
        # a running leader: refused, and it keeps serving where it was, config.json included
        before = open(os.path.join(cluster.vps.home, "config.json"), "rb").read()
        out = cluster.vps.d("setPeerConfig", "--bind", taken, check=255)
        assert (out.stdout, out.stderr.decode()) == (b"", f"{why} (nothing changed)\n{hint}\n")
        assert open(os.path.join(cluster.vps.home, "config.json"), "rb").read() == before
        wait_for(lambda: cluster.online("desktop") and cluster.online("laptop"), timeout=5,
                 what="workers back")
        out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo still",
                                check=0)
        assert out.stdout == b"still\n"
        # a leader starting on it: the same words, exit 255, no traceback
        node = Node(tmp_path, "solo", "127.0.0.1")
        node.d("setPeerConfig", "--role", "leader", "--id", "solo", "--bind", taken, check=0)
        daemon = subprocess.run(d_command() + ["daemon"], env=node.env, capture_output=True,
                                timeout=20, stdin=subprocess.DEVNULL)
        assert (daemon.returncode, daemon.stderr.decode().splitlines()[-2:]) == (255, [why, hint])
    finally:
        held.close()


def test_config_change_applied_by_running_daemon(cluster):
    out = cluster.vps.d("setPeerConfig", "--advertise", "127.0.0.1", check=0)
    assert b"Applied by the running daemon." in out.stdout
    out = cluster.laptop.d("setPeerConfig", "--source-ip", "127.0.0.5", check=0)
    assert b"Applied by the running daemon." in out.stdout
    wait_for(lambda: cluster.vps.d("getPeerIdByIp", "127.0.0.5").stdout == b"laptop\n", timeout=5,
             what="laptop to reconnect from its new source address")


def test_db_sanity_check_on_worker_that_was_leader(empty_cluster):
    c = empty_cluster
    c.leader("old")
    c.worker("w1", "127.0.0.2")
    c.vps.d("execOnPeer", "--peer", "w1", "--shellCmd", "true", check=0)
    c.vps.stop()
    c.vps.d("setPeerConfig", "--role", "worker", "--leader", "127.0.0.1:1", check=0)
    out = c.vps.d("dbSanityCheck", "--dry-run", check=0).stdout.decode()
    assert "integrity: ok" in out and "leader-only peer: 2 rows, would delete" in out
    out = c.vps.d("dbSanityCheck", check=0).stdout.decode()
    assert "leader-only peer: 2 rows, deleted" in out
    assert "leader-only exec_log: 1 rows, deleted" in out
    out = c.vps.d("dbSanityCheck", check=0).stdout.decode()
    assert "leader-only peer: 0 rows" in out


def test_second_daemon_refuses(cluster):
    proc = cluster.vps
    import subprocess

    from helpers.nodes import d_command

    second = subprocess.run(d_command() + ["daemon"], env=proc.env, capture_output=True, timeout=10)
    assert second.returncode == 255
    assert b"Another daemon already runs for" in second.stderr
    assert cluster.vps.d("listPeers", "--ids", check=0).returncode == 0


def test_a_frozen_daemon_fails_a_call_at_its_deadline_and_the_next_call_works(tmp_path):
    from zpeer.errors import FailedToConnect
    from zpeer.wire.ipc import Client

    node = Node(tmp_path, "n1")
    node.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind", f"127.0.0.1:{free_port()}",
           check=0)
    node.start()
    client = Client(node.home)
    try:
        assert client.call("ping", timeout_s=2)["pong"]
        node.proc.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        try:
            client.call("ping", timeout_s=0.3)
            raise AssertionError("a frozen daemon answered")
        except FailedToConnect as exc:
            assert "did not answer in time" in exc.hint
        assert 0.3 <= time.monotonic() - start < 2.0
        node.proc.send_signal(signal.SIGCONT)
        assert client.call("ping", timeout_s=2)["pong"]  # a fresh socket: no stale reply read
    finally:
        client.close()
        node.proc.send_signal(signal.SIGCONT)
        node.stop()


def test_a_zpeer_home_too_deep_for_a_unix_socket_is_a_clear_error(tmp_path):
    import subprocess

    from helpers.nodes import d_command

    home = tmp_path / ("x" * max(1, 110 - len(str(tmp_path))))
    sock = f"{home}/d.sock"
    why = (f"ZPEER_HOME is too deep for the CLI's socket: {sock} has {len(sock)} characters, "
           f"a Unix socket's path at most 107")
    env = dict(os.environ, ZPEER_HOME=str(home))
    daemon = subprocess.run(d_command() + ["daemon"], env=env, capture_output=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert (daemon.returncode, daemon.stderr.decode().splitlines()[-2:]) == (
        255, [why, "  hint: use a shorter ZPEER_HOME"])
    cli = subprocess.run(d_command() + ["listPeers"], env=env, capture_output=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    assert (cli.returncode, cli.stdout, cli.stderr.decode()) == (
        255, b"", f"Failed to connect\n  hint: {why}: use a shorter ZPEER_HOME\n")


def test_seconds_that_are_not_finite_are_refused_and_a_bad_config_file_is_a_clear_error(tmp_path):
    node = Node(tmp_path, "n1")
    node.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind", f"127.0.0.1:{free_port()}",
           check=0)
    path = os.path.join(node.home, "config.json")
    node.start()
    try:
        for flag, value, command in (("--heartbeat", "nan", ["setPeerConfig"]),
                                     ("--timeout", "inf",
                                      ["execOnPeer", "--peer", "vps", "--shellCmd", "true"]),
                                     ("--timeout", "nan",
                                      ["execOnPeer", "--peer", "vps", "--shellCmd", "true"]),
                                     ("--timeout", "nan", ["remotePull", "--peer", "vps"])):
            out = node.d(*command, flag, value, check=2)
            said = f"Error: Invalid value for '{flag}': {value!r} is not a number of seconds."
            assert out.stderr.decode().splitlines()[-1] == said, command
        assert json.load(open(path))["heartbeat_s"] == 1.0
        assert node.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo alive",
                      check=0).stdout == b"alive\n"
    finally:
        node.stop()
    assert node.proc.returncode == 0

    cfg = json.load(open(path))
    with open(path, "w") as f:  # a hand edit (json writes NaN, and Python's json reads it back)
        json.dump(dict(cfg, heartbeat_s=float("nan")), f)
    why = (f"Bad configuration in {path}: heartbeat_s must be a number of seconds from 0.05 to 60, "
           "not nan\n"
           "  hint: set it again with `d setPeerConfig` (see `d setPeerConfig --help`), or edit "
           "the file\n")
    for args in (("daemon",), ("getPeerStatus",), ("setPeerConfig", "--role", "leader")):
        out = node.d(*args, check=255)
        assert out.stderr.decode() == why, args
    node.d("setPeerConfig", "--heartbeat", "0.5", check=0)  # the setting at fault repairs the file
    assert json.load(open(path))["heartbeat_s"] == 0.5

    with open(path, "w") as f:
        f.write("{")
    out = node.d("getPeerStatus", check=255)
    assert out.stderr.decode() == (
        f"Bad configuration in {path}: not JSON: Expecting property name enclosed in double "
        "quotes: line 1 "
        "column 2 (char 1)\n  hint: fix the file, or remove it and set this node up again "
        "(`d setPeerConfig`, `d registerWorker`)\n")
    assert node.d("setPeerConfig", "--heartbeat", "0.5", check=255).stderr == out.stderr


def test_config_problem_names_each_value_a_hand_edit_can_break():
    from zpeer import config

    good = dict(config.DEFAULTS, role="worker", id="laptop", leader="127.0.0.1:3520")
    assert config.config_problem(good) is None
    for change, problem in (
            ({"heartbeat_s": True},
             "heartbeat_s must be a number of seconds from 0.05 to 60, not True"),
            ({"heartbeat_s": "1"},
             "heartbeat_s must be a number of seconds from 0.05 to 60, not '1'"),
            ({"heartbeat_s": float("inf")},
             "heartbeat_s must be a number of seconds from 0.05 to 60, not inf"),
            ({"heartbeat_budget": 0},
             "heartbeat_budget must be a whole number from 1 to 1000000, not 0"),
            ({"heartbeat_budget": 2.5},
             "heartbeat_budget must be a whole number from 1 to 1000000, not 2.5"),
            ({"history_rows": -5},
             "history_rows must be a whole number from 0 to 1000000000, not -5"),
            ({"history_rows": None},
             "history_rows must be a whole number from 0 to 1000000000, not None"),
            ({"role": "boss"}, "role must be leader or worker, not 'boss'"),
            ({"id": "a b"}, "invalid peer id 'a b'"),
            ({"leader": 3520}, "leader 3520: not HOST[:PORT]"),
            ({"bind": "h:99999"}, "bind 'h:99999': bad port in 'h:99999'"),
            ({"group": ["wheel"]}, "group must be a string, not ['wheel']")):
        assert config.config_problem(dict(good, **change)) == problem
    # enrolled before ids had to start with a letter
    assert config.config_problem(dict(good, id="-old")) is None


def test_a_damaged_database_stops_a_leader_with_a_clear_error_and_a_worker_starts_afresh(tmp_path):
    leader = Node(tmp_path, "lead")
    leader.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind",
             f"127.0.0.1:{free_port()}", check=0)
    db = os.path.join(leader.home, "zpeer.db")
    with open(db, "wb") as f:
        f.write(b"not sqlite at all" * 100)
    why = (f"Bad database {db}: file is not a database\n"
           f"  hint: restore it from a backup, or move it away (`mv {db} {db}.bad`) to start with "
           "an "
           "empty registry: every worker must then enrol again (`d joinToken`)\n")
    out = leader.d("daemon", check=255)
    assert out.stderr.decode().endswith(why)
    out = leader.d("dbSanityCheck", check=1)
    assert (out.stdout.decode(),
            out.stderr.decode()) == ("integrity: FAILED: file is not a database\n",
                                                          why[why.index("  hint"):])

    worker = Node(tmp_path, "work")  # a worker's database holds nothing it needs: no manual step
    worker.d("setPeerConfig", "--role", "worker", "--id", "w1", "--leader", "127.0.0.1:1", check=0)
    db = os.path.join(worker.home, "zpeer.db")
    with open(db, "wb") as f:
        f.write(b"not sqlite at all" * 100)
    worker.start()
    try:
        aside = [n for n in os.listdir(worker.home) if n.startswith("zpeer.db.bad-")]
        moved = os.path.join(worker.home, aside[0])
        assert len(aside) == 1 and open(moved, "rb").read() == b"not sqlite at all" * 100
        assert f"Bad database {db}: file is not a database: moved to {moved}" in worker.log()
        assert worker.d("dbSanityCheck", check=0).stdout.decode().startswith("integrity: ok\n")
    finally:
        worker.stop()


def test_a_home_that_is_a_file_or_a_damaged_key_is_an_error_and_a_stale_public_key_is_rewritten(
        tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    node = Node(tmp_path, "afile")
    why = (f"Cannot use ZPEER_HOME {afile}: Not a directory\n"
           "  hint: ZPEER_HOME names the node's state directory: point it at a directory (or at "
           "none)\n")
    for args in (("daemon",), ("getPeerStatus",),
                 ("setPeerConfig", "--role", "leader", "--id", "vps"), ("dbSanityCheck",)):
        out = node.d(*args, check=255)
        assert out.stderr.decode().endswith(why), args

    node = Node(tmp_path, "n1")
    node.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind", f"127.0.0.1:{free_port()}",
           check=0)
    node.start()
    node.stop()
    public = json.loads(node.d("getPeerStatus", "--json", check=0).stdout)["public_key"]
    key_path = os.path.join(node.home, "curve.key")
    secret = open(key_path, "rb").read()
    with open(key_path, "wb") as f:
        f.write(b"garbage\n")
    out = node.d("daemon", check=255)
    assert out.stderr.decode().endswith(
        f"Bad key file {key_path}: secret key must be a 40 byte z85 encoded string\n"
        "  hint: restore it from a backup, or remove it and curve.pub to make a new key pair: a "
        "new "
        "key is a new identity (a worker enrols again; a leader's workers all do)\n")
    with open(key_path, "wb") as f:
        f.write(secret)
    with open(os.path.join(node.home, "curve.pub"), "w") as f:
        # a stale or hand-edited copy: getPeerStatus would show a wrong key
        f.write("x" * 40 + "\n")
    node.start()
    node.stop()
    assert json.loads(node.d("getPeerStatus", "--json", check=0).stdout)["public_key"] == public


def test_demo_cleans_up_when_its_terminal_closes(tmp_path):
    # its daemons run in sessions of their own: a demo killed by SIGHUP left all three running
    base = None
    demo = subprocess.Popen(d_command() + ["demo"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        first = demo.stdout.readline().decode()
        base = first.rsplit(" state in ", 1)[1].strip()
        for line in iter(demo.stdout.readline, b""):
            if line.startswith(b"[vps]$ d listPeers"):  # all three daemons serve by now
                break
        demo.send_signal(signal.SIGHUP)
        assert demo.wait(30) == 130
        assert b"\ninterrupted: stopping the demo daemons\n" in demo.stderr.read()
        assert not os.path.exists(base)
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit()
                    and _has_home_under(pid, base)]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
        demo.stderr.close()
        for pid in [p for p in os.listdir("/proc") if p.isdigit() and base
                    and _has_home_under(p, base)]:
            # only if the demo failed to: its daemons, by their home
            os.kill(int(pid), signal.SIGKILL)


def _has_home_under(pid, base):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"ZPEER_HOME={base}/".encode() in f.read()
    except OSError:  # gone, or not ours to read
        return False
