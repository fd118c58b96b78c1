"""What --peer and --exclude values name (zpeer.targets): lists, ranges, patterns and `all`."""
import pytest

from zpeer.errors import BadRequest, PeerNotFound
from zpeer.targets import many_peers, peer_names, resolve_targets

HINT = "a range is NAME[1-3,7] (digits; [01-10] keeps the zero padding)"


def test_lists_and_ranges_as_pdsh_writes_them():
    assert peer_names(["web[1-3,7],db1", " x y\n"]) == ["web1", "web2", "web3", "web7", "db1", "x",
                                                        "y"]
    assert peer_names(["node[01-03]", "n[8-10]", "r[1-2]-n[1, 3]"]) == [
        "node01", "node02", "node03", "n8", "n9", "n10", "r1-n1", "r1-n3", "r2-n1", "r2-n3"]
    assert peer_names(["a[0]"]) == ["a0"]


@pytest.mark.parametrize("value",
                         ["web[3-1]", "web[a-b]", "web[1-3", "web]", "web[1-]", "w[²]", "w[[1]]",
                          "w[]",
                                   "w" + "[1]" * 2000])
def test_a_bracket_that_is_not_a_range_is_refused(value):
    with pytest.raises(BadRequest) as err:
        peer_names([value])
    assert (err.value.message, err.value.hint) == (f"Bad peer range: {value}", HINT)


@pytest.mark.parametrize("value", ["w[1-10001]", "w[1-200][1-200]", "w[1-99999999999999999999]"])
def test_a_range_too_big_for_a_fleet_is_refused_before_it_is_built(value):
    with pytest.raises(BadRequest) as err:
        peer_names([value])
    assert err.value.message == f"Too many peers named: {value} names more than 10000"


def test_patterns_match_known_ids_and_must_match_one():
    known = ["web1", "web2", "db1", "vps"]
    assert resolve_targets(["web*", "db?"], known) == ["web1", "web2", "db1"]
    assert resolve_targets(["all"], known, ["web*", "vps"]) == ["db1"]
    assert resolve_targets(["web[1-2]", "vps"], [], ["web2"]) == ["web1", "vps"]
    # a pattern that matches nothing is a typo, as an unknown id is
    with pytest.raises(PeerNotFound) as err:
        resolve_targets(["wbe*"], known)
    hint = "no peer id matches this pattern (`d listPeers`)"
    assert (err.value.message, err.value.hint) == ("Peer not found: wbe*", hint)
    with pytest.raises(PeerNotFound) as err:
        resolve_targets(["all"], known, ["dbb*"])
    assert err.value.message == "Peer not found: dbb*" and "--exclude" in err.value.hint


def test_an_empty_exclude_is_an_error_not_nothing_left_out():
    with pytest.raises(BadRequest) as err:
        resolve_targets(["all"], ["web1", "db1"], [" ", ""])
    assert err.value.message == "No peer given: --exclude is empty"


def test_prefixes_for_anything_that_may_name_several():
    assert [many_peers(v) for v in (["web[1-2]"], ["web*"], ["web[1]"], ["a"], ["all"])] == [
        True, True, False, False, True]
