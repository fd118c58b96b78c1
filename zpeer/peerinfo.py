"""Peer records as users see them (listPeers rows, last-seen phrases). No I/O, no heavy imports."""
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
