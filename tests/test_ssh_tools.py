"""The real clients over zpeer-ssh, each with the one line docs/ssh-tools.md gives it: rsync, git,
scp, sftp, GNU parallel, Ansible and ClusterShell (one cluster for the module: vps runs the
clients, laptop and desktop are the peers; they share this machine's filesystem, so what a tool
sends is compared with what it read)."""
import filecmp
import gzip
import os
import re
import shlex
import shutil
import subprocess

import pytest
from helpers.nodes import ROOT, zpeer_ssh_command
from helpers.tools import GIT, git

PAGE = os.path.join(ROOT, "docs", "ssh-tools.md")


def doc_lines():
    """The client lines of docs/ssh-tools.md: its block that says this module runs it."""
    text = open(PAGE).read()
    block = re.search(r"^```sh norun:run one by one by tests/test_ssh_tools\.py[^\n]*\n(.*?)^```",
                      text, re.S | re.M)
    assert block, f"{PAGE} has no block run by this module"
    return [line for line in block.group(1).splitlines() if line.strip()]


def doc_line(first_word, n=0):
    """The n-th client line of the page whose command (after its variables) is first_word."""
    found = [line for line in doc_lines()
             if [w for w in shlex.split(line) if "=" not in w.split("/")[0]][0] == first_word]
    return found[n]


def need(*programs):
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"not installed: {' '.join(missing)} (.ci/run installs them)")


@pytest.fixture(scope="module")
def world(shared_cluster, tmp_path_factory):
    """The cluster, a `zpeer-ssh` on PATH for vps (tools such as GNU parallel clear the
    environment of some calls: it holds vps's ZPEER_HOME, as a default one would be found),
    and the environment the tools run in."""
    c = shared_cluster
    base = tmp_path_factory.mktemp("tools")
    bindir = base / "bin"
    bindir.mkdir()
    wrapper = bindir / "zpeer-ssh"
    wrapper.write_text(f"#!/bin/sh\nZPEER_HOME={shlex.quote(c.vps.home)} exec "
                       + " ".join(shlex.quote(a) for a in zpeer_ssh_command()) + ' "$@"\n')
    wrapper.chmod(0o755)
    home = base / "home"
    home.mkdir()
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HOME=str(home),
               ZPEER_HOME=c.vps.home, ANSIBLE_LOCAL_TEMP=str(base / "ansible-local"),
               ANSIBLE_REMOTE_TEMP=str(base / "ansible-remote"), ANSIBLE_HOST_KEY_CHECKING="no",
               ANSIBLE_PYTHON_INTERPRETER="auto_silent", ANSIBLE_NOCOLOR="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@zpeer.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@zpeer.invalid", GIT_CONFIG_NOSYSTEM="1")
    return c, env


def run(world, line, cwd, srv, timeout=60, check=0, **extra):
    """A command line as the page writes it (its /srv in srv), in bash, from vps."""
    _, env = world
    command = re.sub(r"(?<![\w.~])/srv(?=/|\b)", str(srv), line)
    out = subprocess.run(["bash", "-c", command], cwd=cwd, env=dict(env, **extra),
                         capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check is not None:
        assert out.returncode == check, (command, out.returncode, out.stdout[-3000:],
                                         out.stderr[-3000:])
    return out


def same_tree(a, b):
    """True if two directory trees hold the same names and bytes."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(
        same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


def test_rsync_push_pull_rerun_delete_compress(world, tmp_path):
    need("rsync")
    srv, work = tmp_path / "srv", tmp_path / "work"
    srv.mkdir()
    site = work / "site"
    (site / "many").mkdir(parents=True)
    (site / "big").write_bytes(os.urandom(30 << 20))
    for i in range(1000):
        (site / "many" / f"f{i}").write_bytes(os.urandom(i % 97) + b"%d\n" % i)
    run(world, doc_line("rsync", 0), work, srv)  # push
    assert same_tree(site, srv / "site")
    run(world, doc_line("rsync", 1), work, srv)  # pull
    assert same_tree(site, work / "site-copy")
    # an incremental rerun sends the one file that changed
    (site / "many" / "f5").write_bytes(b"changed\n")
    out = run(world, doc_line("rsync", 0).replace("rsync -a", "rsync -a --stats"), work, srv)
    assert b"Number of regular files transferred: 1\n" in out.stdout
    # --delete and -z, both ways
    (site / "many" / "f7").unlink()
    run(world, doc_line("rsync", 0).replace("rsync -a", "rsync -az --delete"), work, srv)
    assert same_tree(site, srv / "site") and not (srv / "site" / "many" / "f7").exists()
    (srv / "site" / "many" / "f9").write_bytes(b"remote change\n")
    run(world, doc_line("rsync", 1).replace("rsync -a", "rsync -az --delete"), work, srv)
    assert same_tree(srv / "site", work / "site-copy")


def test_git_clone_fetch_push_over_protocol_v2(world, tmp_path):
    need("git")
    srv, work = tmp_path / "srv", tmp_path / "work"
    work.mkdir()
    git("init", "-q", "--bare", str(srv / "app.git"))
    seed = tmp_path / "seed"
    git("init", "-q", str(seed))
    (seed / "README").write_text("one\n")
    git("-C", str(seed), "add", ".")
    git("-C", str(seed), "commit", "-q", "-m", "one")
    git("-C", str(seed), "push", "-q", str(srv / "app.git"), "main")
    out = run(world, doc_line("git"), work, srv, GIT_TRACE_PACKET="1")
    assert b"clone< version 2" in out.stderr  # git probed with -G and sent GIT_PROTOCOL
    clone = work / "app"
    assert (clone / "README").read_text() == "one\n"
    # push from the clone, fetch into another
    (clone / "README").write_text("two\n")
    git("-C", str(clone), "commit", "-q", "-am", "two")
    ssh_env = f"GIT_SSH_COMMAND=zpeer-ssh {shlex.join(GIT)}"
    run(world, f"{ssh_env} -C app push -q origin main", work, srv)
    assert git("-C", str(srv / "app.git"), "log", "--format=%s", "main").split() == ["two", "one"]
    out = run(world, f"{ssh_env} -C {seed} fetch laptop:/srv/app.git main", work, srv,
              GIT_TRACE_PACKET="1")
    assert b"fetch< version 2" in out.stderr
    assert git("-C", str(seed), "log", "--format=%s", "FETCH_HEAD").split() == ["two", "one"]


def test_scp_and_sftp(world, tmp_path):
    need("scp", "sftp")
    srv, work = tmp_path / "srv", tmp_path / "work"
    srv.mkdir()
    work.mkdir()
    notes = os.urandom(3 << 20)
    (work / "notes.txt").write_bytes(notes)
    run(world, doc_line("scp"), work, srv)  # scp's SFTP protocol: zpeer-ssh -s laptop sftp
    assert (srv / "notes.txt").read_bytes() == notes
    run(world, "scp -O -S zpeer-ssh laptop:/srv/notes.txt back.txt", work, srv)  # legacy scp
    assert (work / "back.txt").read_bytes() == notes
    (work / "batch.sftp").write_text(f"put notes.txt {srv}/put.txt\nls {srv}\n"
                                     f"get {srv}/put.txt got.txt\n")
    out = run(world, doc_line("sftp"), work, srv)
    assert b"put.txt" in out.stdout
    assert (work / "got.txt").read_bytes() == notes


def test_gnu_parallel_transfer_and_return(world, tmp_path):
    need("parallel", "rsync")
    srv, work = tmp_path / "srv", tmp_path / "work"
    srv.mkdir()
    work.mkdir()
    log = b"".join(b"line %d\n" % i for i in range(5000))
    (work / "app.log").write_bytes(log)
    out = run(world, doc_line("parallel"), work, srv)
    assert b"Could not figure out" not in out.stderr, out.stderr
    assert gzip.decompress((work / "app.log.gz").read_bytes()) == log
    assert not (srv / "jobs" / "app.log").exists()  # --cleanup removed what it sent


@pytest.mark.parametrize("pipelining", ["True", "False"])
def test_ansible_ad_hoc(world, tmp_path, pipelining):
    need("ansible")
    srv, work = tmp_path / "srv", tmp_path / "work"
    srv.mkdir()
    work.mkdir()
    line = doc_line("ansible")

    def ansible(module_args, check=0):
        return run(world, line.replace("-m ping", module_args), work, srv, timeout=120,
                   check=check, ANSIBLE_PIPELINING=pipelining)

    out = ansible("-m ping")
    assert b'laptop | SUCCESS' in out.stdout and b'"pong"' in out.stdout
    out = ansible("-m shell -a 'echo out; exit 3'", check=2)  # failed, not unreachable (4)
    assert b"laptop | FAILED | rc=3 >>\nout" in out.stdout
    (work / "conf").write_bytes(b"setting = 1\n")
    ansible(f"-m copy -a 'src=conf dest={srv}/conf'")
    assert (srv / "conf").read_bytes() == b"setting = 1\n"
    ansible(f"-m fetch -a 'src={srv}/conf dest={work}/fetched/ flat=yes'")
    assert (work / "fetched" / "conf").read_bytes() == b"setting = 1\n"


def test_clustershell(world, tmp_path):
    need("clush")
    srv, work = tmp_path / "srv", tmp_path / "work"
    srv.mkdir()
    work.mkdir()
    c, _ = world
    line = doc_line("clush")
    out = run(world, line.replace("uptime", "'echo $ZPEER_HOME'"), work, srv)
    assert sorted(out.stdout.decode().splitlines()) == [
        f"desktop: {c.desktop.home}", f"laptop: {c.laptop.home}"]
    out = run(world, line.replace("clush ", "clush -S ").replace("uptime", "'exit 5'"), work, srv,
              check=5)
    (work / "conf").write_bytes(b"x\n")
    run(world, line.replace("uptime", f"--copy conf --dest {srv}/"), work, srv)
    assert (srv / "conf").read_bytes() == b"x\n"
