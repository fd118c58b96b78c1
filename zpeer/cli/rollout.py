"""Origin side of deploys and restarts: recipe steps through exec, restart, wait for the peer.

Steps run through the CLI's exec client (zpeer.cli.exec_client, as execOnPeer does), a Renderer
showing their output. A fleet goes in batches, the leader last; a peer is done
when it answers again from a daemon started after the restart (its `started_at` changed).
"""
import contextlib
import json
import sys
import time

from zpeer.cli.exec_client import POLL_GRACE_S, ExecClient
from zpeer.cli.renderer import Renderer
from zpeer.cli.sink import Capture
from zpeer.cli.tables import printable
from zpeer.errors import EXIT_ZPEER_FAILURE, ZpeerError
from zpeer.recipes import step_command

PROBE_INTERVAL_S = 0.2
PROBE_GRACE_S = 2.0  # a probe unanswered this long went to a daemon that was going away: ask again
EXIT_OLD_VERSION = 1


@contextlib.contextmanager
def _client():
    """A fresh connection to the local daemon (which may itself be restarting), closed after use."""
    from zpeer.wire.ipc import Client

    client = Client()
    try:
        yield client
    finally:
        client.close()


def exec_step(client, targets, cmd, sink, timeout=None, grace_s=POLL_GRACE_S):
    """Run cmd on targets through the local daemon, events to sink; returns {peer: status}.

    grace_s bounds how long the daemon may leave a request unanswered (short for probes of a
    daemon that may be going away under us)."""
    return ExecClient(client, grace_s=grace_s).run(targets, cmd, sink, timeout=timeout)


def plan_batches(client, requested, size, exclude=()):
    """Resolve `all` and lists (less `exclude`) against the leader's peers into batches of
    `size`, the leader last and alone (its restart briefly cuts every worker's link)."""
    from zpeer.targets import resolve_targets

    records = {p["id"]: p for p in client.call("peers")["peers"]}
    targets = resolve_targets(requested, list(records), list(exclude))
    leaders = [t for t in targets if records.get(t, {}).get("role") == "leader"]
    workers = [t for t in targets if t not in leaders]
    return [workers[i:i + size] for i in range(0, len(workers), size)] + [[t] for t in leaders]


def _say(text, err=False):
    """One line to stdout (results) or stderr (progress, failures)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


class Rollout:
    """Deploy (pull, build, restart, verify) or restart a list of peers, batch by batch."""

    def __init__(self, steps, keep_going=False, wait_s=120.0, timeout=None, multi=False):
        self.steps, self.keep_going = steps, keep_going
        self.wait_s, self.timeout, self.multi = wait_s, timeout, multi
        self.deploying = "build" in steps
        self.status = 0

    def run(self, batches):
        """Go through the batches in order; returns the exit status (0, or the worst failure's)."""
        for i, batch in enumerate(batches):
            if self.status and not self.keep_going:
                for peer in (p for rest in batches[i:] for p in rest):
                    _say(f"{peer}: skipped (stopped after a failure; --keep-going goes on)",
                         err=True)
                break
            self._batch(batch)
        return self.status

    def _fail(self, peer, step, status, detail=""):
        """Report a peer's failure and remember the worst status."""
        what = "deploy" if self.deploying else "restart"
        tail = "; the old daemon keeps running" if step in ("pull", "build") else ""
        _say(f"{peer}: {what} failed at {step} ({detail or f'exit {status}'}){tail}", err=True)
        self.status = max(self.status, status)

    def _batch(self, peers):
        """One batch: each step on every peer still in the race, then restart and wait for them."""
        started = {p: time.monotonic() for p in peers}
        live = list(peers)
        for step in ("pull", "build"):
            if step not in self.steps or not live:
                continue
            render = Renderer(self.multi or len(live) > 1, False)
            try:
                with _client() as client:
                    statuses = exec_step(client, live, step_command(step), render, self.timeout)
            except ZpeerError as err:
                statuses = {p: err.exit_code for p in live}
                _say(err.message, err=True)
            for peer in list(live):
                if statuses.get(peer, EXIT_ZPEER_FAILURE) != 0:
                    self._fail(peer, step, statuses.get(peer, EXIT_ZPEER_FAILURE))
                    live.remove(peer)
        before = {}
        for peer in live:
            info = self._restart(peer)
            if info is not None:
                before[peer] = info
        if before:
            self._wait_back(before, started)

    def _restart(self, peer):
        """Ask the peer to restart once this step is reported; returns its pre-restart status."""
        cap = Capture()
        try:
            with _client() as client:
                status = exec_step(client, [peer], step_command("restart"), cap)[peer]
        except ZpeerError as err:
            self._fail(peer, "restart", err.exit_code, err.message)
            return None
        text = cap.out.get(peer, b"").decode(errors="replace").strip()
        if status != 0:
            sys.stderr.buffer.write(cap.err.get(peer, b"") + cap.out.get(peer, b""))
            self._fail(peer, "restart", status)
            return None
        try:
            info = json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            self._fail(peer, "restart", EXIT_ZPEER_FAILURE, f"unexpected answer {text[:200]!r}")
            return None
        _say(f"{peer}: restarting ({info.get('how')}), was {printable(info.get('version'))}",
             err=True)
        return info

    def _wait_back(self, before, started):
        """Probe the peers until each answers from a new daemon and the leader lists it online."""
        deadline = time.monotonic() + self.wait_s
        pending, back = dict(before), {}
        while pending:
            probe = [p for p in pending if p not in back]
            cap = Capture()
            records = {}
            try:
                with _client() as client:
                    if probe:
                        exec_step(client, probe, step_command("status"), cap, timeout=10,
                                  grace_s=PROBE_GRACE_S)
                    for peer in probe:
                        now = self._probe(peer, cap, pending[peer])
                        if now is not None:
                            back[peer] = now
                    if back:  # at once: a peer back is usually listed online already
                        listed = client.call("peers", timeout_s=PROBE_GRACE_S)["peers"]
                        records = {r["id"]: r for r in listed}
            except ZpeerError:
                pass  # our own daemon, or its leader, is restarting: ask again
            for peer, now in list(back.items()):
                record = records.get(peer) or {}
                if (peer in pending and record.get("online")
                        and record.get("version") == now.get("version")):
                    del pending[peer]
                    self._report(peer, before[peer], now, started[peer])
            if pending and time.monotonic() >= deadline:
                for peer, info in pending.items():
                    state = "not listed online by the leader" if peer in back else "not back online"
                    self._fail(peer, "verify", EXIT_ZPEER_FAILURE,
                               f"{state} within {self.wait_s:g}s; it ran "
                               f"{printable(info.get('version'))}")
                return
            if pending:
                time.sleep(PROBE_INTERVAL_S)  # pacing between probes, not waiting on a known event

    @staticmethod
    def _probe(peer, cap, info):
        """The peer's new status if a daemon started after the restart answered, else None."""
        if cap.results.get(peer, (None,))[0] != 0:
            return None
        try:
            now = json.loads(cap.out.get(peer, b"").decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
        if now.get("started_at") == info.get("started_at"):
            return None
        return now

    def _report(self, peer, info, now, started):
        """Print a peer's outcome once it is back."""
        took = time.monotonic() - started
        # a peer's free text
        old, new = printable(info.get("version")), printable(now.get("version"))
        if not self.deploying:
            _say(f"{peer}: restarted {new} in {took:.1f}s")
        elif new == old and info.get("changed"):
            # the pull brought commits, yet the daemon runs what it ran: the build did not install
            # them
            self._fail(peer, "verify", EXIT_OLD_VERSION,
                       f"came back with the old version {old} though the pull brought new commits")
        else:
            _say(f"{peer}: deployed {new} (was {old}) in {took:.1f}s")
