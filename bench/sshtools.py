"""zpeer-ssh rows: what tools that speak ssh pay per call, and per transfer against OpenSSH.

    zpeer_ssh_g      `zpeer-ssh -G PEER` (git's probe; -V and -O answer the same way) against
                     `python -c pass`, interleaved
    zpeer_ssh_true   `zpeer-ssh PEER true` against `d execOnPeer --peer PEER --shellCmd true`,
                     interleaved, both with a pseudo-terminal as stdin (as typed)
    rsync_200mb      `rsync -a` of a 200 MB tree (40 files of 4 MB, 4,000 of 10 KB, random) to a
                     fresh directory: through zpeer-ssh to a worker, and through OpenSSH to a
                     private sshd on loopback (bench.baselines.LocalSsh), alternating runs
    git_clone_50mb   `git clone` of a 50 MB repository (25 random 2 MB files), the same two ways

bench/run.py adds these rows to its own; `python bench/sshtools.py [--runs N]` runs them alone on
a leader and one worker of its own.
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.baselines import LocalSsh  # noqa: E402
from bench.cluster import Cluster, d_command  # noqa: E402
from bench.measure import MB, Row, Terminal, median, run_timed  # noqa: E402

TREE_BIG_FILES, TREE_BIG_BYTES = 40, 4 * MB
TREE_SMALL_FILES, TREE_SMALL_BYTES = 4000, 10_000
REPO_FILES, REPO_FILE_BYTES = 25, 2 * MB
TRANSFER_ROWS = ("rsync_200mb", "git_clone_50mb")


def zpeer_ssh_command():
    """The installed `zpeer-ssh` next to this interpreter, else bin/zpeer-ssh of the checkout."""
    installed = os.path.join(os.path.dirname(sys.executable), "zpeer-ssh")
    return [installed] if os.path.exists(installed) else [sys.executable,
                                                          os.path.join(ROOT, "bin", "zpeer-ssh")]


def interleaved(a, b, runs, warmup=2):
    """Medians of two timed calls run in alternation (both see the same machine)."""
    xs, ys = [], []
    for i in range(runs + warmup):
        x, y = a(), b()
        if i >= warmup:
            xs.append(x)
            ys.append(y)
    return median(xs), median(ys)


def per_call_rows(node, peer, runs, tty):
    """zpeer_ssh_g and zpeer_ssh_true, from node to peer."""
    ssh = zpeer_ssh_command()
    floor, probe = interleaved(
        lambda: run_timed([sys.executable, "-c", "pass"])[0],
        lambda: run_timed(ssh + ["-G", peer], env=node.env)[0], max(runs, 5))
    rows = [Row("zpeer_ssh_g", probe, "s", max(runs, 5), "<= 1.3x python -c pass",
                probe <= 1.3 * floor, f"{probe / floor:.2f}x `python -c pass` ({floor:.4f}s, "
                                      "interleaved)")]
    d_exec, zs = interleaved(
        lambda: run_timed(d_command() + ["execOnPeer", "--peer", peer, "--shellCmd", "true"],
                          env=node.env, stdin=tty.slave)[0],
        lambda: run_timed(ssh + [peer, "true"], env=node.env, stdin=tty.slave)[0], runs)
    rows.append(Row("zpeer_ssh_true", zs, "s", runs, "<= 1.1x d execOnPeer", zs <= 1.1 * d_exec,
                    f"{zs / d_exec:.2f}x `d execOnPeer ... true` ({d_exec:.4f}s, interleaved)"))
    return rows


def make_tree(path):
    """The 200 MB tree of rsync_200mb."""
    os.makedirs(os.path.join(path, "small"))
    for i in range(TREE_BIG_FILES):
        with open(os.path.join(path, f"big{i}"), "wb") as f:
            f.write(os.urandom(TREE_BIG_BYTES))
    for i in range(TREE_SMALL_FILES):
        with open(os.path.join(path, "small", f"f{i}"), "wb") as f:
            f.write(os.urandom(TREE_SMALL_BYTES))
    return TREE_BIG_FILES * TREE_BIG_BYTES + TREE_SMALL_FILES * TREE_SMALL_BYTES


def make_repo(path):
    """The 50 MB bare repository of git_clone_50mb (one commit, packed)."""
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@zpeer.invalid", "-c",
           "init.defaultBranch=main"]
    work = path + ".work"
    subprocess.run(git + ["init", "-q", work], check=True)
    for i in range(REPO_FILES):
        with open(os.path.join(work, f"blob{i}"), "wb") as f:
            f.write(os.urandom(REPO_FILE_BYTES))
    subprocess.run(git + ["-C", work, "add", "."], check=True)
    subprocess.run(git + ["-C", work, "commit", "-q", "-m", "data"], check=True)
    subprocess.run(git + ["clone", "-q", "--bare", work, path], check=True)
    subprocess.run(git + ["-C", path, "gc", "-q"], check=True)
    shutil.rmtree(work)
    return REPO_FILES * REPO_FILE_BYTES


def transfer_rows(node, peer, runs, log=print):
    """rsync_200mb and git_clone_50mb, zpeer-ssh against OpenSSH (rows with None when no sshd
    can be had here)."""
    server = LocalSsh()
    try:
        if not server.start():
            return [Row(name, None, "MB/s", 0, note=f"skipped: {server.reason}")
                    for name in TRANSFER_ROWS]
        return _transfers(node, peer, runs, server, log)
    finally:
        server.close()


def _transfers(node, peer, runs, server, log):
    work = tempfile.mkdtemp(prefix="zpeer-bench-tools-")
    try:
        zs = " ".join(shlex.quote(a) for a in zpeer_ssh_command())
        openssh = " ".join(shlex.quote(a) for a in server.base())
        user_host = server.target()
        env = dict(node.env, GIT_SSH_COMMAND=zs)
        ssh_env = dict(os.environ, GIT_SSH_COMMAND=openssh)
        tree = os.path.join(work, "tree")
        size = make_tree(tree)
        dest = os.path.join(work, "dest")

        def rsync(via, target, environ):
            shutil.rmtree(dest, ignore_errors=True)
            return run_timed(["rsync", "-a", "-e", via, tree + "/", f"{target}:{dest}/"],
                             env=environ)[0]

        log("  rsync_200mb ...")
        zt, st = interleaved(lambda: rsync(zs, peer, node.env),
                             lambda: rsync(openssh, user_host, None), runs, warmup=1)
        rows = [_versus("rsync_200mb", size, zt, st, runs, "rsync -a of a 200 MB tree")]
        repo = os.path.join(work, "repo.git")
        size = make_repo(repo)
        clone = os.path.join(work, "clone")

        def git_clone(url, environ):
            shutil.rmtree(clone, ignore_errors=True)
            return run_timed(["git", "clone", "-q", url, clone], env=environ)[0]

        log("  git_clone_50mb ...")
        zt, st = interleaved(lambda: git_clone(f"{peer}:{repo}", env),
                             lambda: git_clone(f"{user_host}:{repo}", ssh_env), runs, warmup=1)
        rows.append(_versus("git_clone_50mb", size, zt, st, runs, "git clone of a 50 MB repo"))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _versus(name, size, zpeer_s, openssh_s, runs, what):
    """A throughput row: zpeer-ssh's MB/s, against OpenSSH's of the same run."""
    ours, theirs = size / MB / zpeer_s, size / MB / openssh_s
    return Row(name, ours, "MB/s", runs, ">= 1.0x OpenSSH", ours >= theirs,
               f"{what}: zpeer-ssh {zpeer_s:.2f}s, OpenSSH to a private sshd {openssh_s:.2f}s "
               f"({theirs:.0f} MB/s): {ours / theirs:.2f}x",
               {"zpeer_s": round(zpeer_s, 3), "openssh_s": round(openssh_s, 3)})


def main(argv=None):
    """Run the zpeer-ssh rows alone."""
    import argparse

    from bench.run import table

    p = argparse.ArgumentParser(description="zpeer-ssh rows (see bench/README.md)")
    p.add_argument("--runs", type=int, default=5, help="runs of each row (default 5)")
    args = p.parse_args(argv)
    cluster, tty = Cluster(), Terminal()
    try:
        lead = cluster.start_leader()
        cluster.start_worker("w1", "127.0.0.2")
        rows = per_call_rows(lead, "w1", args.runs, tty)
        rows += transfer_rows(lead, "w1", max(1, args.runs // 2),
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        cluster.stop()
        tty.close()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
