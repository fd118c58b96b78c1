"""`d execOnPeer --gather` (as clush -b): identical stdouts shown once under their peers' ids,
folded into ranges; stderr, errors, summary and exit status as in any fan-out."""
import os
import signal
import subprocess

import pytest
from helpers.nodes import d_command, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from zpeer.targets import fold, peer_names

RULE = b"-" * 15 + b"\n"
NAME = "$(basename $ZPEER_HOME)"  # each test daemon's ZPEER_HOME ends in its peer id


def group(header, out):
    """One gathered block as --gather prints it."""
    return RULE + header + b"\n" + RULE + out


@pytest.mark.parametrize("ids, folded", [
    (["web1", "web2", "web3", "db1"], "db1,web[1-3]"),
    (["web1", "web3", "web4", "web7"], "web[1,3-4,7]"),
    (["node01", "node02", "node09", "node10"], "node[01-02,09-10]"),
    (["node8", "node9", "node10"], "node[8-10]"),
    (["n1", "n01"], "n01,n1"),
    (["vps", "laptop", "desktop"], "desktop,laptop,vps"),
    (["123", "124"], "123,124"),
    (["rack1-node2", "rack1-node3"], "rack1-node[2-3]"),
])
def test_fold_writes_ids_as_clush_does(ids, folded):
    assert fold(ids) == folded
    assert sorted(peer_names([folded])) == sorted(ids)


@settings(max_examples=300, deadline=None)
@given(st.sets(st.from_regex(r"\A[a-z]{1,3}(-?[0-9]{1,3})?\Z"), min_size=1, max_size=30))
def test_fold_is_the_inverse_of_ranges(ids):
    assert sorted(peer_names([fold(ids)])) == sorted(ids)


def test_identical_outputs_are_shown_once_and_the_rest_is_a_fan_out(shared_cluster):
    c = shared_cluster
    cmd = (f'case {NAME} in vps) echo leader;; *) echo worker; printf "\\377 no newline";; esac; '
           f'echo "err {NAME}" >&2; [ {NAME} = laptop ] && exit 3; true')
    out = c.desktop.d("execOnPeer", "--peer", "all", "--gather", "--shellCmd", cmd, check=3)
    assert out.stdout == (group(b"desktop,laptop (2)", b"worker\n\xff no newline\n")
                          + group(b"vps (1)", b"leader\n"))
    streamed, summary = out.stderr.split(b"--\n")
    assert sorted(streamed.splitlines()) == [b"desktop: err desktop", b"laptop: err laptop",
                                             b"vps: err vps"]
    assert summary == b"desktop: ok\nlaptop: rc 3\nvps: ok\n"


def test_gather_names_peers_offline_or_silent_only_in_the_summary(shared_cluster):
    c = shared_cluster
    out = c.vps.d("execOnPeer", "--peer", "vps,laptop", "-b", "--shellCmd",
                  f"[ {NAME} = vps ] || echo hi", check=0)
    assert out.stdout == group(b"laptop (1)", b"hi\n")
    assert out.stderr == b"--\nvps: ok\nlaptop: ok\n"


def test_a_big_output_leaves_the_gathering_and_streams_whole(shared_cluster):
    c = shared_cluster
    cmd = f"if [ {NAME} = laptop ]; then seq 1 300000; else echo small; fi"  # 2 MB: over 1 MiB
    out = c.vps.d("execOnPeer", "--peer", "all", "--gather", "--shellCmd", cmd, check=0)
    big = b"".join(b"laptop: %d\n" % i for i in range(1, 300001))
    assert out.stdout == big + group(b"desktop,vps (2)", b"small\n")


def test_gather_and_json_do_not_mix(shared_cluster):
    out = shared_cluster.vps.d("execOnPeer", "--peer", "all", "--gather", "--json", "--shellCmd",
                               "true", check=2)
    assert b"--gather and --json do not mix" in out.stderr


@pytest.mark.timeout(60)
def test_ctrl_c_still_prints_what_was_gathered(shared_cluster, tmp_path):
    c = shared_cluster
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(d_command() + ["execOnPeer", "--peer", "all", "--gather", "--shellCmd",
                                           f"echo before; touch {marks}/{NAME}; exec sleep 30"],
                            env=c.vps.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(os.listdir(marks)) == 3, timeout=15,
                 what="the command to run on every peer")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr
    assert stdout == group(b"desktop,laptop,vps (3)", b"before\n")
