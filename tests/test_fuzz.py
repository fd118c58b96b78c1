"""Hostile input: property tests of the decoders, and generated garbage thrown at live daemons.

Each test counts the messages it generated and asserts at least 10,000 per run. Generated
messages go through real sockets to a real leader (which forwards schema-valid ones on to its
real workers), then the daemons must still be alive and serve `d listPeers` and `d execOnPeer`.
Commands in generated execs come from a harmless list and job ids from a small set, so that
targets, which never start a job id twice, run at most a handful of them.
"""
import os
import time

import msgpack
import pytest
import zmq
from helpers.nodes import wait_for
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from test_security import RawPeer, public_key

from zpeer.daemon.requests import op_names
from zpeer.wire import keys, protocol

MIN_MESSAGES = 10_000
RUN = os.urandom(3).hex()  # job ids unique to this run (targets remember job ids)
JOB_IDS = [f"fz{RUN}.{i}" for i in range(6)]
SAFE_COMMANDS = ["true", "echo fuzz", "exit 7", "cat", "printf '\\0\\377'", "echo err >&2"]
PEER_IDS = ["desktop", "laptop", "vps", "fuzzer", "ghost", "", "all", "x" * 65, "dé", "a/b",
            "nul\x00"]
SAFE_IPC_OPS = ["ping", "status", "peers", "peer_by_ip", "history", "exec_poll", "exec_wake",
                "exec_cancel", "join_token", "nope", "", "op_ping", "__class__"]
# IPC ops with effects a fuzz run must not have (remove peers, run commands, restart, ...)
UNSAFE_IPC_OPS = set(op_names()) - set(SAFE_IPC_OPS)
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
          HealthCheck.function_scoped_fixture]
# No shrinking: a batch is 150 messages and the daemons keep state between examples; a failure
# names its one message instead (and the daemon logs say the rest).
FUZZ = dict(deadline=None, database=None, suppress_health_check=HEALTH,
            phases=(Phase.explicit, Phase.generate))

# --- strategies ------------------------------------------------------------------------------
# Flat strategies: nested recursive ones cost milliseconds per message, too slow for 10,000.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.binary(max_size=8))
anything = st.one_of(scalars, st.lists(scalars, max_size=3),
                     st.dictionaries(st.text(max_size=4), scalars, max_size=2))
numbers = st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 0.01, 1e308, -1e308]))
TARGETS = ["desktop", "laptop", "vps", "fuzzer"]
peer_ids = st.one_of(st.sampled_from(TARGETS), st.sampled_from(TARGETS), st.sampled_from(TARGETS),
                     st.sampled_from(PEER_IDS), st.text(max_size=70))
TYPED = {
    protocol._STR: st.text(max_size=20),
         protocol._OPT_STR: st.one_of(st.none(), st.text(max_size=20)),
    protocol._INT: st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1),
                             st.sampled_from([0, -1, 2 ** 63 - 1])),
    protocol._NUM: numbers, protocol._OPT_NUM: st.one_of(st.none(), numbers),
         protocol._BOOL: st.booleans(),
    protocol._MAP: st.dictionaries(st.text(max_size=6), scalars, max_size=3),
    protocol._LIST: st.lists(st.one_of(st.sampled_from(JOB_IDS), scalars), max_size=4),
}
FIELDS = {
    "to": peer_ids, "id": peer_ids, "from": peer_ids,
    "job": st.one_of(st.sampled_from(JOB_IDS), st.sampled_from(JOB_IDS), st.text(max_size=70)),
    "cmd": st.sampled_from(SAFE_COMMANDS),
          "dir": st.sampled_from([None, "/tmp", "/nonexistent", "/tmp\x00x", ""]),
    "user": st.sampled_from([None, "nobody", "no-such-user", "a\x00b", ""]),
    "token": st.text(max_size=30), "side": st.sampled_from(["origin", "target", 7]),
    # the leader's rpcs, and not
    "op": st.sampled_from(["peers", "peer_by_ip", "history", "audit", "nope", ""]),
}
# values a mutant puts in place of a field: every type, every bound
ODD_VALUES = [None, True, 0, -1, 2 ** 63, 2 ** 64 - 1, -(2 ** 63), float("nan"), float("inf"),
              -1e308, "", "x" * 65, "a\x00b", "desktop", "vps", b"\xff\x00", [], ["x", 1], {},
              {"err": 1}, {1: 2}]
TYPE_NAMES = sorted(protocol.PEER_MESSAGES)
# what a member peer can make others act on comes more often: routed types, exec most of all
WEIGHTED_TYPES = TYPE_NAMES + sorted(protocol.ROUTED_TYPES) * 2 + ["exec"] * 8 + ["rpc"] * 2
OPTIONAL_NAMES = sorted(protocol.OPTIONAL_FIELDS)


def mostly(draw, good, bad, odds=12):
    """A draw from `good`, except one time in `odds` from `bad` (one_of would weigh them alike)."""
    return draw(bad) if draw(st.integers(0, odds - 1)) == odds - 1 else draw(good)


def field_value(draw, name, types):
    """Mostly a value of the right type (to get past the decoder), sometimes anything at all."""
    return mostly(draw, FIELDS.get(name, TYPED.get(types, anything)), anything, odds=24)


@st.composite
def headers(draw):
    """A peer header: mostly a known type with typed fields; missing, mistyped and extra ones."""
    header = {"t": mostly(draw, st.sampled_from(WEIGHTED_TYPES),
                          st.one_of(st.text(max_size=8), scalars)),
              "rid": mostly(draw, st.sampled_from(["r1", "r" * 64, "job.0"]),
                            st.one_of(st.text(max_size=70), scalars))}
    mtype = header["t"]
    schema = protocol.PEER_MESSAGES.get(mtype, {}) if isinstance(mtype, str) else {}
    for name, types in schema.items():
        if draw(st.integers(0, 47)) < 47:  # 1 in 48: the field is missing
            header[name] = field_value(draw, name, types)
    if mtype == "exec" and isinstance(header.get("job"), str):
        header["job"] = draw(st.sampled_from(JOB_IDS))  # bounds how many commands the targets start
    for name in draw(st.lists(st.sampled_from(OPTIONAL_NAMES + ["zz"]), max_size=3)):
        # extras are where a schema-valid message hides a bad value: mistyped one time in three
        header[name] = mostly(draw,
                              FIELDS.get(name,
                                         TYPED.get(protocol.OPTIONAL_FIELDS.get(name), anything)),
                              st.sampled_from(ODD_VALUES), odds=3)
    return header


# sent once per batch, not generated: a 1 MiB repr would drown any failure report
BIG_HEADER = [protocol.SIGNATURE,
              msgpack.packb({"t": "hb", "rid": "big", "pad": "x" * protocol.MAX_HEADER_BYTES})]


def _encode(header, data, fallback):
    """Frames for header, or garbage when msgpack cannot carry a value (ints beyond 64 bits)."""
    try:
        return protocol.encode(header, data)
    except (OverflowError, TypeError, ValueError):
        return [protocol.SIGNATURE, fallback]


CORRUPTIONS = {  # frames spoiled one way each (frames[1] is the header when there is one)
    "version": lambda f, r: [b"ZP" + bytes([r.choice([0, 2, 255])])] + f[1:],
    "signature": lambda f, r: [r.randbytes(r.randint(0, 5))] + f[1:],
    "garbage": lambda f, r: f[:1] + [r.randbytes(r.randint(0, 60))] + f[2:],
    "truncated": lambda f, r: f[:1] + [f[1][:r.randint(0, max(0, len(f[1]) - 1))]] + f[2:],
    "reordered": lambda f, r: r.sample(f, len(f)),
    "one frame": lambda f, r: f[:1],
    "many frames": lambda f, r: f + [r.randbytes(r.randint(0, 8)) for _ in range(r.randint(2, 4))],
    "empty": lambda f, r: [b""] * r.randint(1, 3),
    "bare map": lambda f, r: f[1:2],
}
KINDS = ["as is"] * 12 + sorted(CORRUPTIONS)


def corrupt(frames, kind, rnd):
    """Frames spoiled the `kind` way (or left as they are)."""
    return CORRUPTIONS[kind](list(frames), rnd) if kind in CORRUPTIONS else list(frames)


def mutants(header, data, rnd, count):
    """Cheap variants of a generated message: a field swapped for an odd value or dropped, the
    type renamed (one schema's fields under another type), bytes of the encoding flipped."""
    out = []
    for _ in range(count):
        h = dict(header)
        how = rnd.randrange(6)
        if how == 0 and h:
            h[rnd.choice(sorted(h, key=str))] = rnd.choice(ODD_VALUES)
        elif how == 1 and h:
            del h[rnd.choice(sorted(h, key=str))]
        elif how == 2:
            h["t"] = rnd.choice(TYPE_NAMES)
        elif how >= 4:  # a field handlers read without checking, if the decoder let it through
            h[rnd.choice(OPTIONAL_NAMES)] = rnd.choice(ODD_VALUES)
        frames = _encode(h, data, rnd.randbytes(8))
        if how == 3 and frames[1]:
            raw = bytearray(frames[1])
            for _ in range(rnd.randint(1, 3)):
                raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            frames[1] = bytes(raw)
        if rnd.randrange(4) == 0:
            frames = corrupt(frames, rnd.choice(KINDS), rnd)
        out.append(frames)
    return out


@st.composite
def peer_batches(draw, size=30, variants=4):
    """A batch of messages a hostile DEALER could send: generated ones, each with its mutants."""
    rnd = draw(st.randoms(use_true_random=False))
    batch = []
    for _ in range(size):
        header = draw(headers())
        data = mostly(draw, st.none(), st.binary(max_size=40), odds=3)
        batch.append(corrupt(_encode(header, data, b"\xc1"), rnd.choice(KINDS), rnd))
        batch.extend(mutants(header, data, rnd, variants))
    return batch


IPC_FIELDS = ["sid", "ip", "peer", "limit", "pending", "stdin", "eof", "wait_s", "ttl", "id",
              "targets", "zz"]


@st.composite
def ipc_batches(draw, size=20, variants=3):
    """CLI requests as a hostile local client could send them (after the REQ delimiter)."""
    rnd = draw(st.randoms(use_true_random=False))
    batch = []
    for _ in range(size):
        op = mostly(draw, st.sampled_from(SAFE_IPC_OPS), scalars, odds=6)
        header = {"op": op, "rid": mostly(draw, st.sampled_from(["r1", "x" * 64]), scalars, odds=6)}
        header.update(draw(st.dictionaries(st.sampled_from(IPC_FIELDS), st.one_of(
            st.sampled_from([0, 0.01, 1, -1, "desktop", "127.0.0.2"]), scalars), max_size=4)))
        if op == "join_token":
            header["ttl"] = 60  # a valid ttl mints a token; everything else about it is refused
        batch.append(_encode(header, None, b"\xc1"))
        for _ in range(variants):
            h = dict(header)
            h[rnd.choice(IPC_FIELDS + ["op", "rid"])] = rnd.choice(ODD_VALUES)
            op = h.get("op")
            if not isinstance(op, str) or op == "join_token" or op in UNSAFE_IPC_OPS:
                h["op"] = "ping"
            frames = _encode(h, None, rnd.randbytes(8))
            if rnd.randrange(3) == 0:
                frames = corrupt(frames, rnd.choice(sorted(CORRUPTIONS)), rnd)
            batch.append(frames)
    return batch


# --- the decoders, no sockets -------------------------------------------------------------------
def _check_decoded(header, data):
    """What a successful decode promises its callers."""
    schema = protocol.PEER_MESSAGES[header["t"]]
    for name, types in schema.items():  # a field that may be None may also be missing
        assert isinstance(header.get(name), types), (name, header)
        if isinstance(header.get(name), int):
            assert -(2 ** 63) <= header[name] < 2 ** 63
    for name in {"job", "to", "id", "from"} & (set(schema) | set(protocol.OPTIONAL_FIELDS)):
        if isinstance(header.get(name), str):  # fields outside both are ignored by every handler
            assert len(header[name]) <= protocol.MAX_ID_LEN and "\x00" not in header[name]
    for name, types in protocol.OPTIONAL_FIELDS.items():
        if header.get(name) is not None:
            assert isinstance(header[name], types), (name, header)
    assert isinstance(header["rid"], str) and 0 < len(header["rid"]) <= protocol.MAX_ID_LEN
    assert data is None or isinstance(data, bytes)


@pytest.mark.timeout(120)  # ~7 s alone; the 2-CPU CI box may run others beside it
def test_decoders_accept_only_well_typed_messages():
    counts = {"peer": 0, "ipc": 0, "decoded": 0}

    @settings(max_examples=75, **FUZZ)
    @given(peer_batches(), ipc_batches(size=5))
    def check(batch, requests):
        for frames in batch:
            counts["peer"] += 1
            try:
                header, data = protocol.decode(frames)
            except protocol.ProtocolError:
                continue
            counts["decoded"] += 1
            try:
                _check_decoded(header, data)
                again = protocol.encode(*protocol.decode(protocol.encode(header, data)))
                assert again == protocol.encode(header, data)  # stable (bytes: NaN != NaN)
            except AssertionError as exc:
                raise AssertionError(f"decoded {frames!r:.2000}: {exc}") from None
        for frames in requests:
            counts["ipc"] += 1
            try:
                header = protocol.decode_request(frames)
            except protocol.ProtocolError:
                continue
            assert isinstance(header["op"], str) and isinstance(header["rid"], str)

    check()
    with pytest.raises(protocol.ProtocolError, match="header too large"):
        protocol.decode(BIG_HEADER)
    assert counts["peer"] + counts["ipc"] >= MIN_MESSAGES, counts
    # the generator gets past the decoder too
    assert counts["decoded"] >= counts["peer"] // 20, counts


# --- live daemons -------------------------------------------------------------------------------
def member_hello(member, rid="join", token=None):
    """The raw member's hello (a real worker says it on connect and whenever the leader asks)."""
    hello = {"t": "hello", "rid": rid, "id": "fuzzer", "hostname": "fuzz", "version": "fuzz",
             "role": "worker", "pid": os.getpid()}
    if token:
        hello["token"] = token
    member.send(hello)


def full_log(node):
    """The whole daemon log (Node.log() keeps only its tail)."""
    with open(node.log_path, "rb") as f:
        return f.read().decode(errors="replace")


def _alive(c):
    """Fail with the dead daemon's traceback if any of the cluster's daemons died."""
    for node in (c.vps, c.desktop, c.laptop):
        if node.proc.poll() is not None:
            log = full_log(node)
            raise AssertionError(f"{node.name} died (rc {node.proc.returncode}):\n"
                                 + log[max(0, log.rfind("Traceback") - 500):][:6000])


def _healthy(c, extra_ids=b""):
    """Every daemon alive, listing peers and running commands across the fleet."""
    _alive(c)
    for node in (c.vps, c.desktop, c.laptop):
        log = full_log(node)
        assert "Traceback" not in log, log[log.find("Traceback") - 2000:][:6000]
    wait_for(lambda: c.online("desktop") and c.online("laptop"), timeout=5, what="workers online")
    for node in (c.vps, c.desktop):
        out = node.d("listPeers", "--ids", check=0).stdout
        assert out.replace(extra_ids, b"") == b"desktop\nlaptop\nvps\n", out
    assert c.desktop.d("execOnPeer", "--peer", "laptop", "--shellCmd", "echo ok",
                       check=0).stdout == b"ok\n"
    assert c.laptop.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo ok",
                      check=0).stdout == b"ok\n"
    assert c.vps.d("execOnPeer", "--peer", "desktop", "--shellCmd", "echo ok",
                   check=0).stdout == b"ok\n"


@pytest.fixture(scope="module")
def fuzzed(shared_cluster):
    """The shared cluster plus an enrolled raw peer `fuzzer` (a real token) to speak as a member."""
    c = shared_cluster
    key = public_key(c.vps)
    token = c.token()
    secret = keys.parse_token(token)["secret"]
    member = RawPeer(c.port, key, protocol.route_identity("fuzzer"), "127.0.0.50")
    member.wait_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    member_hello(member, token=secret)
    c.member, c.key = member, key
    wait_for(lambda: c.online("fuzzer"), timeout=5, what="the raw member enrolled")
    yield c
    member.close()
    c.vps.d("removePeer", "fuzzer")  # (the leader may be dead if a test failed)


def _exec(job, to):
    """A well-formed exec of `true` from the member."""
    return {"t": "exec", "rid": "r1", "job": job, "to": to, "cmd": "true", "dir": None,
            "user": None, "timeout": None, "stdin": False, "credit": 4, "ttl": 30}


# run first, so each kind of reply the test looks for comes whatever the generator draws
EXPLICIT_MEMBER_BATCH = [protocol.encode(h) for h in (
    {"t": "rpc", "rid": "r1", "op": "peers", "args": {}}, _exec(JOB_IDS[0], "desktop"),
                                                      _exec(JOB_IDS[1], "ghost"))]


@pytest.mark.timeout(180)
def test_leader_and_workers_survive_generated_peer_messages(fuzzed):
    c = fuzzed
    stranger = RawPeer(c.port, c.key, protocol.route_identity("ghost"), "127.0.0.51")
    stranger.wait_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    counts = {"member": 0, "stranger": 0}

    @settings(max_examples=75, **FUZZ)
    @given(peer_batches(), st.booleans())
    @example(EXPLICIT_MEMBER_BATCH, True)
    def throw(batch, as_member):
        sender = c.member if as_member else stranger
        if as_member:  # silent while the stranger spoke, it may have been swept offline since
            member_hello(c.member)
        for i, frames in enumerate(batch + [BIG_HEADER]):
            if as_member and i % 50 == 49:  # on a loaded machine a batch outlasts the silence limit
                member_hello(c.member)
            sender.send_frames(frames)
        try:
            sender.barrier(timeout=10)  # the leader has handled the whole batch
        finally:
            _alive(c)
        counts["member" if as_member else "stranger"] += len(batch)

    try:
        throw()
        stranger.barrier()
        member_hello(c.member)
        c.member.send({"t": "hb", "rid": "alive"})  # the member is still verified after all that
        c.member.barrier()
        assert any(h.get("t") == "hb" and h.get("rid") == "alive" for h in c.member.received)
    finally:
        stranger.close()
    assert sum(counts.values()) >= MIN_MESSAGES, counts
    # what the member got back shows the handlers (not only the decoder) were reached: a
    # generated exec ran on a target and ended; read until its exit came (it follows its output)
    wait_for(lambda: c.member.barrier() and any(h.get("t") == "exit" for h in c.member.received),
             timeout=10, what="a generated exec to report its exit")
    kinds = {h.get("t") for h in c.member.received}
    # the explicit batch makes sure of these
    assert {"rpc_reply", "error", "hb", "exit"} <= kinds, kinds
    started = sum(full_log(node).count("from fuzzer: pid") for node in (c.vps, c.desktop, c.laptop))
    print(f"{sum(counts.values())} messages; the targets started {started} generated commands")
    _healthy(c, extra_ids=b"fuzzer\n")


@pytest.mark.timeout(120)
def test_flood_of_hellos_keeps_the_leader_serving(fuzzed):
    c = fuzzed
    flooders = [RawPeer(c.port, c.key, protocol.route_identity(f"flood{i}"), f"127.0.0.{100 + i}")
                for i in range(20)]
    try:
        for raw in flooders:
            raw.wait_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        start = time.monotonic()
        for n in range(250):
            for i, raw in enumerate(flooders):
                hello = {"t": "hello", "rid": f"h{n}", "id": f"flood{i}", "hostname": "h",
                         "version": "v", "role": "worker", "pid": n}
                if n % 2:
                    hello["token"] = f"bogus{n}"
                raw.send(hello)
            member_hello(c.member, rid=f"m{n}")  # known key: an accepted re-hello each time
        # while the flood is being read, members keep their heartbeats and the CLI is answered
        assert c.vps.d("listPeers", "--ids", "--online",
                       check=0).stdout == b"desktop\nfuzzer\nlaptop\nvps\n"
        for raw in flooders:
            raw.barrier(timeout=30)
        elapsed = time.monotonic() - start
        assert all(len(raw.received) == 250 for raw in flooders)
        assert {h["status"] for raw in flooders for h in raw.received} == {"pending", "rejected"}
    finally:
        for raw in flooders:
            raw.close()
    pending = set(c.vps.d("listPeers", "--pending", "--ids", check=0).stdout.split())
    flood = {f"flood{i}".encode() for i in range(20)}
    assert flood <= pending and pending - flood <= {b"ghost"}  # ghost: the fuzz test's stranger
    print(f"5,250 hellos from 21 connections handled in {elapsed:.2f}s")
    _healthy(c, extra_ids=b"fuzzer\n")


@pytest.mark.timeout(120)
def test_ipc_survives_generated_requests(fuzzed):
    c = fuzzed
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"ipc://{os.path.join(c.vps.home, 'd.sock')}")
    counts = {"sent": 0, "answered": 0}

    def ping_barrier():
        sock.send_multipart([b""] + protocol.encode({"op": "ping", "rid": "barrier"}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sock.poll(50):
                frames = sock.recv_multipart()
                reply = msgpack.unpackb(frames[2], raw=False)
                if reply.get("rid") == "barrier" and reply.get("pong"):
                    return
                counts["answered"] += 1
        raise AssertionError("the daemon did not answer ping")

    @settings(max_examples=60, **FUZZ)
    @given(ipc_batches(), st.booleans())
    def throw(batch, delimited):
        for frames in batch:
            sock.send_multipart(([b""] if delimited else []) + frames)
        counts["sent"] += len(batch)
        ping_barrier()

    try:
        throw()
    finally:
        sock.close(0)
        ctx.term()
    assert counts["sent"] >= 4000 and counts["answered"] > 0, counts
    _healthy(c, extra_ids=b"fuzzer\n")
