"""The programs tests drive besides zpeer: the shells users source helpers from, and git."""
import shutil
import subprocess

import pytest

GIT = ["git", "-c", "user.name=zpeer tests", "-c", "user.email=tests@zpeer.invalid", "-c",
       "init.defaultBranch=main"]


def shells():
    """The shells users source the helpers from; a missing one is skipped, saying so."""
    return [pytest.param(sh, marks=pytest.mark.skipif(shutil.which(sh) is None,
                                                      reason=f"{sh} not installed"))
            for sh in ("bash", "zsh", "sh")]


def git(*args, cwd=None):
    """Run git quietly, as a test user; returns stdout text."""
    return subprocess.run(GIT + list(args), cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=30).stdout
