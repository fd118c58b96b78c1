"""`d CMD --help` of every command: a one-line summary, every flag, an example, as users see it."""
import os
import re
import subprocess
import sys

import click
import pytest
from helpers.nodes import d_command

from zpeer.cli.app import all_commands

COMMANDS = [name for name, cmd in all_commands().items() if not cmd.hidden]


def help_text(*args):
    """The real `d ... --help` output."""
    out = subprocess.run(d_command() + [*args, "--help"], capture_output=True, timeout=30,
                         stdin=subprocess.DEVNULL, env=dict(os.environ, COLUMNS="100"))
    assert (out.returncode, out.stderr) == (0, b""), out.stderr
    return out.stdout.decode()


def examples(text):
    """The indented lines under `Example:` / `Examples:`."""
    match = re.search(r"^  Examples?:\n((?:    .*\n)+)", text, re.M)
    return [line.strip() for line in match.group(1).splitlines()] if match else []


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(name):
    cmd = all_commands()[name]
    text = help_text(name)
    assert text.startswith(f"Usage: d {name} ")

    summary = (cmd.help or "").strip().split("\n\n")[0]
    assert summary and "\n" not in summary, f"{name}: the summary must be one line: {summary!r}"
    assert summary.endswith("."), f"{name}: the summary is a sentence: {summary!r}"
    assert summary.split()[0][0].isupper(), summary
    assert " ".join(summary.split()) in " ".join(text.split())

    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            for flag in param.opts + param.secondary_opts:
                assert re.search(rf"(^|[\s,/]){re.escape(flag)}\b", text,
                                 re.M), f"{name}: {flag} not in --help"
        elif isinstance(param, click.Argument):
            try:  # click >= 8.2 wants the context
                metavar = param.make_metavar(click.Context(cmd, info_name=name))
            except TypeError:
                metavar = param.make_metavar()
            assert metavar in text.splitlines()[0], (f"{name}: argument {metavar} not in the usage "
                                                     "line")

    shown = examples(text)
    assert shown, f"{name}: --help has no `Example:` section"
    assert any(re.search(rf"(^|[\s;|&(=]|\$\()d {re.escape(name)}(\s|$)",
                         line) for line in shown), \
        f"{name}: no example runs `d {name}`: {shown}"


def test_top_level_help_lists_every_command_with_an_example():
    text = help_text()
    listed = re.findall(r"^  (\S+)\s{2,}\S", text.split("\nCommands:\n", 1)[1], re.M)
    assert listed == COMMANDS
    assert any(line.startswith("d ") for line in examples(text))


def test_listing_shows_each_summary():
    """`d --help` lists each command with the start of its one-line summary."""
    rows = dict(re.findall(r"^  (\S+)\s{2,}(.+)$", help_text().split("\nCommands:\n", 1)[1], re.M))
    for name in COMMANDS:
        summary = all_commands()[name].help.strip().split("\n")[0]
        shown = rows[name][:-3] if rows[name].endswith("...") else rows[name]
        assert shown and summary.startswith(shown), (name, rows[name])


def test_the_exec_path_imports_nothing_it_does_not_use():
    """`d execOnPeer` runs once per command: what it imports beyond zmq, msgpack and click is
    startup time. No registry, daemon or deploy code, and no stdlib heavyweights it never uses."""
    code = ("import sys, zpeer.cli.app, zpeer.cli.execute, zpeer.wire.ipc; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('peewee', 'sqlite3', 'logging', 'subprocess', 'secrets', 'socket', 'uuid') or "
            "m.startswith('zpeer.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "uuid", "zpeer.cli", "zpeer.cli.app", "zpeer.cli.common", "zpeer.cli.exec_client",
        "zpeer.cli.execute", "zpeer.cli.renderer", "zpeer.cli.sink", "zpeer.cli.stdio",
                                  "zpeer.config",
        "zpeer.errors", "zpeer.targets", "zpeer.wire", "zpeer.wire.ipc", "zpeer.wire.multipart",
        "zpeer.wire.protocol"]
