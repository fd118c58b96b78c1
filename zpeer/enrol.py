"""`d` commands of enrolment: registerWorker, joinToken, acceptPeer, removePeer.

Loaded by `zpeer.cli` only when one of them runs (see LAZY_COMMANDS there).
"""
import click

from zpeer import config
from zpeer.cli import CONTEXT, call, usage_error


@click.command("registerWorker", context_settings=CONTEXT)
@click.option("--id", "peer_id", metavar="ID", help="Peer id (default: this host's name).")
@click.option("--token", metavar="TOKEN", help="Join token from `d joinToken` on the leader (accepted at once).")
@click.option("--leader", metavar="HOST[:PORT]", help="Leader address (default: the token's).")
@click.option("--leader-key", metavar="KEY", help="Leader public key when enrolling without a token.")
@click.option("--source-ip", metavar="IP", help="Local address to connect from.")
def register_worker(peer_id, token, leader, leader_key, source_ip):
    """Register this node as a worker of a leader (with a token: accepted at once).

    \b
    Examples:
      d registerWorker --token zpeer1.eyJhIjoi...
      d registerWorker --id laptop --leader 10.0.0.1 --leader-key KEY   # then acceptPeer on the leader
    """
    from zpeer import keys

    cfg = config.load()
    secret = None
    if token:
        try:
            parsed = keys.parse_token(token)
        except ValueError as exc:
            usage_error(f"Invalid join token: {exc}")
        leader = leader or parsed["address"]
        leader_key, secret = parsed["leader_key"], parsed["secret"]
    leader = leader or cfg.get("leader")
    if not leader:
        usage_error("No leader given: pass --token TOKEN (from `d joinToken` on the leader) "
                    "or --leader HOST[:PORT]")
    leader_key = leader_key or cfg.get("leader_key")
    if not leader_key or not keys.valid_z85_key(leader_key):
        usage_error("The leader's key is unknown: pass --token TOKEN (from `d joinToken` on the leader) "
                    "or --leader-key KEY (`d getPeerStatus` on the leader shows it)")
    peer_id = peer_id or (cfg["id"] if cfg.get("role") == "worker" and cfg.get("id") else config.default_peer_id())
    if not config.valid_peer_id(peer_id):
        usage_error(f"Invalid peer id: {peer_id!r}")
    try:
        config.split_host_port(leader)
    except ValueError as exc:
        usage_error(f"Invalid --leader {leader!r}: {exc}")
    config.update({"role": "worker", "id": peer_id, "leader": leader, "leader_key": leader_key,
                   "source_ip": source_ip, "token": secret})
    call("reload", timeout_s=5)
    result = call("register", wait_s=10.0, timeout_s=15)
    stored = config.load()
    stored["token"] = None  # one-time secret: never kept once the leader answered
    config.save(stored)
    if result["status"] == "registered":
        click.echo(f"Registered: {peer_id} is a worker of {result['leader']} ({result['reason']})")
    else:
        click.echo(f"Pending: {peer_id} waits for `d acceptPeer {peer_id}` on the leader {result['leader']}")


@click.command("joinToken", context_settings=CONTEXT)
@click.option("--ttl", type=click.IntRange(1, 30 * 86400), default=3600, show_default=True, metavar="SECONDS",
              help="How long the token can be used (once).")
def join_token(ttl):
    """Leader: print a one-time join token (leader address, key and secret) for a new worker.

    \b
    Example:
      d joinToken --ttl 600      # then on the worker: d registerWorker --token TOKEN
    """
    click.echo(call("join_token", ttl=ttl)["token"])


@click.command("acceptPeer", context_settings=CONTEXT)
@click.argument("peer_id", metavar="ID")
@click.option("--key", metavar="KEY", help="Accept only if the waiting key starts with KEY (from the peer's getPeerStatus).")
def accept_peer(peer_id, key):
    """Leader: accept a pending peer's key so it can run and receive commands.

    \b
    Example:
      d listPeers --pending && d acceptPeer laptop --key 'rEWR8y2g'
    """
    call("accept", id=peer_id, key=key)
    click.echo(f"Accepted: {peer_id}")


@click.command("removePeer", context_settings=CONTEXT)
@click.argument("peer_id", metavar="ID")
def remove_peer(peer_id):
    """Leader: revoke a peer's key and cut its connection at once.

    \b
    Example:
      d removePeer old-laptop
    """
    call("remove", id=peer_id)
    click.echo(f"Removed: {peer_id} (key revoked)")
