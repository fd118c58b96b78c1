"""Enrolment on the leader: which key a peer id is bound to, and what a hello gets.

`decide_hello` is the rule, a pure function of what the leader knows when a hello comes (the
claimed id, the route's shape, the key, the registry row); `Enrolment` applies its verdict to the
registry and keeps the requests that wait for `d acceptPeer`: a known id asking to bind a new key
(`rekey`) and the route of each pending hello (`waiting`, so that an accepted peer is called back
at once). Nothing here touches a socket: the leader's link sends what these return.
"""
import logging
import time
from typing import NamedTuple

from zpeer import config
from zpeer.daemon.registry import DB_ERRORS
from zpeer.errors import BadRequest, PeerNotFound, ZpeerError
from zpeer.peerinfo import peer_record
from zpeer.wire import keys, protocol

log = logging.getLogger(__name__)

MAX_PENDING = 64  # pending join requests kept: a flood of hellos cannot fill the registry
ASKERS_MAX = 8  # keys remembered per waiting id (acceptPeer lists them and wants --key)
WAITING = "waiting for `d acceptPeer` on the leader"


class Verdict(NamedTuple):
    """What a hello gets: status accepted, pending or rejected, the reason shown to the peer,
    and the step that led there (see decide_hello)."""

    status: str
    reason: str
    step: str


def decide_hello(peer_id, claimed_id, route, own_id, key, has_token, row, pending_count):
    """The verdict on a hello, before any write. Steps:
        malformed  the id is invalid, reserved, not the one the route claims, or the route
                   is not ID/SECRET (a guessable route would let another key take it over)
        known      the id is accepted and bound to this key
        token      a join token came: accepted if it is valid (see token_verdict)
        rekey      the id is accepted with another key: pending until `d acceptPeer`
        full       a new id while MAX_PENDING requests wait: refused
        join       a new (or pending, or removed) id: pending until `d acceptPeer`"""
    known_id = row is not None
    if (not config.valid_peer_id(peer_id, new=False) or claimed_id != peer_id or peer_id == own_id
            or not (config.valid_peer_id(peer_id) or known_id)):
        return Verdict("rejected", f"invalid or reserved peer id {peer_id[:64]!r}", "malformed")
    if len(route) != len(peer_id.encode()) + 1 + protocol.ROUTE_SECRET_HEX:
        return Verdict("rejected", "routing identity is not ID/SECRET (zpeer too old?)",
                       "malformed")
    if known_id and row.key == key and row.status == "accepted":
        return Verdict("accepted", "known key", "known")
    if has_token:
        return Verdict("pending", WAITING, "token")
    if known_id and row.status == "accepted":
        # an existing id with a new key (reinstalled host): only a token or acceptance re-binds it
        return Verdict("pending", f"peer id {peer_id} is bound to another key: waiting for "
                       f"`d acceptPeer {peer_id}` on the leader (or use a join token)", "rekey")
    if not known_id and pending_count >= MAX_PENDING:
        return Verdict("rejected", "too many pending join requests: use a join token", "full")
    return Verdict("pending", WAITING, "join")


def token_verdict(refusal):
    """The verdict of the token step, once the registry said why the token is refused (or
    None: it was valid, and is now used)."""
    if refusal is None:
        return Verdict("accepted", "enrolled with a join token", "token")
    return Verdict("rejected", f"join token refused: {refusal}", "token")


class Enrolment:
    """The leader's enrolment state: bindings in the registry, requests waiting for acceptance."""

    def __init__(self, own_id, registry, table, policy, access):
        self.own_id, self.registry, self.table, self.policy = own_id, registry, table, policy
        self.access = access  # the access policy (zpeer.daemon.access): its target-only peers
        self.rekey = {}  # peer id -> {"key", "ip", "since"}: a known id asking to bind a new key
        self.waiting = {}  # peer id -> route of its last pending hello: acceptPeer calls it back
        # peer id -> {key: ip} of every key that asked under it while it waits: acceptPeer
        # refuses to guess between several
        self.askers = {}

    def on_hello(self, route, peer_id, key, ip, header):
        """Decide and record a hello (registry rows, pending requests); returns the Verdict.
        An accepted one is written before it is granted: a new binding that is not stored is
        not granted (the database error propagates), a known one is served anyway."""
        if key in self.policy.revoked:
            # an open connection of a removed peer, or one that slipped past the handshake: a
            # revoked key changes nothing, whatever token or id it brings
            log.warning("peer %s from %s: revoked key %s refused", peer_id, ip, key)
            return Verdict("rejected", "this key was removed from the fleet", "revoked")
        row = self.registry.get(peer_id)
        token = header.get("token")
        has_token = isinstance(token, str) and bool(token)
        # the pending requests are counted only where the rule looks at them (a new id, no token)
        pending = len(self.registry.peers("pending")) if row is None and not has_token else 0
        verdict = decide_hello(peer_id, header["id"], route, self.own_id, key, has_token, row,
                               pending)
        if verdict.step == "malformed":
            return verdict
        if verdict.step == "token":
            secret_hash = keys.hash_secret(token)
            if row is not None and row.status == "accepted" and row.key != key \
                    and not self.registry.token_may_replace(secret_hash, peer_id):
                # a token enrols an id; rebinding an accepted one to another key takes a token
                # made for that (the token stays unused)
                verdict = Verdict("rejected", f"join token refused: peer id {peer_id} is bound "
                                  f"to another key (a token from `d joinToken --id {peer_id} "
                                  "--replace` rebinds it)", "token")
            else:
                target_only = self.registry.token_target_only(secret_hash)
                verdict = token_verdict(self.registry.consume_token(secret_hash, peer_id))
        fields = {"hostname": str(header.get("hostname"))[:255],
                  "version": str(header.get("version"))[:64], "role": "worker"}
        if verdict.step == "token" and verdict.status == "accepted":
            fields["target_only"] = target_only  # the token says what the peer may start
        if verdict.status == "accepted":
            self._bind(peer_id, key, ip, row, fields, verdict)
            return verdict
        if self.table.route_of(peer_id) == route:
            # this connection now holds the id's route (handover) but not its key: stop using it.
            # Only then: a hello on another route (routes are ID/SECRET) must not knock a peer off.
            self.table.drop(peer_id)
            log.warning("peer %s: route taken by a connection with another key; suspended", peer_id)
        if verdict.step == "rekey":
            if peer_id not in self.rekey:
                log.info("peer %s from %s asks to bind a new key %s: pending", peer_id, ip, key)
            self.rekey[peer_id] = {"key": key, "ip": ip, "since": time.time()}
        elif verdict.status == "pending" and peer_id in self.rekey:
            log.info("peer %s from %s asks to bind a new key %s: pending", peer_id, ip, key)
        elif verdict.status == "pending" and (row is None or row.status in ("pending", "removed")):
            if row is None or row.key != key or row.status != "pending":
                log.info("peer %s from %s asks to join: pending (key %s)", peer_id, ip, key)
            wanted = dict(fields, ip=ip, key=key, status="pending")
            # a pending peer says hello every interval (a flood, many a second): a write only
            # when the request changed, as an accepted peer's reconnect
            if row is None or any(getattr(row, k) != v for k, v in wanted.items()):
                self.registry.upsert(peer_id, **wanted)
        elif verdict.status == "rejected":
            log.warning("peer %s from %s refused: %s", peer_id, ip, verdict.reason)
        if verdict.status == "pending" and verdict.step != "token":
            # bounded: MAX_PENDING new ids, or ids of the registry; ASKERS_MAX keys each
            self.waiting[peer_id] = route
            keys_asked = self.askers.setdefault(peer_id, {})
            if key in keys_asked or len(keys_asked) < ASKERS_MAX:
                keys_asked[key] = ip
        return verdict

    def _bind(self, peer_id, key, ip, row, fields, verdict):
        """Write an accepted binding (a reconnect that changed nothing writes nothing)."""
        self.rekey.pop(peer_id, None)
        self.waiting.pop(peer_id, None)
        self.askers.pop(peer_id, None)
        if row is not None and row.key and row.key != key and row.status == "accepted":
            self.policy.revoked.add(row.key)  # rebound (--replace): the old key stops working
            self.table.drop(peer_id)
        if row is None or row.key != key:
            self.policy.revoked.discard(key)
        wanted = dict(fields, ip=ip, key=key, status="accepted")
        if row is None or any(getattr(row, k) != v for k, v in wanted.items()):
            try:
                self.registry.upsert(peer_id, **wanted)
            except DB_ERRORS as exc:
                if verdict.step != "known":
                    raise  # a new binding that is not stored is not granted
                self.registry.note_error(exc)  # its row says accepted; the ip is flushed later
        if wanted.get("target_only", row is not None and row.target_only):
            self.access.target_only.add(peer_id)
        else:
            self.access.target_only.discard(peer_id)

    def accept(self, peer_id, key=None, target_only=False):
        """Accept a pending peer's key (only if it starts with `key`, when given; as a
        target-only peer with `target_only`); returns (the CLI's answer, the route to call back
        or None)."""
        row = self.registry.get(peer_id)
        if row is None or row.status not in ("pending", "accepted"):
            raise PeerNotFound(peer_id, hint="`d listPeers --pending` lists the peers waiting")
        request = self.rekey.get(peer_id)
        asked = request["key"] if request else row.key
        askers = self.askers.get(peer_id) or ({asked: row.ip} if asked else {})
        if not key and len(askers) > 1:
            # anyone who reaches the port can ask under an id: never guess which key is the peer
            listed = ", ".join(f"{k} (from {ip})" for k, ip in askers.items())
            raise BadRequest(f"More than one key asked to join as {peer_id}: {listed}: nothing "
                             "accepted", hint=f"compare with `d getPeerStatus` on that peer, then "
                                              f"`d acceptPeer {peer_id} --key PREFIX`")
        matching = [k for k in askers if k.startswith(key or "")]
        if len(matching) != 1:
            # the key that asked is not the one the admin checked: someone else may have asked
            raise BadRequest(f"The key waiting for {peer_id} is {asked}, not {key}…: nothing "
                             "accepted",
                             hint="compare with `d getPeerStatus` on that peer, then accept again")
        chosen = matching[0]
        self.askers.pop(peer_id, None)
        self.rekey.pop(peer_id, None)
        if chosen != asked:  # not the last to ask: its request is the one to bind
            request = {"key": chosen, "ip": askers[chosen]}
            self.waiting.pop(peer_id, None)  # that route is another key's connection
        if request is not None:  # bind the new key; an accepted one is revoked with it
            if row.key and row.status == "accepted":
                self.policy.revoked.add(row.key)
            self.table.drop(peer_id)
            row = self.registry.upsert(peer_id, key=request["key"], ip=request["ip"])
        self.policy.revoked.discard(row.key)
        self.registry.upsert(peer_id, status="accepted", target_only=target_only)
        if target_only:
            self.access.target_only.add(peer_id)
        else:
            self.access.target_only.discard(peer_id)
        # it says hello again now, not at its next heartbeat
        return {"id": peer_id, "status": "accepted"}, self.waiting.pop(peer_id, None)

    def revoke(self, peer_id):
        """Revoke a peer's key (its row says removed); returns the CLI's answer. The caller
        tells the peer and cuts its route."""
        if peer_id == self.own_id:
            raise ZpeerError("The leader cannot remove itself")
        row = self.registry.get(peer_id)
        if row is None or row.status == "removed":
            raise PeerNotFound(peer_id)
        if row.key:
            self.policy.revoked.add(row.key)
            self.registry.revoke_key(row.key)
        self.registry.set_status(peer_id, "removed")
        self.access.target_only.discard(peer_id)
        return {"id": peer_id, "status": "removed"}

    def pending_records(self, version):
        """listPeers --pending rows: pending ids, then known ids asking to bind a new key."""
        rows = self.registry.peers("pending")
        records = []
        for row in rows:
            record = peer_record(row, False, self.registry.last_seen(row), version)
            record["key"] = row.key
            records.append(record)
        for peer_id, req in sorted(self.rekey.items()):
            record = peer_record(self.registry.get(peer_id), False, req["since"], version)
            record.update(ip=req["ip"], status="pending", rekey=True, key=req["key"])
            records.append(record)
        return records

    def waiting_count(self):
        """How many requests wait for `d acceptPeer` (listPeers' footnote)."""
        return len(self.registry.peers("pending")) + len(self.rekey)
