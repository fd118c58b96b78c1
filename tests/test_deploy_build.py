"""The default build recipe for real: a worker whose zpeer is an installed (non-editable) copy.

The worker's daemon runs from a virtualenv of its own, made here, into which zpeer was installed
with `pip install CHECKOUT` as README's install step does. Its dependencies (and pip) are the
ones this test's interpreter already has, made visible through a .pth file, so nothing but the
build backend (setuptools, fetched by pip's build isolation as on any real peer) comes from the
package index. The checkout's origin holds two commits of zpeer as this tree has it: the second
adds a module and does not touch the version string. `remoteDeployDaemon`, with no build command
configured, must pull it, reinstall zpeer into that virtualenv, re-exec the daemon and report the
new version.
"""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers.nodes import ROOT, TEST_HEARTBEAT_S, Cluster, Node, status
from helpers.tools import git

from zpeer import recipes

DEPS = ("pyzmq", "msgpack", "click", "peewee", "pip")  # what zpeer imports, and what its build runs
MARKER = 'MARKER = "second commit"\n'
WORKER_IP = "127.0.0.7"
PIP_NOTICE = re.compile(r"\n(?:\[notice\] [^\n]*\n)+")



def origin_with_two_commits(base):
    """A bare repo with zpeer as this tree has it, then a commit adding zpeer/deploy_marker.py."""
    origin, work = os.path.join(base, "origin.git"), os.path.join(base, "work")
    git("init", "--bare", "-q", origin)
    git("clone", "-q", origin, work)
    shutil.copytree(os.path.join(ROOT, "zpeer"), os.path.join(work, "zpeer"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(os.path.join(ROOT, "man"), os.path.join(work, "man"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "zpeer as tested", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    first = git("rev-parse", "--short", "HEAD", cwd=work).strip()
    checkout = os.path.join(base, "worker-repo")
    git("clone", "-q", origin, checkout)
    with open(os.path.join(work, "zpeer", "deploy_marker.py"), "w") as f:
        f.write('"""Added by the second commit."""\n' + MARKER)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "second commit: a marker, same version string", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return checkout, (first, git("rev-parse", "--short", "HEAD", cwd=work).strip())


def link_deps(target):
    """Symlink the distributions of DEPS, as this interpreter has them installed, into target."""
    os.makedirs(target)
    for name in DEPS:
        dist = importlib.metadata.distribution(name)
        base = str(dist.locate_file(""))
        for top in sorted({str(f).split("/")[0] for f in dist.files or ()} - {"..", "__pycache__"}):
            there, here = os.path.join(base, top), os.path.join(target, top)
            if os.path.exists(there) and not os.path.lexists(here):
                os.symlink(os.path.join(base, top), os.path.join(target, top))


def make_venv(base, checkout):
    """A virtualenv that sees DEPS through a .pth file, with zpeer installed from the checkout."""
    venv = os.path.join(base, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True,
                   timeout=60)
    python = os.path.join(venv, "bin", "python")
    site = subprocess.run([python, "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    link_deps(os.path.join(base, "deps"))
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(os.path.join(base, "deps") + "\n")
    out = subprocess.run([python, "-m", "pip", "install", "--quiet", checkout], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    unreachable = r"(No matching distribution|Could not find a version).* setuptools"
    if out.returncode and re.search(unreachable, out.stderr):
        pytest.skip("pip cannot fetch the build backend (setuptools): no package index reachable")
    assert out.returncode == 0, out.stderr[-3000:]
    return venv


class VenvNode(Node):
    """A node run by the `d` of a virtualenv (zpeer as installed there), not by this checkout's."""

    def __init__(self, base, name, source_ip, venv):
        super().__init__(base, name, source_ip)
        self.command = [os.path.join(venv, "bin", "d")]


def installed(venv):
    """(version, marker or None, file) of the zpeer that the virtualenv's Python imports."""
    code = ("import json, zpeer\ntry:\n    from zpeer.deploy_marker import MARKER\nexcept "
            "ImportError:\n"
            "    MARKER = None\nprint(json.dumps([zpeer.__version__, MARKER, zpeer.__file__]))")
    out = subprocess.run([os.path.join(venv, "bin", "python"), "-c", code], capture_output=True,
                         text=True, timeout=30, cwd=venv, check=True)
    return tuple(json.loads(out.stdout))


@pytest.fixture
def installed_worker(tmp_path):
    """A leader from this checkout, worker `box` from a virtualenv with zpeer installed from its
    checkout."""
    checkout, commits = origin_with_two_commits(str(tmp_path))
    venv = make_venv(str(tmp_path), checkout)
    cluster = Cluster(tmp_path)
    try:
        cluster.leader()
        box = VenvNode(tmp_path, "box", WORKER_IP, venv)
        cluster.nodes["box"] = box
        box.d("setPeerConfig", "--heartbeat", TEST_HEARTBEAT_S, "--repo", checkout, check=0)
        box.start()
        out = box.d("registerWorker", "--id", "box", "--token", cluster.token(), "--source-ip",
                    WORKER_IP, check=0)
        assert b"Registered" in out.stdout, out
        yield cluster, box, venv, checkout, commits
    finally:
        cluster.stop()



@pytest.mark.timeout(120)
def test_default_build_reinstalls_zpeer_into_the_daemons_virtualenv(installed_worker):
    cluster, box, venv, checkout, (first, second) = installed_worker
    init_py = os.path.join(os.path.dirname(installed(venv)[2]), "__init__.py")
    assert init_py.startswith(venv + os.sep)  # the virtualenv's own copy, not this checkout
    assert installed(venv) == ("0.1.0", None, init_py)
    # the install puts the man page where `man d` finds it (PATH's ../share/man)
    with open(os.path.join(venv, "share", "man", "man1", "d.1")) as page, \
            open(os.path.join(ROOT, "man", "d.1")) as committed:
        assert page.read() == committed.read()
    before = status(box)
    # README's `pip install .`: an installed copy knows no commit
    assert before["version"] == "0.1.0"
    build = f"+ cd {checkout} && {venv}/bin/python -m zpeer.recipes install {checkout}\n"

    # the build alone: zpeer reinstalled, its version now naming the commit; the daemon runs on
    out = cluster.vps.d("remoteBd", "--peer", "box", timeout=120)
    said = f"Installed zpeer 0.1.0+g{first} into {venv}\n".encode()
    assert (out.returncode, out.stdout) == (0, said), out
    # pip's own upgrade notice, when it saw a newer pip
    assert PIP_NOTICE.sub("", out.stderr.decode()) == build
    assert installed(venv) == (f"0.1.0+g{first}", None, init_py)
    assert status(box)["version"] == "0.1.0"

    # the deploy: the second commit leaves the version string alone, the stamp tells it apart
    out = cluster.vps.d("remoteDeployDaemon", "--peer", "box", timeout=120)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    lines = out.stdout.decode().splitlines()
    assert lines[0] == f"Updating {first}..{second}" and "Fast-forward" in lines
    assert " zpeer/deploy_marker.py | 2 ++" in lines
    assert lines[-2] == f"Installed zpeer 0.1.0+g{second} into {venv}"
    assert re.fullmatch(rf"box: deployed 0\.1\.0\+g{second} \(was 0\.1\.0\) in \d+\.\ds",
                        lines[-1]), lines
    err = PIP_NOTICE.sub("", out.stderr.decode())
    assert err.startswith(f"+ cd {checkout} && git pull --ff-only\n")
    assert err.endswith(build + "box: restarting (re-exec), was 0.1.0\n"), err

    # the new code is what that virtualenv imports, and what the daemon runs (re-executed in place)
    assert installed(venv) == (f"0.1.0+g{second}", "second commit", init_py)
    after = status(box)
    assert after["pid"] == before["pid"] == box.proc.pid and after["version"] == f"0.1.0+g{second}"
    assert after["started_at"] > before["started_at"]
    peers = {p["id"]: p for p in json.loads(cluster.vps.d("listPeers", "--json", check=0).stdout)}
    assert (peers["box"]["online"], peers["box"]["version"]) == (True, f"0.1.0+g{second}")
    row = [line for line in cluster.vps.d("listPeers", check=0).stdout.decode().splitlines()
           if line.startswith("box ")]
    assert len(row) == 1 and row[0].endswith(f" 0.1.0+g{second} *"), row  # not the leader's version


def test_stamp_version_names_the_commit_as_a_checkout_does(tmp_path):
    from packaging.version import Version

    init_py = tmp_path / "__init__.py"
    init_py.write_text('"""zpeer."""\n\n__version__ = "0.1.0"\nNOTE = "__version__ = \'9\'"\n')
    assert recipes.stamp_version(str(init_py), "1a2b3c4") == "0.1.0+g1a2b3c4"
    assert init_py.read_text() == ('"""zpeer."""\n\n__version__ = "0.1.0+g1a2b3c4"\nNOTE = '
                                   '"__version__ = \'9\'"\n')
    init_py.write_text("__version__ = '2.0+local'\n")  # already a local version: one label, dotted
    assert recipes.stamp_version(str(init_py), "1a2b3c4") == "2.0+local.g1a2b3c4"
    assert init_py.read_text() == "__version__ = '2.0+local.g1a2b3c4'\n"
    for version in ("0.1.0+g1a2b3c4", "2.0+local.g1a2b3c4"):
        assert str(Version(version)) == version  # valid for pip and setuptools as written
    init_py.write_text("VERSION = '1'\n")
    assert recipes.stamp_version(str(init_py), "1a2b3c4") is None
    assert init_py.read_text() == "VERSION = '1'\n"


def test_the_build_copies_what_git_sees_of_the_checkout(tmp_path):
    repo, dest = str(tmp_path / "repo"), str(tmp_path / "copy")
    git("init", "-q", repo)
    for name, text in ((".gitignore", "build/\n"), ("kept.py", "v1\n"), ("deleted.py", "x\n")):
        with open(os.path.join(repo, name), "w") as f:
            f.write(text)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "files", cwd=repo)
    os.remove(os.path.join(repo, "deleted.py"))
    os.makedirs(os.path.join(repo, "build", "lib"))
    for name, text in (("kept.py", "v2, not committed\n"), ("new.py", "untracked\n"),
                       ("build/lib/stale.py", "old\n")):
        with open(os.path.join(repo, name), "w") as f:
            f.write(text)
    recipes._copy_checkout(repo, dest)
    copied = {os.path.relpath(os.path.join(d, f), dest) for d, _,
              files in os.walk(dest) for f in files}
    assert copied == {".gitignore", "kept.py", "new.py"}
    with open(os.path.join(dest, "kept.py")) as f:
        # the checkout as it is, as `pip install DIR` takes it
        assert f.read() == "v2, not committed\n"


def test_install_entry_point_says_how_to_call_it():
    out = subprocess.run([sys.executable, "-m", "zpeer.recipes"], capture_output=True, text=True,
                         timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (2, "",
                                                        "usage: python -m zpeer.recipes install "
                                                        "REPO\n")
