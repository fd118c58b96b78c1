"""The guide is a doc-test: every command it shows runs against a live loopback cluster.

The guide is README.md, then docs/README.md (the index) and the pages it lists, in its order. The
marks and placeholders are defined in doc_walk.py (and described in docs/development.md). Blocks
run in that order on one cluster that the guide's own setup commands build (the `cluster`
fixture's layout: vps leader on 127.0.0.1, desktop 127.0.0.2, laptop 127.0.0.4; nas 127.0.0.5
joins in docs/setup.md), so the story it tells (set up, enrol, use, break, fix) flows from page
to page and is what the test walks through. Failures name FILE:LINE.
"""
import grp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import doc_walk as doc
import pytest
from helpers.nodes import ROOT, TEST_HEARTBEAT_S, Node, d_command, wait_for

REPO = Path(ROOT)
# The address of each node the guide names (the fixture's, plus nas that joins in the guide).
ADDRESSES = {"vps": "127.0.0.1", "desktop": "127.0.0.2", "laptop": "127.0.0.4", "nas": "127.0.0.5"}
MARK = "@@zpeer-doctest@@"
# Pages besides the guide whose links and paths must stay inside the repository.
LINKED = ["README.md", "SECURITY.md", "bench/README.md"]
TROUBLESHOOTING = "docs/troubleshooting.md"
REPO_PATH = re.compile(r"^(?:\.ci|bench|bin|completions|contrib|docs|tests|zpeer)/[\w./-]*$")


def pages():
    """The guide's pages in walk order, relative to the repository."""
    return doc.pages(REPO)


def text(page):
    return (REPO / page).read_text()


def blocks():
    """Every page's parsed blocks, in walk order."""
    return [b for page in pages() for b in doc.parse(text(page), page)]


def cli_commands():
    """Names of the visible `d` subcommands."""
    from zpeer.cli.app import all_commands

    return {name for name, cmd in all_commands().items() if not cmd.hidden}


def make_srv(base):
    """/srv of the guide: app/ a git checkout with an upstream and ./build.sh, backup/ empty."""
    srv = base / "srv"
    git = ["git", "-c", "user.name=zpeer", "-c", "user.email=zpeer@localhost",
           "-c", "init.defaultBranch=main"]
    seed = base / "seed"
    seed.mkdir(parents=True)
    (seed / "build.sh").write_text("#!/bin/sh\necho built\n")
    (seed / "build.sh").chmod(0o755)
    for argv in (["init", "-q", str(seed)], ["-C", str(seed), "add", "."],
                 ["-C", str(seed), "commit", "-q", "-m", "Initial import"],
                 ["clone", "-q", "--bare", str(seed), str(base / "upstream.git")],
                 ["clone", "-q", str(base / "upstream.git"), str(srv / "app")]):
        subprocess.run(git + argv, check=True, capture_output=True, timeout=30)
    (srv / "backup").mkdir()
    return srv


class Walk:
    """Runs the guide's blocks on a cluster: node lookup, placeholders, hidden steps."""

    def __init__(self, cluster, base):
        self.c = cluster
        self.srv = make_srv(base)
        self.home = base / "home"
        self.home.mkdir()
        self.executed = []
        self.was_online = []  # workers online when the leader was stopped: they must come back

    def node(self, name):
        """The node named in the guide; on first use its daemon starts, as `systemctl enable
        --now` does in the install step (with the test heartbeat and its own loopback source
        address)."""
        if name not in self.c.nodes:
            assert name in ADDRESSES, f"the guide names an unknown node {name!r}"
            node = Node(self.c.base, name, ADDRESSES[name])
            node.d("setPeerConfig", "--heartbeat", TEST_HEARTBEAT_S, "--source-ip", ADDRESSES[name],
                   check=0)
            self.c.nodes[name] = node.start()
            if name == "vps":
                self.c.vps = node
        return self.c.nodes[name]

    def env(self, node):
        """What a user's shell on that node has: its ZPEER_HOME, `d` on PATH, a private HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BASH_COMPLETION"))
               and k not in ("ZDOTDIR", "ZPEER_HOME")}
        bindirs = [os.path.dirname(d_command()[0]) if len(d_command()) == 1 else "",
                   os.path.join(ROOT, "bin")]
        env.update(ZPEER_HOME=node.home, HOME=str(self.home), SHELL="/bin/bash", LC_ALL="C.UTF-8",
                   PATH=os.pathsep.join([p for p in bindirs if p] + [env.get("PATH", "")]))
        return env

    def public_key(self, name):
        status = self.c.nodes[name].d("getPeerStatus", "--json", check=0).stdout
        return json.loads(status)["public_key"]

    def ctx(self, node):
        """Placeholder values for commands run on `node` (tokens and keys fetched when used)."""
        return {"loopback": "127.0.0.1", "port": f":{self.c.port}", "home": node.home,
                "srv": str(self.srv), "token": self.c.token, "key": lambda: self.public_key("vps"),
                "nas_key": lambda: self.public_key("nas")[:8],
                "group": grp.getgrgid(os.getgid()).gr_name}

    def step(self, verb, name):
        """A hidden step: stop or start a node's daemon, then wait until the cluster has noticed."""
        node, leader = self.node(name), self.c.vps
        workers = [n for n in self.c.nodes.values()
                   if n is not leader and n.proc and n.proc.poll() is None]
        if verb == "stop" and node is leader:
            self.was_online = [n for n in workers if self.c.online(n.name)]
            node.stop()
            wait_for(lambda: all(b'"connected": false' in n.d("getPeerStatus", "--json").stdout
                                 for n in workers), what="workers to notice the leader is gone")
        elif verb == "stop":
            node.stop()
            if leader.proc.poll() is None:
                wait_for(lambda: not self.c.online(name), what=f"the leader to mark {name} offline")
        elif node is leader:
            node.start()
            for n in self.was_online:
                wait_for(lambda n=n: self.c.online(n.name), what=f"{n.name} to reconnect")
        else:
            node.start()
            wait_for(lambda: self.c.online(name), what=f"{name} to come back online")

    def bash(self, block, script):
        """Run a script on the block's node from the checkout; stdout+stderr together."""
        node = self.node(block.node)
        self.executed.append(script)
        return subprocess.run(["bash", "-c", script], cwd=ROOT, env=self.env(node),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60)

    def run(self, block):
        """Run one sh block (or the migration table): every command must succeed."""
        ctx = self.ctx(self.node(block.node))
        body = "\n".join(doc.substitute(line, ctx) for line in block.lines)
        if block.kind == "table":  # one command per cell, with the contrib helpers the table names
            body = ". contrib/zpeer.sh\n" + body
        # LINENO of the first body line is 3 (table: 4): report failures by FILE:LINE and command.
        where = (f"{block.path} table" if block.kind == "table"
                 else f"{block.path}:$(({block.line} + LINENO - 3))")
        trap = f"trap 'rc=$?; echo \"{where}: exit status $rc: $BASH_COMMAND\" >&2' ERR\n"
        out = self.bash(block, "set -e -o pipefail\n" + trap + body + "\n")
        assert out.returncode == 0, f"{block.where} ({block.node}) failed:\n{out.stdout.decode()}"

    def console(self, block):
        """Run a transcript in one bash; each command's output must match the lines after it."""
        ctx = self.ctx(self.node(block.node))
        items = doc.transcript(block)
        # Print a mark before each command, keeping $? for `echo $?`.
        script = "".join(f"rc=$?; printf '\\n{MARK}\\n'; (exit $rc)\n{doc.substitute(cmd, ctx)}\n"
                         for cmd, _, _ in items) + f"printf '\\n{MARK}\\n'\n"
        out = self.bash(block, script).stdout.decode(errors="replace")
        parts = out.split(f"\n{MARK}\n")
        assert parts[0] == "" and parts[-1] == "" and len(parts) == len(items) + 2, \
            f"{block.where}:\n{out}"
        for (cmd, expected, line), got in zip(items, parts[1:-1]):
            expected = [doc.substitute(e, ctx) for e in expected]
            assert doc.output_matches(expected, got), (
                f"{block.path}:{line} on {block.node}: $ {cmd}\n--- expected\n"
                + "\n".join(expected) + f"\n--- got\n{got}")


@pytest.mark.timeout(120)
def test_docs_commands_run(empty_cluster, tmp_path):
    """The guide builds the fleet itself (vps, desktop, laptop: the `cluster` fixture's layout),
    README first, then each page of the index in order, on one cluster."""
    walk = Walk(empty_cluster, tmp_path)
    ran = set()
    for block in blocks():
        for verb, name in block.steps:
            walk.step(verb, name)
        if block.kind in ("run", "table"):
            walk.run(block)
        elif block.kind == "console":
            walk.console(block)
        else:
            continue
        ran.add(block.path)
    assert doc.FRONT_DOOR in ran, "README.md has no runnable block"


def test_every_block_is_run_or_marked():
    found = blocks()
    unmarked = [f"{b.where}: ```{b.lang} {b.info}" for b in found if b.kind == "unmarked"]
    assert not unmarked, ("shell blocks must say `run=NODE` or `norun:REASON` after the language "
                          "(see tests/doc_walk.py):\n" + "\n".join(unmarked))
    assert {b.node for b in found if b.node} <= set(ADDRESSES)
    tables = [b.where for b in found if b.kind == "table"]
    assert len(tables) == 1, f"the automateLinux -> zpeer table must be in the guide once: {tables}"
    for b in found:
        if b.kind == "console":
            assert doc.transcript(b), f"{b.where}: console block without `$ ` commands"
        assert all(verb in ("stop", "start") for verb, _ in b.steps), b.where


def test_every_page_is_in_the_index():
    """A page the index does not list would never be walked (its blocks would never run)."""
    walked = pages()
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
    assert on_disk <= set(walked), f"not in {doc.INDEX}: {sorted(on_disk - set(walked))}"
    missing = [p for p in walked if not (REPO / p).is_file()]
    assert not missing, f"{doc.INDEX} lists pages that do not exist: {missing}"
    assert len(walked) == len(set(walked))


def install_lines():
    """The two command lines README.md starts with."""
    first = doc.parse(text(doc.FRONT_DOOR))[0]
    assert text(doc.FRONT_DOOR).startswith(doc.INSTALL_PREFIX) and first.kind == "install", \
        "README.md must start with `# zpeer` and the two-line install block"
    return first.lines


def test_install_lines_run_by_ci():
    """CI runs the second line exactly as shown (so the README's promise is what CI checks)."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install_lines()[1].split(" #")[0].strip() in ci


def test_install_line_demo_runs(tmp_path):
    """The first line ends with `d demo` (what comes before it, venv and pip install, CI did)."""
    demo = install_lines()[0].split(" #")[0].split("&&")[-1].split()
    assert demo == ["d", "demo"]
    out = subprocess.run(d_command() + demo[1:], capture_output=True, timeout=60,
                         stdin=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert out.returncode == 0, out.stderr.decode()
    assert b"demo done" in out.stdout


def test_install_block_is_only_in_the_readme():
    """Only README.md's first block is the install block; the pages' blocks are marked as usual."""
    assert [b.where for b in blocks() if b.kind == "install"] == ["README.md:3"]


def test_commands_named_exist_and_every_command_is_shown():
    cli = cli_commands()
    named, planned = set(), set()
    for page in pages():
        body = text(page)
        named |= {c for s in doc.prose_code_spans(body, doc.NOT_BUILT) for c in doc.subcommands(s)}
        planned |= {c for s in doc.prose_code_spans(doc.section(body, doc.NOT_BUILT))
                    for c in doc.subcommands(s)}
    assert named <= cli, f"the guide names commands d does not have: {sorted(named - cli)}"
    assert not planned & cli, (f"'{doc.NOT_BUILT}' lists commands that d has now: "
                               f"{sorted(planned & cli)}; describe them where they belong")
    in_blocks = set().union(*(doc.subcommands("\n".join(b.lines)) for b in blocks()
                              if b.kind != "sample"))
    assert in_blocks <= cli, f"the guide runs commands d does not have: {sorted(in_blocks - cli)}"
    assert cli <= in_blocks, f"commands no block of the guide shows: {sorted(cli - in_blocks)}"


def test_troubleshooting_covers_every_error_phrase():
    page = text(TROUBLESHOOTING)
    headings = re.findall(r"^### `([^`]+)`", page, re.M)
    for phrase in ("Peer not found: ID", "Failed to connect", "Not connected to leader",
                   "Peer offline: ID (last seen …)", "Leader key mismatch",
                   "Directory not found on ID: PATH"):
        assert phrase in headings, f"{TROUBLESHOOTING} has no heading ### `{phrase}`"
    # the code moves into subpackages: read every module under zpeer/
    sources = "".join(p.read_text() for p in sorted((REPO / "zpeer").glob("**/*.py")))
    for phrase in headings:  # the code still says it (up to the first placeholder)
        fixed = re.split(r"\b(?:ID|PATH|HOME|N|USER|DIR)\b|…", phrase)[0]
        assert fixed and fixed in sources, \
            f"{TROUBLESHOOTING} troubleshoots {phrase!r} but zpeer never says {fixed!r}"


@pytest.mark.parametrize("expected, actual, ok", [
    (["a  b", "c"], "a b\nc\n", True),
    (["x ... y"], "x 1 2 y\n", True),
    (["...", "end"], "1\n2\nend\n", True),
    (["...", "end"], "end\n", True),
    (["a"], "a\nb\n", False),
    ([], "", True),
    (["a..."], "b\n", False),
])
def test_output_matching(expected, actual, ok):
    assert doc.output_matches(expected, actual) is ok


def test_placeholders_are_loopback_only():
    ctx = {"loopback": "127.0.0.1", "port": ":4000", "home": "/h", "srv": "/t/srv",
           "token": lambda: "T", "key": "K", "nas_key": "N8", "group": "g"}
    line = ("d setPeerConfig --bind 0.0.0.0:3520 --leader 10.0.0.1:3520 --leader-key 'KEY' "
            "--group zpeer --token TOKEN --directory /srv/app /var/lib/zpeer/d.sock ~/srv/x "
            "--key 'NAS_KEY'")
    assert doc.substitute(line, dict(ctx)) == (
        "d setPeerConfig --bind 127.0.0.1:4000 --leader 127.0.0.1:4000 --leader-key 'K' "
        "--group g --token T --directory /t/srv/app /h/d.sock ~/srv/x --key 'N8'")
    executed = "\n".join(doc.substitute("\n".join(b.lines), dict(ctx)) for b in blocks()
                         if b.kind in ("run", "console", "table"))
    addresses = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", executed))
    assert all(a.startswith("127.") for a in addresses), addresses


@pytest.mark.parametrize("heading, anchor", [
    ("### `Peer offline: ID (last seen …)`", "peer-offline-id-last-seen-"),
    ("## Let non-root users run d (--group)", "let-non-root-users-run-d---group"),
    ("### 2. Install zpeer on every machine", "2-install-zpeer-on-every-machine"),
])
def test_anchor_slugs(heading, anchor):
    assert anchor in doc.anchors(heading)


def test_links_stay_in_the_repository():
    """Every relative link of the guide (and of SECURITY.md, bench/README.md) reaches a file or
    heading of this repository; no page names a document that is not in it."""
    problems = []
    for page in dict.fromkeys(pages() + LINKED):
        body, folder = text(page), (REPO / page).parent
        if re.search(r"\bSPEC\.md\b|shared/SPEC", body):
            problems.append(f"{page}: names SPEC.md, which is not in the repository "
                            "(docs/contract.md is the contract)")
        for number, target in doc.links(body):
            if re.match(r"^[a-z][\w+.-]*:", target):  # https:, mailto: ... are not files
                continue
            path, _, anchor = target.partition("#")
            resolved = (folder / path).resolve() if path else (REPO / page).resolve()
            if path.startswith("/") or REPO.resolve() not in (resolved, *resolved.parents):
                problems.append(f"{page}:{number}: {target} points outside the repository")
            elif not resolved.exists():
                problems.append(f"{page}:{number}: {target}: no such file")
            elif (anchor and resolved.suffix == ".md"
                  and anchor not in doc.anchors(resolved.read_text())):
                problems.append(f"{page}:{number}: {target}: no heading with that anchor")
        for span in doc.prose_code_spans(body):
            if REPO_PATH.match(span) and not (REPO / span).exists():
                problems.append(f"{page}: `{span}` is not a path of the repository")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":  # list what the guide runs, for its editors
    for b in blocks():
        print(f"{b.where:28} {b.kind:9} {b.node or b.reason}")
    sys.exit(0)
