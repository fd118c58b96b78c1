"""Peer records as users see them (listPeers rows, last-seen phrases). No heavy imports."""
import time


def iso_utc(ts):
    """Epoch seconds as ISO-8601 UTC (`2026-11-28T03:12:00Z`), or None."""
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def ago(ts, now=None):
    """A short human duration since ts: `4s ago`, `12m ago`, `3h ago`, `2d ago`."""
    if not ts:
        return "never"
    delta = max(0, int((now or time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta // size}{unit} ago"
    return f"{delta}s ago"


def describe_last_seen(ts):
    """The parenthesised part of `Peer offline: ID (last seen …)`."""
    if not ts:
        return "never seen online"
    return f"last seen {ago(ts)}, {iso_utc(ts)}"


def peer_record(row, online, last_seen, leader_version=None):
    """The JSON object of one peer (listPeers --json keys first)."""
    return {
        "id": row.id,
        "ip": row.ip,
        "role": row.role,
        "online": bool(online),
        "last_seen": iso_utc(last_seen),
        "version": row.version,
        "hostname": row.hostname,
        "status": row.status,
        "version_differs": bool(leader_version and row.version and row.version != leader_version),
    }


def write_cache(path, ids):
    """Write peers.cache atomically: one id per line, sorted (for completion and scripts)."""
    import os

    body = "".join(f"{i}\n" for i in sorted(set(ids)))
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == body:
                return False
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


class PeersCache:
    """peers.cache (the peer ids completions offer), rewritten only when the peer set moved."""

    def __init__(self, path):
        self.path, self.gen = path, None

    def forget(self):
        """Rewrite it at the next refresh (the link was rebuilt)."""
        self.gen = None

    def write(self, records):
        """From a peer list just fetched anyway (`listPeers` on a worker)."""
        write_cache(self.path, [r["id"] for r in records])

    def refresh(self, role, registry, link):
        """Leader: from its registry when its generation moved; worker: asks the leader when the
        generation the leader announces moved (an RPC, answered later)."""
        if role == "leader" and self.gen != registry.generation:
            self.gen = registry.generation
            write_cache(self.path, [r.id for r in registry.peers()])
        elif role == "worker" and link.connected() and self.gen != link.gen:
            self.gen = link.gen

            def done(result, error):
                if error is None:
                    write_cache(self.path, [r["id"] for r in result["peers"]])
                else:
                    self.gen = None
            link.rpc("peers", {}, done)
