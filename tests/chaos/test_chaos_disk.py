"""Chaos: the leader's SQLite file locked by another process, or read-only under the daemon.

The daemon must keep routing, say what is wrong (log and `getPeerStatus`), and catch up once the
trouble clears: the audit rows queued meanwhile are written, last_seen is flushed.
"""
import json
import os
import subprocess
import sys
import time

import pytest
from fleet import report, status
from helpers.nodes import wait_for

HOLD_LOCK = ("import sqlite3, sys\n"
             "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "db.execute('BEGIN EXCLUSIVE')\n"
             "print('locked', flush=True)\n"
             "sys.stdin.read()\n")


def _routes_while_broken(cluster, tag):
    """Commands keep flowing every way; returns their job count for the audit check."""
    count = 0
    for origin in (cluster.vps, cluster.desktop):
        for target in ("desktop", "laptop", "vps"):
            out = origin.d("execOnPeer", "--peer", target, "--shellCmd", f"echo {tag}-{target}",
                           check=0)
            assert out.stdout == f"{tag}-{target}\n".encode()
            count += 1
    return count


def _audited(cluster, tag):
    rows = json.loads(cluster.vps.d("history", "--json", "--limit", "1000", check=0).stdout)
    return [r for r in rows if r["command"].startswith(f"echo {tag}-") and r["rc"] == 0]


class Lock:
    """Another process holds an exclusive SQLite lock on the file."""

    name = "locked by another process"
    error = "database is locked"

    def __init__(self, db):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, db], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"locked\n"

    def clear(self):
        self.proc.stdin.close()
        self.proc.wait(10)


class ReadOnly:
    """The database and its WAL become immutable under the running daemon (chattr +i)."""

    name = "read-only (immutable) file"
    error = "disk I/O error"

    def __init__(self, db):
        self.paths = [db, db + "-wal"]
        done = subprocess.run(["chattr", "+i"] + self.paths, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["chattr", "-i"] + self.paths, capture_output=True)
            pytest.skip(f"cannot make the file immutable here: {done.stderr.decode().strip()}")

    def clear(self):
        subprocess.run(["chattr", "-i"] + self.paths, check=True)


@pytest.mark.parametrize("trouble", [Lock, ReadOnly], ids=["locked", "read_only"])
def test_database_trouble_keeps_routing_and_catches_up(cluster, trouble):
    db = os.path.join(cluster.vps.home, "zpeer.db")
    wait_for(lambda: os.path.exists(db + "-wal"), what="the WAL file")
    fault = trouble(db)
    try:
        began = time.monotonic()
        count = _routes_while_broken(cluster, "broken")
        wait_for(lambda: status(cluster.vps)["db_error"] is not None, timeout=5,
                 what="getPeerStatus to name the trouble")
        said = time.monotonic() - began
        shown = status(cluster.vps)["db_error"]
        assert shown == fault.error
        # a worker that restarts now must get back in (its row exists; the write can wait)
        cluster.laptop.kill()
        cluster.laptop.start()
        wait_for(lambda: cluster.online("laptop"), timeout=10,
                 what="laptop back while the db is broken")
        assert cluster.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo in",
                                 check=0).stdout == b"in\n"
        assert cluster.vps.proc.poll() is None, cluster.vps.log()
        assert f"{shown} (will retry)".encode() in open(cluster.vps.log_path, "rb").read()
    finally:
        fault.clear()
    cleared = time.monotonic()
    wait_for(lambda: len(_audited(cluster, "broken")) == count, timeout=10, what="audit caught up")
    wait_for(lambda: status(cluster.vps)["db_error"] is None, timeout=10, what="db_error cleared")
    caught_up = time.monotonic() - cleared
    report(f"sqlite {fault.name}", error_shown=shown, reported_in=said,
           caught_up_after_clear=caught_up, commands_while_broken=count)
