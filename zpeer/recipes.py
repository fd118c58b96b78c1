"""Deploy recipes as the target peer sees them, and the steps that run them there.

The origin never sends a peer its recipe: it runs `"$ZPEER_PYTHON" -m zpeer deployStep STEP` on
the target (see `step_command`), and this module reads the target's own config.json (its
ZPEER_HOME is in the job's environment) to find the repo and the commands. Defaults deploy
zpeer itself; `python -m zpeer.recipes install REPO` is the default build of a peer that runs an
installed copy. No zmq here at import time: the CLI imports this module.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from zpeer import config

STEPS = ("pull", "build", "restart", "status")
DEFAULT_PULL = "git pull --ff-only"
RECIPE_KEYS = ("repo", "pull_cmd", "build_cmd", "restart_cmd")
EXIT_RECIPE = 2  # the recipe cannot run here (no repo, missing directory, no build command)
STATE_FILE = "deploy.json"  # the repo's commit before the last pull: did the deploy bring anything?


def step_command(step):
    """The shell command an origin runs on a target for one deploy step."""
    if step not in STEPS:
        raise ValueError(step)
    return f'exec "${{ZPEER_PYTHON:-python3}}" -m zpeer deployStep {step}'


def zpeer_checkout():
    """The git checkout (or worktree: its .git is a file) this zpeer runs from, or None when it
    runs from an installed copy."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.exists(os.path.join(root, ".git")) else None


def resolve(cfg):
    """The recipe in effect: configured values, else the defaults that deploy zpeer itself."""
    checkout = zpeer_checkout()
    repo = cfg.get("repo") or checkout
    build = cfg.get("build_cmd")
    if not build and repo:
        # reinstall into the interpreter the daemon runs with: editable when it runs from that
        # checkout (its version names the commit then), else a copy whose version names it
        # (install_stamped)
        python = shlex.quote(sys.executable)
        if checkout and os.path.realpath(repo) == os.path.realpath(checkout):
            build = f"{python} -m pip install --quiet -e {shlex.quote(repo)}"
        else:
            build = f"{python} -m zpeer.recipes install {shlex.quote(repo)}"
    return {"repo": repo, "pull_cmd": cfg.get("pull_cmd") or DEFAULT_PULL, "build_cmd": build,
            "restart_cmd": cfg.get("restart_cmd")}


def _head(repo, short=False):
    """The commit a git checkout is at, or None (not git, or git missing)."""
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse"] + (["--short"] if short else [])
                             + ["HEAD"],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


VERSION_LINE = re.compile(r"""^__version__\s*=\s*(["'])([^"']+)\1""", re.M)


def stamp_version(init_py, commit):
    """Rewrite a package's `__version__` to name the commit (`0.1.0+g1a2b3c4`, as a checkout reports
    itself); returns the new version, or None when the file has no such line."""
    with open(init_py, encoding="utf-8") as f:
        text = f.read()
    found = VERSION_LINE.search(text)
    if not found:
        return None
    old = found.group(2)
    version = f"{old}{'.' if '+' in old else '+'}g{commit}"  # one local label at most (PEP 440)
    with open(init_py, "w", encoding="utf-8") as f:
        f.write(text[:found.start(2)] + version + text[found.end(2):])
    return version


def _copy_checkout(repo, dest):
    """Copy what git sees of a checkout (tracked and untracked, not ignored, no .git) to dest."""
    listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"],
                            capture_output=True, check=True, timeout=60,
                            stdin=subprocess.DEVNULL).stdout
    for rel in sorted({os.fsdecode(name) for name in listed.split(b"\0") if name}):
        src, dst = os.path.join(repo, rel), os.path.join(dest, rel)
        if os.path.isfile(src) or os.path.islink(src):  # skips deleted files and submodules
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)


def install_stamped(repo):
    """Install zpeer from a checkout into this Python, its version naming the checkout's commit.

    An installed copy reports only `__version__`, so without the stamp a deploy of commits that
    leave it alone would look like a build that installed nothing. The copy is built outside the
    checkout, which keeps the stale build/ of setuptools out of it. Returns pip's exit status."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    commit = _head(repo, short=True)
    if commit is None:  # not a git checkout: nothing to name, install it as it is
        return subprocess.call(pip + [repo], stdin=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="zpeer-build-") as tmp:
        src = os.path.join(tmp, "src")
        _copy_checkout(repo, src)
        init_py = os.path.join(src, "zpeer", "__init__.py")
        version = stamp_version(init_py, commit) if os.path.isfile(init_py) else None
        status = subprocess.call(pip + [src], stdin=subprocess.DEVNULL)
    if status == 0 and version:
        print(f"Installed zpeer {version} into {sys.prefix}", flush=True)
    return status


def remember_head(repo):
    """Before a pull: note where the checkout was, for the restart step to tell if it moved."""
    state = {"repo": repo, "before": _head(repo)}
    path = config.path_in_home(STATE_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(f"{path}.tmp", path)


def repo_changed(repo):
    """True/False when the last pull moved/left the checkout, None when that is unknown."""
    try:
        with open(config.path_in_home(STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    if not repo or state.get("repo") != repo or not state.get("before"):
        return None
    now = _head(repo)
    return None if now is None else now != state["before"]


def refuse(message):
    """A recipe that cannot run on this peer: say why on stderr, exit EXIT_RECIPE."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(EXIT_RECIPE)


if __name__ == "__main__":
    # `python -m zpeer.recipes install REPO`: the default build of a peer that runs an installed
    # copy
    if len(sys.argv) != 3 or sys.argv[1] != "install":
        refuse("usage: python -m zpeer.recipes install REPO")
    sys.exit(install_stamped(sys.argv[2]))
