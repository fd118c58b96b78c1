"""Process groups of running commands, recorded on disk while they run.

A daemon that is SIGKILLed (or crashes, or its host's OOM killer picks it) cannot kill what it
ran, and the origin was already told the command was lost: its process group would run on with
nobody to report to. Each command's group is recorded as `$ZPEER_HOME/jobs/PGID` (the group
leader's start time and the job id) from its "started" message (its first output, or 20 ms in)
until its job ends, so a group is on disk before its origin hears of it; the next daemon on that
home ends the groups still recorded. A command that ends within 20 ms without output never
touches the disk (a daemon killed inside that window leaves it to end alone). The start time
guards against a reused pid: a group id is never handed out while the group has members, so a
live process with that pid and another start time is someone else.
"""
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
TERM_GRACE_S = 0.5  # SIGTERM first (a build may clean up), SIGKILL after this


def _start_time(pid):
    """The kernel's start time of a process (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _path(home, pgid):
    """The record of one process group."""
    return os.path.join(home, JOBS_DIR, str(int(pgid)))


def record(home, pgid, job):
    """Note a command's process group as running (written before its first output leaves)."""
    try:
        os.makedirs(os.path.join(home, JOBS_DIR), mode=0o700, exist_ok=True)
        with open(_path(home, pgid), "w", encoding="utf-8") as f:
            f.write(f"{_start_time(pgid)} {job}\n")
    except OSError as exc:  # a full disk must not stop the command: it only loses this safety net
        log.warning("cannot record process group %s: %s", pgid, exc)


def forget(home, pgid):
    """The command's job ended: its group is not ours to end any more."""
    try:
        os.unlink(_path(home, pgid))
    except OSError:
        pass


def _group_alive(pgid):
    """True while any process is in the group."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # members we may not signal (a setuid child): still alive
        return True


def end_leftovers(home):
    """End the groups a previous daemon on this home left running; returns their job ids."""
    directory = os.path.join(home, JOBS_DIR)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    ended = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            pgid = int(name)
            with open(path, encoding="utf-8") as f:
                recorded, job = (f.read().split(None, 1) + [""])[:2]
        except (OSError, ValueError):
            recorded, job, pgid = None, "", None
        if pgid and pgid > 1:
            now = _start_time(pgid)
            # gone leader: any members left are ours; a live pid with another start time is not
            if (now is None or str(now) == recorded) and _group_alive(pgid):
                for sig in (signal.SIGTERM, signal.SIGCONT):
                    _signal_group(pgid, sig)
                ended.append((pgid, job.strip()))
        try:
            os.unlink(path)
        except OSError:
            pass
    deadline = time.monotonic() + TERM_GRACE_S
    while any(_group_alive(pgid) for pgid, _ in ended) and time.monotonic() < deadline:
        time.sleep(0.02)  # bounded, once at start-up, only when a predecessor died mid-command
    for pgid, job in ended:
        _signal_group(pgid, signal.SIGKILL)
        log.warning("ended process group %d of job %s, left running by a daemon that died", pgid, job)
    return [job for _, job in ended]


def _signal_group(pgid, sig):
    """Signal a group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
