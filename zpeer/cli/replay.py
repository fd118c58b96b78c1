"""`d history --replay JOB`: a recorded pty session (asciicast v2, zpeer.daemon.casts) played
back on this terminal at its own pace."""
import json
import time

from zpeer.cli.stdio import binary, report, write_all
from zpeer.errors import ZpeerError


def replay_cast(client, job, speed=1.0):
    """Fetch the recording of `job` from the leader (through the local daemon) and play it;
    the exit status (1: no such recording, 255: zpeer's failures)."""
    out = binary("stdout")
    offset, size, rest = 0, None, b""
    started = None
    try:
        while size is None or offset < size:
            reply = client.call("history", replay=job, offset=offset)
            chunk, size = bytes(reply["cast"]), reply["size"]
            if not chunk:
                break
            offset += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                started = _play(out, line, started, speed)
        if rest:
            _play(out, rest, started, speed)
    except ZpeerError as err:
        return report(err)
    finally:
        client.close()
    return 0


def _play(out, line, started, speed):
    """One line of the recording: its header (the clock starts) or an event, written at its
    time; returns the start of the clock."""
    try:
        item = json.loads(line)
    except ValueError:
        return started
    if isinstance(item, dict):  # the header
        return time.monotonic()
    if started is None:
        started = time.monotonic()
    if isinstance(item, list) and len(item) == 3 and item[1] == "o":
        wait_s = started + float(item[0]) / speed - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        write_all(out, str(item[2]).encode("utf-8", "replace"))
    return started
