"""Chaos: the leader is SIGKILLed and restarted in the middle of a 20-peer fan-out.

21 real worker daemons (20 targets w01..w20 and the origin `ops`) and the leader, all on loopback.
"""
import json
import os
import time

import pytest
from fleet import (
    DETECT_LIMIT_S,
    Stream,
    add_workers,
    kill_group,
    online_ids,
    pid_alive,
    report,
)
from helpers.nodes import wait_for

TARGETS = [f"w{i:02d}" for i in range(1, 21)]
FAST = set(TARGETS[:10])  # these finish before the fault; the others are still running


def _command(marks):
    """Each run appends its job id to marks/<peer> (counts runs) and records its shell's pid."""
    return (f'n=$(basename "$ZPEER_HOME"); echo "$ZPEER_JOB" >> {marks}/$n; echo $$ > '
            f'{marks}/$n.pid; echo "hello $n"; case $n in {"|".join(sorted(FAST))}) ;; *) exec '
            'sleep 30;; esac')


def _runs(marks, peer):
    """Job ids that ran on a peer, one per run."""
    path = os.path.join(marks, peer)
    return open(path).read().split() if os.path.exists(path) else []


@pytest.mark.timeout(120)
def test_leader_sigkill_and_restart_during_fanout(empty_cluster, tmp_path):
    c = empty_cluster
    marks = str(tmp_path / "marks")
    os.mkdir(marks)
    setup = time.monotonic()
    c.leader()
    ips = {name: f"127.0.0.{i + 2}" for i, name in enumerate(TARGETS + ["ops"])}
    add_workers(c, sorted(ips.items()))
    wait_for(lambda: online_ids(c.vps) == set(ips) | {"vps"}, timeout=15, what="22 peers online")
    setup = time.monotonic() - setup
    ops = c.nodes["ops"]

    fan = Stream(ops, "--json", "--peer", ",".join(TARGETS), "--shellCmd", _command(marks))
    def fast_done(lines):
        return {e["peer"] for e in map(json.loads, lines) if e["event"] == "exit"} >= FAST
    fan.wait_for_lines(fast_done, timeout=15, what="the fast half to finish")
    wait_for(lambda: all(os.path.exists(os.path.join(marks, f"{p}.pid")) for p in TARGETS),
             what="all started")
    pids = {p: int(open(os.path.join(marks, f"{p}.pid")).read()) for p in TARGETS}
    try:
        killed = time.monotonic()
        c.vps.kill()
        rc = fan.wait(timeout=15)
        detect = fan.ended - killed
        events = fan.events()
        ends = {}
        for e in events:
            if e["event"] in ("exit", "error"):
                assert e["peer"] not in ends, f"two verdicts for {e['peer']}"
                ends[e["peer"]] = e
        assert set(ends) == set(TARGETS)
        for peer in FAST:
            assert ends[peer]["event"] == "exit" and ends[peer]["rc"] == 0
            assert [e["data"] for e in events if e["peer"] == peer
                    and e["event"] == "stdout"] == [f"hello {peer}\n"]
        for peer in set(TARGETS) - FAST:
            assert ends[peer]["event"] == "error" and ends[peer]["code"] == "peer_lost", ends[peer]
            assert ends[peer]["message"].startswith("Lost the leader"), ends[peer]
        assert rc == 255 and detect <= DETECT_LIMIT_S, (rc, detect, fan.stderr)
        # the targets lost the leader too: they kill what they ran for a vanished origin
        wait_for(lambda: not any(pid_alive(pids[p]) for p in set(TARGETS) - FAST),
                 timeout=DETECT_LIMIT_S + 2, what="orphaned remote commands killed")
        killed_remote = time.monotonic() - killed
    finally:
        for pid in pids.values():
            kill_group(pid)

    restarted = time.monotonic()
    c.vps.start()
    wait_for(lambda: online_ids(c.vps) == set(ips) | {"vps"}, timeout=20,
             what="workers re-registered")
    recover = time.monotonic() - restarted
    peers = json.loads(c.vps.d("listPeers", "--json", check=0).stdout)
    assert {p["id"]: p["ip"] for p in peers if p["id"] != "vps"} == ips
    history = json.loads(c.vps.d("history", "--json", "--limit", "100", check=0).stdout)
    first_jobs = {_runs(marks, p)[0] for p in TARGETS}
    assert {r["job"] for r in history} >= first_jobs, "audit rows of the first fan-out lost"
    ended = {r["target"]: (r["rc"], r["outcome"]) for r in history if r["job"] in first_jobs}
    assert ended == {p: (0, "exit") if p in FAST
                     else (255, "leader_restarted") for p in TARGETS}, ended

    again = ops.d("execOnPeer", "--peer", ",".join(TARGETS), "--shellCmd",
                  f'n=$(basename "$ZPEER_HOME"); echo "$ZPEER_JOB" >> {marks}/$n; echo "again $n"',
                  check=0)
    assert sorted(again.stdout.decode().splitlines()) == sorted(f"{p}: again {p}" for p in TARGETS)
    for peer in TARGETS:
        runs = _runs(marks, peer)
        assert len(runs) == 2 and runs[0] in first_jobs and runs[1] not in first_jobs, (peer, runs)
    report("leader SIGKILL during 20-peer fan-out", daemons=22, setup=setup, detect=detect,
           remote_killed=killed_remote, recover_all_online=recover)
