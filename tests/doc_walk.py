"""The guide (README.md, then the docs/ pages in the index's order) as one doc-test: its code
blocks, their marks, placeholders, transcript matching, links and the order of its pages.

Marks (the info string after the language word, which renderers ignore):
  ```sh run=NODE        lines run in one bash (`set -e -o pipefail`) on NODE: each must succeed
  ```console run=NODE   a transcript: `$ ` lines (and `> ` continuations) run in one bash on NODE;
                        the lines after each are its expected stdout+stderr
  ```sh norun:REASON    shown only (systemd, WireGuard, ssh, root-only setup); REASON is required
  ```text (any non-shell language)   an output or file sample, not commands
A hidden step is a line `<!-- doctest: stop NODE -->` or `<!-- doctest: start NODE -->`.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

# Fence languages whose blocks hold commands: each must be marked run= or norun:.
SHELL_LANGS = {"", "sh", "bash", "shell", "console", "shell-session", "zsh", "fish"}

# README.md starts with this line and a ```sh block of two lines: the fresh-machine install +
# demo and install + tests. CI (.ci/run) runs the second line verbatim; the test runs the
# first's `d demo`.
FRONT_DOOR = "README.md"
INSTALL_PREFIX = "# zpeer\n\n```sh\n"
# The index of the guide's pages: its links to the pages, in reading order, are the walk's order.
INDEX = "docs/README.md"

# The header of the automateLinux -> zpeer table; its zpeer column is run as commands.
MIGRATION_HEADER = re.compile(r"^\|\s*automateLinux\s*\|\s*zpeer\s*\|")
DIRECTIVE = re.compile(r"^<!-- doctest: (stop|start) ([\w-]+) -->$")
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")
# A section whose commands and flags are not built: its names must not be the CLI's (yet).
NOT_BUILT = "Not built yet"

# How the guide's example fleet maps onto the loopback test cluster, applied mechanically to
# every command and every expected output line before it is used: (pattern, ctx key, meaning).
PLACEHOLDERS = (
    (r"\b10\.0\.0\.(\d+)\b", None, "WireGuard address 10.0.0.N -> loopback 127.0.0.N"),
    (r"\b0\.0\.0\.0\b", "loopback", "bind-all 0.0.0.0 -> 127.0.0.1 (tests bind no other address)"),
    (r":3520\b", "port", "the default port 3520 -> the test leader's port"),
    (r"/var/lib/zpeer\b", "home", "the root daemon's state directory -> the node's ZPEER_HOME"),
    (r"(?<![\w.~])/srv(?=/)", "srv", "/srv -> a temp dir: app/ is a git checkout (commit 'Initial "
                                     "import', an executable ./build.sh) with an upstream to pull "
                                     "from; backup/ is empty"),
    (r"\bTOKEN\b", "token", "a fresh join token from `d joinToken` on the leader"),
    (r"\bKEY\b", "key", "the leader's public key (z85 has no quote characters)"),
    (r"\bNAS_KEY\b", "nas_key", "the first 8 characters of nas's public key (its getPeerStatus)"),
    (r"(?<=--group )zpeer\b|(?<=group=)zpeer\b", "group", "group zpeer -> the test user's group"),
)


@dataclass
class Block:
    """One fenced code block (or the migration table's zpeer column) and how it is marked."""

    lang: str
    info: str
    lines: list
    line: int  # line number (in its page) of the first content line
    kind: str = "sample"  # install, run, console, norun, sample, table, unmarked, steps
    node: str = None
    reason: str = ""
    steps: list = field(default_factory=list)  # hidden steps just before it: [(verb, node)]
    path: str = FRONT_DOOR  # the page, relative to the repository

    @property
    def where(self):
        """FILE:LINE of the block's opening fence, for messages."""
        return f"{self.path}:{self.line - 1}"


def classify(block, first):
    """Set block.kind/node/reason from its language and info string."""
    if (first and block.path == FRONT_DOOR and block.line == INSTALL_PREFIX.count("\n") + 1
            and block.lang == "sh" and len(block.lines) == 2):
        block.kind = "install"
    elif block.info.startswith("norun:") and block.info[6:].strip():
        block.kind, block.reason = "norun", block.info[6:].strip()
    elif re.fullmatch(r"run=[\w-]+", block.info) and block.lang in SHELL_LANGS - {""}:
        block.kind, block.node = ("console" if block.lang == "console" else "run"), block.info[4:]
    elif block.lang in SHELL_LANGS or block.info:
        block.kind = "unmarked"  # a shell block (or a typo in a mark) the test would skip silently
    return block


def parse(text, path=FRONT_DOOR):
    """A page's blocks in document order, hidden steps attached to the block that follows them."""
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
            current = Block(lang, info.strip(), [], number + 1, steps=steps, path=path)
            steps = []
        elif DIRECTIVE.match(line):
            steps.append(DIRECTIVE.match(line).groups())
        elif MIGRATION_HEADER.match(line):
            table = Block("sh", "table", [], number + 2, kind="table", node="desktop", steps=steps,
                          path=path)
            steps = []
            for row in lines[number + 1:]:  # number is 1-based: this is the line after the header
                if not row.startswith("|"):
                    break
                cells = row.strip().strip("|").split("|")
                table.lines += re.findall(r"`([^`]+)`", cells[1]) if len(cells) > 2 else []
            blocks.append(table)
    assert current is None, f"{path}:{current.line - 1}: code block is never closed"
    if steps:  # trailing steps run at the end of the page
        blocks.append(Block("", "", [], len(lines), kind="steps", steps=steps, path=path))
    return blocks


def prose_lines(text):
    """(line number, line) of the lines outside fenced blocks."""
    fenced = False
    for number, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line) or (fenced and line.strip() == "```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def prose_code_spans(text, skip_section=None):
    """Inline `code` spans outside fenced blocks (and outside the section named skip_section)."""
    spans, skip_level = [], None
    for _, line in prose_lines(text):
        heading = re.match(r"^(#+) (.*)$", line)
        if heading and skip_level and len(heading.group(1)) <= skip_level:
            skip_level = None  # the next heading of the skipped one's level (or above) ends it
        if heading and heading.group(2).strip() == skip_section:
            skip_level = len(heading.group(1))
        if not skip_level:
            spans += re.findall(r"`([^`\n]+)`", line)
    return spans


def section(text, title):
    """The text under the heading `title` up to the next heading of its level or above."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    if not match:
        return ""
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


D_SUBCOMMAND = re.compile(r"(?:^|[\s;|&(])d ([A-Za-z][\w-]*)")


def subcommands(text):
    """The `d SUBCOMMAND` names used in a piece of shell text."""
    return set(D_SUBCOMMAND.findall(text))


def substitute(text, ctx):
    """Apply PLACEHOLDERS; ctx maps each key to its value (or to a function giving it, called
    once)."""
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
    """[(command, [expected lines], line)] of a console block."""
    items = []
    for offset, line in enumerate(block.lines):
        if line.startswith("$ "):
            items.append([line[2:], [], block.line + offset])
        elif line.startswith("> ") and items and not items[-1][1]:
            items[-1][0] += "\n" + line[2:]
        else:
            assert items, f"{block.path}:{block.line + offset}: output before the first `$ `"
            items[-1][1].append(line)
    return [tuple(i) for i in items]


def _norm(line):
    return " ".join(line.split())


def output_matches(expected_lines, actual):
    """True if actual text fits the expected lines: `...` is any text (alone: any lines), and
    runs of spaces compare equal."""
    pattern = ""
    for line in map(_norm, expected_lines):
        if line == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += r"[^\n]*".join(map(re.escape, line.split("..."))) + r"\n"
    got = "".join(_norm(line) + "\n" for line in actual.splitlines())
    return re.fullmatch(pattern, got) is not None


# --- the pages and their links -------------------------------------------------------------
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")


def links(text):
    """[(line number, target)] of the markdown links outside fenced blocks and code spans."""
    found = []
    for number, line in prose_lines(text):
        found += [(number, target) for target in LINK.findall(re.sub(r"`[^`\n]*`", "", line))]
    return found


def index_order(text):
    """The pages of its own folder that an index links to, each once, in order of first mention."""
    order = []
    for _, target in links(text):
        page = target.split("#", 1)[0]
        if re.fullmatch(r"[\w.-]+\.md", page) and page not in order:
            order.append(page)
    return order


def pages(root):
    """The walk's pages, relative to root: the front door, the index, then the index's order."""
    index = Path(root) / INDEX
    folder = Path(INDEX).parent
    listed = [str(folder / page) for page in index_order(index.read_text())]
    return [FRONT_DOOR, INDEX] + [p for p in listed if p not in (FRONT_DOOR, INDEX)]


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text):
    """Every anchor of a page's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen, found = {}, set()
    for _, line in prose_lines(text):
        heading = re.match(r"^#{1,6} (.*?)#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found
