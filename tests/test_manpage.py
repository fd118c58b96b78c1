"""d(1) is made from the click tree: the committed man/d.1 is what the CLI would write now, it
names every command and flag, and it renders."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zpeer.cli import manpage
from zpeer.cli.app import all_commands

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "man" / "d.1"


def test_the_committed_page_is_what_the_cli_writes():
    assert PAGE.read_text() == manpage.render(), \
        "man/d.1 is stale: run `python -m zpeer.cli.manpage --write`"


def test_every_visible_command_and_flag_is_in_the_page():
    text = PAGE.read_text()
    for name, cmd in all_commands().items():
        if cmd.hidden:
            assert f'.SS "d {manpage.roff(name)} ' not in text
            continue
        assert f'.SS "d {manpage.roff(name)} ' in text, name
        section = text.split(f'.SS "d {manpage.roff(name)} ', 1)[1].split(".SS ", 1)[0]
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert manpage.roff(opt) in section, (name, opt)


def test_write_makes_the_file(tmp_path):
    shutil.copytree(ROOT / "zpeer", tmp_path / "zpeer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "zpeer.cli.manpage", "--write"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "man" / "d.1").read_text() == PAGE.read_text()
    out = subprocess.run([sys.executable, "-m", "zpeer.cli.manpage"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (2, "usage: python -m zpeer.cli.manpage --write\n")


def test_it_renders_without_warnings():
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (Debian: groff-base)")
    out = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True,
                         text=True, timeout=30)
    assert (out.returncode, out.stderr) == (0, "")
    shown = subprocess.run([groff, "-man", "-Tutf8", str(PAGE)], capture_output=True, text=True,
                           timeout=30).stdout
    shown = re.sub(".\b", "", shown)  # bold and underline are overstruck on a terminal
    assert "d execOnPeer [OPTIONS]" in shown and "EXIT STATUS" in shown
