"""CLI requests about this node itself: ping, getPeerStatus, reload, restart, dbSanityCheck."""
import os
import time

from zpeer import config, recipes
from zpeer.daemon.fields import arg
from zpeer.daemon.restarter import Restarter, default_restart


class NodeOps:
    """This node's state, settings, restart and database check."""

    def __init__(self, node):
        self.node = node
        self.restarter = None  # a Restarter once a restart was asked for
        self.started_at = time.time()  # tells a restarted daemon from the one before it

    def op_ping(self, identity, header):
        """Liveness probe; `features` name what an older daemon lacks."""
        return {"pong": True, "version": self.node.version, "features": ["exclude"]}

    def op_status(self, identity, header):
        """getPeerStatus."""
        node = self.node
        status = {
            "role": node.role or node.cfg.get("role"), "id": node.id, "version": node.version,
            "public_key": node.public.decode(), "home": node.home, "pid": os.getpid(),
            "started_at": self.started_at, "heartbeat_s": node.heartbeat_s,
            "db_error": node.registry.last_error, **_recipes(node.cfg),
            # live state, so operators (and the chaos tests) can see nothing is left behind
            "exec_sessions": len(node.sessions.sessions), "running_jobs": len(node.targets.jobs),
        }
        status.update(node.link.status())
        return status

    def op_reload(self, identity, header):
        """The CLI changed config.json: apply it now."""
        self.node.apply_config(config.load(self.node.home))
        return self.op_status(identity, header)

    def op_restart(self, identity, header):
        """restartDaemon and deploy's restart step: restart once the asking job is reported."""
        if self.restarter is None:
            self.restarter = Restarter(self.node)
        result = self.restarter.request(arg(header, "after_job", str), arg(header, "cmd", str),
                                        arg(header, "dir", str))
        result["started_at"] = self.started_at
        return result

    def op_db_check(self, identity, header):
        """dbSanityCheck."""
        node = self.node
        worker = not node.link.holds_fleet_data
        ok, lines = node.registry.sanity_check(worker=worker, dry_run=bool(header.get("dry_run")))
        if worker:
            node.registry.generation += 1
        return {"ok": ok, "lines": lines}

    def tick(self, now):
        """Move a scheduled restart on."""
        if self.restarter is not None:
            self.restarter.tick(now)


def _recipes(cfg):
    """The deploy recipe in effect here (defaults included) and which parts are defaults."""
    effective = recipes.resolve(cfg)
    if not effective["restart_cmd"]:
        effective["restart_cmd"] = default_restart()[0]  # `systemctl restart UNIT` or "re-exec"
    return {"recipes": effective,
            "recipe_defaults": [k for k in recipes.RECIPE_KEYS if not cfg.get(k)]}
