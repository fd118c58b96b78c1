"""README.md as a doc-test: its code blocks, their marks, placeholders and transcript matching.

Marks (the info string after the language word, which renderers ignore):
  ```sh run=NODE        lines run in one bash (`set -e -o pipefail`) on NODE: every command must succeed
  ```console run=NODE   a transcript: `$ ` lines (and `> ` continuations) run in one bash on NODE;
                        the lines after each are its expected stdout+stderr
  ```sh norun:REASON    shown only (systemd, WireGuard, ssh, root-only setup); REASON is required
  ```text (any non-shell language)   an output or file sample, not commands
A hidden step is a line `<!-- doctest: stop NODE -->` or `<!-- doctest: start NODE -->`.
"""
import re
from dataclasses import dataclass, field

# Fence languages whose blocks hold commands: each must be marked run= or norun:.
SHELL_LANGS = {"", "sh", "bash", "shell", "console", "shell-session", "zsh", "fish"}

# README.md starts with this line and a ```sh block of two lines: the fresh-machine install + demo
# and install + tests. CI (.ci/run) runs the second line verbatim; the test runs the first's `d demo`.
INSTALL_PREFIX = "# zpeer\n\n```sh\n"

# The header of the automateLinux -> zpeer table; its zpeer column is run as commands.
MIGRATION_HEADER = re.compile(r"^\|\s*automateLinux\s*\|\s*zpeer\s*\|")
DIRECTIVE = re.compile(r"^<!-- doctest: (stop|start) ([\w-]+) -->$")
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")

# How the README's example fleet maps onto the loopback test cluster, applied mechanically to
# every command and every expected output line before it is used: (pattern, ctx key, meaning).
PLACEHOLDERS = (
    (r"\b10\.0\.0\.(\d+)\b", None, "WireGuard address 10.0.0.N -> loopback 127.0.0.N"),
    (r"\b0\.0\.0\.0\b", "loopback", "bind-all 0.0.0.0 -> 127.0.0.1 (tests never bind other addresses)"),
    (r":3520\b", "port", "the default port 3520 -> the test leader's port"),
    (r"/var/lib/zpeer\b", "home", "the root daemon's state directory -> the node's ZPEER_HOME"),
    (r"(?<![\w.~])/srv(?=/)", "srv", "/srv -> a temp dir: app/ is a git checkout (commit 'Initial import', "
                                     "an executable ./build.sh) with an upstream to pull from; backup/ is empty"),
    (r"\bTOKEN\b", "token", "a fresh join token from `d joinToken` on the leader"),
    (r"\bKEY\b", "key", "the leader's public key (z85 has no quote characters)"),
    (r"(?<=--group )zpeer\b|(?<=group=)zpeer\b", "group", "the group zpeer -> the test user's primary group"),
)


@dataclass
class Block:
    """One fenced code block (or the migration table's zpeer column) and how it is marked."""

    lang: str
    info: str
    lines: list
    line: int  # README line number of the first content line
    kind: str = "sample"  # install, run, console, norun, sample, table, unmarked
    node: str = None
    reason: str = ""
    steps: list = field(default_factory=list)  # hidden steps just before it: [(verb, node)]


def classify(block, first):
    """Set block.kind/node/reason from its language and info string."""
    if first and block.line == INSTALL_PREFIX.count("\n") + 1 and block.lang == "sh" and len(block.lines) == 2:
        block.kind = "install"
    elif block.info.startswith("norun:") and block.info[6:].strip():
        block.kind, block.reason = "norun", block.info[6:].strip()
    elif re.fullmatch(r"run=[\w-]+", block.info) and block.lang in SHELL_LANGS - {""}:
        block.kind, block.node = ("console" if block.lang == "console" else "run"), block.info[4:]
    elif block.lang in SHELL_LANGS or block.info:
        block.kind = "unmarked"  # a shell block (or a typo in a mark) that the test would skip silently
    return block


def parse(text):
    """The README's blocks in document order, hidden steps attached to the block that follows them."""
    blocks, steps, current, lines = [], [], None, text.split("\n")
    for number, line in enumerate(lines, 1):
        if current is not None:
            if line.strip() == "```":
                blocks.append(classify(current, first=not blocks))
                current = None
            else:
                current.lines.append(line)
        elif FENCE.match(line):
            lang, info = FENCE.match(line).groups()
            current = Block(lang, info.strip(), [], number + 1, steps=steps)
            steps = []
        elif DIRECTIVE.match(line):
            steps.append(DIRECTIVE.match(line).groups())
        elif MIGRATION_HEADER.match(line):
            table = Block("sh", "table", [], number + 2, kind="table", node="desktop", steps=steps)
            steps = []
            for row in lines[number + 1:]:  # number is 1-based: this is the line after the header
                if not row.startswith("|"):
                    break
                cells = row.strip().strip("|").split("|")
                table.lines += re.findall(r"`([^`]+)`", cells[1]) if len(cells) > 2 else []
            blocks.append(table)
    assert current is None, f"README.md: code block opened at line {current.line - 1} is never closed"
    if steps:  # trailing steps run at the end
        blocks.append(Block("", "", [], len(lines), kind="steps", steps=steps))
    return blocks


def prose_code_spans(text):
    """Inline `code` spans outside fenced blocks."""
    spans, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line) or (fenced and line.strip() == "```"):
            fenced = not fenced
        elif not fenced:
            spans += re.findall(r"`([^`\n]+)`", line)
    return spans


D_SUBCOMMAND = re.compile(r"(?:^|[\s;|&(])d ([A-Za-z][\w-]*)")


def subcommands(text):
    """The `d SUBCOMMAND` names used in a piece of shell text."""
    return set(D_SUBCOMMAND.findall(text))


def substitute(text, ctx):
    """Apply PLACEHOLDERS; ctx maps each key to its value (or to a function giving it, called once)."""
    def value(key):
        if callable(ctx[key]):
            ctx[key] = ctx[key]()
        return ctx[key]

    for pattern, key, _ in PLACEHOLDERS:
        if key is None:
            text = re.sub(pattern, r"127.0.0.\1", text)
        elif re.search(pattern, text):
            text = re.sub(pattern, lambda _m, k=key: value(k), text)
    return text


def transcript(block):
    """[(command, [expected lines], README line)] of a console block."""
    items = []
    for offset, line in enumerate(block.lines):
        if line.startswith("$ "):
            items.append([line[2:], [], block.line + offset])
        elif line.startswith("> ") and items and not items[-1][1]:
            items[-1][0] += "\n" + line[2:]
        else:
            assert items, f"README.md:{block.line + offset}: output before the first `$ ` command"
            items[-1][1].append(line)
    return [tuple(i) for i in items]


def _norm(line):
    return " ".join(line.split())


def output_matches(expected_lines, actual):
    """True if actual text fits the expected lines: `...` is any text (alone: any lines), spaces fold."""
    pattern = ""
    for line in map(_norm, expected_lines):
        if line == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += r"[^\n]*".join(map(re.escape, line.split("..."))) + r"\n"
    got = "".join(_norm(line) + "\n" for line in actual.splitlines())
    return re.fullmatch(pattern, got) is not None
