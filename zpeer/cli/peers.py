"""`d listPeers`, `d getPeerIdByIp` and `d history`: what the leader knows, asked from any node."""
import json
import sys

import click

from zpeer.cli.common import CONTEXT, call, client, fail
from zpeer.errors import ZpeerError


@click.command("listPeers", context_settings=CONTEXT)
@click.option("--ids", is_flag=True, help="Only peer ids, one per line (for scripts).")
@click.option("--online", is_flag=True, help="Only peers that are online.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON array of {id, ip, role, online, last_seen, version}.")
@click.option("--pending", is_flag=True, help="Leader: peers waiting for `d acceptPeer`.")
def list_peers(ids, online, as_json, pending):
    """List the peers registered with the leader (asks the leader from any node).

    \b
    Examples:
      d listPeers
      for p in $(d listPeers --ids --online); do d execOnPeer --peer "$p" --shellCmd uptime; done
    """
    from zpeer.cli.tables import peer_table

    result = call("peers", pending=pending)
    peers = [p for p in result["peers"] if p["online"] or not online]
    if ids:
        for p in peers:
            click.echo(p["id"])
    elif as_json:
        keys_ = ("id", "ip", "role", "online", "last_seen", "version", "clock_offset_s")
        click.echo(json.dumps([{k: p.get(k) for k in keys_} for p in peers], indent=2))
    else:
        click.echo(peer_table(peers, result.get("leader_version"),
                              0 if pending else result.get("waiting", 0)))


@click.command("getPeerIdByIp", context_settings=CONTEXT)
@click.argument("ip", metavar="IP")
def get_peer_id_by_ip(ip):
    """Print the id of the peer whose connection comes from IP (exit 1 if none).

    \b
    Example:
      d getPeerIdByIp 10.0.0.2
    """
    c = client()
    try:
        ids = c.call("peer_by_ip", ip=ip)["ids"]
    except ZpeerError as err:
        if err.code == "peer_not_found":
            click.echo(f"No peer found with IP: {ip}", err=True)
            click.echo("  hint: `d listPeers` shows the IP each peer connects from", err=True)
            sys.exit(1)
        fail(err)
    finally:
        c.close()
    click.echo("\n".join(ids))


@click.command(context_settings=CONTEXT)
@click.option("--peer", metavar="ID", help="Only execs that ran on (or came from) this peer.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON array.")
@click.option("--replay", metavar="JOB",
              help="Play a recorded pty session back in this terminal, at its pace.")
@click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              metavar="N", help="With --replay: N times as fast.")
@click.option("--verify", is_flag=True,
              help="Leader: check every row against the audit's hash chain (exit 1 if altered).")
def history(peer, limit, as_json, replay, speed, verify):
    """Show the leader's audit log of executed commands, newest first.

    \b
    Rows marked [tty] are pseudo-terminal sessions (`d shell`, -t); [tty rec] ones were
    recorded (`d setPeerConfig --record-sessions` on the leader): `--replay JOB` plays them.
    Examples:
      d history --peer laptop --limit 5
      d history --replay 3f2a9c1b7d0e.0 --speed 2
      d history --verify
    """
    if verify:
        sys.exit(_verify(as_json))
    if replay is not None:
        from zpeer.cli.replay import replay_cast

        sys.exit(replay_cast(client(), replay, speed))
    from zpeer.cli.tables import history_table

    rows = call("history", peer=peer, limit=limit)["rows"]
    click.echo(json.dumps(rows, indent=2) if as_json else history_table(rows))


def _verify(as_json):
    """`history --verify`: the chain's report; 0 if every row and link holds, else 1."""
    from zpeer.cli.tables import printable

    report = call("history_verify")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for problem in report["problems"]:
            click.echo(printable(f"history: {problem}"))
        more = report["problem_count"] - len(report["problems"])
        if more > 0:
            click.echo(f"history: ... and {more} more")
        counts = f"{report['rows']} rows, {report['links']} links"
        click.echo(f"history verified: {counts}; chain head {report['head']}" if report["ok"]
                   else f"history NOT verified: {report['problem_count']} problems ({counts})")
    return 0 if report["ok"] else 1
