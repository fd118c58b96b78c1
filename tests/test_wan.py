"""Real links: workers behind relays on network namespaces (tests/helpers/netlab.py), with real
TCP, a kernel token bucket for a slow uplink and a userspace relay for delay.

Each test makes its own namespaces and relays and removes them, and stops every daemon it
started, by its own handles. They need root and /dev/net/tun (CI has both); elsewhere they are
skipped with the reason.
"""
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
from helpers import curve_stream, netlab
from helpers.netlab import LEADER_IP, Lab, in_namespace
from helpers.nodes import wait_for
from helpers.wan import LEADER_PORT, WanCluster

HERE = os.path.dirname(os.path.abspath(__file__))
WAN_HEARTBEAT_S = 1.0  # the default: what users run
SLOW_UPLINK_MBIT = 1
STREAM_LINES = 120000  # `seq 1 120000`: 763 KB, about 6 s at 1 Mbit/s
# the promise is 1 s, and so the median; any one probe (a CLI started on a loaded machine) has
# until well within the silence limit (bench/wan.py measures the latencies)
# a probe's whole CLI call; on a loaded 2-core machine the CLI's own start is up to a second of
# it (on aec630a probes never answered)
PROBE_MAX_S = 5.0
PROBE_MEDIAN_MAX_S = 1.5
RTT_ONE_WAY_MS = 50

why_not = netlab.unavailable()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


@pytest.fixture
def lab():
    """A fresh lab; every namespace and relay it made is gone afterwards."""
    with Lab() as made:
        yield made


@pytest.fixture
def wan(lab, tmp_path):
    """A cluster on the lab: the leader `vps` only (tests add workers with their links)."""
    cluster = WanCluster(tmp_path, lab, heartbeat_s=WAN_HEARTBEAT_S)
    try:
        cluster.leader()
        yield cluster
    finally:
        cluster.stop()


def seq_bytes(n):
    """What `seq 1 N` prints."""
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


@pytest.mark.timeout(90)
def test_a_slow_uplink_streams_while_control_and_probes_keep_moving(wan):
    """A worker on a 1 Mbit/s uplink streams flat out: the stream completes byte-exact, the
    worker stays online throughout, and a probe to it from another node answers within about
    a second each time (on aec630a: exit 255 `disconnected mid-command`, probes "did not
    answer")."""
    laptop = wan.worker("laptop", uplink_mbit=SLOW_UPLINK_MBIT)
    desktop = wan.worker("desktop")
    out_path = os.path.join(str(wan.base), "stream.out")
    with open(out_path, "wb") as out:
        stream = subprocess.Popen(wan.vps.command + ["execOnPeer", "--peer", "laptop",
                                                     "--shellCmd", f"seq 1 {STREAM_LINES}"],
                                  env=wan.vps.env, stdout=out, stderr=subprocess.PIPE)
    probes, offline = [], []
    try:
        while stream.poll() is None:
            started = time.monotonic()
            probe = desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo probe")
            probes.append((time.monotonic() - started, probe.returncode, probe.stdout,
                           probe.stderr[-300:]))
            if not wan.online("laptop"):
                offline.append(time.monotonic())
        err = stream.stderr.read()
    finally:
        if stream.poll() is None:
            stream.kill()
        stream.wait(10)
        stream.stderr.close()
    assert (stream.returncode, err) == (0, b"")
    with open(out_path, "rb") as f:
        assert f.read() == seq_bytes(STREAM_LINES)
    assert len(probes) >= 3, probes
    assert [p[1:3] for p in probes] == [(0, b"probe\n")] * len(probes), probes
    assert max(p[0] for p in probes) < PROBE_MAX_S, probes
    assert statistics.median(p[0] for p in probes) < PROBE_MEDIAN_MAX_S, probes
    assert statistics.median(p[0] for p in probes) < 1.0, probes
    assert offline == []
    assert laptop.proc.poll() is None


@pytest.mark.timeout(90)
def test_a_stream_through_the_leader_from_a_peer_100ms_away_keeps_near_plain_curvezmq(wan):
    """5 MB from a peer behind a 100 ms round trip to another peer, through the leader:
    byte-exact and within a small factor of a plain CurveZMQ stream over the same link (on
    aec630a: 15x; bench/wan.py measures the ratio)."""
    laptop = wan.worker("laptop", delay_ms=RTT_ONE_WAY_MS)
    desktop = wan.worker("desktop")
    payload = os.urandom(5_000_000)
    path = os.path.join(str(wan.base), "payload.bin")
    with open(path, "wb") as f:
        f.write(payload)
    baseline_s = curve_stream.baseline_s(wan.lab, laptop.link, len(payload), wan.base)
    started = time.monotonic()
    got = desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", f"cat {path}", timeout=60)
    took_s = time.monotonic() - started
    assert (got.returncode, got.stderr) == (0, b"")
    assert got.stdout == payload
    # the CLI's start and the exec's round trip come on top of the stream (bench/wan.py: 1.8x
    # of the baseline with them); a bound a loaded machine keeps
    assert took_s < 3 * baseline_s + 1.0, (took_s, baseline_s)


@pytest.mark.timeout(120)
def test_fifty_concurrent_clis_to_a_peer_100ms_away_all_succeed(wan):
    """50 CLIs at once, 109 KB of output each, to a peer behind a 100 ms round trip: every one
    exits 0 with its exact bytes (on aec630a: 16-50 of 50 failed "did not answer")."""
    wan.worker("laptop", delay_ms=RTT_ONE_WAY_MS)
    desktop = wan.worker("desktop")
    path = os.path.join(str(wan.base), "out.bin")
    payload = os.urandom(109_000)
    with open(path, "wb") as f:
        f.write(payload)
    results = [None] * 50

    def run(i):
        results[i] = desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", f"cat {path}",
                               timeout=90)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
    failed = [(i, r.returncode, r.stderr[-200:]) for i, r in enumerate(results)
              if r is None or r.returncode != 0 or r.stdout != payload]
    assert failed == []
    wait_for(lambda: wan.online("laptop"), what="laptop to stay online")


HANDOVER_CLIENT = os.path.join(HERE, "helpers", "handover_client.py")
HANDOVER_ROUNDS = 20
HANDOVER_UPLINK_MBIT = 4
HANDOVER_MESSAGE_BYTES = 500_000  # 1 s at 4 Mbit/s: the new connection's handshake ends first
OLD_ZMTP_PING_S = 10.0  # aec630a's leader pinged every 10 s: its abort came at the next ping


@pytest.mark.timeout(120)
def test_the_leader_lives_through_routes_taken_back_mid_message(wan, lab):
    """A connection on a slow uplink hands its route to a new one (a worker's redial) while
    its message is half-received, then ends with a reset, 20 times: the leader stays alive and
    answers, past the time of its old ZMTP ping (on aec630a it aborted at that ping: `Assertion
    failed: !_io_error (src/stream_engine_base.cpp:310)`; reverting the fix fails this test)."""
    link = lab.link()
    link.uplink_rate(HANDOVER_UPLINK_MBIT)
    with open(os.path.join(wan.vps.home, "curve.pub")) as f:
        leader_key = f.read().strip()
    started = time.monotonic()
    client = subprocess.run(
        [sys.executable, HANDOVER_CLIENT, f"{LEADER_IP}:{LEADER_PORT}", leader_key,
         str(HANDOVER_ROUNDS), str(HANDOVER_MESSAGE_BYTES)],
        capture_output=True, text=True, timeout=90, preexec_fn=in_namespace(link.ns))
    assert wan.vps.proc.poll() is None, f"the leader ended: {wan.vps.proc.returncode}"
    assert (client.returncode, client.stdout.splitlines()[-1:]) == (0, ["done"]), client.stderr
    mid_message = client.stdout.count("mid-message")
    # the scenario, often (a loaded leader may finish its handshake only after the message)
    assert mid_message >= HANDOVER_ROUNDS // 4, client.stdout
    # the old engines' timers would fire within their interval: the leader must outlive it
    while time.monotonic() < started + OLD_ZMTP_PING_S + 2 * WAN_HEARTBEAT_S:
        assert wan.vps.proc.poll() is None, wan.vps.proc.returncode
        assert wan.vps.d("listPeers", "--ids").returncode == 0
    assert wan.vps.proc.poll() is None


ROAM_LINES = 12
ROAM_COMMAND = f"for i in $(seq 1 {ROAM_LINES}); do echo line $i; sleep 0.4; done"


def run_across(cluster, command, lines, event):
    """Run command on the laptop from the leader's CLI; once its first `lines` lines are in,
    make `event` happen; (exit status, the rest of stdout, stderr)."""
    proc = subprocess.Popen(cluster.vps.command + ["execOnPeer", "--peer", "laptop",
                                                   "--shellCmd", command],
                            env=cluster.vps.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in range(1, lines + 1):
            assert proc.stdout.readline() == b"line %d\n" % i
        event()
        rest, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, rest, err


def listed_ip(cluster, name):
    """The IP the leader lists for a peer."""
    import json

    out = cluster.vps.d("listPeers", "--json")
    assert out.returncode == 0, out
    return {p["id"]: p["ip"] for p in json.loads(out.stdout)}[name]


@pytest.mark.timeout(60)
def test_a_peer_that_roams_to_a_new_address_keeps_its_command_and_output(wan):
    """The laptop's address changes while a command prints a line every 0.4 s: the command
    runs to its end, every line arrives once and in order, exit 0, and listPeers shows the new
    address (on aec630a: killed, exit 255). Its link goes silent at the move, the worker
    redials within 2 intervals, and what the old connection lost is sent again."""
    laptop = wan.worker("laptop")
    old_ip = laptop.link.address
    assert listed_ip(wan, "laptop") == old_ip
    returncode, rest, err = run_across(wan, ROAM_COMMAND, 1, lambda: laptop.link.move(3))
    expected = b"".join(b"line %d\n" % i for i in range(2, ROAM_LINES + 1))
    assert (returncode, rest, err) == (0, expected, b"")
    new_ip = laptop.link.address
    assert new_ip != old_ip
    wait_for(lambda: listed_ip(wan, "laptop") == new_ip, timeout=10, what="the new address")
    assert wan.online("laptop")


OUTAGE_S = 1.8  # under the 3 intervals after which a peer is offline, past the redial at 2
OUTAGE_LINES = 30


@pytest.mark.timeout(60)
def test_a_link_silent_for_less_than_the_limit_keeps_the_command_and_every_byte(wan):
    """The laptop's link drops every packet for 1.8 s while a command prints a line every
    0.2 s: the worker redials, what the old connection lost is sent again, and the output
    arrives whole, once, in order, exit 0 (on aec630a the redial came with the job's loss)."""
    laptop = wan.worker("laptop")
    command = f"for i in $(seq 1 {OUTAGE_LINES}); do echo line $i; sleep 0.2; done"

    def outage():
        laptop.link.down()
        time.sleep(OUTAGE_S)  # the outage itself: how long the link stays silent
        laptop.link.up()

    returncode, rest, err = run_across(wan, command, 3, outage)
    expected = b"".join(b"line %d\n" % i for i in range(4, OUTAGE_LINES + 1))
    assert (returncode, rest, err) == (0, expected, b"")
    assert wan.online("laptop")


@pytest.mark.timeout(60)
def test_a_suspended_laptop_never_runs_a_command_its_cli_was_told_failed(wan, tmp_path):
    """The laptop is SIGSTOPped (a closed lid); an exec to it from another peer fails with 255
    after the silence limit, saying it may or may not have run; after SIGCONT the exec that
    waited in its queue does not start (on aec630a it ran 19.5 s later), and a new one runs
    once."""
    laptop = wan.worker("laptop")
    desktop = wan.worker("desktop")
    marker = tmp_path / "ran"
    command = f"echo once >> {marker}"
    laptop.proc.send_signal(signal.SIGSTOP)
    try:
        out = desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", command, timeout=30)
        assert out.returncode == 255 and b"may or may not have run" in out.stderr, out
    finally:
        laptop.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: wan.online("laptop"), what="the laptop back online")
    assert wan.vps.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo probe").stdout \
        == b"probe\n"
    assert not marker.exists(), "the command ran after its CLI was told it failed"
    assert desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", command).returncode == 0
    assert marker.read_text() == "once\n"


STDIN_CHUNKS = 40  # 40 x 64 KiB, one every 0.1 s: the move falls in the middle
STDIN_CHUNK = 64 << 10


@pytest.mark.timeout(60)
def test_stdin_to_a_peer_that_roams_arrives_whole(wan):
    """The laptop's address changes while the leader's CLI feeds stdin to a command on it: the
    command reads every byte once and in order (what the old connection lost is sent again),
    exit 0."""
    import hashlib

    laptop = wan.worker("laptop")
    chunks = [os.urandom(STDIN_CHUNK) for _ in range(STDIN_CHUNKS)]
    proc = subprocess.Popen(wan.vps.command + ["execOnPeer", "--peer", "laptop", "--shellCmd",
                                               "sha256sum"],
                            env=wan.vps.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    halfway = threading.Event()

    def outage():
        if halfway.wait(30):
            laptop.link.move(3)

    cut = threading.Thread(target=outage)
    cut.start()
    try:
        for n, chunk in enumerate(chunks):
            if n == STDIN_CHUNKS // 4:
                halfway.set()
            try:
                proc.stdin.write(chunk)  # blocks while the link is down and the window is full
                proc.stdin.flush()
            except BrokenPipeError:
                break  # the CLI ended early: its status and stderr say why
            time.sleep(0.1)  # the feed's pace (a producer), not a wait for state
        halfway.set()
        out, err = proc.communicate(timeout=40)
    finally:
        halfway.set()
        cut.join()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (proc.returncode, out, err) == (
        0, f"{digest}  -\n".encode(), b"")
