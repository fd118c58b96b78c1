"""The leader's state without sockets: the hello rule, enrolment on a real registry file, the
table of verified peers, and the channel windows."""
import time

import pytest

from zpeer.daemon.access import AccessPolicy
from zpeer.daemon.enrolment import MAX_PENDING, Enrolment, decide_hello, token_verdict
from zpeer.daemon.peer_table import PeerTable
from zpeer.daemon.registry import Registry
from zpeer.daemon.zap import KeyPolicy
from zpeer.errors import BadRequest, PeerNotFound, ZpeerError
from zpeer.wire import keys
from zpeer.wire.channel import Credit, Intake

ROUTE = b"laptop/" + b"0" * 32


class Row:
    """A registry row as decide_hello reads it."""

    def __init__(self, key, status):
        self.key, self.status = key, status


@pytest.mark.parametrize("peer_id, claimed, route, row, token, pending, verdict", [
    ("laptop", "laptop", ROUTE, None, False, 0, ("pending", "join")),
    ("laptop", "laptop", ROUTE, Row("K", "accepted"), False, 0, ("accepted", "known")),
    ("laptop", "laptop", ROUTE, Row("other", "accepted"), False, 0, ("pending", "rekey")),
    ("laptop", "laptop", ROUTE, Row("other", "accepted"), True, 0, ("pending", "token")),
    ("laptop", "laptop", ROUTE, None, True, MAX_PENDING, ("pending", "token")),
    ("laptop", "laptop", ROUTE, None, False, MAX_PENDING, ("rejected", "full")),
    ("laptop", "laptop", ROUTE, Row("K", "removed"), False, MAX_PENDING, ("pending", "join")),
    ("laptop", "laptop", b"laptop", None, False, 0, ("rejected", "malformed")),
    ("laptop", "desktop", ROUTE, None, False, 0, ("rejected", "malformed")),
    ("vps", "vps", b"vps/" + b"0" * 32, None, False, 0, ("rejected", "malformed")),
    ("-x", "-x", b"-x/" + b"0" * 32, None, False, 0, ("rejected", "malformed")),
    ("-x", "-x", b"-x/" + b"0" * 32, Row("K", "accepted"), False, 0, ("accepted", "known")),
])
def test_the_hello_rule(peer_id, claimed, route, row, token, pending, verdict):
    got = decide_hello(peer_id, claimed, route, "vps", "K", token, row, pending)
    assert (got.status, got.step) == verdict


def test_a_token_is_accepted_only_when_the_registry_took_it():
    assert token_verdict(None)[:2] == ("accepted", "enrolled with a join token")
    assert token_verdict("token expired")[:2] == ("rejected", "join token refused: token expired")


@pytest.fixture
def enrolment(tmp_path):
    registry = Registry(str(tmp_path / "zpeer.db"))
    table = PeerTable("vps", 1.0)
    yield Enrolment("vps", registry, table, KeyPolicy(), AccessPolicy()), registry, table
    registry.close()


def hello(peer_id="laptop", token=None):
    header = {"t": "hello", "rid": "r", "id": peer_id, "hostname": "h", "version": "1",
              "role": "worker", "pid": 1}
    if token:
        header["token"] = token
    return header


def test_a_new_id_waits_and_acceptance_binds_the_key_that_asked(enrolment):
    e, registry, _ = enrolment
    verdict = e.on_hello(ROUTE, "laptop", "K1", "127.0.0.4", hello())
    assert (verdict.status, verdict.step) == ("pending", "join")
    assert registry.get("laptop").status == "pending" and e.waiting == {"laptop": ROUTE}
    with pytest.raises(BadRequest, match="The key waiting for laptop is K1, not K2"):
        e.accept("laptop", key="K2")
    result, route = e.accept("laptop", key="K1")
    assert result == {"id": "laptop", "status": "accepted"} and route == ROUTE
    assert e.on_hello(ROUTE, "laptop", "K1", "127.0.0.4", hello()).step == "known"


def test_a_token_binds_at_once_and_only_once(enrolment):
    e, registry, _ = enrolment
    token, secret_hash = keys.make_token("127.0.0.1:3520", "x" * 40)
    registry.add_token(secret_hash, 60)
    secret = keys.parse_token(token)["secret"]
    verdict = e.on_hello(ROUTE, "laptop", "K1", "127.0.0.4", hello(token=secret))
    assert verdict.status == "accepted" and registry.get("laptop").key == "K1"
    again = e.on_hello(b"tablet/" + b"1" * 32, "tablet", "K2", "127.0.0.6",
                       hello("tablet", token=secret))
    assert again[:2] == ("rejected", "join token refused: token already used")


def test_a_known_id_with_a_new_key_waits_and_its_acceptance_revokes_the_old_key(enrolment):
    e, registry, table = enrolment
    registry.upsert("laptop", key="OLD", status="accepted")
    table.admit("laptop", "OLD", "127.0.0.4", ROUTE, None, time.monotonic())
    verdict = e.on_hello(ROUTE, "laptop", "NEW", "127.0.0.9", hello())
    assert verdict.step == "rekey" and table.route_of("laptop") is None  # its route was taken
    assert [r["key"] for r in e.pending_records("1")] == ["NEW"] and e.waiting_count() == 1
    e.accept("laptop")
    assert registry.get("laptop").key == "NEW" and "OLD" in e.policy.revoked


def test_revocation_refuses_the_key_and_the_leader_itself_cannot_be_removed(enrolment):
    e, registry, _ = enrolment
    registry.upsert("laptop", key="K", status="accepted")
    assert e.revoke("laptop") == {"id": "laptop", "status": "removed"}
    assert "K" in e.policy.revoked and not e.policy.callback("*", b"K")
    with pytest.raises(PeerNotFound):
        e.revoke("laptop")
    with pytest.raises(ZpeerError, match="The leader cannot remove itself"):
        e.revoke("vps")
    # a hello with the revoked key (on a connection still open, with a fresh token) changes
    # nothing: on aec630a it turned the row pending and the token re-enrolled the key
    token, secret_hash = keys.make_token("127.0.0.1:3520", "x" * 40)
    registry.add_token(secret_hash, 60)
    secret = keys.parse_token(token)["secret"]
    for header in (hello(), hello(token=secret), hello("other", token=secret)):
        verdict = e.on_hello(ROUTE, header["id"], "K", "127.0.0.4", header)
        assert (verdict.status, verdict.step) == ("rejected", "revoked")
    assert registry.get("laptop").status == "removed" and registry.get("other") is None
    registry.upsert("laptop", key="K-new", status="accepted")  # the id enrolled again, anew
    assert "K" in registry.revoked_keys()  # the old key stays revoked for the next leader


def test_the_table_knows_who_is_online_until_silence_or_a_closed_connection():
    table = PeerTable("vps", 1.0)
    now = time.monotonic()
    table.admit("a", "KA", "127.0.0.2", b"a/1", 7, now)
    table.admit("b", "KB", "127.0.0.3", b"b/1", 8, now - 10)
    assert table.verified("a", "KA", b"a/1") is not None
    assert table.verified("a", "KB", b"a/1") is None and table.verified("a", "KA", b"a/2") is None
    assert table.online("vps") and table.count_online() == 2
    table.disconnected(7)  # its connection closed: offline for new work, its jobs may wait
    assert not table.online("a") and table.may_return("a")
    assert table.sweep(now) == ["b"] and not table.may_return("b")


def test_a_big_fleet_is_told_to_beat_less_often_and_old_intervals_count_meanwhile():
    table = PeerTable("vps", 1.0)
    for i in range(1000):
        table.admit(f"p{i}", "K", None, b"r", None, time.monotonic())
    now = time.monotonic()
    table.retune(now, 1.0, 350)
    assert table.beat_s == 3.0 and table.silence_limit_s(now) == 9.0
    for i in range(900):
        table.drop(f"p{i}")
    table.retune(now, 1.0, 350)
    assert table.beat_s == 1.0 and table.silence_limit_s(now) == 9.0  # some still beat at 3 s


def test_credit_stays_within_the_window_whatever_the_receiver_claims():
    credit = Credit(100)
    credit.sent(60)
    assert credit.room() == 40
    credit.acknowledged(1000)
    credit.acknowledged(-50)
    assert credit.room() == 100


def test_intake_refuses_more_than_was_allowed_and_gives_credit_back_in_quarters():
    intake = Intake(100)
    assert intake.fits(100) and not intake.fits(101)
    intake.take(100)
    assert intake.consumed(10) == 0 and intake.consumed(15) == 25
    assert intake.fits(25) and not intake.fits(26)


def test_an_older_connection_of_a_verified_peer_is_known_by_its_key_until_it_is_dropped():
    """After a redial's handover, what comes over the peer's old connection (libzmq renamed its
    route) is the peer's by its key; a rebound key or a dropped peer is no one's."""
    table = PeerTable("vps", 1.0)
    table.admit("laptop", "K1", "10.201.1.2", b"laptop/aa", 5, 0.0)
    assert table.by_key("K1")[0] == "laptop"
    assert table.by_key("K2") == (None, None)
    table.admit("laptop", "K2", "10.201.1.3", b"laptop/bb", 6, 1.0)  # rebound to a new key
    assert table.by_key("K1") == (None, None) and table.by_key("K2")[0] == "laptop"
    table.drop("laptop")
    assert table.by_key("K2") == (None, None)


def test_accept_refuses_to_guess_when_more_than_one_key_asked_under_an_id(enrolment):
    """On aec630a an attacker's hellos as `nas` every 5 ms made `d acceptPeer nas` bind the
    attacker's key: with several keys asking, acceptPeer lists them and wants --key, which may
    pick any of them, not only the last."""
    e, registry, _ = enrolment
    e.on_hello(ROUTE, "laptop", "Kreal", "127.0.0.4", hello())
    e.on_hello(ROUTE, "laptop", "Kevil", "127.0.0.66", hello())
    with pytest.raises(BadRequest, match=r"More than one key asked to join as laptop: Kreal "
                                         r"\(from 127.0.0.4\), Kevil \(from 127.0.0.66\)"):
        e.accept("laptop")
    assert registry.get("laptop").status == "pending"
    result, route = e.accept("laptop", key="Kre")
    assert result == {"id": "laptop", "status": "accepted"} and route is None
    row = registry.get("laptop")
    assert (row.key, row.ip, row.status) == ("Kreal", "127.0.0.4", "accepted")
    assert "Kevil" not in e.policy.revoked  # it was never bound: nothing to revoke


def _token(registry, bound_id=None, replace=False):
    token, secret_hash = keys.make_token("127.0.0.1:3520", "x" * 40)
    registry.add_token(secret_hash, 60, bound_id, replace)
    return keys.parse_token(token)["secret"]


def test_a_token_enrols_only_its_id_and_rebinds_an_accepted_one_only_when_made_to(enrolment):
    """On aec630a a token read from another user's process list took over the accepted id
    `laptop` (a token bound any id to any key): a token made with --id enrols that id only, and
    none rebinds an accepted id to another key unless made with --id ID --replace."""
    e, registry, table = enrolment
    registry.upsert("laptop", key="K1", status="accepted")
    table.admit("laptop", "K1", "127.0.0.4", ROUTE, None, time.monotonic())
    nas_only = _token(registry, "nas")
    verdict = e.on_hello(ROUTE, "laptop", "K1", "127.0.0.4", hello(token=nas_only))
    assert verdict.step == "known"  # its own key: the token is not even looked at
    mallory = b"mallory/" + b"1" * 32
    verdict = e.on_hello(mallory, "mallory", "KM", "127.0.0.66", hello("mallory", nas_only))
    assert verdict[:2] == ("rejected", "join token refused: token is for peer nas")
    plain = _token(registry)
    verdict = e.on_hello(b"laptop/" + b"9" * 32, "laptop", "KM", "127.0.0.66",
                         hello(token=plain))
    assert verdict[:2] == ("rejected", "join token refused: peer id laptop is bound to another "
                                       "key (a token from `d joinToken --id laptop --replace` "
                                       "rebinds it)")
    assert registry.get("laptop").key == "K1" and table.route_of("laptop") == ROUTE
    verdict = e.on_hello(b"tablet/" + b"1" * 32, "tablet", "KT", "127.0.0.6",
                         hello("tablet", plain))  # still unused: it enrols a new id
    assert verdict.status == "accepted" and registry.get("tablet").key == "KT"
    replace = _token(registry, "laptop", replace=True)
    verdict = e.on_hello(ROUTE, "laptop", "K2", "127.0.0.9", hello(token=replace))
    assert verdict.status == "accepted" and registry.get("laptop").key == "K2"
    assert "K1" in e.policy.revoked and table.route_of("laptop") is None  # the old one is out


def test_admission_ends_only_the_oldest_beyond_the_cap_of_those_past_their_grace():
    from zpeer.daemon.admission import Admission

    adm = Admission(per_ip_max=2, grace_s=5.0)
    for fd in range(4):
        adm.accepted(fd, "127.0.0.9", float(fd))
    assert adm.next_deadline() == 7.0  # when a third one has had its grace
    assert adm.sweep(6.9) == []
    assert adm.sweep(7.0) == [(0, "127.0.0.9")]
    adm.accepted(10, "127.0.0.9", 7.5)  # a worker in the middle of its hello: not judged yet
    assert adm.sweep(7.9) == []
    assert adm.next_deadline() == 8.0 and adm.sweep(8.0) == [(1, "127.0.0.9")]
    adm.verified(10)
    assert adm.next_deadline() is None and adm.sweep(100.0) == []
