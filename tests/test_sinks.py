"""The CLI's output sinks without sockets: Renderer (raw, prefixed, JSON Lines), Gatherer
(--gather) and Capture, fed events as the exec client delivers them."""
import errno
import io
import json

import pytest

from zpeer.cli import gather, renderer
from zpeer.cli.gather import Gatherer
from zpeer.cli.renderer import Renderer
from zpeer.cli.sink import Capture, OutputSink, deliver
from zpeer.errors import OutputFailed

RULE = b"-" * 15 + b"\n"


def wired(sink):
    """The sink writing into two buffers instead of the CLI's stdout and stderr."""
    sink.out, sink.err = io.BytesIO(), io.BytesIO()
    return sink


def test_one_peer_passes_bytes_through_as_they_come():
    r = wired(Renderer(multi=False, as_json=False))
    deliver(r, [["vps", "s", 7], ["vps", "o", b"caf\xe9 no newline"], ["vps", "e", b"err\n"],
                ["vps", "o", memoryview(b"\x00tail")], ["vps", "x", 3, "exit"]])
    assert r.out.getvalue() == b"caf\xe9 no newline\x00tail"
    assert r.err.getvalue() == b"err\n"
    assert r.status(["vps"]) == 3
    r.summary(["vps"])  # one peer: no summary
    assert r.err.getvalue() == b"err\n"


def test_raw_frames_are_found_by_their_index():
    r = wired(Renderer(multi=False, as_json=False))
    deliver(r, [["vps", "o", 1], ["vps", "o", 0]], frames=[b"second", b"first "])
    assert r.out.getvalue() == b"first second"


def test_many_peers_get_prefixed_whole_lines_and_a_summary():
    r = wired(Renderer(multi=True, as_json=False))
    deliver(r, [["a", "o", b"one\ntw"], ["b", "o", b"x\n"], ["a", "o", b"o\nthree"],
                ["a", "e", b"oops\n"], ["a", "x", 0, "exit"], ["b", "x", 2, "exit"],
                ["c", "f", "peer_offline", "Peer offline: c (never seen online)", "a hint"]])
    assert r.out.getvalue() == b"a: one\nb: x\na: two\na: three\n"  # the last line ends at exit
    assert r.err.getvalue() == b"a: oops\nc: Peer offline: c (never seen online)\n"  # no hint
    r.summary(["a", "b", "c", "d"])
    assert r.err.getvalue().endswith(b"--\na: ok\nb: rc 2\nc: offline\nd: no result\n")
    assert r.status(["a", "b", "c"]) == 255 and r.status(["a", "b"]) == 2


def test_a_long_fan_out_counts_the_ok_peers_instead_of_naming_them():
    r = wired(Renderer(multi=True, as_json=False))
    peers = [f"p{i:02d}" for i in range(12)]
    deliver(r, [[p, "x", 0 if p != "p05" else 1, "exit"] for p in peers])
    r.summary(peers)
    assert r.err.getvalue() == b"--\np05: rc 1\n11 peers: ok\n"


def test_a_line_without_end_is_cut_at_the_limit_so_memory_stays_bounded(monkeypatch):
    monkeypatch.setattr(renderer, "LINE_MAX_BYTES", 8)
    r = wired(Renderer(multi=True, as_json=False))
    deliver(r, [["a", "o", b"0123"], ["a", "o", b"456789ab"], ["a", "o", b"cd\nshort"]])
    assert r.out.getvalue() == b"a: 01234567\na: 89abcd\n"
    assert bytes(r.partial[("a", "o")]) == b"short"
    deliver(r, [["a", "x", 0, "exit"]])
    assert r.out.getvalue().endswith(b"a: short\n") and r.partial == {}


def test_json_lines_keep_text_as_text_and_other_bytes_as_base64():
    r = wired(Renderer(multi=True, as_json=True))
    deliver(r, [["a", "s", 9], ["a", "o", b"hi\n"], ["a", "e", b"\xff\xfe"],
                ["a", "x", 0, "exit"], ["b", "f", "peer_not_found", "Peer not found: b", "h"]])
    records = [json.loads(line) for line in r.out.getvalue().splitlines()]
    assert records == [
        {"event": "start", "peer": "a", "pid": 9},
        {"event": "stdout", "peer": "a", "data": "hi\n"},
        {"event": "stderr", "peer": "a", "data": "//4=", "encoding": "base64"},
        {"event": "exit", "peer": "a", "rc": 0, "how": "exit"},
        {"event": "error", "peer": "b", "code": "peer_not_found", "message": "Peer not found: b",
         "hint": "h"}]
    r.summary(["a", "b"])  # JSON carries the outcomes itself
    assert r.err.getvalue() == b""


def test_a_failure_of_one_peer_shows_its_hint():
    r = wired(Renderer(multi=False, as_json=False))
    deliver(r, [["vps", "f", "peer_lost", "Peer vps disconnected mid-command", "check it"]])
    assert r.err.getvalue() == b"Peer vps disconnected mid-command\n  hint: check it\n"
    assert r.results == {"vps": (255, "error")}


class Full:
    """A stream on a full disk."""

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass


class Gone:
    """A pipe whose reader left."""

    def write(self, data):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        pass


def test_output_that_cannot_be_written_is_an_error_but_a_closed_pipe_is_a_sigpipe():
    r = Renderer(multi=False, as_json=False)
    r.out = Full()
    with pytest.raises(OutputFailed, match="Cannot write the output: No space left on device"):
        r.data("vps", "o", b"x")
    r.out = Gone()
    with pytest.raises(BrokenPipeError):
        r.data("vps", "o", b"x")


def test_gathered_outputs_are_printed_once_under_their_folded_peers():
    g = wired(Gatherer())
    deliver(g, [["web1", "o", b"5.15\n"], ["web2", "o", b"5.1"], ["web2", "o", b"5\n"],
                ["db1", "o", b"6.1"], ["web3", "o", b"5.15\n"], ["web2", "e", b"warn\n"],
                ["empty", "x", 0, "exit"], ["db1", "x", 0, "exit"]])
    assert g.out.getvalue() == b""  # held until the end
    assert g.err.getvalue() == b"web2: warn\n"  # stderr streams at once
    g.release()
    assert g.out.getvalue() == (RULE + b"db1 (1)\n" + RULE + b"6.1\n"
                                + RULE + b"web[1-3] (3)\n" + RULE + b"5.15\n")
    g.release()  # once: the end of the run and an interruption may both ask
    assert g.out.getvalue().count(b"web[1-3]") == 1


def test_a_peer_that_outgrows_the_gathering_streams_what_it_held_and_what_follows(monkeypatch):
    monkeypatch.setattr(gather, "GATHER_PEER_MAX_BYTES", 10)
    g = wired(Gatherer())
    deliver(g, [["big", "o", b"0123\n"], ["small", "o", b"ok\n"], ["big", "o", b"456789\n"],
                ["big", "o", b"more\n"]])
    assert g.out.getvalue() == b"big: 0123\nbig: 456789\nbig: more\n"
    g.release()
    assert g.out.getvalue().endswith(RULE + b"small (1)\n" + RULE + b"ok\n")


def test_capture_keeps_each_peers_output_and_outcome():
    c = Capture()
    deliver(c, [["a", "o", b"{\"x\": 1}\n"], ["a", "e", b"+ restart\n"], ["a", "x", 0, "exit"],
                ["b", "f", "peer_offline", "Peer offline: b", ""]])
    assert c.out == {"a": b"{\"x\": 1}\n"} and c.err["a"] == b"+ restart\n"
    assert c.err["b"] == b"Peer offline: b\n"
    assert c.results == {"a": (0, "exit"), "b": (255, "peer_offline")}
    assert c.status(["a", "b", "c"]) == 255 and c.status(["a"]) == 0


def test_the_interface_names_what_a_sink_must_do():
    sink = OutputSink()
    sink.started("a", 1)  # optional
    sink.release()  # optional
    for call in (lambda: sink.data("a", "o", b""), lambda: sink.exited("a", 0, "exit"),
                 lambda: sink.failed("a", "c", "m", "")):
        with pytest.raises(NotImplementedError):
            call()
    assert sink.status([]) == 0 and sink.status(["a"]) == 255
