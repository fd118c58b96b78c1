"""Batched writes with prepared statements (the audit log's rows, the registry's last_seen), and
the audit journal that keeps queued rows across a SIGKILL."""
import os
import subprocess
import sys
import time

from zpeer.daemon.audit import FLUSH_S, PRUNE_BATCH_ROWS, PRUNE_EVERY_ROWS, AuditLog
from zpeer.daemon.audit_journal import JOURNAL_FILE, Journal
from zpeer.daemon.registry import Registry


class Audited(AuditLog):
    """An audit log on a registry of its own, closed with it (as the daemon closes both)."""

    def __init__(self, path, replay=True):
        super().__init__(Registry(path), replay)

    def close(self):
        super().close()
        self.registry.close()


def test_audit_insert_then_update_in_one_flush(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    reg.log_exec("j1", started_at=1.0, origin="vps", origin_user="root", target="w1", fanout=1,
                 directory=None, command="true")
    reg.log_exec("j2", started_at=2.0, origin="vps", origin_user=None, target="w2", fanout=2,
                 directory="/tmp", command="echo hi")
    reg.log_exec("j1", rc=0, outcome="exit", duration_s=0.01, bytes_out=3)
    reg.log_exec("j2", rc=255, outcome="peer_lost")
    reg.flush(force=True)
    rows = {r.job: r for r in reg.history(limit=10)}
    assert (rows["j1"].rc, rows["j1"].outcome, rows["j1"].bytes_out,
            rows["j1"].command) == (0, "exit", 3, "true")
    assert (rows["j2"].rc, rows["j2"].outcome, rows["j2"].bytes_out,
            rows["j2"].directory) == (255, "peer_lost", 0, "/tmp")
    assert [r.job for r in reg.history(peer="w2")] == ["j2"]
    reg.close()


def test_last_seen_batch_keeps_ip_when_none(tmp_path):
    reg = Registry(str(tmp_path / "z.db"))
    reg.upsert("a", ip="127.0.0.2", status="accepted")
    reg.upsert("b", ip="127.0.0.3", status="accepted")
    reg.touch("a", "127.0.0.9")
    reg.touch("b", None)
    assert reg.flush() == 2
    a, b = reg.get("a"), reg.get("b")
    assert (a.ip, b.ip) == ("127.0.0.9", "127.0.0.3")
    assert a.last_seen > 0 and b.last_seen > 0
    reg.close()



def _rows(reg):
    query = "SELECT job, rc, outcome, command FROM exec_log ORDER BY job"
    return reg.db.execute_sql(query).fetchall()


def test_exit_queued_with_its_exec_makes_one_row_and_history_flushes_first(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    reg.log_exec("j1", started_at=1.0, origin="vps", origin_user="root", target="w1", fanout=1,
                 directory=None, command="true")
    reg.log_exec("j1", rc=0, outcome="exit", duration_s=0.01, bytes_out=0)
    assert len(reg._queue) == 1  # the exit merged into the queued insert: one INSERT, no UPDATE
    reg.flush(force=True)
    assert _rows(reg) == [("j1", 0, "exit", "true")]
    # an exit whose exec was already written is an UPDATE of that row
    reg.log_exec("j2", started_at=2.0, origin="vps", origin_user=None, target="w1", fanout=1,
                 directory=None, command="sleep 1")
    reg.flush(force=True)
    reg.log_exec("j2", rc=7, outcome="exit")
    assert [r.rc for r in reg.history(peer="w1")] == [7, 0]  # history writes what waits first
    reg.close()


def test_rows_reach_sqlite_once_due_and_the_journal_empties_then(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    journal = tmp_path / JOURNAL_FILE
    assert not journal.exists() and reg.due() is None  # nothing audited: no journal, no timer
    before = time.monotonic()
    reg.log_exec("j1", started_at=1.0, origin="vps", origin_user=None, target="w1", fanout=1,
                 directory=None, command="true")
    assert before + FLUSH_S <= reg.due() <= time.monotonic() + FLUSH_S
    reg.flush()  # not due yet: one transaction per FLUSH_S, not per event
    assert _rows(reg) == [] and journal.stat().st_size > 0
    reg._due = time.monotonic()  # as if FLUSH_S had passed
    reg.flush()
    assert _rows(reg) == [("j1", None, None, "true")] and journal.stat().st_size == 0
    assert reg.due() is None
    reg.close()


KILLED_MID_FLUSH_WINDOW = """
import os, sys
from zpeer.daemon.audit import AuditLog
from zpeer.daemon.registry import Registry
reg = AuditLog(Registry(sys.argv[1]))
reg.log_exec("old", started_at=1.0, origin="vps", origin_user=None, target="w1", fanout=1,
             directory=None, command="echo written")
reg.flush(force=True)
reg.log_exec("old", rc=3, outcome="exit", duration_s=0.5, bytes_out=8)
reg.log_exec("new", started_at=2.0, origin="vps", origin_user="me", target="w2", fanout=1,
             directory="/", command="echo only in the journal")
os.kill(os.getpid(), 9)
"""


def test_a_sigkilled_daemons_queued_audit_rows_are_written_by_the_next_one(tmp_path):
    db = str(tmp_path / "z.db")
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_FLUSH_WINDOW, db], capture_output=True,
                          timeout=60)
    assert proc.returncode == -9, proc.stderr
    with open(tmp_path / JOURNAL_FILE, "ab") as f:
        f.write(b"\x92\xa3cut")  # a record cut short by the kill: the replay stops there
    size = os.path.getsize(tmp_path / JOURNAL_FILE)
    # `d dbSanityCheck --dry-run` with the daemon down: writes nothing
    dry = Audited(db, replay=False)
    assert _rows(dry) == [("old", None, None, "echo written")]
    dry.close()
    assert os.path.getsize(tmp_path / JOURNAL_FILE) == size
    reg = Audited(db)
    assert _rows(reg) == [("new", None, None, "echo only in the journal"),
                          ("old", 3, "exit", "echo written")]
    assert os.path.getsize(tmp_path / JOURNAL_FILE) == 0
    reg.close()
    assert _rows(Audited(db)) == _rows(reg)  # replayed once, not again


def test_after_a_failed_journal_write_rows_still_reach_sqlite_and_the_journal_recovers(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    reg.log_exec("j1", started_at=1.0, origin="vps", origin_user=None, target="w1", fanout=1,
                 directory=None, command="true")
    os.close(reg._journal.fd)
    # writes now fail (EBADF), as on a broken disk
    reg._journal.fd = os.open(os.devnull, os.O_RDONLY)
    reg.log_exec("j1", rc=0, outcome="exit", duration_s=0.01, bytes_out=0)
    assert reg._journal.broken
    os.close(reg._journal.fd)
    reg._journal.fd = None  # the disk is back
    reg.flush(force=True)
    assert _rows(reg) == [("j1", 0, "exit", "true")] and not reg._journal.broken
    reg.log_exec("j2", started_at=3.0, origin="vps", origin_user=None, target="w1", fanout=1,
                 directory=None, command="true")
    assert (tmp_path / JOURNAL_FILE).stat().st_size > 0  # journalled again
    reg.close()


def test_an_event_msgpack_cannot_hold_is_skipped_without_breaking_the_journal(tmp_path):
    journal = Journal(str(tmp_path))
    journal.append("j1", {"command": object()})
    journal.append("j2", {"command": "true"})
    assert journal.replay() == [("j2", {"command": "true"})] and not journal.broken
    journal.close()


def _started(reg, runs):
    """Audit the start of each (job, origin, target) run of `sleep 30`."""
    for job, origin, target in runs:
        reg.log_exec(job, started_at=1.0, origin=origin, origin_user="root", target=target,
                     fanout=1, directory=None, command="sleep 30")


def test_execs_of_a_lost_target_end_as_peer_lost_unless_their_exit_comes(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    _started(reg, (("a1", "vps", "laptop"), ("a2", "desktop", "laptop"), ("a3", "vps", "laptop"),
                   ("b1", "vps", "desktop"), ("own", "laptop", "laptop")))
    reg.log_exec("a1", rc=0, outcome="exit", duration_s=0.5, bytes_out=0)  # done before the loss
    reg.lost_target("laptop")
    reg.lost_target("laptop")  # twice (swept, then removed): nothing more to do
    reg.lost_target("nas")  # nothing ran there
    # its exit came after all
    reg.log_exec("a3", rc=137, outcome="killed", duration_s=9.0, bytes_out=0)
    reg.flush(force=True)
    rows = {r.job: (r.rc, r.outcome) for r in reg.history(limit=10)}
    assert rows == {"a1": (0, "exit"), "a2": (255, "peer_lost"), "a3": (137, "killed"),
                    # laptop's exec on itself: its origin lost nothing
                    "b1": (None, None), "own": (None, None)}
    assert reg._open_by_target == {"desktop": {"b1"}} and reg._open_target == {"b1": "desktop"}
    reg.close()


def test_a_restarted_leader_ends_the_execs_its_predecessor_left_running(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    _started(reg,
             (("done", "vps", "w1"), ("open1", "vps", "w1"), ("open2", "w2", "w1"),
              ("own", "vps", "vps"),
                   ("self", "w1", "w1")))
    reg.log_exec("done", rc=0, outcome="exit", duration_s=0.5, bytes_out=0)
    reg.log_exec("open2", bytes_out=10)  # output counted, no outcome yet
    reg.flush(force=True)
    reg.close()
    reg = Audited(str(tmp_path / "z.db"))  # the next leader
    assert reg.end_interrupted("vps") == 3
    assert reg.end_interrupted("vps") == 0
    assert {r.job: (r.rc, r.outcome) for r in reg.history(limit=10)} == {
        "done": (0, "exit"), "open1": (255, "leader_restarted"), "open2": (255, "leader_restarted"),
        "own": (255, "leader_restarted"),  # it ran in the leader that died
        "self": (None, None)}  # w1's exec on itself never crossed the leader: it runs on
    reg.close()


def _log(reg, first, count):
    for i in range(first, first + count):
        reg.log_exec(f"j{i:06d}", started_at=float(i), origin="vps", origin_user="root",
                     target="w1", fanout=1, directory=None, command=f"echo {i}")


def _kept(reg):
    return [j for (j,) in reg.db.execute_sql("SELECT job FROM exec_log ORDER BY rowid").fetchall()]


def _prune_while_due(reg):
    """Run the loop's flush() at each prune deadline, as the daemon's timer does; the turns."""
    turns = 0
    while reg.due() is not None:
        time.sleep(max(0.0, reg.due() - time.monotonic()))
        reg.flush()
        turns += 1
    return turns


def test_history_keeps_the_newest_rows_and_prunes_every_batch_of_writes(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    reg.keep_history(1500)
    _prune_while_due(reg)  # an empty table: nothing to delete
    _log(reg, 0, 2000)
    reg.flush(force=True)
    assert reg.due() is not None  # the prune is due on the next turn, not inside this flush
    assert len(_kept(reg)) == 2000
    _prune_while_due(reg)
    assert _kept(reg) == [f"j{i:06d}" for i in range(500, 2000)]
    _log(reg, 2000, 14)
    reg.flush(force=True)
    assert reg.due() is None  # fewer than 1 % of 1,500 written since: no prune yet
    _log(reg, 2014, 1)
    reg.flush(force=True)
    _prune_while_due(reg)
    assert _kept(reg) == [f"j{i:06d}" for i in range(515, 2015)]
    assert [r.job for r in reg.history(limit=2)] == ["j002014", "j002013"]
    reg.keep_history(200_000)  # a big limit: pruned every PRUNE_EVERY_ROWS writes
    _prune_while_due(reg)
    _log(reg, 2015, PRUNE_EVERY_ROWS - 1)
    reg.flush(force=True)
    assert reg.due() is None
    _log(reg, 2015 + PRUNE_EVERY_ROWS - 1, 1)
    reg.flush(force=True)
    assert reg.due() is not None
    reg.close()


def test_history_backlog_goes_in_batches_and_zero_keeps_all(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    _log(reg, 0, 2 * PRUNE_BATCH_ROWS + 10)
    reg.flush(force=True)
    reg.keep_history(0)
    assert reg.due() is None  # 0: keep everything, nothing to do
    assert len(_kept(reg)) == 2 * PRUNE_BATCH_ROWS + 10
    reg.keep_history(7)  # as a lowered --history-rows applies at once
    # 5,000 + 5,000 + 3 rows, a loop turn each, PRUNE_PAUSE_S apart
    assert _prune_while_due(reg) == 3
    assert _kept(reg) == [f"j{i:06d}" for i in range(2 * PRUNE_BATCH_ROWS + 3,
                                                     2 * PRUNE_BATCH_ROWS + 10)]
    reg.close()


def test_a_small_history_limit_is_kept_closely_and_history_never_shows_more(tmp_path):
    reg = Audited(str(tmp_path / "z.db"))
    reg.keep_history(5)
    _prune_while_due(reg)
    _log(reg, 0, 3)
    reg.flush(force=True)
    _log(reg, 3, 4)  # queued: history() writes them, then prunes before it reads
    assert [r.job for r in reg.history(limit=100)] == [f"j{i:06d}" for i in (6, 5, 4, 3, 2)]
    assert len(_kept(reg)) == 5
    reg.close()


def _exec_header(job, to, cmd):
    return {"t": "exec", "job": job, "to": to, "cmd": cmd, "dir": None, "ouser": "root"}


def test_a_peer_cannot_rewrite_another_peers_history_row(tmp_path):
    """On aec630a a compromised worker hid a command (its row turned into `uptime`, rc 0),
    turned an `exit 7` into rc 0 and replaced another peer's row: exits and errors now count
    only from the job's target (or the leader itself), and another origin's exec under a known
    job id is a row of its own, in one flush or across flushes."""
    reg = Audited(str(tmp_path / "z.db"))
    reg.observe("vps", _exec_header("j1", "laptop", "exit 7"))
    reg.observe("mallory", _exec_header("j1", "laptop", "uptime"))  # the same id, queued
    reg.observe("mallory", {"t": "exit", "job": "j1", "to": "vps", "rc": 0, "how": "exit"})
    reg.flush(force=True)
    reg.observe("mallory", _exec_header("j1", "mallory", "uptime"))  # written: still its own
    reg.observe("mallory", {"t": "exit", "job": "j1", "to": "vps", "rc": 0, "how": "exit"})
    reg.observe("mallory", {"t": "error", "job": "j1", "to": "vps", "err": {"err": "made_up"}})
    reg.flush(force=True)
    assert _rows(reg) == [("j1", None, None, "exit 7"), ("j1@mallory", None, None, "uptime")]
    reg.observe("laptop", {"t": "exit", "job": "j1", "to": "vps", "rc": 7, "how": "exit"})
    reg.flush(force=True)
    assert _rows(reg)[0] == ("j1", 7, "exit", "exit 7")  # from its target
    reg.observe("vps", _exec_header("j2", "laptop", "true"))
    reg.observe("vps", {"t": "error", "job": "j2", "to": "vps", "err": {"err": "peer_offline"}},
                trusted=True)
    reg.flush(force=True)
    assert _rows(reg)[2] == ("j2", 255, "peer_offline", "true")  # what the leader's CLI was told
    reg.close()
