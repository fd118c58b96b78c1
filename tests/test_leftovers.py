"""Commands left running by a daemon that died are ended by the next one (real process groups)."""
import os
import subprocess

import pytest

from conftest import pid_alive, wait_for
from zpeer import leftovers


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


def test_a_recorded_group_is_ended_with_its_grandchildren(tmp_path, group):
    proc, child = group
    leftovers.record(str(tmp_path), proc.pid, "job-1")
    assert os.listdir(tmp_path / "jobs") == [str(proc.pid)]
    assert leftovers.end_leftovers(str(tmp_path)) == ["job-1"]
    assert proc.wait(timeout=5) in (-15, -9)
    wait_for(lambda: not pid_alive(child), timeout=2, what="the grandchild to end")
    assert os.listdir(tmp_path / "jobs") == []


def test_a_forgotten_group_is_left_alone(tmp_path, group):
    proc, child = group
    leftovers.record(str(tmp_path), proc.pid, "job-2")
    leftovers.forget(str(tmp_path), proc.pid)
    assert leftovers.end_leftovers(str(tmp_path)) == []
    assert proc.poll() is None and pid_alive(child)


def test_a_reused_pid_is_not_killed(tmp_path, group):
    """The record names this pid with another start time: the process is someone else's."""
    proc, child = group
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / str(proc.pid)).write_text("1 job-old\n")
    assert leftovers.end_leftovers(str(tmp_path)) == []
    assert proc.poll() is None and pid_alive(child)
    assert os.listdir(tmp_path / "jobs") == []


def test_records_of_gone_groups_and_garbage_are_cleared(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "4194000").write_text("123 job-gone\n")  # above any pid this test machine hands out
    (jobs / "not-a-pid").write_text("x")
    (jobs / "1").write_text("1 init\n")  # never signal init, whatever the file says
    assert leftovers.end_leftovers(str(tmp_path)) == []
    assert os.listdir(jobs) == []
    assert leftovers.end_leftovers(str(tmp_path / "nowhere")) == []
