"""Process groups of running commands, recorded on disk while they run.

A daemon that is SIGKILLed (or crashes, or its host's OOM killer picks it) cannot kill what it
ran, and the origin was already told the command was lost: its process group would run on with
nobody to report to. Each command's group is recorded in `$ZPEER_HOME/jobs.journal` (the group
leader's start time and the job id) from the job's first message, which names its pid (its
first output, or a "started" 20 ms in) until its job ends, so a group is on disk before its
origin hears of it; the next daemon on that home ends the groups still recorded. A command that
ends within 20 ms without output never touches the disk (a daemon killed inside that window
leaves it to end alone). The start time guards against a reused pid: a group id is never handed
out while the group has members, so a live process with that pid and another start time is
someone else.
"""
import logging
import os
import shutil
import signal
import time

from zpeer import config

log = logging.getLogger(__name__)

JOURNAL_FILE = "jobs.journal"
LEGACY_DIR = "jobs"  # one file per group, as zpeer wrote them before the journal
TERM_GRACE_S = 0.5  # SIGTERM first (a build may clean up), SIGKILL after this
COMPACT_BYTES = 1 << 20  # a journal this big is rewritten with the running groups only


def _start_time(pid):
    """The kernel's start time of a process (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class Records:
    """This daemon's running process groups, as `+ PGID START JOB` / `- PGID` lines appended to
    `$ZPEER_HOME/jobs.journal` (an append costs less than a file per group, which the filesystem
    allocates and frees)."""

    def __init__(self, home):
        self.path = os.path.join(home, JOURNAL_FILE)
        self.live = {}  # pgid -> its "+" line
        self.size = 0

    def _append(self, line):
        """Append one line; a full disk must not stop a command, it only loses this safety net."""
        try:
            fd = config.open_private(self.path, append=True)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            self.size += len(line)
        except OSError as exc:
            log.warning("cannot record process groups in %s: %s", self.path, exc)

    def record(self, pgid, job):
        """Note a command's process group as running (before the origin hears of it)."""
        line = f"+ {int(pgid)} {_start_time(pgid)} {job}\n"
        self.live[int(pgid)] = line
        self._append(line)

    def forget(self, pgid):
        """The command's job ended: its group is not ours to end any more."""
        if self.live.pop(int(pgid), None) is None:
            return
        if self.size > COMPACT_BYTES:  # about 15,000 commands: only the running ones stay
            self._rewrite(self.live.values())
        else:  # an append, not a truncate: ext4 frees and reallocates blocks for that
            self._append(f"- {int(pgid)}\n")

    def empty(self):
        """No group of ours runs (a daemon starting): an empty journal."""
        try:
            os.truncate(self.path, 0)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot empty %s: %s", self.path, exc)
        self.size = 0

    def _rewrite(self, lines):
        """Replace the journal by these lines (atomically: a crash leaves the old or the new)."""
        text = "".join(lines)
        try:
            config.write_private(self.path, text.encode())
            self.size = len(text)
        except OSError as exc:
            log.warning("cannot rewrite %s: %s", self.path, exc)


def _recorded(home):
    """{pgid: (start time text, job)} of the groups a previous daemon on this home left recorded."""
    groups = {}
    try:
        with open(os.path.join(home, JOURNAL_FILE), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")[:-1]  # a line cut short by the kill is not a record
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(" ", 3)
        try:
            if parts[0] == "+" and len(parts) == 4:
                groups[int(parts[1])] = (parts[2], parts[3])
            elif parts[0] == "-":
                groups.pop(int(parts[1]), None)
        except (ValueError, IndexError):
            continue
    legacy = os.path.join(home, LEGACY_DIR)
    for name in os.listdir(legacy) if os.path.isdir(legacy) else ():
        try:
            with open(os.path.join(legacy, name), encoding="utf-8") as f:
                recorded, job = (f.read().split(None, 1) + [""])[:2]
            groups[int(name)] = (recorded, job.strip())
        except (OSError, ValueError):
            pass
    return groups


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
    ended = []
    for pgid, (recorded, job) in _recorded(home).items():
        if pgid > 1:
            now = _start_time(pgid)
            # gone leader: any members left are ours; a live pid with another start time is not
            if (now is None or str(now) == recorded) and _group_alive(pgid):
                for sig in (signal.SIGTERM, signal.SIGCONT):
                    _signal_group(pgid, sig)
                ended.append((pgid, job))
    Records(home).empty()
    shutil.rmtree(os.path.join(home, LEGACY_DIR), ignore_errors=True)
    deadline = time.monotonic() + TERM_GRACE_S
    while any(_group_alive(pgid) for pgid, _ in ended) and time.monotonic() < deadline:
        time.sleep(0.02)  # bounded, once at start-up, only when a predecessor died mid-command
    for pgid, job in ended:
        _signal_group(pgid, signal.SIGKILL)
        log.warning("ended process group %d of job %s, left running by a daemon that died", pgid,
                    job)
    return [job for _, job in ended]


def _signal_group(pgid, sig):
    """Signal a group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
