"""At most once when delivery is late, and no clock compared: a command the CLI was told failed
never starts afterwards, whatever held it on the way (here: a stopped target); peers whose wall
clocks are far apart change no verdict, and the difference is shown."""
import glob
import json
import signal

import pytest
from helpers.nodes import status, wait_for

# libfaketime itself, not its `faketime` wrapper: the wrapper's named semaphore, left by an
# earlier process with the same pid, makes it fail now and then (`sem_open: File exists`)
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)


def test_an_exec_that_reaches_a_stopped_target_after_its_origin_gave_up_never_runs(cluster,
                                                                                   tmp_path):
    marker = tmp_path / "ran"
    command = f"echo once >> {marker}"
    cluster.laptop.stop(sig=signal.SIGSTOP)  # a suspended lid: the exec waits in its queue
    try:
        out = cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", command,
                                check=255)
        assert b"laptop" in out.stderr and b"may or may not have run" in out.stderr, out.stderr
    finally:
        cluster.laptop.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: cluster.online("laptop"), what="laptop back online")
    # the queue it read on waking is behind it once a new command runs there
    assert cluster.vps.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo probe",
                         check=0).stdout == b"probe\n"
    assert not marker.exists(), "the command ran after the CLI was told it failed"
    cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", command, check=0)
    assert marker.read_text() == "once\n"  # the retry ran it, once
    log = cluster.laptop.log()
    assert "arrived too late: not started" in log, log


@pytest.mark.skipif(LIBFAKETIME is None, reason="faketime is not installed (Debian: faketime)")
@pytest.mark.parametrize("skew_s", [90, -90])
def test_a_peer_whose_clock_is_far_off_works_and_its_offset_is_shown(empty_cluster, skew_s):
    c = empty_cluster
    c.leader()
    c.desktop = c.worker("desktop", "127.0.0.2")
    skewed = c.worker("laptop", "127.0.0.4", start=False)
    skewed.env = dict(skewed.env, LD_PRELOAD=LIBFAKETIME, FAKETIME=f"{skew_s:+d}")
    skewed.start()
    out = skewed.d("registerWorker", "--id", "laptop", "--token", c.token(), "--source-ip",
                   "127.0.0.4", check=0)
    assert b"Registered" in out.stdout
    for origin, target in ((c.desktop, "laptop"), (skewed, "desktop"), (c.vps, "laptop"),
                           (skewed, "vps")):
        assert origin.d("execOnPeer", "--peer", target, "--shellCmd", "echo ok",
                        check=0).stdout == b"ok\n", (origin.name, target)

    def offset():
        peers = json.loads(c.vps.d("listPeers", "--json", check=0).stdout)
        return {p["id"]: p["clock_offset_s"] for p in peers}

    wait_for(lambda: offset()["laptop"] is not None, what="the offset measured")
    shown = offset()
    assert abs(shown["laptop"] - skew_s) < 2 and abs(shown["desktop"]) < 2 and shown["vps"] == 0
    assert abs(status(skewed)["clock_offset_s"] - skew_s) < 2
    table = c.vps.d("listPeers", check=0).stdout.decode()
    side = "ahead of" if skew_s > 0 else "behind"
    assert f"laptop's clock is {abs(shown['laptop']):g} s {side} the leader's" in table
