"""The version a daemon reports: package version plus git commit when run from a checkout."""
import os
import subprocess

from zpeer import __version__

# A file whose first line replaces the computed version: for builds that stamp what they
# installed (and for tests, whose peers all run from one checkout).
VERSION_FILE_ENV = "ZPEER_VERSION_FILE"


def _override():
    """The first line of $ZPEER_VERSION_FILE, or None when unset, missing or empty."""
    path = os.environ.get(VERSION_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()[:64] or None
    except OSError:
        return None


def full_version():
    """`0.1.0`, or `0.1.0+g1a2b3c4` when run from a git checkout (or the override file's line)."""
    override = _override()
    if override:
        return override
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return __version__
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__
