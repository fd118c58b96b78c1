"""The leader's access policy (SPEC, "Access policy"): the rules' meaning, and the leader
refusing what they do not allow for every exec it routes and every history read, on real
daemons driven through the real CLI."""
import getpass
import json
import os

import pytest
from helpers.nodes import wait_for

from zpeer.daemon.access import AccessPolicy, Rule
from zpeer.errors import NotAllowed

pytestmark = pytest.mark.timeout(90)


def rules(*specs):
    """Rules numbered in order from (action, origins, targets[, users[, kind]]) tuples."""
    return [Rule(n, *spec) for n, spec in enumerate(specs, 1)]


def test_no_rules_allow_everything():
    policy = AccessPolicy()
    assert policy.open
    policy.check_run("laptop", "vps", "root")
    assert policy.history_filter("laptop") is None


def test_allow_rules_narrow_and_deny_wins():
    policy = AccessPolicy(rules(("allow", "desktop", "web[1-3],db1"),
                                ("allow", "ci*", "all", "deploy"),
                                ("deny", "all", "web2")))
    assert policy.allows("run", "desktop", "web1", "root")
    assert policy.allows("run", "desktop", "db1", None)
    assert not policy.allows("run", "desktop", "web2", "root")  # deny wins over the allow
    assert not policy.allows("run", "desktop", "web4", "root")  # no allow names it
    assert not policy.allows("run", "laptop", "web1", "root")
    assert policy.allows("run", "ci-7", "db1", "deploy")
    assert not policy.allows("run", "ci-7", "db1", "root")  # not as that user
    assert not policy.allows("run", "ci-7", "db1", None)  # a user the leader cannot name
    with pytest.raises(NotAllowed) as err:
        policy.check_run("ci-7", "db1", "root")
    assert err.value.message == "Not allowed: ci-7 may not run on db1 as root"


def test_deny_only_rules_keep_the_rest_open():
    policy = AccessPolicy(rules(("deny", "laptop", "vps", "root")))
    assert not policy.allows("run", "laptop", "vps", "root")
    assert not policy.allows("run", "laptop", "vps", None)  # unknown user: refused, not guessed
    assert policy.allows("run", "laptop", "vps", "alice")
    assert policy.allows("run", "desktop", "vps", "root")


def test_target_only_peers_start_nothing():
    policy = AccessPolicy(target_only={"nas"})
    assert not policy.open
    with pytest.raises(NotAllowed) as err:
        policy.check_run("nas", "vps", "root")
    assert err.value.message == "Not allowed: nas may not run on vps (nas is target-only)"
    policy.check_run("vps", "nas", "root")
    with pytest.raises(NotAllowed):
        policy.history_filter("nas")


def test_history_rules():
    policy = AccessPolicy(rules(("allow", "desktop", "web*", None, "history"),
                                ("deny", "laptop", "all", None, "history")))
    readable = policy.history_filter("desktop")
    assert readable("web1") and not readable("db1")
    for reader in ("laptop", "nas"):  # denied all; named by no allow rule
        with pytest.raises(NotAllowed) as err:
            policy.history_filter(reader)
        assert err.value.message == f"Not allowed: {reader} may not read the history"


def test_bad_rules_are_refused():
    from zpeer.errors import BadRequest

    for spec in (("permit", "a", "b"), ("allow", "a", "web[3-1]"), ("allow", "", "b"),
                 ("allow", "a", "b", "root", "history"), ("allow", "a", "b", None, "write")):
        with pytest.raises(BadRequest):
            Rule(1, *spec)


# --- on real daemons -------------------------------------------------------------------------
def marker(node, name):
    """A file a refused command would have created on `node`'s side (all run on this host)."""
    return os.path.join(node.home, name)


def run(origin, target, command, *extra, **kw):
    """execOnPeer from `origin` on peer `target`."""
    return origin.d("execOnPeer", "--peer", target, "--shellCmd", command, *extra, **kw)


def test_the_leader_enforces_the_policy(cluster):
    vps, desktop, laptop = cluster.vps, cluster.desktop, cluster.laptop
    assert run(desktop, "laptop", "echo open").stdout == b"open\n"  # no rules: open
    out = vps.d("policy", "deny", "desktop", "laptop", check=0)
    assert out.stdout == b"  1  deny   desktop may not run on laptop\n"

    touched = marker(laptop, "refused")
    refused = run(desktop, "laptop", f"touch {touched}")
    assert refused.returncode == 255
    assert refused.stderr.splitlines()[0] == b"Not allowed: desktop may not run on laptop"
    assert not os.path.exists(touched)  # it never ran
    assert run(desktop, "vps", "echo fine").stdout == b"fine\n"  # other targets stay open
    assert run(vps, "laptop", "echo admin").stdout == b"admin\n"  # the leader's own CLI

    # a fan-out: the allowed target runs, the refused one says why; the status is the largest
    fan = run(desktop, "vps,laptop", "echo hi")
    assert fan.returncode == 255
    assert b"vps: hi\n" in fan.stdout
    assert b"Not allowed: desktop may not run on laptop" in fan.stderr

    # the refusal is audited
    rows = json.loads(vps.d("history", "--json", "--limit", "50", check=0).stdout)
    refusals = [r for r in rows if r["outcome"] == "not_allowed"]
    assert {(r["origin"], r["target"], r["rc"]) for r in refusals} == {("desktop", "laptop", 255)}
    assert any(r["command"] == f"touch {touched}" for r in refusals)

    # users: only `deploy` on laptop for desktop; the daemon's own user is refused
    vps.d("policy", "reset", check=0)
    me = getpass.getuser()
    vps.d("policy", "allow", "desktop", "laptop", "--user", "deploy", check=0)
    vps.d("policy", "allow", "desktop,laptop", "vps", check=0)
    as_me = run(desktop, "laptop", "true")
    assert as_me.returncode == 255
    assert as_me.stderr.splitlines()[0] == f"Not allowed: desktop may not run on laptop as {me}"\
        .encode()
    assert run(laptop, "desktop", "true").returncode == 255  # no allow names laptop -> desktop
    assert run(laptop, "vps", "echo ok").stdout == b"ok\n"
    vps.d("policy", "allow", "desktop", "laptop", "--user", me, check=0)
    assert run(desktop, "laptop", "echo me").stdout == b"me\n"

    listed = json.loads(vps.d("policy", "--json", check=0).stdout)
    assert [(r["n"], r["action"], r["origins"], r["targets"], r["users"]) for r in
            listed["rules"]] == [(1, "allow", "desktop", "laptop", "deploy"),
                                 (2, "allow", "desktop,laptop", "vps", None),
                                 (3, "allow", "desktop", "laptop", me)]
    vps.d("policy", "remove", "3", check=0)
    assert run(desktop, "laptop", "true").returncode == 255
    missing = vps.d("policy", "remove", "3")
    assert missing.returncode == 255 and b"No policy rule 3" in missing.stderr

    # kept across a leader restart
    vps.stop()
    vps.start()
    wait_for(lambda: cluster.online("desktop") and cluster.online("laptop"), timeout=20,
             what="the workers back")
    assert run(desktop, "laptop", "true").returncode == 255
    assert run(laptop, "vps", "echo still").stdout == b"still\n"

    # only the leader holds the policy; a typo is pointed out
    on_worker = desktop.d("policy", "deny", "desktop", "vps")
    assert on_worker.returncode == 255 and b"leader" in on_worker.stderr
    typo = vps.d("policy", "deny", "lapotp", "vps", check=0)
    assert typo.stderr == b"note: no peer is called lapotp (yet)\n"
    vps.d("policy", "reset", check=0)
    assert vps.d("policy", check=0).stdout == \
        b"No rules: every peer may run on every peer and read the history.\n"
    assert run(desktop, "laptop", "echo open").stdout == b"open\n"


def test_history_reads_and_target_only_peers(cluster):
    vps, desktop, laptop = cluster.vps, cluster.desktop, cluster.laptop
    token = vps.d("joinToken", "--id", "nas", "--target-only", check=0).stdout.decode().strip()
    nas = cluster.worker("nas", "127.0.0.5", register=False)
    out = nas.d("registerWorker", "--id", "nas", "--token", "-", "--source-ip", "127.0.0.5",
                input=token.encode() + b"\n", check=0)
    assert b"Registered" in out.stdout
    wait_for(lambda: cluster.online("nas"), what="nas online")

    assert run(vps, "nas", "echo on-nas").stdout == b"on-nas\n"  # it can be run on
    assert run(desktop, "nas", "echo from-desktop").stdout == b"from-desktop\n"
    touched = marker(nas, "escaped")
    refused = run(nas, "desktop", f"touch {touched}")
    assert refused.returncode == 255
    assert refused.stderr.splitlines()[0] == \
        b"Not allowed: nas may not run on desktop (nas is target-only)"
    assert not os.path.exists(touched)
    assert vps.d("policy", check=0).stdout.endswith(
        b"target-only (start nothing elsewhere): nas\n")
    nas_history = nas.d("history")
    assert nas_history.returncode == 255
    assert nas_history.stderr.splitlines()[0] == b"Not allowed: nas may not read the history"

    run(vps, "laptop", "echo secret-on-laptop", check=0)
    run(vps, "desktop", "echo on-desktop", check=0)
    vps.d("policy", "allow", "desktop", "laptop", "--history", check=0)
    seen = json.loads(desktop.d("history", "--json", "--limit", "100", check=0).stdout)
    assert seen and {r["target"] for r in seen} == {"laptop"}
    assert any(r["command"] == "echo secret-on-laptop" for r in seen)
    denied = laptop.d("history")
    assert denied.returncode == 255
    assert denied.stderr.splitlines()[0] == b"Not allowed: laptop may not read the history"
    everything = json.loads(vps.d("history", "--json", "--limit", "100", check=0).stdout)
    assert {"desktop", "laptop", "nas"} <= {r["target"] for r in everything}
    # the history refusals are audited as well
    assert {r["origin"] for r in everything if r["command"] == "d history"
            and r["outcome"] == "not_allowed"} == {"nas", "laptop"}
