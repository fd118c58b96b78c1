"""Deploy across the fleet: remotePull, remoteBd, remoteDeployDaemon, restartDaemon, versions.

A bare git repo is the origin with two commits (VERSION 1.0-test, then 2.0-test); each peer has a
checkout at the first commit. Each daemon reports the first line of its own version file
($ZPEER_VERSION_FILE), which the test's build recipe overwrites from the checkout's VERSION;
the restart is the default one (the daemon re-executes itself, keeping its pid).
"""
import json
import os
import re
import subprocess

import pytest
from helpers.nodes import ROOT, TEST_HEARTBEAT_S, Cluster, Node, status, wait_for
from helpers.tools import git

DEPLOYED = re.compile(rb"^(\S+): deployed (\S+) \(was (\S+)\) in \d+\.\ds\n$")



class Fleet(Cluster):
    """vps (leader), desktop, laptop: each with a checkout of the origin repo and a version file."""

    def __init__(self, base):
        super().__init__(base)
        self.origin = os.path.join(str(base), "origin.git")
        work = os.path.join(str(base), "work")
        git("init", "--bare", "-q", self.origin)
        git("clone", "-q", self.origin, work)
        for version in ("1.0-test", "2.0-test"):
            with open(os.path.join(work, "VERSION"), "w") as f:
                f.write(version + "\n")
            git("add", "VERSION", cwd=work)
            git("commit", "-q", "-m", f"version {version}", cwd=work)
            git("push", "-q", "origin", "HEAD:main", cwd=work)
            if version == "1.0-test":
                self.first = git("rev-parse", "HEAD", cwd=work).strip()
                for name in ("vps", "desktop", "laptop"):
                    git("clone", "-q", self.origin, self.repo(name))
        self.second = git("rev-parse", "HEAD", cwd=work).strip()

    def repo(self, name):
        """A peer's checkout."""
        return os.path.join(str(self.base), f"{name}-repo")

    def version_file(self, name):
        """The file a peer's daemon reads its version from."""
        return os.path.join(str(self.base), f"{name}.version")

    def node(self, name, source_ip):
        """A node whose daemon reports its version file, with its deploy recipe set."""
        node = Node(self.base, name, source_ip)
        node.env["ZPEER_VERSION_FILE"] = self.version_file(name)
        with open(self.version_file(name), "w") as f:
            f.write("1.0-test\n")
        node.d("setPeerConfig", "--heartbeat", TEST_HEARTBEAT_S, "--repo", self.repo(name),
               "--build-cmd", f"cp VERSION {self.version_file(name)}", check=0)
        self.nodes[name] = node
        return node

    def start(self):
        """Leader vps on 127.0.0.1, workers desktop (127.0.0.2) and laptop (127.0.0.4)."""
        self.vps = self.node("vps", "127.0.0.1")
        self.vps.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind",
                   f"127.0.0.1:{self.port}", check=0)
        self.vps.start()
        for name, ip in (("desktop", "127.0.0.2"), ("laptop", "127.0.0.4")):
            node = self.node(name, ip).start()
            out = node.d("registerWorker", "--id", name, "--token", self.token(), "--source-ip", ip,
                         check=0)
            assert b"Registered" in out.stdout, out
            setattr(self, name, node)
        return self

    def head(self, name):
        """The commit a peer's checkout is at."""
        return git("rev-parse", "HEAD", cwd=self.repo(name)).strip()

    def versions(self, via=None):
        """{peer: (online, version)} as the leader lists them."""
        peers = json.loads((via or self.vps).d("listPeers", "--json", check=0).stdout)
        return {p["id"]: (p["online"], p["version"]) for p in peers}



@pytest.fixture
def fleet(tmp_path):
    """A fresh fleet at version 1.0-test."""
    f = Fleet(tmp_path)
    try:
        yield f.start()
    finally:
        f.stop()


def test_recipes_default_to_deploying_zpeer_itself():
    from zpeer import recipes

    r = recipes.resolve({})
    assert r["repo"] == ROOT and r["pull_cmd"] == "git pull --ff-only" and r["restart_cmd"] is None
    assert r["build_cmd"].endswith(f" -m pip install --quiet -e {ROOT}")
    other = recipes.resolve({"repo": "/srv/zpeer", "pull_cmd": "git fetch",
                             "restart_cmd": "systemctl restart zpeer"})
    # zpeer runs from elsewhere (an installed copy): a copy of that checkout, its version stamped
    assert other["build_cmd"].endswith(" -m zpeer.recipes install /srv/zpeer")
    assert (other["pull_cmd"], other["restart_cmd"]) == ("git fetch", "systemctl restart zpeer")


def test_pull_brings_the_new_commit_and_propagates_failure(fleet):
    assert fleet.head("desktop") == fleet.first
    # getPeerStatus shows the recipe in effect, defaults included and marked
    status = json.loads(fleet.desktop.d("getPeerStatus", "--json", check=0).stdout)
    assert status["recipes"] == {"repo": fleet.repo("desktop"), "pull_cmd": "git pull --ff-only",
                                 "build_cmd": f"cp VERSION {fleet.version_file('desktop')}",
                                 "restart_cmd": "re-exec"}
    assert status["recipe_defaults"] == ["pull_cmd", "restart_cmd"]
    text = fleet.desktop.d("getPeerStatus", check=0).stdout.decode().splitlines()
    assert "pull_cmd: git pull --ff-only (default)" in text
    assert "restart_cmd: re-exec (default)" in text
    assert f"repo: {fleet.repo('desktop')}" in text
    out = fleet.laptop.d("remotePull", "--peer", "desktop", check=0)
    assert b"Fast-forward" in out.stdout
    assert out.stderr.startswith(f"+ cd {fleet.repo('desktop')} && git pull --ff-only\n".encode())
    assert fleet.head("desktop") == fleet.second
    # a local change in the laptop's checkout makes its ff-only pull refuse: git's status comes back
    with open(os.path.join(fleet.repo("laptop"), "VERSION"), "w") as f:
        f.write("local edit\n")
    out = fleet.vps.d("remotePull", "--peer", "desktop,laptop")
    assert out.returncode == 1, out
    assert b"laptop: error: Your local changes" in out.stderr
    assert b"desktop: Already up to date.\n" in out.stdout
    assert out.stderr.endswith(b"--\ndesktop: ok\nlaptop: rc 1\n")
    assert fleet.head("laptop") == fleet.first


def test_build_failure_keeps_the_old_daemon_and_exits_non_zero(fleet):
    laptop = fleet.laptop
    laptop.d("setPeerConfig", "--build-cmd", "echo compiling; cat; echo broken >&2; exit 3",
             check=0)
    # a build reads no input: the `cat` in it gets EOF, not what a `while read` loop was reading
    out = fleet.vps.d("remoteBd", "--peer", "laptop", input=b"the loop's next line\n", check=3)
    assert out.stdout == b"compiling\n"
    assert out.stderr.endswith(b" && echo compiling; cat; echo broken >&2; exit 3\nbroken\n")
    before = status(laptop)
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "laptop", check=3)
    assert b"Fast-forward\n" in out.stdout and out.stdout.endswith(b"compiling\n")
    assert out.stderr.endswith(b"laptop: deploy failed at build (exit 3); the old daemon keeps "
                               b"running\n")
    assert fleet.head("laptop") == fleet.second  # the pull went through, the build did not
    after = status(laptop)
    assert (after["started_at"], after["version"], after["pid"]) == (before["started_at"],
                                                                     "1.0-test", before["pid"])
    assert fleet.versions()["laptop"] == (True, "1.0-test")


def test_deploy_reports_old_and_new_versions_and_listpeers_marks_skew(fleet):
    desktop = fleet.desktop
    before = status(desktop)
    out = fleet.laptop.d("remoteDeployDaemon", "--peer", "desktop", check=0)
    m = DEPLOYED.match(out.stdout.splitlines(keepends=True)[-1])
    assert m and m.groups() == (b"desktop", b"2.0-test", b"1.0-test"), out
    assert b"desktop: restarting (re-exec), was 1.0-test\n" in out.stderr
    after = status(desktop)
    assert after["pid"] == before["pid"] == desktop.proc.pid  # re-executed in place
    assert after["started_at"] > before["started_at"] and after["version"] == "2.0-test"
    assert fleet.versions(via=fleet.laptop) == {"vps": (True, "1.0-test"),
                                                "desktop": (True, "2.0-test"),
                                                "laptop": (True, "1.0-test")}
    table = fleet.vps.d("listPeers", check=0).stdout.decode().splitlines()
    assert table[1].split()[0] == "desktop" and table[1].endswith("2.0-test *")
    assert table[-1] == "* version differs from the leader's (1.0-test)"
    # the daemon still works after its own restart
    assert fleet.vps.d("execOnPeer", "--peer", "desktop", "--shellCmd", "echo hi",
                       check=0).stdout == b"hi\n"


def test_deploy_that_comes_back_with_the_old_version_fails(fleet):
    fleet.desktop.d("setPeerConfig", "--build-cmd", "true", check=0)
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "desktop", check=1)
    assert out.stderr.endswith(b"desktop: deploy failed at verify (came back with the old version "
                               b"1.0-test "
                               b"though the pull brought new commits)\n")
    # nothing new to pull: the same version is what a redeploy should bring back
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "desktop", check=0)
    assert b"Already up to date.\n" in out.stdout
    last = out.stdout.splitlines(keepends=True)[-1]
    assert DEPLOYED.match(last).groups() == (b"desktop", b"1.0-test", b"1.0-test")


def test_deploy_that_does_not_come_back_fails_at_verify(fleet):
    # a restart recipe that restarts nothing: the same daemon keeps answering
    fleet.desktop.d("setPeerConfig", "--restart-cmd", "true", check=0)
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "desktop", "--wait", "2", check=255)
    assert b"desktop: restarting (true), was 1.0-test\n" in out.stderr
    assert out.stderr.endswith(b"desktop: deploy failed at verify (not back online within 2s; it "
                               b"ran 1.0-test)\n")


def test_rolling_deploy_stops_at_the_first_failure_leader_last(fleet):
    fleet.laptop.d("setPeerConfig", "--build-cmd", "exit 7", check=0)
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "all", "--batch", "1", check=7)
    deployed = [DEPLOYED.match(line).groups() for line in out.stdout.splitlines(keepends=True)
                if DEPLOYED.match(line)]
    assert deployed == [(b"desktop", b"2.0-test", b"1.0-test")]
    assert out.stderr.endswith(b"laptop: deploy failed at build (exit 7); the old daemon keeps "
                               b"running\n"
                               b"vps: skipped (stopped after a failure; --keep-going goes on)\n")
    assert fleet.versions() == {"vps": (True, "1.0-test"), "desktop": (True, "2.0-test"),
                                "laptop": (True, "1.0-test")}


def test_exclude_leaves_peers_out_of_pulls_and_rollouts(fleet):
    out = fleet.vps.d("remotePull", "--peer", "all", "--exclude", "vps", check=0)
    assert out.stderr.endswith(b"--\ndesktop: ok\nlaptop: ok\n")
    assert (fleet.head("desktop"), fleet.head("laptop"), fleet.head("vps")) == (fleet.second,
        fleet.second, fleet.first)
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "all", "--exclude", "vps,laptop", check=0)
    assert [DEPLOYED.match(line).group(1) for line in out.stdout.splitlines(keepends=True)
            if DEPLOYED.match(line)] == [b"desktop"]
    assert fleet.versions() == {"vps": (True, "1.0-test"), "desktop": (True, "2.0-test"),
                                "laptop": (True, "1.0-test")}
    out = fleet.vps.d("restartDaemon", "--peer", "all", "--exclude", "lpatop", check=255)
    assert out.stderr.startswith(b"Peer not found: lpatop\n")  # a typo restarts nothing
    assert fleet.vps.d("restartDaemon", "--exclude", "vps", check=2).stderr == (
        b"--exclude leaves peers out of --peer: give --peer too\n")


@pytest.mark.timeout(90)
def test_rolling_deploy_keep_going_deploys_the_leader_last(fleet):
    fleet.laptop.d("setPeerConfig", "--build-cmd", "exit 7", check=0)
    leader_before = status(fleet.vps)
    out = fleet.vps.d("remoteDeployDaemon", "--peer", "all", "--batch", "2", "--keep-going",
                      check=7)
    deployed = [DEPLOYED.match(line).group(1) for line in out.stdout.splitlines(keepends=True)
                if DEPLOYED.match(line)]
    # the leader, alone and last, restarted under its own CLI
    assert deployed == [b"desktop", b"vps"]
    assert b"laptop: deploy failed at build (exit 7)" in out.stderr
    assert status(fleet.vps)["started_at"] > leader_before["started_at"]
    wait_for(lambda: fleet.versions() == {"vps": (True, "2.0-test"), "desktop": (True, "2.0-test"),
                                          "laptop": (True, "1.0-test")},
             what="fleet back after the leader's restart")


def test_restart_daemon_reports_running_jobs_as_interrupted(fleet):
    import subprocess as sp

    from helpers.nodes import d_command

    def start_exec(node, target):
        return sp.Popen(d_command()
                        + ["execOnPeer", "--peer", target, "--shellCmd",
                           "echo started; exec sleep 30"],
                        env=node.env, stdin=sp.DEVNULL, stdout=sp.PIPE, stderr=sp.PIPE)

    to_desktop = start_exec(fleet.laptop, "desktop")   # desktop runs the job for laptop
    from_desktop = start_exec(fleet.desktop, "laptop")  # desktop's CLI waits on laptop
    try:
        for proc in (to_desktop, from_desktop):
            assert proc.stdout.readline() == b"started\n"
        before = status(fleet.desktop)
        out = fleet.vps.d("restartDaemon", "--peer", "desktop", check=0)
        assert re.fullmatch(rb"desktop: restarted 1\.0-test in \d+\.\ds\n", out.stdout), out
        message = b"Interrupted: the daemon on desktop restarted while the command ran\n"
        for proc in (to_desktop, from_desktop):
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 255 and err.startswith(message), (proc.returncode, err)
        assert status(fleet.desktop)["started_at"] > before["started_at"]
    finally:
        for proc in (to_desktop, from_desktop):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    # the local form: restart this node's own daemon
    before = status(fleet.laptop)
    out = fleet.laptop.d("restartDaemon", check=0)
    took = re.fullmatch(rb"laptop: restarted 1\.0-test in (\d+\.\d)s\n", out.stdout)
    # a probe lost with the old daemon is asked again soon, not after a 2 s wait
    assert took and float(took.group(1)) < 2.0, out
    assert out.stderr == b"laptop: restarting (re-exec), was 1.0-test\n"
    assert status(fleet.laptop)["pid"] == before["pid"] == fleet.laptop.proc.pid
    wait_for(lambda: fleet.online("laptop"), what="laptop back online")


def test_a_step_says_what_it_runs_before_the_command_speaks(tmp_path):
    """`+ cd REPO && CMD` (stderr) reaches the reader before the command's stdout: the step
    waits until its stderr pipe was read. Here the reader takes its time on purpose."""
    import select
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    node = Node(str(tmp_path), "home")
    node.d("setPeerConfig", "--repo", str(repo), "--build-cmd", "echo built", check=0)
    step = subprocess.Popen([sys.executable, "-m", "zpeer", "deployStep", "build"], env=node.env,
                            cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([step.stderr], [], [], 10)
        assert ready, "no + line"
        # stderr holds the + line and nobody read it yet: the command must not have run
        assert select.select([step.stdout], [], [], 0.3)[0] == []
        assert os.read(step.stderr.fileno(), 4096) == f"+ cd {repo} && echo built\n".encode()
        assert step.stdout.read() == b"built\n" and step.wait(10) == 0
    finally:
        step.kill()
        step.wait()
