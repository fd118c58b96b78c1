"""CLI requests about the fleet: listPeers, getPeerIdByIp, history (answered by the leader,
from any node), and the leader's own joinToken, acceptPeer, removePeer and policy."""
import logging
import time

from zpeer import config
from zpeer.daemon.access import ACTIONS, RULES_MAX, Rule
from zpeer.daemon.fields import arg
from zpeer.errors import BadRequest
from zpeer.wire import keys

log = logging.getLogger(__name__)

MAX_TOKEN_TTL_S = 30 * 86400


class FleetOps:
    """Fleet queries and key management."""

    def __init__(self, node):
        self.node = node

    def _later(self, identity, header, then=None):
        """A callback(result, error) that answers a held CLI request (after then(result))."""
        def done(result, error):
            if error is None and then is not None:
                then(result)
            self.node.reply(identity, header["rid"], error.to_reply() if error else result)
        return done

    def op_peers(self, identity, header):
        """listPeers (the ids also refresh peers.cache)."""
        pending = bool(header.get("pending"))
        then = None if pending else self._cache_ids
        self.node.link.ask("peers", {"pending": pending}, self._later(identity, header, then))

    def _cache_ids(self, result):
        """peers.cache from a peer list fetched anyway."""
        self.node.peers_cache.write([r["id"] for r in result["peers"]])

    def op_peer_by_ip(self, identity, header):
        """getPeerIdByIp."""
        args = {"ip": arg(header, "ip", str, required=True)}
        self.node.link.ask("peer_by_ip", args, self._later(identity, header))

    def op_history(self, identity, header):
        """history."""
        args = {"peer": arg(header, "peer", str), "limit": arg(header, "limit", int, 20)}
        if header.get("replay") is not None:  # a pty session's recording, from offset on
            args.update(replay=arg(header, "replay", str), offset=arg(header, "offset", int, 0))
        self.node.link.ask("history", args, self._later(identity, header))

    def op_history_verify(self, identity, header):
        """history --verify: on the leader, which holds the audit."""
        self.node.link.as_leader()
        return self.node.audit.verify()

    def op_join_token(self, identity, header):
        """joinToken."""
        leader = self.node.link.as_leader()
        ttl = arg(header, "ttl", (int, float), 3600)
        if not 0 < ttl <= MAX_TOKEN_TTL_S:
            raise BadRequest(f"--ttl must be between 1 and {MAX_TOKEN_TTL_S} seconds")
        bound_id, replace = arg(header, "id", str), bool(header.get("replace"))
        if bound_id is not None and not config.valid_peer_id(bound_id, new=False):
            raise BadRequest(f"Invalid peer id: {bound_id!r} ({config.PEER_ID_RULE})")
        if replace and bound_id is None:
            raise BadRequest("--replace needs --id: a token rebinds the one id it is for")
        target_only = bool(header.get("target_only"))
        count = arg(header, "count", int, 1)
        if not 1 <= count <= config.JOIN_TOKENS_MAX or (bound_id is not None and count > 1):
            raise BadRequest(f"--count must be between 1 and {config.JOIN_TOKENS_MAX}, and 1 "
                             "with --id")
        made = [keys.make_token(leader.address, leader.public) for _ in range(count)]
        self.node.registry.add_tokens([secret_hash for _, secret_hash in made], ttl, bound_id,
                                      replace, target_only)
        log.info("%s issued (expires in %d s%s%s)",
                 "join token" if count == 1 else f"{count} join tokens", ttl,
                 f", for {bound_id}" if bound_id else "", ", target-only" if target_only else "")
        return {"token": made[0][0], "tokens": [token for token, _ in made],
                "expires": time.time() + ttl, "address": leader.address}

    def op_accept(self, identity, header):
        """acceptPeer."""
        return self.node.link.as_leader().accept(arg(header, "id", str, required=True),
                                                 arg(header, "key", str),
                                                 bool(header.get("target_only")))

    def op_remove(self, identity, header):
        """removePeer: its running execs fail for their CLIs at once."""
        result = self.node.link.as_leader().remove(arg(header, "id", str, required=True))
        self.node.dispatch(self.node.sessions.peer_lost(result["id"], "Peer {peer} was removed"))
        return result

    def op_policy(self, identity, header):
        """policy: show the rules, add one (allow, deny), remove one, or reset."""
        leader = self.node.link.as_leader()
        registry = self.node.registry
        verb = arg(header, "verb", str, "show")
        unknown = []
        if verb in ACTIONS:
            kind = "history" if header.get("history") else "run"
            origins, targets = (arg(header, name, str, required=True)
                                for name in ("origins", "targets"))
            users = arg(header, "users", str)
            rule = Rule(0, verb, origins, targets, users, kind)  # BadRequest if it is not one
            if len(leader.access.rules) >= RULES_MAX:
                raise BadRequest(f"The policy has {RULES_MAX} rules already")
            known = {r.id for r in registry.peers()}
            unknown = sorted((rule.origins.exact | rule.targets.exact) - known)
            number = registry.add_policy_rule(verb, kind, origins, targets, users)
            log.info("policy: rule %d added: %s %s -> %s%s%s", number, verb, origins, targets,
                     f" as {users}" if users else "", " (history)" if kind == "history" else "")
        elif verb == "remove":
            number = arg(header, "number", int, required=True)
            if not registry.remove_policy_rule(number):
                raise BadRequest(f"No policy rule {number} (`d policy` lists them)")
            log.info("policy: rule %d removed", number)
        elif verb == "reset":
            registry.reset_policy()
            log.info("policy: every rule removed")
        elif verb != "show":
            raise BadRequest(f"unknown policy verb {verb!r}")
        leader.load_access()
        return dict(leader.access.records(), unknown=unknown)
