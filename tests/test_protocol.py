"""Unit tests of the wire format and of the socket-free handlers (sessions, config, tokens)."""
import time

import msgpack
import pytest

from zpeer import config
from zpeer.daemon.actions import Reply, Send
from zpeer.daemon.origin import SILENCE_SCAN_S, OriginSessions
from zpeer.errors import BadRequest, PeerNotFound, PeerOffline, from_reply
from zpeer.targets import resolve_targets
from zpeer.wire import keys, messages, protocol


def frames_of(header, data=None):
    return protocol.encode(header, data)


def test_round_trip_with_data_frame():
    header = {"t": "out", "rid": "r1", "job": "j1", "to": "vps", "fd": 1}
    got, data = protocol.decode(frames_of(header, b"\x00\xffbytes"))
    assert got == header and data == b"\x00\xffbytes"


def test_envelope_prefixes_identity():
    frames = protocol.envelope("desktop", frames_of({"t": "hb", "rid": "x"}))
    assert frames[0] == b"desktop" and frames[1] == protocol.SIGNATURE


@pytest.mark.parametrize("frames,message", [
    ([b"ZP\x02", msgpack.packb({"t": "hb", "rid": "x"})], "unsupported protocol version 2"),
    ([b"XX\x01", msgpack.packb({"t": "hb", "rid": "x"})], "not a zpeer message"),
    ([protocol.SIGNATURE], "expected 2 or 3 frames"),
    ([protocol.SIGNATURE, b"\x93\x01"], "undecodable header"),
    ([protocol.SIGNATURE, msgpack.packb([1, 2])], "header is not a map"),
    ([protocol.SIGNATURE, msgpack.packb({"t": "hb"})], "missing or bad rid"),
    ([protocol.SIGNATURE, msgpack.packb({"t": "nope", "rid": "x"})], "unknown message type"),
    ([protocol.SIGNATURE,
      msgpack.packb({"t": "credit", "rid": "x", "job": "j", "to": "a", "n": "5"})],
     "credit: bad field 'n'"),
    ([protocol.SIGNATURE,
      msgpack.packb({"t": "credit", "rid": "x", "job": "j", "to": "a", "n": True})],
     "credit: bad field 'n'"),
    ([protocol.SIGNATURE, msgpack.packb({"t": "cancel", "rid": "x", "job": "j" * 65, "to": "a"})],
     "cancel: job too long"),
])
def test_bad_frames_are_rejected(frames, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode(frames)


def test_an_execs_command_and_directory_may_be_bytes_that_are_not_utf8():
    argv = b"printf caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands such argv over
    assert protocol.os_text(argv) == b"printf caf\xe9"
    assert protocol.os_text("printf café") == "printf café"
    assert protocol.os_text(None) is None and protocol.shown(b"caf\xe9") == "caf\\xe9"
    exec_ = {"t": "exec", "rid": "x", "job": "j", "to": "a", "cmd": b"printf caf\xe9",
             "dir": b"/tmp/caf\xe9", "user": None, "timeout": None, "stdin": False, "credit": 1,
             "ttl": 30}
    assert protocol.decode(frames_of(exec_)) == (exec_, None)
    with pytest.raises(protocol.ProtocolError, match="exec: NUL in cmd"):
        protocol.decode(frames_of(dict(exec_, cmd=b"true\x00")))
    with pytest.raises(protocol.ProtocolError, match="exec: bad field 'job'"):
        protocol.decode(frames_of(dict(exec_, job=b"j")))  # only what reaches the OS may be bytes


def test_truncated_header():
    raw = msgpack.packb({"t": "hb", "rid": "abc"})
    for cut in range(1, len(raw)):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode([protocol.SIGNATURE, raw[:cut]])


def test_decode_request_needs_op():
    with pytest.raises(protocol.ProtocolError, match="missing op"):
        protocol.decode_request([protocol.SIGNATURE, msgpack.packb({"rid": "x"})])
    assert protocol.decode_request([protocol.SIGNATURE,
                                    msgpack.packb({"rid": "x", "op": "ping"})])["op"] == "ping"


def test_host_port_parsing():
    assert config.split_host_port("10.0.0.1") == ("10.0.0.1", 3520)
    assert config.split_host_port("vps:4000") == ("vps", 4000)
    assert config.split_host_port("[::1]:5") == ("::1", 5)
    for bad in ("", "h:0", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            config.split_host_port(bad)


def test_token_round_trip_and_tamper():
    token, digest = keys.make_token("127.0.0.1:3520", "A" * 40)
    parsed = keys.parse_token(token)
    assert parsed["address"] == "127.0.0.1:3520" and parsed["leader_key"] == "A" * 40
    assert keys.same_hash(keys.hash_secret(parsed["secret"]), digest)
    for bad in ("", "zpeer1.", "zpeer1.!!!", "nope." + token[7:], token[:-5]):
        with pytest.raises(ValueError):
            keys.parse_token(bad)


def test_error_round_trip():
    err = from_reply(PeerOffline("Peer offline: x (last seen 3s ago)").to_reply())
    assert isinstance(err, PeerOffline) and err.message.startswith("Peer offline: x")


def test_resolve_targets():
    assert resolve_targets(["b,a", "all", "a"], ["a", "b", "c"]) == ["b", "a", "c"]


def test_resolve_targets_less_the_excluded_ones():
    assert resolve_targets(["all"], ["a", "b", "c"], ["b"]) == ["a", "c"]
    assert resolve_targets(["a,b,c"], [], ["a c"]) == ["b"]
    with pytest.raises(PeerNotFound) as err:  # a typo must not leave in the peer it meant
        resolve_targets(["all"], ["db1", "web1"], ["bd1"])
    assert err.value.message == "Peer not found: bd1" and "--exclude" in err.value.hint
    with pytest.raises(BadRequest) as err:
        resolve_targets(["a"], [], ["a"])
    assert err.value.message == "No peer left: --exclude removes every peer --peer selects"
    with pytest.raises(BadRequest):
        resolve_targets(["a"], [], [3])


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
    assert credit[0].header == {"t": "credit", "rid": job, "job": job, "to": "w1", "n": window // 2}
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


def test_lost_chunk_fails_the_job():
    sessions = OriginSessions("me", 1.0)
    sid, actions = sessions.open({"cmd": "yes"}, ["w1"], 0, 0)
    job = actions[0].header["job"]
    sessions.on_message("w1", {"t": "out", "job": job, "fd": 1, "seq": 1}, b"a")
    actions = sessions.on_message("w1", {"t": "out", "job": job, "fd": 1, "seq": 3}, b"c")
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
    reply = sessions.poll(sid, b"ident", "r1")[-1].payload
    failed = {e[0]: e[3] for e in reply["events"] if e[1] == "f"}
    assert failed == {"w1": "Lost the leader: w1 unreachable mid-command",
                      "w2": "Lost the leader: w2 unreachable before the command was known to start "
                            "(it may or may not have run)"}
