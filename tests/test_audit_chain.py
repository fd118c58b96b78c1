"""The audit's hash chain (`d history --verify`) and its fair retention: a row altered, added or
deleted in the database behind the daemon's back is found; a peer's flood of commands does not
push other peers' rows out."""
import json
import sqlite3
import time

import pytest

from zpeer.daemon.audit import AuditLog
from zpeer.daemon.audit_retention import shares
from zpeer.daemon.registry import Registry

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def audit(tmp_path):
    """An AuditLog on a real SQLite file (no daemon)."""
    registry = Registry(str(tmp_path / "zpeer.db"))
    log = AuditLog(registry)
    yield log
    log.close()
    registry.close()


def run(audit, job, origin="desktop", target="laptop", rc=0, command="true"):
    """An exec and its exit as the leader sees them."""
    audit.log_exec(job, started_at=time.time(), origin=origin, target=target, command=command)
    audit.log_exec(job, rc=rc, outcome="exit", duration_s=0.01, bytes_out=3)


def tamper(audit, sql, *params):
    """Write to the database as someone with the file would, past the daemon."""
    audit.flush(force=True)
    with sqlite3.connect(audit.registry.path) as db:
        db.execute(sql, params)


def test_an_untouched_history_verifies(audit):
    for n in range(50):
        run(audit, f"j{n}", rc=n % 3)
    report = audit.verify()
    assert (report["ok"], report["rows"], report["problems"]) == (True, 50, [])
    assert len(report["head"]) == 64


@pytest.mark.parametrize("sql, params, problem", [
    ("UPDATE exec_log SET rc = 0 WHERE job = ?", ("j7",), "row j7 was altered"),
    ("UPDATE exec_log SET command = 'uptime' WHERE job = ?", ("j3",), "row j3 was altered"),
    ("DELETE FROM exec_log WHERE job = ?", ("j5",), "row j5 was deleted"),
    ("INSERT INTO exec_log (job, started_at, origin, target, command, fanout, bytes_out, tty) "
     "VALUES (?, 0, 'desktop', 'vps', 'rm -rf /', 1, 0, 0)", ("forged",),
     "row forged is not in the chain: written behind the daemon's back"),
    ("UPDATE audit_link SET digest = 'x' WHERE seq = ?", (4,),
     "link 4 (job j3) does not follow from the one before: altered"),
    ("DELETE FROM audit_link WHERE seq = ?", (6,), "links 6..6 of the chain are missing"),
    ("DELETE FROM audit_link WHERE seq > ?", (8,),
     "the chain ends before its recorded head: its last links were deleted"),
])
def test_tampering_is_found(audit, sql, params, problem):
    for n in range(10):
        run(audit, f"j{n}", rc=7 if n == 7 else 0)
    assert audit.verify()["ok"]
    tamper(audit, sql, *params)
    report = audit.verify()
    assert not report["ok"]
    assert problem in report["problems"], report["problems"]


def test_retention_trim_and_restart_keep_the_chain_sound(audit, tmp_path):
    audit.keep_history(100)
    for n in range(30_00):
        run(audit, f"j{n}")
        if n % 500 == 0:
            audit.flush(force=True)
    audit.history()  # the prunes that are due
    report = audit.verify()
    assert report["ok"], report["problems"]
    assert report["rows"] <= 101
    # a restart: the leader ends what was still running, and the chain says so too
    audit.log_exec("open", started_at=time.time(), origin="desktop", target="laptop",
                   command="sleep 100")
    audit.close()
    again = AuditLog(audit.registry)
    assert again.end_interrupted("vps") == 1
    report = again.verify()
    assert report["ok"], report["problems"]
    again.close()


def test_a_database_from_before_the_chain_is_adopted(tmp_path):
    path = str(tmp_path / "old.db")
    registry = Registry(path)
    with sqlite3.connect(path) as db:  # rows written by a zpeer without the chain
        for n in range(3):
            db.execute("INSERT INTO exec_log (job, started_at, origin, target, command, fanout, "
                       "bytes_out, tty) VALUES (?, 0, 'a', 'b', 'true', 1, 0, 0)", (f"old{n}",))
    audit = AuditLog(registry)
    report = audit.verify()
    assert (report["ok"], report["rows"]) == (True, 3)
    audit.close()
    # and the chain is not adopted again: its links deleted, it is found cut
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM audit_link")
    audit = AuditLog(registry)
    assert "row old1 is not in the chain: written behind the daemon's back" in \
        audit.verify()["problems"]
    audit.close()
    registry.close()


def test_shares_cut_the_largest_holders_first():
    assert shares({"flood": 5000, "admin": 40, "ci": 300}, 4000) == {"flood": 4000}
    assert shares({"a": 10, "b": 10}, 4) == {"a": 2, "b": 2}
    assert shares({"a": 10, "b": 7, "c": 1}, 6) == {"a": 5, "b": 1}  # down to 5 and 6
    assert sum(shares({"a": 9, "b": 8, "c": 8}, 7).values()) == 7
    assert shares({"a": 3}, 10) == {"a": 3}
    assert shares({}, 5) == {} and shares({"a": 1}, 0) == {}


def test_a_flood_of_cheap_commands_does_not_push_others_rows_out(audit):
    audit.keep_history(1000)
    for n in range(20):
        run(audit, f"admin{n}", origin="vps", command=f"important {n}")
    for n in range(5000):  # a compromised worker's 5,000 cheap execs
        run(audit, f"flood{n}", origin="laptop", target="desktop")
    audit.flush(force=True)
    rows = audit.history(limit=10000)
    while len(rows) > 1010:  # prunes run in batches, one per due turn
        rows = audit.history(limit=10000)
    kept = {r.job for r in rows}
    assert {f"admin{n}" for n in range(20)} <= kept
    assert audit.verify()["ok"]


def test_history_verify_on_a_live_leader(cluster):
    vps, desktop = cluster.vps, cluster.desktop
    desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "exit 7", check=7)
    vps.d("execOnPeer", "--peer", "desktop", "--shellCmd", "true", check=0)
    out = vps.d("history", "--verify", check=0).stdout.decode()
    assert out.startswith("history verified: ") and " rows, " in out and "; chain head " in out
    on_worker = desktop.d("history", "--verify")
    assert on_worker.returncode == 255 and b"leader" in on_worker.stderr
    row = next(r for r in json.loads(vps.d("history", "--json", check=0).stdout)
               if r["rc"] == 7)
    vps.stop()
    with sqlite3.connect(f"{vps.home}/zpeer.db") as db:  # exit 7 rewritten as a success
        db.execute("UPDATE exec_log SET rc = 0 WHERE job = ?", (row["job"],))
    vps.start()
    tampered = vps.d("history", "--verify")
    assert tampered.returncode == 1
    lines = tampered.stdout.decode().splitlines()
    assert lines[0] == f"history: row {row['job']} was altered"
    assert lines[-1].startswith("history NOT verified: 1 problems (")
