"""Enrolment paths beyond tokens: pending + acceptPeer, and re-keying a known id."""
import json
import os

import zmq
from helpers.nodes import wait_for


def test_pending_then_accepted_without_token(empty_cluster):
    c = empty_cluster
    c.leader()
    key = json.loads(c.vps.d("getPeerStatus", "--json", check=0).stdout)["public_key"]
    node = c.worker("tablet", "127.0.0.6", register=False)
    out = node.d("registerWorker", "--id", "tablet", "--leader", f"127.0.0.1:{c.port}",
                 "--leader-key", key, "--source-ip", "127.0.0.6", check=0)
    assert out.stdout == (b"Pending: tablet waits for `d acceptPeer tablet` on the leader "
                          b"127.0.0.1:%d\n") % c.port
    pending = json.loads(c.vps.d("listPeers", "--pending", "--json", check=0).stdout)
    assert [p["id"] for p in pending] == ["tablet"]
    # the plain list says someone waits; the lists for scripts do not
    lines = c.vps.d("listPeers", check=0).stdout.decode().splitlines()
    assert lines[-1] == "1 peer waits for `d acceptPeer`: `d listPeers --pending`", lines
    assert c.vps.d("listPeers", "--ids", check=0).stdout == b"vps\n"
    table = c.vps.d("listPeers", "--pending", check=0).stdout.decode()
    tablet_key = json.loads(node.d("getPeerStatus", "--json", check=0).stdout)["public_key"]
    assert table.splitlines()[0].split()[-1] == "KEY" and tablet_key in table
    out = node.d("listPeers", check=255)
    assert out.stderr.startswith(b"Not accepted by the leader yet: tablet is pending\n")
    wrong = ("Z" if tablet_key[0] != "Z" else "Y") + tablet_key[1:9]
    out = c.vps.d("acceptPeer", "tablet", "--key", wrong, check=255)
    refusal = f"The key waiting for tablet is {tablet_key}, not {wrong}"
    assert out.stderr.startswith(refusal.encode())
    assert not c.online("tablet")
    c.vps.d("setPeerConfig", "--heartbeat", "5", check=0)  # a pending peer says hello every 5 s now
    wait_for(lambda: b"heartbeat_s: 5.0" in node.d("getPeerStatus", check=0).stdout, timeout=5,
             what="the tablet told the new interval")
    c.vps.d("acceptPeer", "tablet", "--key", tablet_key[:8], check=0)
    # the leader calls it back at once: well before its next hello
    wait_for(lambda: c.online("tablet"), timeout=2.5, what="tablet accepted and online")
    assert "acceptPeer" not in c.vps.d("listPeers", check=0).stdout.decode()
    assert node.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo ok", check=0).stdout == b"ok\n"


def test_reinstalled_worker_must_be_reaccepted(cluster):
    laptop = cluster.laptop
    laptop.stop()
    for name in ("curve.key", "curve.pub"):
        os.unlink(os.path.join(laptop.home, name))
    laptop.start()  # same id, new key: the leader must not route to it as laptop
    status = wait_for(lambda: json.loads(laptop.d("getPeerStatus", "--json").stdout)
                      if b'"pending"' in laptop.d("getPeerStatus", "--json").stdout else None,
                      timeout=5, what="laptop pending with its new key")
    assert status["connected"] is False
    # the old link (old key) is gone: the leader lists laptop offline within 3 heartbeats
    wait_for(lambda: not cluster.online("laptop"), timeout=5, what="old laptop link offline")
    pending = json.loads(cluster.vps.d("listPeers", "--pending", "--json", check=0).stdout)
    assert [p["id"] for p in pending] == ["laptop"]
    cluster.vps.d("acceptPeer", "laptop", check=0)
    wait_for(lambda: cluster.online("laptop"), timeout=5, what="laptop back with its new key")
    out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo rekeyed", check=0)
    assert out.stdout == b"rekeyed\n"


def test_registering_while_the_leader_is_down_says_so_at_once_and_joins_once_it_is_up(
        empty_cluster):
    c = empty_cluster
    c.leader()
    key = json.loads(c.vps.d("getPeerStatus", "--json", check=0).stdout)["public_key"]
    c.vps.stop()
    node = c.worker("tablet", "127.0.0.6", register=False)
    out = node.d("registerWorker", "--id", "tablet", "--leader", f"127.0.0.1:{c.port}",
                 "--leader-key", key, "--source-ip", "127.0.0.6", check=255)
    assert out.stderr.decode() == (
        f"Not connected to leader\n  hint: nothing answers at 127.0.0.1:{c.port} now: this worker "
        "keeps trying "
        "and registers once the leader is up (`d getPeerStatus` shows when)\n")
    c.vps.start()  # no step on the worker: it asks to join by itself
    wait_for(lambda: b"tablet" in c.vps.d("listPeers", "--pending", "--ids").stdout, timeout=10,
             what="tablet pending once the leader is up")
    c.vps.d("acceptPeer", "tablet", check=0)
    wait_for(lambda: c.online("tablet"), timeout=10, what="tablet online")


def test_a_peer_id_that_reads_as_an_option_is_refused_but_one_enrolled_before_keeps_working(
        empty_cluster):
    from test_security import RawPeer, public_key

    from zpeer import config
    from zpeer.daemon.registry import Registry
    from zpeer.wire import keys, protocol

    c = empty_cluster
    c.leader()
    why = ("Invalid peer id: '-x' (ASCII letters, digits, '-', '_', '.', starting with a letter or "
           "digit; "
           "at most 64; not 'all')\n")
    node = c.worker("tablet", "127.0.0.6", register=False)
    out = node.d("setPeerConfig", "--role", "worker", "--id", "-x", "--leader", "127.0.0.1:1",
                 check=2)
    assert out.stderr.decode() == why
    # a look-alike of the leader's id, with a Cyrillic letter: refused as a new id
    out = node.d("registerWorker", "--id", "v\u0440s", "--token", c.token(), check=2)
    assert out.stderr.decode() == why.replace("'-x'", "'v\u0440s'")
    out = node.d("registerWorker", "--id", "-x", "--token", c.token(), check=2)
    assert out.stderr.decode() == why
    assert node.d("getPeerStatus", "--json", check=0).stdout.count(b'"-x"') == 0

    key = public_key(c.vps)
    c.vps.stop()  # '-old' enrolled before the rule: its row stays valid
    legacy = RawPeer(c.port, key, protocol.route_identity("-old"), "127.0.0.8")
    reg = Registry(config.path_in_home(config.DB_FILE, c.vps.home))
    reg.upsert("-old", ip="127.0.0.8", key=legacy.public.decode(), status="accepted", hostname="h",
               version="v", role="worker")
    reg.close()
    c.vps.start()
    new = RawPeer(c.port, key, protocol.route_identity("-new"), "127.0.0.10")
    try:
        for raw, peer_id, token in ((legacy, "-old", None),
                                    (new, "-new", keys.parse_token(c.token())["secret"])):
            raw.wait_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            hello = {"t": "hello", "rid": peer_id, "id": peer_id, "hostname": "h", "version": "v",
                     "role": "worker", "pid": 1}
            if token:
                hello["token"] = token
            raw.send(hello)
            raw.barrier()
        assert [(h["t"], h["status"]) for h in legacy.received] == [("welcome", "accepted")]
        assert [(h["t"], h["status"], h["reason"]) for h in new.received] == [
            ("welcome", "rejected", "invalid or reserved peer id '-new'")]
        assert c.vps.d("listPeers", "--ids", check=0).stdout == b"-old\nvps\n"
    finally:
        legacy.close()
        new.close()



def test_a_source_ip_or_advertised_address_that_is_not_an_ip_is_refused_before_anything_is_saved(
        empty_cluster):
    c = empty_cluster
    c.leader()
    node = c.worker("tablet", "127.0.0.6", register=False)
    for args in (("registerWorker", "--id", "tablet", "--token", c.token(), "--source-ip", "abc"),
                 ("setPeerConfig", "--role", "worker", "--id", "tablet", "--leader",
                  f"127.0.0.1:{c.port}", "--source-ip", "127.0.0.256"),
                 ("setPeerConfig", "--role", "leader", "--id", "x", "--advertise", "my-vps")):
        out = node.d(*args, check=2)
        value = args[-1]
        assert out.stderr.decode() == f"Invalid {args[-2]} {value!r}: not an IP address\n", args
    assert json.loads(node.d("getPeerStatus", "--json", check=0).stdout)["role"] is None
    out = node.d("registerWorker", "--id", "tablet", "--token", c.token(), "--source-ip",
                 "127.0.0.6", check=0)
    assert out.stdout.startswith(b"Registered: tablet")
    with open(os.path.join(node.home, "config.json")) as f:
        cfg = json.load(f)
    node.stop()
    with open(os.path.join(node.home, "config.json"), "w") as f:  # a hand edit
        json.dump(dict(cfg, source_ip="eth0 "), f)
    out = node.d("getPeerStatus", check=255)
    assert out.stderr.decode().startswith(f"Bad configuration in {node.home}/config.json: "
                                          "source_ip 'eth0 ': "
                                          "not an IP address\n")


def test_registering_while_the_local_daemon_is_down_says_it_registers_when_it_starts(empty_cluster):
    """SPEC: registerWorker needs the daemon (`Failed to connect`); the settings are saved, so the
    hint says what happens next instead of suggesting that nothing was done."""
    c = empty_cluster
    c.leader()
    node = c.worker("tablet", "127.0.0.6", start=False)
    out = node.d("registerWorker", "--id", "tablet", "--token", c.token(), "--source-ip",
                 "127.0.0.6", check=255)
    assert out.stderr.decode() == (
        "Failed to connect\n  hint: the daemon of this node is not running; the settings are "
        "saved, and it "
        f"registers with 127.0.0.1:{c.port} when it starts (`d daemon`, `systemctl start zpeer`)\n")
    node.start()
    wait_for(lambda: c.online("tablet"), timeout=10,
             what="tablet registered once its daemon started")


def test_a_token_given_on_stdin_or_in_a_file_never_stands_in_the_process_list(empty_cluster,
                                                                               tmp_path):
    """On aec630a `registerWorker --token` put the token in /proc/PID/cmdline, where a local
    user used it first: `--token -` reads it from stdin, `--token-file FILE` from a file; a
    missing, empty or doubled one is a usage error (2) that changes nothing."""
    c = empty_cluster
    c.leader()
    tablet = c.worker("tablet", "127.0.0.6", register=False)
    token_file = tmp_path / "zpeer.token"
    for args, why in (((), "No join token given: stdin (--token -) is empty"),
                      (("--token-file", str(token_file)),
                       f"Cannot read --token-file {token_file}: No such file or directory")):
        out = tablet.d("registerWorker", "--id", "tablet", *(args or ("--token", "-")),
                       input=b"", check=2)
        assert out.stderr.decode().splitlines()[0] == why
    token_file.write_text("\n")
    out = tablet.d("registerWorker", "--token-file", str(token_file), check=2)
    assert out.stderr.decode().splitlines()[0] == \
        f"No join token given: --token-file {token_file} is empty"
    out = tablet.d("registerWorker", "--token", "x", "--token-file", str(token_file), check=2)
    assert out.stderr.decode().splitlines()[0] == \
        "Give the join token once: --token or --token-file, not both"
    assert not c.online("tablet")
    out = tablet.d("registerWorker", "--id", "tablet", "--token", "-", "--source-ip", "127.0.0.6",
                   input=(c.token() + "\n").encode(), check=0)
    assert out.stdout.startswith(b"Registered: tablet is a worker of ")
    laptop = c.worker("laptop", "127.0.0.4", register=False)
    token_file.write_text(c.token() + "\n")
    out = laptop.d("registerWorker", "--id", "laptop", "--token-file", str(token_file),
                   "--source-ip", "127.0.0.4", check=0)
    assert out.stdout.startswith(b"Registered: laptop is a worker of ")
    wait_for(lambda: c.online("tablet") and c.online("laptop"), what="both enrolled")


def test_a_token_made_for_an_id_enrols_that_id_only(empty_cluster):
    c = empty_cluster
    c.leader()
    out = c.vps.d("joinToken", "--replace", check=2)
    assert out.stderr.decode().splitlines()[0] == \
        "--replace needs --id ID: a token rebinds the one id it is for"
    for_nas = c.vps.d("joinToken", "--id", "nas", check=0).stdout.decode().strip()
    tablet = c.worker("tablet", "127.0.0.6", register=False)
    out = tablet.d("registerWorker", "--id", "tablet", "--token", "-", "--source-ip", "127.0.0.6",
                   input=(for_nas + "\n").encode(), check=255)
    assert out.stderr.decode().startswith("Refused by the leader: join token refused: token is "
                                          "for peer nas")
    nas = c.worker("nas", "127.0.0.5", register=False)
    out = nas.d("registerWorker", "--id", "nas", "--token", "-", "--source-ip", "127.0.0.5",
                input=(for_nas + "\n").encode(), check=0)
    assert out.stdout.startswith(b"Registered: nas is a worker of ")


def test_join_token_count_prints_that_many_tokens_each_good_once(empty_cluster):
    """`d joinToken --count N`: N distinct tokens, one per line, each enrolling one peer once;
    with --id it is a usage error (one id, one token)."""
    c = empty_cluster
    c.leader()
    out = c.vps.d("joinToken", "--count", "3", check=0)
    tokens = out.stdout.decode().splitlines()
    assert len(tokens) == 3 == len(set(tokens)) and all(t.startswith("zpeer1.") for t in tokens)
    out = c.vps.d("joinToken", "--count", "2", "--id", "x", check=2)
    assert b"--count needs no --id" in out.stderr
    for n, token in enumerate(tokens[:2]):
        w = c.worker(f"bulk{n}", f"127.0.0.{20 + n}", register=False)
        out = w.d("registerWorker", "--id", f"bulk{n}", "--token", "-", "--source-ip",
                  f"127.0.0.{20 + n}", input=token.encode(), check=0)
        assert out.stdout.startswith(b"Registered: bulk%d" % n), out
    again = c.worker("bulk9", "127.0.0.29", register=False)
    out = again.d("registerWorker", "--id", "bulk9", "--token", "-", "--source-ip", "127.0.0.29",
                  input=tokens[0].encode(), check=255)
    assert b"token already used" in out.stderr
