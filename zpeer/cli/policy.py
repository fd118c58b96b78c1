"""`d policy`: the leader's access policy, shown and changed (zpeer.daemon.access applies it)."""
import json

import click

from zpeer.cli.common import CONTEXT, call
from zpeer.cli.tables import policy_lines

RULE_HELP = ("ORIGINS and TARGETS are written as --peer takes them: ids, lists, ranges "
             "(web[1-3]), patterns ('web*') or all.")


@click.group("policy", context_settings=CONTEXT, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="The rules as JSON.")
@click.pass_context
def policy(ctx, as_json):
    """Leader: show the access policy (who may run on whom, as which user, and read history).

    No rules: every peer may run on every peer. With allow rules, a request must match one; a
    matching deny rule always refuses. Peers enrolled with `joinToken --target-only` start
    nothing elsewhere.

    \b
    Examples:
      d policy allow desktop 'web*' --user deploy
      d policy deny laptop vps
      d policy allow desktop all --history
    """
    if ctx.invoked_subcommand is None:
        _show(call("policy", verb="show"), as_json)


def _rule_command(action, summary):
    """The allow or deny subcommand."""

    @click.command(action, context_settings=CONTEXT, help=f"{summary} {RULE_HELP}")
    @click.argument("origins", metavar="ORIGINS")
    @click.argument("targets", metavar="TARGETS")
    @click.option("--user", "users", metavar="USERS",
                  help="Only when running as these users (names, lists, patterns).")
    @click.option("--history", is_flag=True,
                  help="About reading the history of TARGETS' commands, not running on them.")
    def command(origins, targets, users, history):
        result = call("policy", verb=action, origins=origins, targets=targets, users=users,
                      history=history)
        for name in result["unknown"]:
            click.echo(f"note: no peer is called {name} (yet)", err=True)
        _show(result, False)

    return command


policy.add_command(_rule_command("allow", "Add a rule: ORIGINS may run on TARGETS."))
policy.add_command(_rule_command("deny", "Add a rule: ORIGINS may not run on TARGETS."))


@policy.command("remove", context_settings=CONTEXT)
@click.argument("number", type=click.IntRange(1), metavar="N")
def remove(number):
    """Remove rule N (`d policy` numbers them)."""
    _show(call("policy", verb="remove", number=number), False)


@policy.command("reset", context_settings=CONTEXT)
def reset():
    """Remove every rule: every peer may run on every peer again (target-only peers stay so)."""
    _show(call("policy", verb="reset"), False)


def _show(result, as_json):
    """The policy as a list of rules, or JSON."""
    if as_json:
        click.echo(json.dumps({k: result[k] for k in ("rules", "target_only")}, indent=2))
        return
    for line in policy_lines(result):
        click.echo(line)
