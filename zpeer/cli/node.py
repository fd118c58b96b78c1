"""`d daemon`, `d getPeerStatus` and `d dbSanityCheck`: this node's own daemon and state."""
import json
import sys

import click

from zpeer import config
from zpeer.cli.common import CONTEXT, client, fail
from zpeer.errors import BadDatabase, FailedToConnect, ZpeerError


@click.command(context_settings=CONTEXT)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log verbosity (logs go to stderr).")
def daemon(log_level):
    """Run this node's daemon in the foreground (what systemd starts).

    \b
    Example:
      ZPEER_HOME=/var/lib/zpeer d daemon
    """
    from zpeer import logsetup
    from zpeer.daemon.node import Daemon

    logsetup.configure(log_level)
    try:
        node = Daemon()
    except ZpeerError as err:
        fail(err)
    node.run()


@click.command("getPeerStatus", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def get_peer_status(as_json):
    """Show this node's config and state: role, id, leader, link, version, public key.

    \b
    Example:
      d getPeerStatus --json
    """
    from zpeer.cli.tables import status_lines
    from zpeer.wire import keys

    try:
        c = client()
        status = c.call("status", timeout_s=3)
        c.close()
        status["daemon"] = "running"
    except FailedToConnect:
        cfg = config.load()
        status = {"role": cfg["role"], "id": cfg["id"], "leader": cfg["leader"],
                  "bind": cfg["bind"], "connected": False, "link": "daemon not running",
                  "daemon": "not running", "public_key": keys.read_public_key(),
                  "home": config.home_dir(),
                  "recipes": {k: cfg[k] for k in ("repo", "pull_cmd", "build_cmd", "restart_cmd")}}
        from zpeer import __version__
        status["version"] = __version__
    except ZpeerError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(status_lines(status)))


@click.command("dbSanityCheck", context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Report what would be changed, change nothing.")
def db_sanity_check(dry_run):
    """Check the local database (integrity, schema); on a worker delete leader-only data.

    \b
    Example:
      d dbSanityCheck --dry-run
    """
    c = client()
    try:
        result = c.call("db_check", dry_run=dry_run, timeout_s=60)
    except FailedToConnect:
        from zpeer.daemon.audit import AuditLog
        from zpeer.daemon.registry import Registry

        try:
            registry = Registry(config.path_in_home(config.DB_FILE, config.ensure_home()))
        except BadDatabase as err:
            click.echo(f"integrity: FAILED: {err.reason}")
            click.echo(f"  hint: {err.hint}", err=True)
            sys.exit(1)
        if not dry_run:  # a dry run writes nothing, not even the audit rows a killed daemon left
            AuditLog(registry).close()  # in its journal
        ok, lines = registry.sanity_check(worker=config.load()["role"] == "worker",
                                          dry_run=dry_run)
        registry.close()
        result = {"ok": ok, "lines": lines + ["(daemon not running: checked the file directly)"]}
    except ZpeerError as err:
        fail(err)
    finally:
        c.close()
    click.echo("\n".join(result["lines"]))
    sys.exit(0 if result["ok"] else 1)
