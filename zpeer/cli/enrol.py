"""`d` commands that set a node up: setPeerConfig, and enrolment (registerWorker, joinToken,
acceptPeer, removePeer).

Loaded by `zpeer.cli.app` only when one of them runs (see COMMANDS there).
"""
import sys

import click

from zpeer import config
from zpeer.cli.common import CONTEXT, Seconds, call, client, fail, usage_error
from zpeer.errors import FailedToConnect, ZpeerError


@click.command("setPeerConfig", context_settings=CONTEXT)
@click.option("--role", type=click.Choice(config.ROLES),
              help="leader (binds, holds the registry) or worker.")
@click.option("--id", "peer_id", metavar="ID", help="This node's peer id.")
@click.option("--bind", metavar="HOST[:PORT]",
              help=f"Leader: address to listen on (default {config.DEFAULT_BIND}).")
@click.option("--advertise", metavar="IP",
              help="Leader: its IP in the registry when bound to all addresses.")
@click.option("--leader", metavar="HOST[:PORT]", help="Worker: the leader's address.")
@click.option("--leader-key", metavar="KEY",
              help="Worker: the leader's CURVE public key (z85) to pin.")
@click.option("--source-ip", metavar="IP",
              help="Worker: local address the leader connection leaves from.")
@click.option("--group", metavar="NAME", help="Unix group allowed to use the CLI socket (0770).")
@click.option("--heartbeat", type=Seconds(*config.HEARTBEAT_RANGE_S), metavar="SECONDS",
              help="Heartbeat interval (default 1.0); peers are offline after 3 missed.")
@click.option("--heartbeat-budget", type=click.IntRange(*config.HEARTBEAT_BUDGET_RANGE),
              metavar="N",
              help="Leader: heartbeats/s it takes from all peers (default "
                   f"{config.DEFAULT_HEARTBEAT_BUDGET_PER_S}); bigger fleets beat less often.")
@click.option("--history-rows", type=click.IntRange(*config.HISTORY_ROWS_RANGE), metavar="N",
              help="Leader: audit rows `d history` keeps, the newest (default "
                   f"{config.DEFAULT_HISTORY_ROWS}; 0 keeps all).")
@click.option("--record-sessions/--no-record-sessions", default=None,
              help="Leader: record what pseudo-terminal sessions print (`d history --replay`).")
@click.option("--repo", metavar="DIR", help="Deploy recipe: repository directory on this peer.")
@click.option("--pull-cmd", metavar="CMD",
              help="Deploy recipe: pull command (default git pull --ff-only).")
@click.option("--build-cmd", metavar="CMD", help="Deploy recipe: build command.")
@click.option("--restart-cmd", metavar="CMD", help="Deploy recipe: daemon restart command.")
def set_peer_config(role, peer_id, bind, advertise, leader, leader_key, source_ip, group, heartbeat,
                    heartbeat_budget, history_rows, record_sessions, repo, pull_cmd, build_cmd,
                    restart_cmd):
    """Set this node's role and settings; a running daemon applies them at once.

    \b
    Examples:
      d setPeerConfig --role leader --id vps --bind 0.0.0.0:3520 --advertise 10.0.0.1
      d setPeerConfig --role worker --id desktop --leader 10.0.0.1 --leader-key KEY
    """
    from zpeer.wire import keys

    if peer_id is not None and not config.valid_peer_id(peer_id):
        usage_error(f"Invalid peer id: {peer_id!r} ({config.PEER_ID_RULE})")
    for name, value in (("--bind", bind), ("--leader", leader)):
        if value is not None:
            try:
                config.split_host_port(value)
            except ValueError as exc:
                usage_error(f"Invalid {name} {value!r}: {exc}")
    _check_ips(advertise=advertise, source_ip=source_ip)
    if leader_key is not None and not keys.valid_z85_key(leader_key):
        usage_error("Invalid --leader-key: expected the 40-character z85 key `d getPeerStatus` "
                    "shows on the leader")
    changes = {"role": role, "id": peer_id, "bind": bind, "advertise": advertise, "leader": leader,
               "leader_key": leader_key, "source_ip": source_ip, "group": group,
               "heartbeat_s": heartbeat, "heartbeat_budget": heartbeat_budget,
               "history_rows": history_rows, "record_sessions": record_sessions, "repo": repo,
               "pull_cmd": pull_cmd,
               "build_cmd": build_cmd, "restart_cmd": restart_cmd}
    if all(v is None for v in changes.values()):
        usage_error("Nothing to set: see `d setPeerConfig --help`")
    before = config.load(check=False)  # (a value broken by a hand edit can be set again)
    cfg = config.update(changes)
    shown = ", ".join(f"{k}={cfg[k]}" for k, v in changes.items() if v is not None)
    try:
        applied = _reload()
    except ZpeerError as err:
        # the running daemon went back to the previous settings: so does the file
        config.save(before)
        err.message += " (nothing changed)"
        fail(err)
    click.echo(f"Saved: {shown}")
    click.echo("Applied by the running daemon." if applied else
               "The daemon is not running: it applies this when it starts (`d daemon`).")


def _check_ips(**values):
    """Exit 2 if --advertise or --source-ip is not an IP address (before anything is saved)."""
    for name, value in values.items():
        if value is not None and not config.valid_ip(value):
            usage_error(f"Invalid --{name.replace('_', '-')} {value!r}: not an IP address")


def _reload():
    """Ask a running daemon to re-read config.json; False if none runs, ZpeerError if it cannot
    apply it."""
    c = client()
    try:
        c.call("reload", timeout_s=5)
        return True
    except FailedToConnect:
        return False
    finally:
        c.close()


def _token_from(token, token_file):
    """The join token: as given, from stdin (`-`) or from the first line of a file."""
    if token and token_file:
        usage_error("Give the join token once: --token or --token-file, not both")
    if token == "-":
        token = sys.stdin.readline().strip()
        if not token:
            usage_error("No join token given: stdin (--token -) is empty")
    elif token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            usage_error(f"Cannot read --token-file {token_file}: "
                        f"{getattr(exc, 'strerror', None) or exc}")
        if not token:
            usage_error(f"No join token given: --token-file {token_file} is empty")
    return token


@click.command("registerWorker", context_settings=CONTEXT)
@click.option("--id", "peer_id", metavar="ID", help="Peer id (default: this host's name).")
@click.option("--token", metavar="TOKEN",
              help="Join token from `d joinToken` on the leader (accepted at once); `-` reads "
                   "it from stdin.")
@click.option("--token-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Read the join token from FILE (it then never stands in the process list).")
@click.option("--leader", metavar="HOST[:PORT]", help="Leader address (default: the token's).")
@click.option("--leader-key", metavar="KEY",
              help="Leader public key when enrolling without a token.")
@click.option("--source-ip", metavar="IP", help="Local address to connect from.")
def register_worker(peer_id, token, token_file, leader, leader_key, source_ip):
    """Register this node as a worker of a leader (with a token: accepted at once).

    \b
    Examples:
      d registerWorker --token-file /root/zpeer.token
      d joinToken | ssh newhost d registerWorker --token -
      d registerWorker --token zpeer1.eyJhIjoi...
      d registerWorker --id laptop --leader 10.0.0.1 --leader-key KEY   # then d acceptPeer
    """
    from zpeer.wire import keys

    cfg = config.load()
    secret = None
    token = _token_from(token, token_file)
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
        usage_error("The leader's key is unknown: pass --token TOKEN (from `d joinToken` on the "
                    "leader) or --leader-key KEY (`d getPeerStatus` on the leader shows it)")
    peer_id = peer_id or (cfg["id"] if cfg.get("role") == "worker" and cfg.get("id")
                          else config.default_peer_id())
    if not config.valid_peer_id(peer_id):
        usage_error(f"Invalid peer id: {peer_id!r} ({config.PEER_ID_RULE})")
    try:
        config.split_host_port(leader)
    except ValueError as exc:
        usage_error(f"Invalid --leader {leader!r}: {exc}")
    _check_ips(source_ip=source_ip)
    config.update({"role": "worker", "id": peer_id, "leader": leader, "leader_key": leader_key,
                   "source_ip": source_ip, "token": secret})
    if not _reload():
        fail(FailedToConnect(hint="the daemon of this node is not running; the settings are "
                                  f"saved, and it registers with {leader} when it starts (`d "
                                  "daemon`, `systemctl start zpeer`)"))
    result = call("register", wait_s=10.0, timeout_s=15)
    stored = config.load()
    stored["token"] = None  # one-time secret: never kept once the leader answered
    config.save(stored)
    if result["status"] == "registered":
        click.echo(f"Registered: {peer_id} is a worker of {result['leader']} ({result['reason']})")
    else:
        click.echo(f"Pending: {peer_id} waits for `d acceptPeer {peer_id}` on the leader "
                   f"{result['leader']}")


@click.command("joinToken", context_settings=CONTEXT)
@click.option("--ttl", type=click.IntRange(1, 30 * 86400), default=3600, show_default=True,
              metavar="SECONDS", help="How long the token can be used (once).")
@click.option("--id", "peer_id", metavar="ID", help="The one peer id the token may enrol.")
@click.option("--replace", is_flag=True,
              help="With --id: the token may rebind that id, already accepted, to a new key "
                   "(a reinstalled host).")
@click.option("--target-only", is_flag=True,
              help="The peer it enrols can be run on but starts nothing elsewhere.")
@click.option("--count", type=click.IntRange(1, config.JOIN_TOKENS_MAX), default=1,
              show_default=True, metavar="N",
              help="Print N tokens, one per line (a fleet enrolled at once).")
def join_token(ttl, peer_id, replace, target_only, count):
    """Leader: print a one-time join token (leader address, key and secret) for a new worker.

    A token never rebinds an accepted id to another key, unless made with --id ID --replace.

    \b
    Examples:
      d joinToken --ttl 600 --id laptop   # then on laptop: d registerWorker --token -
      d joinToken --id nas --replace      # nas was reinstalled: its new key replaces the old
      d joinToken --count 500 > tokens    # one line per new host
    """
    if peer_id and count > 1:
        usage_error("--count needs no --id: a token for one id is one token")
    if replace and not peer_id:
        usage_error("--replace needs --id ID: a token rebinds the one id it is for")
    if peer_id and not config.valid_peer_id(peer_id, new=False):
        usage_error(f"Invalid peer id: {peer_id!r} ({config.PEER_ID_RULE})")
    reply = call("join_token", ttl=ttl, id=peer_id, replace=replace, target_only=target_only,
                 count=count)
    tokens = reply.get("tokens") or [reply["token"]]
    if len(tokens) != count:  # a daemon from before --count makes one
        fail(f"The leader made {len(tokens)} token(s), not {count}: is it older than this CLI?")
    click.echo("\n".join(tokens))


@click.command("acceptPeer", context_settings=CONTEXT)
@click.argument("peer_id", metavar="ID")
@click.option("--key", metavar="KEY",
              help="Accept only if the waiting key starts with KEY (the peer's getPeerStatus "
                   "shows it).")
@click.option("--target-only", is_flag=True,
              help="The peer can be run on but starts nothing elsewhere.")
def accept_peer(peer_id, key, target_only):
    """Leader: accept a pending peer's key so it can run and receive commands.

    \b
    Example:
      d listPeers --pending && d acceptPeer laptop --key 'rEWR8y2g'
    """
    call("accept", id=peer_id, key=key, target_only=target_only)
    click.echo(f"Accepted: {peer_id}" + (" (target-only)" if target_only else ""))


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
