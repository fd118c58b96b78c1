"""Unit tests of the wire format and of the socket-free handlers (sessions, config, tokens)."""

import msgpack
import pytest

from zpeer import config
from zpeer.errors import BadRequest, PeerNotFound, PeerOffline, from_reply
from zpeer.targets import resolve_targets
from zpeer.wire import keys, protocol


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
