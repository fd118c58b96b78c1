"""Text tables and status lines for the CLI (listPeers, history, getPeerStatus). No I/O."""
import time

from zpeer.logsetup import escaped
from zpeer.peerinfo import ago

CLOCK_NOTE_S = 2.0  # a peer's clock this far from the leader's gets a line under listPeers

COMMAND_SHOWN_MAX = 60  # characters of a command in `d history`'s table (--json has it whole)
CUT_MARK = "…"


def printable(value):
    """str(value) with control and bidirectional characters written as escapes (\\n, \\x1b,
    \\u202e); JSON output keeps them as they are."""
    return escaped(value)


def cut(text, most):
    """text, or its first most - 1 characters and a visible mark when it is longer."""
    return text if len(text) <= most else text[:most - 1] + CUT_MARK


def _table(headers, rows):
    """Left-aligned columns separated by two spaces; cells are printable()."""
    rows = [[printable(v) for v in row] for row in [headers] + rows]
    widths = [max(len(x) for x in col) for col in zip(*rows)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def _parse_iso(text):
    """Epoch seconds from our ISO-8601 UTC strings."""
    if not text:
        return None
    import calendar

    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def peer_table(peers, leader_version=None, waiting=0):
    """The listPeers table: PEER, IP, ROLE, STATUS, LAST SEEN, VERSION (skew marked with *), and
    a word on the peers that wait for `d acceptPeer`."""
    rows = []
    for p in peers:
        seen = "now" if p["online"] else ago(_parse_iso(p["last_seen"]))
        version = p.get("version") or "-"
        if p.get("version_differs"):
            version += " *"
        if p.get("status") == "pending":
            status = "pending"
        else:
            status = "online" if p["online"] else "offline"
        rows.append([p["id"], p.get("ip") or "-", p.get("role") or "-", status, seen, version])
    headers = ["PEER", "IP", "ROLE", "STATUS", "LAST SEEN", "VERSION"]
    if any("key" in p for p in peers):  # the pending list: show what would be accepted
        headers.append("KEY")
        for row, p in zip(rows, peers):
            row.append(p.get("key") or "-")
    text = _table(headers, rows)
    if any(p.get("version_differs") for p in peers):
        text += f"\n* version differs from the leader's ({leader_version})"
    skewed = [p for p in peers if abs(p.get("clock_offset_s") or 0) >= CLOCK_NOTE_S]
    for p in skewed:  # worth a word; nothing in zpeer depends on the clocks agreeing
        offset = p["clock_offset_s"]
        text += (f"\n{printable(p['id'])}'s clock is {abs(offset):g} s "
                 f"{'ahead of' if offset > 0 else 'behind'} the leader's")
    if waiting:
        verb = "peers wait" if waiting > 1 else "peer waits"
        text += f"\n{waiting} {verb} for `d acceptPeer`: `d listPeers --pending`"
    return text


def status_lines(status):
    """getPeerStatus as `key: value` lines."""
    order = ["id", "role", "daemon", "version", "leader", "leader_address", "bind", "advertise",
             "source_ip", "connected", "link", "link_reason", "peers_online", "heartbeat_s",
             "clock_offset_s", "history_rows", "public_key", "leader_key", "home", "db_error"]
    lines = []
    for key in order:
        if key in status and status[key] not in (None, ""):
            value = status[key]
            if key == "connected":
                value = "yes" if value else "no"
            lines.append(f"{key}: {printable(value)}")
    defaults = status.get("recipe_defaults") or ()
    for key, value in sorted((status.get("recipes") or {}).items()):
        if value:
            lines.append(f"{key}: {printable(value)}" + (" (default)" if key in defaults else ""))
    return lines


def history_table(rows):
    """The audit log as a table."""
    body = []
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
        rc = "-" if r["rc"] is None else str(r["rc"])
        duration = "-" if r["duration_s"] is None else f"{r['duration_s']:.2f}s"
        mark = ("[tty rec] " if r.get("recorded") else "[tty] ") if r.get("tty") else ""
        body.append([when, r["origin"] + (f"({r['user']})" if r["user"] else ""), r["target"], rc,
                     duration, cut(mark + printable(r["command"] or ""), COMMAND_SHOWN_MAX)])
    return _table(["TIME", "ORIGIN", "TARGET", "RC", "DURATION", "COMMAND"], body)


def policy_lines(result):
    """`d policy`'s lines: the rules in the order they apply, then the target-only peers."""
    lines = []
    if not result["rules"]:
        lines.append("No rules: every peer may run on every peer and read the history.")
    for rule in result["rules"]:
        what = "read the history of" if rule["kind"] == "history" else "run on"
        users = f" as {rule['users']}" if rule["users"] else ""
        lines.append(printable(f"{rule['n']:>3}  {rule['action']:<5}  {rule['origins']} "
                               f"may {'' if rule['action'] == 'allow' else 'not '}{what} "
                               f"{rule['targets']}{users}"))
    if result["target_only"]:
        lines.append(printable("target-only (start nothing elsewhere): "
                               + ", ".join(result["target_only"])))
    return lines
