"""Commands left running by a daemon that died are ended by the next one (real process groups)."""
import os
import subprocess

import pytest
from helpers.nodes import pid_alive, wait_for

from zpeer.daemon import leftovers


@pytest.fixture
def group():
    """A process group (a shell with a grandchild), stopped by the test if still running."""
    proc = subprocess.Popen(["/bin/bash", "-c", "sleep 30 & wait"], start_new_session=True)
    wait_for(lambda: len(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()) == 1,
             what="the grandchild")
    child = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
    yield proc, child
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def _journal(tmp_path):
    return (tmp_path / leftovers.JOURNAL_FILE).read_text()


def test_a_recorded_group_is_ended_with_its_grandchildren(tmp_path, group):
    proc, child = group
    leftovers.Records(str(tmp_path)).record(proc.pid, "job-1")
    assert _journal(tmp_path).startswith(f"+ {proc.pid} ")
    assert _journal(tmp_path).endswith(" job-1\n")
    assert leftovers.end_leftovers(str(tmp_path)) == ["job-1"]
    assert proc.wait(timeout=5) in (-15, -9)
    wait_for(lambda: not pid_alive(child), timeout=2, what="the grandchild to end")
    assert _journal(tmp_path) == ""


def test_a_forgotten_group_is_left_alone(tmp_path, group):
    proc, child = group
    records = leftovers.Records(str(tmp_path))
    records.record(proc.pid, "job-2")
    records.record(4194001, "job-3")  # above any pid this test machine hands out
    records.forget(proc.pid)
    assert _journal(tmp_path).endswith(f"- {proc.pid}\n")  # one more line, not a rewrite
    assert leftovers._recorded(str(tmp_path)) == {4194001: ("None", "job-3")}
    records.forget(4194001)
    assert leftovers.end_leftovers(str(tmp_path)) == []
    assert proc.poll() is None and pid_alive(child)


def test_a_long_journal_is_compacted_to_the_groups_still_running(tmp_path, monkeypatch):
    monkeypatch.setattr(leftovers, "COMPACT_BYTES", 200)
    records = leftovers.Records(str(tmp_path))
    records.record(4194001, "keeps-running")
    for i in range(20):
        records.record(4194002 + i, f"short-{i}")
        records.forget(4194002 + i)
    assert len(_journal(tmp_path)) <= 250 and _journal(tmp_path).startswith("+ 4194001 ")
    assert leftovers._recorded(str(tmp_path)) == {4194001: ("None", "keeps-running")}
    records.forget(4194001)
    assert leftovers._recorded(str(tmp_path)) == {}


def test_a_reused_pid_is_not_killed(tmp_path, group):
    """The record names this pid with another start time: the process is someone else's."""
    proc, child = group
    (tmp_path / leftovers.JOURNAL_FILE).write_text(f"+ {proc.pid} 1 job-old\n")
    assert leftovers.end_leftovers(str(tmp_path)) == []
    assert proc.poll() is None and pid_alive(child)
    assert _journal(tmp_path) == ""


def test_a_cut_last_line_garbage_and_init_are_ignored(tmp_path, group):
    proc, child = group
    (tmp_path / leftovers.JOURNAL_FILE).write_text(
        "+ 4194000 123 job-gone\n"  # gone: nothing to end
        "+ not-a-pid 1 x\n- also-not\nnonsense\n"
        "+ 1 1 init\n"  # never signal init, whatever the journal says
        f"+ {proc.pid} {leftovers._start_time(proc.pid)} cut-short")  # no newline: the kill cut it
    assert leftovers.end_leftovers(str(tmp_path)) == []
    assert proc.poll() is None and pid_alive(child)
    assert _journal(tmp_path) == ""
    assert leftovers.end_leftovers(str(tmp_path / "nowhere")) == []


def test_groups_recorded_by_an_older_zpeer_one_file_each_are_ended_too(tmp_path, group):
    proc, child = group
    (tmp_path / "jobs").mkdir()
    started = leftovers._start_time(proc.pid)
    (tmp_path / "jobs" / str(proc.pid)).write_text(f"{started} job-legacy\n")
    assert leftovers.end_leftovers(str(tmp_path)) == ["job-legacy"]
    assert proc.wait(timeout=5) in (-15, -9)
    assert not (tmp_path / "jobs").exists()
