"""The origin side of the channels without sockets: OriginSessions takes what the CLI and the
targets say and returns the actions the daemon would carry out."""
import os
import time

import pytest

from zpeer.daemon import origin
from zpeer.daemon.actions import Reply, Send
from zpeer.daemon.origin import SILENCE_SCAN_S, STDIN_WINDOW_BYTES, OriginSessions
from zpeer.errors import PeerOffline
from zpeer.wire import messages, protocol


def test_session_flow_credit_and_finish():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["w1"], 0, 0)
    (send,) = actions
    header = send.header
    assert type(send) is Send and header["t"] == "exec" and header["to"] == "w1"
    job = header["job"]
    window = header["credit"]
    sessions.on_message("w1", {"t": "started", "job": job, "pid": 5}, None)
    sessions.on_message("w1", {"t": "out", "job": job, "fd": 1}, b"x" * (window // 2))
    actions = sessions.poll(sid, b"ident", "r1")
    credit = [a for a in actions if type(a) is Send]
    assert credit[0].header == {"t": "credit", "rid": job, "job": job, "to": "w1", "n": window // 2,
                                "total": window // 2}
    reply = [a for a in actions if type(a) is Reply][0].payload
    assert [e[1] for e in reply["events"]] == ["s", "o"] and reply["done"] is False
    assert sessions.on_message("w1", {"t": "exit", "job": job, "rc": 3, "how": "exit"}, None) == []
    reply = sessions.poll(sid, b"ident", "r2")[-1].payload
    assert reply["events"] == [["w1", "x", 3, "exit"]] and reply["done"] is True
    assert sid not in sessions.sessions


def test_an_exit_that_names_a_pid_is_also_the_started_event():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    sessions.on_message("w1", {"t": "exit", "job": job, "rc": 0, "how": "exit", "pid": 42}, None)
    reply = sessions.poll(sid, b"ident", "r1")[-1].payload
    assert reply["events"] == [["w1", "s", 42], ["w1", "x", 0, "exit"]] and reply["done"] is True
    assert protocol.validate({"t": "exit", "rid": "r", "job": job, "to": "me", "rc": 0,
                              "how": "exit", "pid": 42}) == "exit"
    with pytest.raises(protocol.ProtocolError, match="bad field 'pid'"):
        protocol.validate({"t": "exit", "rid": "r", "job": job, "to": "me", "rc": 0, "how": "exit",
                           "pid": "42"})


def test_a_held_poll_is_answered_once_with_everything_a_turn_brought():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "hostname"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    assert sessions.poll(sid, b"ident", "r1", wait_s=0.5) == []  # held: nothing to say yet
    for header, data in (({"t": "out", "job": job, "fd": 1, "seq": 1, "pid": 5}, b"vps\n"),
                         ({"t": "exit", "job": job, "rc": 0, "how": "exit", "seq": 1}, None)):
        assert sessions.on_message("w1", header, data) == []  # the turn's other messages may follow
    (reply,) = sessions.wake_pending()
    assert type(reply) is Reply and reply[:2] == (b"ident", "r1")
    assert reply.payload["events"] == [["w1", "s", 5], ["w1", "o", b"vps\n"],
                                       ["w1", "x", 0, "exit"]]
    assert reply.payload["done"]
    assert sessions.wake_pending() == [] and sid not in sessions.sessions


def test_the_pid_in_a_jobs_first_message_is_its_started_event_once():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "echo hi; sleep 1"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    sessions.on_message("w1", {"t": "out", "job": job, "fd": 1, "seq": 1, "pid": 7}, b"hi\n")
    assert sessions.sessions[sid].jobs["w1"].state == "running"
    # a duplicate says nothing
    sessions.on_message("w1", {"t": "started", "job": job, "pid": 7}, None)
    sessions.on_message("w1", {"t": "exit", "job": job, "rc": 0, "how": "exit", "seq": 1, "pid": 7},
                        None)
    reply = sessions.poll(sid, b"ident", "r1")[-1].payload
    assert reply["events"] == [["w1", "s", 7], ["w1", "o", b"hi\n"], ["w1", "x", 0, "exit"]]


def test_session_messages_from_wrong_peer_are_ignored():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    assert sessions.on_message("intruder", {"t": "exit", "job": job, "rc": 0, "how": "exit"},
                               None) == []
    assert sessions.sessions[sid].jobs["w1"].state == "sent"


def test_batch_limits_concurrency():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["a", "b", "c"], 2, 0)
    assert [a.header["to"] for a in actions] == ["a", "b"]
    job_a = actions[0].header["job"]
    more = sessions.on_message("a", {"t": "exit", "job": job_a, "rc": 0, "how": "exit"}, None)
    assert [a.header["to"] for a in more if type(a) is Send] == ["c"]


def test_target_overrunning_its_credit_is_stopped():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "yes"}, ["w1"], 0, 0)
    job, window = actions[0].header["job"], actions[0].header["credit"]
    assert sessions.on_message("w1", {"t": "out", "job": job, "fd": 1, "seq": 1},
                               b"x" * window) == []
    actions = sessions.on_message("w1", {"t": "out", "job": job, "fd": 1, "seq": 2}, b"x")
    assert Send(messages.cancel(job, "w1")) in actions
    assert sessions.sessions[sid].events[-1][:3] == ["w1", "f", "flow_control"]


def test_a_chunk_sent_again_when_the_window_is_full_is_no_overrun():
    """In full runs of bench/attacks.py (b44ea8c) a stream failed with `Peer w1 sent more output
    than allowed` after exactly 4 MiB: its last chunk, slow through a busy leader, came again
    while the window was full, and its bytes were counted as new."""
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "yes"}, ["w1"], 0, 0)
    job, window = actions[0].header["job"], actions[0].header["credit"]
    sessions.on_message("w1", *_out(job, 1, b"x" * (window - 10)))
    sessions.on_message("w1", *_out(job, 2, b"y" * 10))
    assert sessions.on_message("w1", *_out(job, 2, b"y" * 10)) == []  # again: dropped
    assert sessions.on_message("w1", *_out(job, 1, b"x" * (window - 10))) == []
    assert sessions.sessions[sid].count["done"] == 0
    actions = sessions.on_message("w1", *_out(job, 3, b"z"))  # new, beyond the window: overrun
    assert Send(messages.cancel(job, "w1")) in actions


def _out(job, seq, data):
    return {"t": "out", "job": job, "fd": 1, "seq": seq}, data


def test_a_chunk_lost_on_the_way_is_taken_from_the_resend_in_order_and_once():
    """A gap holds what follows it (and the exit) until the target sends the missing chunk
    again; a chunk that comes twice is taken once; the alive says what was taken."""
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "yes"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    session = sessions.sessions[sid]
    sessions.on_message("w1", *_out(job, 1, b"a"))
    assert sessions.on_message("w1", *_out(job, 4, b"d")) == []  # 2 and 3 are missing: kept
    exit_header = {"t": "exit", "job": job, "rc": 0, "how": "exit", "seq": 4}
    assert sessions.on_message("w1", exit_header, None) == []  # held: its output is not all here
    (alive,) = sessions.keepalives()
    assert (alive.header["jobs"], alive.header["got"], alive.header["acked"],
            alive.header["gaps"]) == ([job], [1], [0], {job: [4, [2, 3]]})
    sessions.on_message("w1", *_out(job, 1, b"a"))  # sent again: already taken
    sessions.on_message("w1", *_out(job, 3, b"c"))
    assert session.events[-1][1:] == ["o", b"a"] and session.count["done"] == 0
    sessions.on_message("w1", *_out(job, 2, b"b"))  # the gap fills: 2, 3, 4 and the exit go on
    assert sessions.keepalives() == []
    reply = sessions.poll(sid, b"ident", "r1", wait_s=0)[-1].payload
    assert [e[1:] for e in reply["events"]] == [["o", b"a"], ["o", b"b"], ["o", b"c"],
                                                ["o", b"d"], ["x", 0, "exit"]]
    assert reply["done"] is True


def test_a_chunk_that_never_comes_again_fails_the_job_at_the_silence_limit():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "yes"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    sessions.on_message("w1", *_out(job, 1, b"a"))
    sessions.on_message("w1", *_out(job, 3, b"c"))
    later = time.monotonic() + sessions.silence_limit_s + SILENCE_SCAN_S
    sessions.sessions[sid].jobs["w1"].last_word = later  # the target talks: only the gap is old
    actions = sessions.on_timer(later)
    assert Send(messages.cancel(job, "w1")) in actions
    assert sessions.sessions[sid].events[-1][:3] == ["w1", "f", "output_lost"]


def test_a_big_fan_out_keeps_its_counts_and_batch_order():
    sessions = OriginSessions("me", 1.0)
    targets = [f"p{i:04d}" for i in range(1000)]
    sid, actions = sessions.open({"cmd": "true"}, targets, 300, 0,
                                 [("p0001", PeerOffline("Peer p0001 is offline"))])
    session = sessions.sessions[sid]
    assert [a.header["to"] for a in actions] == [t for t in targets if t != "p0001"][:300]
    assert session.count == {"queued": 699, "sent": 300, "running": 0, "done": 1}
    sent = {a.header["to"]: a.header["job"] for a in actions}
    more = sessions.on_message("p0000",
                               {"t": "exit", "job": sent["p0000"], "rc": 0, "how": "exit",
                                "pid": 7}, None)
    # the next queued one, in order
    assert [a.header["to"] for a in more if type(a) is Send] == ["p0301"]
    assert session.count == {"queued": 698, "sent": 300, "running": 0, "done": 2}
    assert session.running() == 300 and not session.finished()


def test_a_silent_target_is_found_by_the_next_scan():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "sleep 9"}, ["w1", "w2"], 0, 0)
    now = time.monotonic()
    assert [a for a in sessions.on_timer(now) if type(a) is Send] == []
    sessions.sessions[sid].jobs["w2"].last_word = now - sessions.silence_limit_s - 1
    later = now + SILENCE_SCAN_S  # scans are SILENCE_SCAN_S apart, not one per loop turn
    cancels = [a.header for a in sessions.on_timer(later) if type(a) is Send]
    assert [(c["t"], c["to"]) for c in cancels] == [("cancel", "w2")]
    assert sessions.sessions[sid].count == {"queued": 0, "sent": 1, "running": 0, "done": 1}


def test_a_lost_leader_says_whether_the_command_was_known_to_start():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["w1", "w2"], 0, 0)
    jobs = {a.header["to"]: a.header["job"] for a in actions}
    # w2's never came back
    sessions.on_message("w1", {"t": "started", "job": jobs["w1"], "pid": 5}, None)
    sessions.peer_lost(None, "Lost the leader: {peer} unreachable {when}")
    reply = sessions.poll(sid, b"ident", "r1", wait_s=0)[-1].payload
    failed = {e[0]: e[3] for e in reply["events"] if e[1] == "f"}
    assert failed == {"w1": "Lost the leader: w1 unreachable mid-command"}
    # w2's exec may still start until its ttl is over: only then is it reported
    give_up = time.monotonic() + sessions.exec_ttl_s + origin.GIVE_UP_MARGIN_S
    assert sessions.on_timer(give_up - 0.1) == [] and sessions.sessions[sid].jobs["w2"].doom
    sessions.on_timer(give_up + SILENCE_SCAN_S)
    reply = sessions.poll(sid, b"ident", "r2", wait_s=0)[-1].payload
    failed = {e[0]: e[3] for e in reply["events"] if e[1] == "f"}
    assert failed == {"w2": "Lost the leader: w2 unreachable before the command was known to start "
                            "(it may or may not have run)"}


def test_a_target_that_answers_after_it_was_lost_carries_on():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    sessions.peer_lost("w1", "Peer {peer} disconnected {when}")
    assert sessions.sessions[sid].jobs["w1"].doom is not None
    sessions.on_message("w1", {"t": "exit", "job": job, "rc": 0, "how": "exit", "pid": 4}, None)
    reply = sessions.poll(sid, b"ident", "r1", wait_s=0)[-1].payload
    assert reply["events"] == [["w1", "s", 4], ["w1", "x", 0, "exit"]] and reply["done"]


def test_a_leader_that_could_not_send_the_exec_fails_it_at_once_but_a_lost_target_only_later():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "true"}, ["off", "lost"], 0, 0)
    jobs = {a.header["to"]: a.header["job"] for a in actions}
    offline = {"err": "peer_offline", "msg": "Peer offline: off (last seen 3s ago)"}
    sessions.on_message("off", messages.error(jobs["off"], "me", offline), None)
    lost = {"err": "peer_lost", "msg": "Peer lost disconnected mid-command"}
    sessions.on_message("lost", messages.error(jobs["lost"], "me", lost), None)
    states = {j.target: (j.state, j.doom is not None) for j in sessions.sessions[sid].jobs.values()}
    assert states == {"off": ("done", False), "lost": ("sent", True)}


def test_an_exec_says_how_long_it_may_take_to_start():
    sessions = OriginSessions("me", 0.3)
    sid, (send,) = sessions.open({"cmd": "true"}, ["w1"], 0, 0)
    assert send.header["ttl"] == sessions.exec_ttl_s < sessions.silence_limit_s
    assert "ts" not in send.header  # no wall clock: no host compares its clock with another's


def _open(targets=("w1",), batch=0, pid=0, first_poll=None, failures=()):
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "cat", "stdin": True}, list(targets), batch, pid,
                                 list(failures), first_poll)
    return sessions, sid, actions


def test_an_open_held_as_the_first_poll_answers_with_the_sid_and_what_opened():
    first = (b"cli", "r0", 0.5, True, {"targets": ["w1", "gone"], "room": STDIN_WINDOW_BYTES})
    sessions, sid, actions = _open(("w1", "gone"), first_poll=first,
                                   failures=[("gone", PeerOffline("Peer offline: gone"))])
    assert [type(a) for a in actions] == [Send, Reply]  # the exec, and an answer: news came
    reply = actions[-1]
    assert reply[:2] == (b"cli", "r0")
    assert reply.payload["sid"] == sid and reply.payload["targets"] == ["w1", "gone"]
    (failed,) = reply.payload["events"]
    assert failed[:4] == ["gone", "f", "peer_offline", "Peer offline: gone"]
    job = actions[0].header["job"]
    sessions.on_message("w1", {"t": "exit", "job": job, "rc": 0, "how": "exit", "pid": 3}, None)
    later = sessions.poll(sid, b"cli", "r1")[-1].payload
    assert "sid" not in later and later["done"] is True  # what opened is said once


def test_a_first_poll_with_nothing_to_say_is_held():
    first = (b"cli", "r0", 0.5, True, {"targets": ["w1"], "room": STDIN_WINDOW_BYTES})
    sessions, sid, actions = _open(first_poll=first)
    assert [type(a) for a in actions] == [Send]
    assert sessions.sessions[sid].waiter[:2] == (b"cli", "r0")


def test_stdin_goes_to_every_running_job_and_room_follows_the_slowest():
    sessions, sid, actions = _open(("a", "b"))
    jobs = {a.header["to"]: a.header["job"] for a in actions}
    sent = sessions.poll(sid, b"cli", "r1", stdin=b"x" * 1000, wait_s=0)
    stdin = [a for a in sent if type(a) is Send]
    assert [(a.header["t"], a.header["to"], a.data) for a in stdin] == [
        ("stdin", "a", b"x" * 1000), ("stdin", "b", b"x" * 1000)]
    assert sent[-1].payload["room"] == STDIN_WINDOW_BYTES - 1000
    sessions.on_message("a", messages.stdin_ack(jobs["a"], "me", 1000), None)
    assert sessions.sessions[sid].stdin_room() == STDIN_WINDOW_BYTES - 1000  # b still holds it
    sessions.on_message("b", messages.stdin_ack(jobs["b"], "me", 600), None)
    assert sessions.sessions[sid].stdin_room() == STDIN_WINDOW_BYTES - 400
    eof = sessions.poll(sid, b"cli", "r2", eof=True, wait_s=0)
    assert [a.header["eof"] for a in eof if type(a) is Send] == [True, True]


def test_a_cli_waiting_for_stdin_room_is_answered_once_a_quarter_window_is_free():
    sessions, sid, actions = _open()
    job = actions[0].header["job"]
    quarter = STDIN_WINDOW_BYTES // origin.STDIN_WAKE_SHARE
    sent = sessions.poll(sid, b"cli", "r1", stdin=b"x" * STDIN_WINDOW_BYTES, wait_s=0)
    pieces = [a for a in sent if type(a) is Send and a.header["t"] == "stdin"]
    # messages of at most STDIN_MESSAGE_MAX_BYTES, every byte once, views of the CLI's bytes
    assert max(len(p.data) for p in pieces) <= origin.STDIN_MESSAGE_MAX_BYTES
    assert b"".join(bytes(p.data) for p in pieces) == b"x" * STDIN_WINDOW_BYTES
    assert sessions.poll(sid, b"cli", "r2", wait_s=0.5, need_room=True) == []  # full: held
    # an ack of less than a quarter keeps it held: the CLI would send a small chunk
    assert sessions.on_message("w1", messages.stdin_ack(job, "me", quarter - 1), None) == []
    (reply,) = sessions.on_message("w1", messages.stdin_ack(job, "me", 1), None)
    assert type(reply) is Reply and reply.payload["room"] == quarter
    # a poll that asks for room while there is a little (not a quarter) waits for more
    sessions.poll(sid, b"cli", "r3", stdin=b"x" * 4096, wait_s=0)
    assert sessions.poll(sid, b"cli", "r4", wait_s=0.5, need_room=True) == []


def test_a_stdin_feed_waiting_for_room_is_answered_by_acks_its_deadline_or_the_end():
    sessions, sid, actions = _open()
    job = actions[0].header["job"]
    quarter = STDIN_WINDOW_BYTES // origin.STDIN_WAKE_SHARE
    # room left: answered at once, the bytes on their way
    sent = sessions.feed(sid, b"feed", "f1", stdin=b"x" * (STDIN_WINDOW_BYTES - quarter),
                         wait_room=True)
    assert (sent[-1].rid, sent[-1].payload) == ("f1", {"room": quarter})
    assert sum(len(a.data) for a in sent if type(a) is Send) == STDIN_WINDOW_BYTES - quarter
    # the window full: held, then answered once an ack frees a quarter of it
    sent = sessions.feed(sid, b"feed", "f2", stdin=b"y" * quarter, wait_room=True)
    assert [type(a) for a in sent] == [Send]
    assert sessions.on_message("w1", messages.stdin_ack(job, "me", quarter - 1), None) == []
    (reply,) = sessions.on_message("w1", messages.stdin_ack(job, "me", 1), None)
    assert (reply.identity, reply.rid, reply.payload) == (b"feed", "f2", {"room": quarter})
    # held past its deadline: answered with the room there is (the CLI asks again)
    sessions.feed(sid, b"feed", "f3", stdin=b"z" * quarter, wait_room=True)
    late = time.monotonic() + origin.POLL_WAIT_MAX_S + 0.01
    replies = [a for a in sessions.on_timer(late) if type(a) is Reply and a.rid == "f3"]
    assert [r.payload for r in replies] == [{"room": 0}]
    # held when the session ends: answered, never left waiting
    sessions.feed(sid, b"feed", "f4", wait_room=True)
    actions = sessions.on_message("w1", {"t": "exit", "job": job, "rc": 0, "how": "exit",
                                         "pid": 7, "seq": 0}, None)
    actions += sessions.wake_pending()  # (with the turn's news)
    assert [a.rid for a in actions if type(a) is Reply and a.identity == b"feed"] == ["f4"]


def test_output_given_to_the_cli_goes_back_as_credit_a_quarter_window_at_a_time():
    sessions, sid, actions = _open()
    job, window = actions[0].header["job"], actions[0].header["credit"]
    chunk = window // 8
    credits = []
    for seq in range(1, 5):
        sessions.on_message("w1", {"t": "out", "job": job, "fd": 1, "seq": seq}, b"x" * chunk)
        credits += [a.header["n"] for a in sessions.poll(sid, b"cli", f"r{seq}", wait_s=0)
                    if type(a) is Send]
    assert credits == [2 * chunk, 2 * chunk]


def test_raw_polls_hand_the_received_buffers_over_as_frames():
    sessions, sid, actions = _open()
    job = actions[0].header["job"]
    data = memoryview(b"frame bytes")
    sessions.on_message("w1", {"t": "out", "job": job, "fd": 2, "seq": 1}, data)
    reply = sessions.poll(sid, b"cli", "r1", wait_s=0, raw=True)[-1]
    assert reply.payload["events"] == [["w1", "e", 0]] and reply.frames == [data]


def test_cancel_ends_queued_jobs_here_and_cancels_the_sent_ones():
    sessions, sid, actions = _open(("a", "b", "c"), batch=1)
    assert [a.header["to"] for a in actions] == ["a"]
    out = sessions.cancel(sid)
    assert [a.header for a in out if type(a) is Send] == [messages.cancel(actions[0].header["job"],
                                                                          "a")]
    events = sessions.sessions[sid].events
    assert [e for e in events if e[1] == "x"] == [["b", "x", 130, "cancelled"],
                                                  ["c", "x", 130, "cancelled"]]
    assert sessions.on_message("a", {"t": "exit", "job": actions[0].header["job"], "rc": 130,
                                     "how": "cancelled"}, None) == []  # nothing more launches


def test_an_interrupted_daemon_cancels_remote_jobs_and_fails_every_one_for_its_cli():
    sessions, sid, actions = _open(("me", "a", "b"), batch=2)
    out = sessions.interrupt("Interrupted: the daemon on me stopped", "hint", keep_target="me")
    cancels = [a.header["to"] for a in out if type(a) is Send]
    assert cancels == ["a"]  # its own job ends with it; b was still queued
    failed = {e[0]: e[2] for e in sessions.sessions[sid].events if e[1] == "f"}
    assert failed == {"me": "peer_lost", "a": "peer_lost", "b": "interrupted"}


def test_a_lost_leader_fails_the_jobs_on_other_peers_not_on_this_node():
    sessions, sid, actions = _open(("me", "a"))
    jobs = {a.header["to"]: a.header["job"] for a in actions}
    for peer in ("me", "a"):
        sessions.on_message(peer, {"t": "started", "job": jobs[peer], "pid": 5}, None)
    sessions.peer_lost(None, "Lost the leader: {peer} unreachable {when}", exclude="me")
    states = {j.target: j.state for j in sessions.sessions[sid].jobs.values()}
    assert states == {"me": "running", "a": "done"}


def test_keepalives_name_the_jobs_still_wanted_per_target():
    sessions, sid, actions = _open(("a", "b"))
    jobs = {a.header["to"]: a.header["job"] for a in actions}
    sessions.on_message("b", {"t": "exit", "job": jobs["b"], "rc": 0, "how": "exit"}, None)
    assert [a.header for a in sessions.keepalives()] == [messages.alive("a", [jobs["a"]],
                                                                        "origin", [0], [0])]


def test_a_session_whose_cli_died_is_cancelled_and_then_forgotten(monkeypatch):
    sessions, sid, actions = _open(pid=2 ** 22 + 12345)  # no such process
    monkeypatch.setattr(origin, "_pid_alive", lambda pid: pid == os.getpid())
    session = sessions.sessions[sid]
    session.last_poll -= origin.CLI_SILENCE_S + 1
    out = sessions.on_timer(time.monotonic())
    assert [a.header["t"] for a in out] == ["cancel"] and session.cancelled
    sessions.on_message("w1", {"t": "exit", "job": actions[0].header["job"], "rc": 130,
                               "how": "cancelled"}, None)
    sessions.on_timer(time.monotonic())
    assert sid not in sessions.sessions and sessions.reported(actions[0].header["job"])


def test_every_message_a_session_sends_is_valid_on_the_wire():
    sessions, sid, actions = _open(("a",))
    job = actions[0].header["job"]
    sessions.on_message("a", {"t": "out", "job": job, "fd": 1, "seq": 1}, b"x" * (1 << 21))
    sent = actions + sessions.poll(sid, b"cli", "r", stdin=b"in", wait_s=0)
    sent += sessions.cancel(sid) + sessions.keepalives()
    headers = [a.header for a in sent if type(a) is Send]
    assert {h["t"] for h in headers} == {"exec", "stdin", "credit", "cancel", "alive"}
    for header in headers:
        protocol.validate(header)


def test_stdin_a_target_lacks_goes_again_once_it_has_had_time_to_arrive():
    """Each stdin chunk says where it starts; a target's alive says how far it has the stream:
    what it lacks goes again after 2 intervals, what it has (or its command took) is let go."""
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "cat", "stdin": True}, ["w1"], 0, os.getpid())
    job = actions[0].header["job"]
    sessions.on_message("w1", {"t": "started", "job": job, "pid": 5}, None)
    sent = [a for a in sessions.poll(sid, b"cli", "r1", stdin=b"abc", wait_s=0) if type(a) is Send]
    sent += [a for a in sessions.poll(sid, b"cli", "r2", stdin=b"de", eof=True, wait_s=0)
             if type(a) is Send]
    assert [(a.header["at"], a.header["eof"], a.data) for a in sent] == [
        (0, False, b"abc"), (3, True, b"de")]
    assert sessions.on_alive("w1", [job], [3]) == []  # just sent: still on its way
    log = sessions.by_job[job][1].stdin_log
    assert [chunk[0] for chunk in log.chunks] == [6]  # "abc" is there; "de" and the end not
    for chunk in log.chunks:
        chunk[3] -= sessions.resend_after_s  # as if sent two intervals ago
    (again,) = sessions.on_alive("w1", [job], [3])
    assert (again.header["t"], again.header["at"], again.header["eof"], again.data) == (
        "stdin", 3, True, b"de")
    assert sessions.on_alive("w1", [job], [6]) == [] and not log.chunks  # all there, end too
    assert sessions.on_alive("w1", [job], ["x"]) == []  # what is malformed says nothing
