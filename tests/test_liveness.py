"""Liveness at fleet scale: the leader stretches the heartbeat interval to its budget, workers
follow it without dropping offline, and a worker redials a leader link that went silent."""
import json
import time

import pytest
from helpers.nodes import TEST_HEARTBEAT_S, wait_for

from zpeer.daemon.peer_table import beat_interval_s


@pytest.mark.parametrize("base_s, peers, budget, expected", [
    (1.0, 3, 400, 1.0),        # a small fleet beats at the configured interval
    (1.0, 400, 400, 1.0),      # exactly the budget
    (1.0, 401, 400, 1.5),      # one more: the next 0.5 s step
    (1.0, 1000, 400, 2.5),     # 1,000 peers: 400 beats/s, offline after 7.5 s of silence
    (0.3, 2, 4, 0.5),
    (0.3, 0, 4, 0.3),
    (5.0, 1000, 400, 5.0),     # a configured interval longer than needed stays
    (1.0, 50, 0, 50.0),        # a nonsensical budget counts as 1 beat/s, never a division by 0
])
def test_beat_interval(base_s, peers, budget, expected):
    assert beat_interval_s(base_s, peers, budget) == expected


def _interval(node):
    return json.loads(node.d("getPeerStatus", "--json", check=0).stdout)["heartbeat_s"]


def _all_online_throughout(cluster, seconds):
    """Every worker stays listed online on the leader for the whole window (polled, not slept)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ids = cluster.vps.d("listPeers", "--ids", "--online", check=0).stdout.split()
        assert ids == [b"desktop", b"laptop", b"vps"], ids


def test_leader_stretches_and_shrinks_the_interval_without_dropping_peers(cluster):
    assert _interval(cluster.vps) == _interval(cluster.desktop) == TEST_HEARTBEAT_S
    out = cluster.vps.d("setPeerConfig", "--heartbeat-budget", "4", check=0)
    assert out.stdout == b"Saved: heartbeat_budget=4\nApplied by the running daemon.\n"
    # 2 workers at 4 beats/s: 0.5 s; workers learn it from their next heartbeat reply
    assert _interval(cluster.vps) == 0.5
    wait_for(lambda: _interval(cluster.desktop) == 0.5 and _interval(cluster.laptop) == 0.5,
             what="workers to adopt the stretched interval")
    _all_online_throughout(cluster, 6 * 0.5)
    out = cluster.vps.d("setPeerConfig", "--heartbeat-budget", "400", check=0)
    assert out.returncode == 0 and _interval(cluster.vps) == TEST_HEARTBEAT_S
    wait_for(lambda: _interval(cluster.desktop) == TEST_HEARTBEAT_S,
             what="workers back at the base interval")
    # the shorter silence limit only applies once every worker beats at the shorter interval
    _all_online_throughout(cluster, 6 * TEST_HEARTBEAT_S)
    assert cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo ok",
                             check=0).stdout == b"ok\n"


def test_setting_a_budget_on_a_worker_keeps_its_link(cluster):
    before = json.loads(cluster.desktop.d("getPeerStatus", "--json", check=0).stdout)
    out = cluster.desktop.d("setPeerConfig", "--heartbeat-budget", "50", check=0)
    assert out.stdout == b"Saved: heartbeat_budget=50\nApplied by the running daemon.\n"
    after = json.loads(cluster.desktop.d("getPeerStatus", "--json", check=0).stdout)
    assert after["connected"] is True and after["heartbeat_s"] == before["heartbeat_s"]
    out = cluster.vps.d("execOnPeer", "--peer", "desktop", "--shellCmd", "echo same link", check=0)
    assert out.stdout == b"same link\n"


def test_budget_out_of_range_is_a_usage_error(cluster):
    out = cluster.vps.d("setPeerConfig", "--heartbeat-budget", "0", check=2)
    assert b"Invalid value for '--heartbeat-budget'" in out.stderr


def test_a_killed_worker_is_offline_at_once_not_after_the_silence_limit(cluster):
    """The leader sees the connection close (FIN from the dead process's kernel): with a 2 s
    interval (silence limit 6 s) the peer is still listed offline, and refused, within 1.5 s."""
    cluster.vps.d("setPeerConfig", "--heartbeat-budget", "1", check=0)  # 2 workers: every 2 s
    wait_for(lambda: _interval(cluster.laptop) == 2.0, what="laptop to beat every 2 s")
    killed = time.monotonic()
    cluster.laptop.kill()
    wait_for(lambda: not cluster.online("laptop"), timeout=1.5, what="laptop listed offline")
    out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "true", check=255)
    assert out.stderr.startswith(b"Peer offline: laptop (last seen ")
    assert time.monotonic() - killed < 6.0
    cluster.laptop.start()
    wait_for(lambda: cluster.online("laptop"), what="laptop back after its restart")
    assert cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo back",
                             check=0).stdout == b"back\n"
