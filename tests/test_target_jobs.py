"""The target side's handler logic without sockets: at-most-once execs and early cancels."""
import os
import time

import pytest
from helpers.nodes import pid_alive, wait_for

from zpeer.daemon import target
from zpeer.daemon.command import KILL_GRACE_S
from zpeer.daemon.target import SEEN_JOBS_MAX, TargetJobs


def _exec(job, cmd="true"):
    return {"t": "exec", "job": job, "to": "w1", "cmd": cmd, "dir": None, "user": None,
            "timeout": None, "stdin": False, "credit": 1 << 20, "ttl": 30, "ts": time.time()}


@pytest.fixture
def jobs(tmp_path):
    t = TargetJobs("w1", str(tmp_path))
    yield t
    t.shutdown()


def _until_done(jobs, limit_s=5, with_data=False, clock=time.monotonic):
    """Drive the jobs as the daemon loop does (poll their fds, then timers at `clock`'s time)
    until none is left; the messages they sent (headers, or (header, data) pairs)."""
    import select

    out, deadline = [], time.monotonic() + limit_s
    while jobs.jobs and time.monotonic() < deadline:
        fds = [fd for fd, _ in jobs.poll_items()]
        ready = set(select.select(fds, [], [], 0.05)[0])
        out += jobs.on_ready(ready) + jobs.on_timer(clock(), 60)
        jobs.forget_finished()  # as the daemon does once a turn's messages left
    return out if with_data else [m[0] for m in out]


def test_an_exec_runs_once_even_when_it_arrives_twice(jobs):
    assert jobs.handle("vps", _exec("j1", "sleep 5"), None) == []  # started comes later (below)
    assert jobs.handle("vps", _exec("j1", "sleep 5"), None) == []
    assert list(jobs.jobs) == [("vps", "j1")]


def test_started_leaves_with_the_first_output_or_exit_or_after_a_short_delay(jobs, tmp_path):
    from zpeer.daemon.target import STARTED_DELAY_S

    journal = tmp_path / "jobs.journal"
    jobs.handle("vps", _exec("quick", "true"), None)
    pid = jobs.jobs["vps", "quick"].cmd.pid
    (done,) = _until_done(jobs)  # one message: the exit names the pid a "started" would have
    assert (done["t"], done["job"], done["pid"], done["rc"]) == ("exit", "quick", pid, 0)
    assert not journal.exists()  # ended before it was recorded: no disk touched
    spawned_at = time.monotonic()
    jobs.handle("vps", _exec("talks", "echo hi"), None)
    # timers as of its spawn: on a loaded machine `echo` may well take longer than the delay
    got = _until_done(jobs, clock=lambda: spawned_at)
    # its output said "started"
    assert [(m["t"], "pid" in m) for m in got] == [("out", True), ("exit", False)]
    jobs.handle("vps", _exec("silent", "sleep 5"), None)
    assert jobs.on_timer(time.monotonic(), 60) == []
    pid = jobs.jobs["vps", "silent"].cmd.pid
    # "talks": on disk with its output, off at its end
    assert journal.read_text().split("\n")[1].startswith("- ")
    later = jobs.on_timer(time.monotonic() + STARTED_DELAY_S + 0.001, 60)
    assert [m[0] for m in later] == [{"t": "started", "rid": "silent", "job": "silent", "to": "vps",
                                      "pid": pid}]
    # on disk before "started" left
    assert journal.read_text().split("\n")[2].startswith(f"+ {pid} ")
    assert jobs.on_timer(time.monotonic() + 1, 60) == []  # once
    jobs.cancel("silent", "vps")
    assert _until_done(jobs)[-1]["how"] == "cancelled"
    # a stopped job's group stays on record until its SIGKILL (a member may outlive the shell)
    assert not journal.read_text().endswith(f"- {pid}\n")
    jobs.on_timer(time.monotonic() + KILL_GRACE_S, 60)
    jobs.forget_finished()
    assert journal.read_text().endswith(f"- {pid}\n")


def test_a_cancel_that_overtakes_its_exec_stops_it_from_running(jobs):
    assert jobs.handle("desktop", {"t": "cancel", "job": "j2", "to": "w1"}, None) == []
    out = jobs.handle("desktop", _exec("j2"), None)
    assert [(m[0]["t"], m[0]["rc"], m[0]["how"]) for m in out] == [("exit", 130, "cancelled")]
    assert jobs.jobs == {}


def test_only_the_origin_can_cancel_ahead_of_its_exec(jobs):
    jobs.handle("mallory", {"t": "cancel", "job": "j3", "to": "w1"}, None)
    assert jobs.handle("desktop", _exec("j3", "sleep 5"), None) == []
    assert ("desktop", "j3") in jobs.jobs


def test_a_cancel_flood_does_not_make_a_job_runnable_twice(jobs):
    jobs.handle("vps", _exec("real"), None)
    for i in range(SEEN_JOBS_MAX + 100):
        jobs.handle("mallory", {"t": "cancel", "job": f"made-up-{i}", "to": "w1"}, None)
    assert ("vps", "real") in jobs.seen and len(jobs.early_cancels) <= 1000
    assert jobs.handle("vps", _exec("real"), None) == []


def test_an_error_in_the_origins_name_stops_the_job_and_no_one_elses(jobs):
    """The leader fails a job whose data it cannot queue, in its origin's name: the target
    stops the command as a cancel does; the same error from another peer names none of its
    jobs."""
    err = {"err": "queue_full", "msg": "The leader's queue for w1 is full", "hint": ""}
    jobs.handle("desktop", _exec("big", "sleep 30"), None)
    assert not jobs.runs("mallory", "big") and jobs.runs("desktop", "big")
    jobs.abandon("mallory", "big", err)
    assert jobs.jobs["desktop", "big"].cmd.how == "exit"  # still running, not stopped
    jobs.abandon("desktop", "big", err)
    (done,) = _until_done(jobs)
    assert (done["t"], done["job"], done["how"]) == ("exit", "big", "cancelled")


def test_the_daemon_users_identity_is_looked_up_once_per_interval_and_each_job_gets_its_own_env(
        jobs):
    first = jobs._own_identity()
    assert jobs._own_identity() is not None and jobs.own[1] is first[0]  # cached: the same entry
    jobs.own = (time.monotonic() - 1,) + jobs.own[1:]  # as if OWN_IDENTITY_S had passed
    jobs._own_identity()
    assert jobs.own[0] > time.monotonic()  # looked up again
    for job in ("env-a", "env-b"):
        jobs.handle("vps", _exec(job, 'echo "$ZPEER_JOB $HOME"'), None)
    outputs = {m["job"]: bytes(data) for m,
               data in _until_done(jobs, with_data=True) if m["t"] == "out"}
    home = jobs.own[1].pw_dir
    assert outputs == {"env-a": f"env-a {home}\n".encode(), "env-b": f"env-b {home}\n".encode()}
    assert "ZPEER_JOB" not in jobs.own[2]  # the cached environment is copied, never changed


def _wait_readable(fd, limit_s=5):
    """Block until fd is readable (poll, not select: some tests use fds above 1024)."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(limit_s * 1000), f"fd {fd} never became readable"


# 0: a loaded loop that gets there after the deadline
@pytest.mark.parametrize("linger_s", [None, 0.0])
def test_a_commands_end_is_handled_in_the_turn_that_sees_its_first_pipe_close(
        jobs, linger_s, monkeypatch):
    if linger_s is not None:
        monkeypatch.setattr(target, "EXIT_LINGER_S", linger_s)
    # the kernel closes stdout, then stderr, then reports the exit: the loop may wake on stdout
    # alone, and must not need a turn for each of the other two
    jobs.handle("vps", _exec("short", "echo hi; exit 3"), None)
    rj = jobs.jobs["vps", "short"].cmd
    _wait_readable(rj.pidfd)  # exited (not reaped): both pipes are closed by now
    got = jobs.on_ready({rj.pipes[1]})  # its output, its EOF, stderr's and the exit: one turn
    assert [(m["t"], bytes(d or b"")) for m, d in got] == [("out", b"hi\n"), ("exit", b"")]
    assert got[0][0]["pid"] == rj.proc.pid
    assert got[-1][0]["rc"] == 3 and jobs.jobs == {}


def test_a_command_that_closes_its_output_and_lives_on_costs_the_loop_no_wait(jobs):
    jobs.handle("vps", _exec("mute", "exec >&- 2>&-; sleep 0.3; exit 4"), None)
    rj = jobs.jobs["vps", "mute"].cmd
    _wait_readable(rj.pipes[1])  # EOF on stdout while the shell sleeps
    start = time.monotonic()
    assert jobs.on_ready({rj.pipes[1]}) == []
    assert time.monotonic() - start < 0.05  # waited EXIT_LINGER_S (1 ms) at most, once
    assert rj.pipes == {} and rj.exited_at is None
    done = _until_done(jobs)[-1]
    assert (done["t"], done["rc"]) == ("exit", 4)


def test_fds_past_fd_setsize_are_fine(jobs):
    # a worker holding many connections gets pipe fds above 1024, where select() refuses to go
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    base = os.open(os.devnull, os.O_RDONLY)
    held = []
    try:
        while len(held) < 1100:
            held.append(os.dup(base))
        jobs.handle("vps", _exec("high", "echo hi; exit 5"), None)
        rj = jobs.jobs["vps", "high"].cmd
        assert min(rj.pipes.values()) > 1024
        _wait_readable(rj.pidfd)
        got = jobs.on_ready({rj.pipes[1]})
        assert [(m["t"], m.get("rc")) for m, _ in got] == [("out", None), ("exit", 5)]
    finally:
        for fd in held + [base]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_exit_status_reaped_elsewhere_is_reported_as_lost_not_made_up(jobs):
    jobs.handle("vps", _exec("reaped", "exit 7"), None)
    pid = jobs.jobs["vps", "reaped"].cmd.pid
    # a stray handler in the daemon reaps it
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    (msg,) = _until_done(jobs)
    assert msg == {"t": "error", "rid": "reaped", "job": "reaped", "to": "vps",
                   "err": {"err": "exit_lost",
                           "msg": "The exit status of the command on w1 was lost",
                           "hint": "the command did run; something in the daemon's process reaped "
                                   "it (see the daemon's log)"}}
    jobs.handle("vps", _exec("kept", "exit 7"), None)
    assert [(m["t"], m["rc"]) for m in _until_done(jobs)] == [("exit", 7)]


@pytest.mark.parametrize("reaped_elsewhere", [False, True])
def test_a_user_commands_status_comes_from_waitpid_not_popen_poll(reaped_elsewhere):
    """subprocess's Popen.poll() turns a status lost to ECHILD into exit 0: a --user command
    (started through subprocess) is reaped by the daemon itself, and Popen is told the outcome."""
    from zpeer.daemon.process import spawn

    child = spawn(["/bin/bash", "-c", "exit 7"], "/", {"PATH": "/usr/bin:/bin"}, False,
                  {"user": os.geteuid()})
    try:
        assert child.popen is not None
        if reaped_elsewhere:
            os.waitpid(child.pid, 0)
        deadline = time.monotonic() + 5
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # polling a child for its exit, with a deadline
        expected = 255 if reaped_elsewhere else 7
        assert (child.returncode, child.status_lost,
                child.popen.returncode) == (expected, reaped_elsewhere, expected)
        assert child.popen.poll() == expected  # subprocess will not wait for it again
    finally:
        for fd in (child.stdout_fd, child.stderr_fd):
            os.close(fd)


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_a_stopped_jobs_whole_group_ends_also_after_bash_has_exited(jobs, tmp_path, stop):
    """A member that ignores SIGTERM and outlives bash still gets the group's SIGKILL."""
    pidfile = tmp_path / "pid"
    # The member writes its pid once its trap is set: a cancel that came sooner would end it.
    msg = _exec("stubborn", f'(trap "" TERM; echo $BASHPID > {pidfile}; exec sleep 60) & sleep 100')
    if stop == "timeout":
        msg["timeout"] = 0.3
    jobs.handle("vps", msg, None)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the member's pid")
    member = int(pidfile.read_text())
    if stop == "cancel":
        jobs.cancel("stubborn", "vps")
    (done,) = [m for m in _until_done(jobs) if m["t"] == "exit"]
    assert done["how"] == ("timeout" if stop == "timeout" else "cancelled")
    assert pid_alive(member)  # it ignored SIGTERM, and bash is gone
    wait_for(lambda: (jobs.on_timer(time.monotonic(), 60), not pid_alive(member))[1],
             timeout=5, what="the SIGKILL that follows the grace")
    assert jobs.pending_kills == []


def _alive(jobs_got_acked):
    """An origin's alive naming jobs with what it took and the credit it gave."""
    ids = [j for j, _, _ in jobs_got_acked]
    return {"t": "alive", "to": "w1", "jobs": ids, "side": "origin",
            "got": [g for _, g, _ in jobs_got_acked], "acked": [a for _, _, a in jobs_got_acked]}


def test_what_an_origin_lacks_goes_again_until_its_alive_shows_it_has_it(jobs):
    """Output the origin's alive says it lacks, and the exit, are sent again (once per resend
    interval); credit lets go of what the origin has; an alive without the job forgets it."""
    jobs.resend_after_s = 0.0
    jobs.handle("vps", _exec("chatty", "printf one; sleep 0.2; printf two"), None)
    sent = _until_done(jobs, with_data=True)
    outs = [(h["seq"], bytes(d)) for h, d in sent if h["t"] == "out"]
    assert outs == [(1, b"one"), (2, b"two")]
    (final,) = [h for h, _ in sent if h["t"] == "exit"]
    assert final["seq"] == 2
    assert jobs.keepalives()[0].header["jobs"] == ["chatty"]  # still held: the origin may lack it
    # the origin took seq 1 and gave credit for it: seq 2 and the exit go again
    again = jobs.handle("vps", _alive([("chatty", 1, 3)]), None)
    assert [(a.header["t"], a.header.get("seq"), bytes(a.data or b"")) for a in again] == [
        ("out", 2, b"two"), ("exit", 2, b"")]
    # everything taken and counted: only the exit, whose arrival no credit shows
    again = jobs.handle("vps", _alive([("chatty", 2, 6)]), None)
    assert [a.header["t"] for a in again] == ["exit"]
    assert jobs.handle("vps", _alive([]), None) == []  # the origin has its end: let go
    assert jobs.keepalives() == []
    assert jobs.handle("vps", _alive([("chatty", 0, 0)]), None) == []


def test_nothing_goes_again_before_the_origin_could_have_had_it(jobs):
    jobs.resend_after_s = 60.0
    jobs.handle("vps", _exec("chatty", "echo one"), None)
    _until_done(jobs)
    assert jobs.handle("vps", _alive([("chatty", 0, 0)]), None) == []
    jobs.closed.expire(time.monotonic() + 2 * 60.0 + 1)
    assert jobs.keepalives() == []


def test_past_a_gap_only_the_chunks_the_origin_names_go_again(jobs):
    jobs.resend_after_s = 0.0
    jobs.handle("vps", _exec("three", "printf a; sleep 0.1; printf b; sleep 0.1; printf c"), None)
    sent = _until_done(jobs, with_data=True)
    assert [(h["seq"], bytes(d)) for h, d in sent if h["t"] == "out"] == [(1, b"a"), (2, b"b"),
                                                                         (3, b"c")]
    alive = dict(_alive([("three", 0, 0)]), gaps={"three": [3, [1]]})  # it holds 2 and 3
    again = jobs.handle("vps", alive, None)
    assert [(a.header["t"], a.header.get("seq")) for a in again] == [("out", 1), ("exit", 3)]
    alive = dict(_alive([("three", 1, 1)]), gaps={"three": [3, None]})  # too many to name
    again = jobs.handle("vps", alive, None)
    assert [(a.header["t"], a.header.get("seq")) for a in again] == [("out", 2), ("out", 3),
                                                                    ("exit", 3)]
    malformed = dict(_alive([("three", 1, 1)]), gaps={"three": ["x", 5]}, got=["y"])
    assert [a.header["t"] for a in jobs.handle("vps", malformed, None)] == ["exit"]


def test_an_exec_that_claims_endless_credit_gets_the_largest_window_any_origin_gives(jobs):
    """An exec with credit 2**62 that never reads made the leader buffer 3.18 GB on aec630a:
    the target takes no more credit than WINDOW_MAX_BYTES."""
    from zpeer.wire.channel import WINDOW_MAX_BYTES

    msg = _exec("greedy", "sleep 5")
    msg["credit"] = 2 ** 62
    jobs.handle("vps", msg, None)
    assert jobs.jobs["vps", "greedy"].output.room() == WINDOW_MAX_BYTES
    msg = _exec("negative", "sleep 5")
    msg["credit"] = -5
    jobs.handle("vps", msg, None)
    assert jobs.jobs["vps", "negative"].output.room() == 0
    jobs.handle("vps", {"t": "credit", "job": "greedy", "to": "w1", "n": 2 ** 62,
                        "total": 2 ** 62}, None)
    assert jobs.jobs["vps", "greedy"].output.room() == WINDOW_MAX_BYTES  # credit never widens it


def test_another_origins_job_id_is_another_job(jobs):
    """A peer that learned (or guessed) another origin's next job id and sent it first made the
    target drop the real exec as already seen (aec630a): jobs are (origin, job id), and what a
    peer sends under another origin's id reaches only a job of its own."""
    jobs.handle("mallory", _exec("SID.1", "sleep 5"), None)
    jobs.handle("vps", _exec("SID.1", "sleep 5"), None)
    assert sorted(jobs.jobs) == [("mallory", "SID.1"), ("vps", "SID.1")]
    jobs.handle("mallory", {"t": "cancel", "job": "SID.1", "to": "w1"}, None)
    jobs.handle("mallory", {"t": "cancel", "job": "SID.2", "to": "w1"}, None)  # an early cancel
    assert jobs.jobs["vps", "SID.1"].cmd.how == "exit"  # the origin's own job runs on
    assert jobs.jobs["mallory", "SID.1"].cmd.how == "cancelled"
    jobs.handle("vps", _exec("SID.2", "true"), None)  # mallory's early cancel is not vps's
    assert ("vps", "SID.2") in jobs.jobs


def _stdin(job, at, eof=False):
    return {"t": "stdin", "job": job, "to": "w1", "eof": eof, "at": at}


def test_stdin_is_taken_once_and_in_order_whatever_comes_twice_or_past_a_gap(jobs):
    """A redial loses a chunk and its origin sends it again: the command reads each byte once,
    in order; a chunk past the gap waits for the rest; the end of input counts as one byte."""
    exec_msg = dict(_exec("feed", "cat"), stdin=True)
    jobs.handle("vps", exec_msg, None)
    ch = jobs.jobs["vps", "feed"]
    sent = jobs.handle("vps", _stdin("feed", 0), b"one ")
    sent += jobs.handle("vps", _stdin("feed", 8), b"three")  # "two " was lost: this one waits
    assert ch.stdin_got == 4 and list(ch.stdin_early) == [8]
    sent += jobs.handle("vps", _stdin("feed", 13, eof=True), b"")  # and the end after it
    sent += jobs.handle("vps", _stdin("feed", 0), b"one two ")  # sent again from where it was
    assert ch.stdin_got == len(b"one two three") + 1 and not ch.stdin_early
    sent += jobs.handle("vps", _stdin("feed", 8, eof=True), b"three")  # sent again: nothing
    assert jobs.keepalives()[0].header["stdin_got"] == [ch.stdin_got]
    sent += jobs.handle("vps", _stdin("feed", 0, eof=True), b"one two three")  # late: nothing
    sent += [a for a in _until_done(jobs, with_data=True)]
    pairs = [(a.header, a.data) if hasattr(a, "header") else a for a in sent]
    assert b"".join(d or b"" for h, d in pairs if h["t"] == "out") == b"one two three"
    assert sum(h["n"] for h, _ in pairs if h["t"] == "stdin_ack") == len(b"one two three")


def test_an_origin_that_never_gives_credit_back_holds_little_here(jobs, monkeypatch):
    """Ten jobs with 4 MiB of credit each whose origin never gives any back: this node keeps at
    most ORIGIN_HELD_MAX_BYTES for that origin (their commands wait to write), while another
    origin's job streams all it prints (on 941b8cf each job kept its whole window)."""
    import select

    monkeypatch.setattr(target, "ORIGIN_HELD_MAX_BYTES", 8 << 20)
    for n in range(10):
        jobs.handle("evil", dict(_exec(f"e{n}", "head -c 4194304 /dev/zero"), credit=4 << 20),
                    None)
    jobs.handle("good", dict(_exec("g", "head -c 1048576 /dev/zero"), credit=4 << 20), None)
    got = {"evil": 0, "good": 0}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and ("good", "g") in jobs.jobs or got["good"] < 1 << 20:
        fds = [fd for fd, _ in jobs.poll_items()]
        for action in jobs.on_ready(set(select.select(fds, [], [], 0.05)[0])):
            if action.header["t"] == "out":
                got[action.header["to"]] += len(action.data)
        if time.monotonic() > deadline:
            break
    assert got["good"] == 1 << 20  # the other origin's command printed it all
    jobs.poll_items()
    assert got["evil"] == jobs.held["evil"]
    assert (8 << 20) <= got["evil"] < (8 << 20) + 10 * target.READ_CHUNK_BYTES, got
