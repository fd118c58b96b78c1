"""The target side's handler logic without sockets: at-most-once execs and early cancels."""
import time

import pytest

from zpeer.execution import SEEN_JOBS_MAX, TargetJobs


def _exec(job, cmd="true"):
    return {"t": "exec", "job": job, "to": "w1", "cmd": cmd, "dir": None, "user": None, "timeout": None,
            "stdin": False, "credit": 1 << 20, "ttl": 30, "ts": time.time()}


@pytest.fixture
def jobs(tmp_path):
    t = TargetJobs("w1", str(tmp_path))
    yield t
    t.shutdown()


def test_an_exec_runs_once_even_when_it_arrives_twice(jobs):
    first = jobs.handle("vps", _exec("j1", "sleep 5"), None)
    assert [m[0]["t"] for m in first] == ["started"]
    assert jobs.handle("vps", _exec("j1", "sleep 5"), None) == []
    assert list(jobs.jobs) == ["j1"]


def test_a_cancel_that_overtakes_its_exec_stops_it_from_running(jobs):
    assert jobs.handle("desktop", {"t": "cancel", "job": "j2", "to": "w1"}, None) == []
    out = jobs.handle("desktop", _exec("j2"), None)
    assert [(m[0]["t"], m[0]["rc"], m[0]["how"]) for m in out] == [("exit", 130, "cancelled")]
    assert jobs.jobs == {}


def test_only_the_origin_can_cancel_ahead_of_its_exec(jobs):
    jobs.handle("mallory", {"t": "cancel", "job": "j3", "to": "w1"}, None)
    assert [m[0]["t"] for m in jobs.handle("desktop", _exec("j3", "sleep 5"), None)] == ["started"]


def test_a_cancel_flood_does_not_make_a_job_runnable_twice(jobs):
    jobs.handle("vps", _exec("real"), None)
    for i in range(SEEN_JOBS_MAX + 100):
        jobs.handle("mallory", {"t": "cancel", "job": f"made-up-{i}", "to": "w1"}, None)
    assert "real" in jobs.seen and len(jobs.early_cancels) <= 1000
    assert jobs.handle("vps", _exec("real"), None) == []
