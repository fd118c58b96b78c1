"""Tab completion for `d` in the real bash, zsh and fish, driven as a user's shell would run it."""
import contextlib
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers.nodes import d_command

from zpeer.cli import completion as comp
from zpeer.cli.app import cli as real_cli
from zpeer.cli.completion_install import install_completion

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS = ROOT / "completions"
PEERS = ["alpha", "beta", "gamma"]


def spec_cli():
    """A small click group with the cases the generator handles (short options, paths, varargs)."""
    @click.group()
    @click.version_option("0.0")
    def cli():
        """zpeer."""

    def add(name, *decorators, hidden=False):
        def body(**kwargs):
            pass
        body.__doc__ = f"Do {name}."
        for deco in reversed(decorators):
            body = deco(body)
        cli.add_command(click.command(name, hidden=hidden)(body))

    opt = click.option
    peer = opt("--peer", "-p", multiple=True, help="Peer id, comma list, or all.")
    add("setPeerConfig", opt("--role", type=click.Choice(["leader", "worker"])), opt("--id"),
        opt("--leader"), opt("--repo", help="Checkout [dir] of 'recipes'."))
    add("acceptPeer", click.argument("id"))
    add("execOnPeer", peer, opt("--directory"), opt("--shellCmd"), opt("--timeout", type=float),
        opt("--json", is_flag=True))
    add("copy", opt("--key-file", type=click.Path(dir_okay=False)),
        click.argument("paths", nargs=-1,
                                                                                  type=click.Path()))
    add("secretThing", hidden=True)
    cli.add_command(comp.completion)
    cli.add_command(install_completion)
    return cli


def expected_tree(group):
    """{command: [every option spelling]} for the visible commands of a click group."""
    top, cmds = comp.model(group)
    return {c.name: [n for p in c.opts for n in p.names] for c in cmds}


@pytest.fixture
def home(tmp_path):
    """A ZPEER_HOME with a peers.cache, a working directory with entries to complete, and a PATH
    whose `d` and `python` record that they ran: TAB must start neither."""
    zhome = tmp_path / "zhome"
    zhome.mkdir()
    (zhome / "peers.cache").write_text("".join(p + "\n" for p in PEERS))
    work = tmp_path / "work"
    (work / "dir one").mkdir(parents=True)
    (work / "dtwo").mkdir()
    (work / "file.txt").write_text("")
    (tmp_path / "trap").mkdir()
    for name in ("d", "python", "python3"):
        (tmp_path / "trap" / name).write_text(f"#!/bin/sh\ntouch {tmp_path}/trap/ran-{name}\n")
        (tmp_path / "trap" / name).chmod(0o755)
    yield zhome, work
    assert not list((tmp_path / "trap").glob("ran-*")), "a completion started a program"


def shell_env(zhome, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZPEER_", "XDG_", "BASH_"))}
    env.update(ZPEER_HOME=str(zhome), TERM="dumb", LC_ALL="C.UTF-8", **extra)
    env["PATH"] = f"{zhome.parent / 'trap'}:{env['PATH']}"
    return env


def need(shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (.ci/run installs it with apt-get)")


def complete(shell, steps, env, cwd, script=None):
    """What `shell` offers for each command line in `steps` (cursor at the end); a step that starts
    with `!` is a command run in the same shell session between two TABs."""
    script = script or COMPLETIONS / comp.FILES[shell]
    return {"bash": bash_complete, "zsh": zsh_complete,
            "fish": fish_complete}[shell](script, steps, env, cwd)


def bash_complete(script, steps, env, cwd):
    """bash: the function `complete -p d` names, called with COMP_WORDS as readline sets them."""
    prog = [f"source {shlex.quote(str(script))}",
            "fn=$(complete -p d | sed -E 's/.*-F ([^ ]+) .*/\\1/')"]
    for step in steps:
        if step.startswith("!"):
            prog.append(step[1:])
            continue
        words, pre = step.split(" "), ""
        # COMP_WORDBREAKS splits `--opt=value`; readline keeps `--opt=` on the line
        if "=" in words[-1]:
            pre, _, last = words[-1].partition("=")
            words[-1:], pre = [pre, "=", last], pre + "="
        prog.append(f"COMP_WORDS=({' '.join(map(shlex.quote, words))}); "
                    f"COMP_CWORD={len(words) - 1}; "
                    'COMPREPLY=(); "$fn" d "${COMP_WORDS[COMP_CWORD]}" '
                    '"${COMP_WORDS[COMP_CWORD-1]}"; '
                    f"((${{#COMPREPLY[@]}})) && printf -- {shlex.quote(pre)}'%s\\n' "
                    f"\"${{COMPREPLY[@]}}\"; echo __END__")
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(prog)], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [sorted(filter(None, chunk.split("\n"))) for chunk in out.stdout.split("__END__\n")[:-1]]


DIRS = {"bash": ["dir one", "dtwo"], "zsh": ["dir\\ one", "dtwo"], "fish": ["dir one/", "dtwo/"]}
CASES = [
    ("d execOn", ["execOnPeer"]),
    ("d execOnPeer --pe", ["--peer"]),
    ("d execOnPeer --peer ", ["all"] + PEERS),
    ("d execOnPeer --peer a,b", ["a,beta"]),
    # listed ids are not offered again
    ("d execOnPeer --peer alpha,", ["alpha,beta", "alpha,gamma"]),
    ("d execOnPeer --peer=alpha,b", ["--peer=alpha,beta"]),
    ("d execOnPeer --peer x --directory ", DIRS),
    ("d execOnPeer --shellCmd ", []),  # a free-form value: no guesses
    ("d setPeerConfig --role ", ["leader", "worker"]),
    ("d acceptPeer ", PEERS),  # one id: no `all`, no list
    ("d history --peer ", PEERS),
    ("d completion ", ["bash", "fish", "zsh"]),
]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_in_each_shell(shell, home, tmp_path):
    need(shell)
    zhome, work = home
    update = f"!printf 'alpha\\ndelta\\n' > {shlex.quote(str(zhome / 'peers.cache'))}"
    steps = [line for line, _ in CASES] + [update, "d execOnPeer --peer "]
    got = complete(shell, steps, shell_env(zhome), work)
    want = [DIRS[shell] if w is DIRS else w for _, w in CASES] + [["all", "alpha", "delta"]]
    for (line, _), g, w in zip(CASES + [("after a cache update: d execOnPeer --peer ", 0)], got,
                               want):
        assert g == w, f"{shell}: {line!r}"


def test_bash_default_cache_path_follows_xdg_and_root(tmp_path):
    state = tmp_path / "state"
    (state / "zpeer").mkdir(parents=True)
    (state / "zpeer" / "peers.cache").write_text("fromxdg\n")
    env = shell_env(tmp_path, XDG_STATE_HOME=str(state))
    del env["ZPEER_HOME"]
    got = complete("bash", ["d execOnPeer --peer f"], env, tmp_path)
    want = [] if os.geteuid() == 0 else ["fromxdg"]  # root reads /var/lib/zpeer instead
    assert got == [want]


def test_bash_is_fast_with_builtins_only(home, tmp_path):
    zhome, work = home
    (zhome / "peers.cache").write_text("".join(f"peer{i:03d}\n" for i in range(300)))
    # PATH holds only the trap programs: a TAB that ran any external command would fail or be seen.
    prog = (f"source {shlex.quote(str(COMPLETIONS / 'd.bash'))}\n"
            f"PATH={shlex.quote(str(tmp_path / 'trap'))}\n"
            "start=$EPOCHREALTIME\nfor i in {1..50}; do\n"
            "  COMP_WORDS=(d execOnPeer --peer peer1); COMP_CWORD=3; _d\n"
            "  COMP_WORDS=(d exec); COMP_CWORD=1; _d\ndone\n"
            "echo $(( (${EPOCHREALTIME/./} - ${start/./}) / 100 ))\n")
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], env=shell_env(zhome),
                         cwd=work, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 10_000, f"one TAB took {out.stdout.strip()} us"


class Pty:
    """An interactive shell on a pseudo-terminal, read with deadlines (no fixed sleeps)."""

    def __init__(self, argv, env, cwd):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: become the shell
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.buf = b""

    def expect(self, pattern, timeout=15):
        """Read until `pattern` (bytes regex) shows; return the match and drop what preceded it."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"timed out waiting for {pattern!r}; got {self.buf[-500:]!r}")
            try:
                self.buf += os.read(self.fd, 65536)
            except OSError:
                raise AssertionError(f"shell exited; got {self.buf[-500:]!r}") from None

    def send(self, text):
        os.write(self.fd, text.encode())

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def interactive_bash(home):
    zhome, work = home
    sh = Pty(["bash", "--norc", "--noprofile", "-i"], shell_env(zhome), work)
    # `d` is a function that shows the words TAB put on the line, so a test reads them exactly.
    sh.send("bind 'set enable-bracketed-paste off'; PS1='R''DY> '; "
            f"source {shlex.quote(str(COMPLETIONS / 'd.bash'))}; d() "
            f"{{ printf 'ARGS[%s]\\n' \"$@\"; echo END; }}\n")
    sh.expect(rb"RDY> ")
    yield sh, zhome
    sh.close()


def typed(sh, keys):
    """Type `keys` (with TABs) and Enter; return the arguments `d` received."""
    sh.send(keys + "\n")
    m = sh.expect(rb"((?:ARGS\[[^\]]*\]\r?\n)*)END\r?\n")
    sh.expect(rb"RDY> ")
    return re.findall(r"ARGS\[([^\]]*)\]", m.group(1).decode())


def test_bash_interactive_tab_and_cache_update(interactive_bash):
    sh, zhome = interactive_bash
    assert typed(sh, "d execOnP\t") == ["execOnPeer"]
    assert typed(sh, "d execOnPeer --pe\t") == ["execOnPeer", "--peer"]
    assert typed(sh, "d execOnPeer --peer alp\t") == ["execOnPeer", "--peer", "alpha"]
    assert typed(sh, "d execOnPeer --peer=alpha,b\t") == ["execOnPeer", "--peer=alpha,beta"]
    assert typed(sh, "d execOnPeer --directory di\t") == ["execOnPeer", "--directory", "dir one/"]
    assert typed(sh, "d setPeerConfig --role w\t") == ["setPeerConfig", "--role", "worker"]
    # The cache is read on every TAB: an update shows at once.
    assert typed(sh, "d execOnPeer --peer del\t") == ["execOnPeer", "--peer", "del"]
    (zhome / "peers.cache").write_text("alpha\ndelta\n")
    assert typed(sh, "d execOnPeer --peer del\t") == ["execOnPeer", "--peer", "delta"]


ZSH_SETUP = r"""
fpath=($ZC_FPATH $fpath)
autoload -Uz compinit && compinit -u -D
LISTMAX=100000
# Record the matches instead of only showing them (the idea of zsh-capture-completion).
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
    local -a __hits
    builtin compadd -A __hits "$@"
    (( $#__hits )) && print -rl -- $IPREFIX${^__hits} >> $ZC_OUT
    builtin compadd "$@"
}
PS1='R''DY> '
"""


def zsh_complete(script, steps, env, cwd):
    """zsh: an interactive zsh (compinit from $fpath) whose compadd also records the matches."""
    with tempfile.TemporaryDirectory() as tmp:
        out, setup = Path(tmp) / "matches", Path(tmp) / "setup.zsh"
        out.write_text("")
        setup.write_text(ZSH_SETUP)
        sh = Pty(["zsh", "-f", "-i"], dict(env, ZC_FPATH=str(script.parent), ZC_OUT=str(out)), cwd)
        try:
            # Wait for each prompt before typing: zsh drops typeahead when a new prompt starts.
            sh.send(f"source {shlex.quote(str(setup))}\n")
            sh.expect(rb"RDY> ")
            for n, step in enumerate(steps):
                # A prompt redrawn after a listing is no sign the line ran: wait for the line's
                # output.
                keys = step[1:] if step.startswith("!") else step + ("\t\x15print -r -- __SEP__ "
                                                                     ">>$ZC_OUT")
                sh.send(f"{keys}; print STEP-$(( {n} + 1000 ))\n")
                sh.expect(f"STEP-{n + 1000}\r?\n".encode())
                sh.expect(rb"RDY> ")
        finally:
            sh.close()
        chunks = out.read_text().split("__SEP__\n")[:-1]
    return [sorted(set(filter(None, c.split("\n")))) for c in chunks]


def fish_complete(script, steps, env, cwd):
    """fish: `complete -C LINE`, fish's own completion engine."""
    prog = [f"source {shlex.quote(str(script))}"] + [
        step[1:] if step.startswith("!")
                                                     else f"complete -C {shlex.quote(step)}; echo "
                                                          "__END__" for step in steps]
    out = subprocess.run(["fish", "--no-config", "-c", "\n".join(prog)], env=env, cwd=cwd,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [sorted(x.split("\t")[0] for x in chunk.split("\n") if x)
            for chunk in out.stdout.split("__END__\n")[:-1]]


# ---- the committed scripts cover the whole CLI, in every shell


def test_committed_files_match_the_cli():
    cli = real_cli
    for shell, name in comp.FILES.items():
        assert (COMPLETIONS / name).read_text() == comp.render(shell, cli), \
            f"completions/{name} is stale: run `python -m zpeer.cli.completion --write`"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_command_and_flag_completes(shell, home):
    """Meta-test: ask each real shell for the commands and for every command's flags."""
    need(shell)
    zhome, work = home
    tree = expected_tree(real_cli)
    got = complete(shell, ["d "] + [f"d {name} -" for name in tree], shell_env(zhome), work)
    assert got[0] == sorted(tree)
    for (name, flags), offered in zip(tree.items(), got[1:]):
        missing = sorted(set(flags) - set(offered))
        assert not missing, f"{shell}: `d {name} -<TAB>` does not offer {missing}"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_generator_syntax_and_hidden_commands(shell, tmp_path):
    need(shell)
    text = comp.render(shell, spec_cli())
    assert "secretThing" not in text
    assert "key-file" in text and "execOnPeer" in text
    path = tmp_path / "script"
    path.write_text(text)
    check = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}[shell]
    out = subprocess.run(check + [str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_generator_short_options_paths_and_varargs(home, tmp_path):
    zhome, work = home
    script = tmp_path / "d.bash"
    script.write_text(comp.render("bash", spec_cli()))
    got = complete("bash",
                   ["d execOnPeer -p b", "d copy --key-file fi", "d copy a b d", "d ",
                    "d execOnPeer -"], shell_env(zhome), work, script)
    assert got[0] == ["beta"]
    assert got[1] == ["file.txt"]
    assert got[2] == ["dir one", "dtwo"]  # nargs=-1 paths: every position completes
    assert "secretThing" not in got[3] and "copy" in got[3]
    assert "-p" in got[4] and "--peer" in got[4]


def test_completion_command_prints_the_script():
    cli = spec_cli()
    for shell in comp.SHELLS:
        out = CliRunner().invoke(cli, ["completion", shell])
        assert out.exit_code == 0, out.output
        assert out.output == comp.render(shell, cli)
    assert CliRunner().invoke(cli, ["completion", "tcsh"]).exit_code == 2


@pytest.mark.parametrize("shell,where", [
    ("bash", "data/bash-completion/completions/d"), ("zsh", "home/.zfunc/_d"),
    ("fish", "config/fish/completions/d.fish")])
def test_install_completion(shell, where, tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "SHELL": f"/usr/bin/{shell}"}
    cli = spec_cli()
    out = CliRunner(env=env).invoke(cli, ["install-completion"])
    assert out.exit_code == 0, out.output
    path = tmp_path / where
    assert path.read_text() == comp.render(shell, cli)
    assert str(path) in out.output
    if shell == "zsh":
        assert f"fpath=({path.parent} $fpath)" in out.output
    other = "fish" if shell != "fish" else "bash"
    out = CliRunner(env=dict(env, SHELL="/bin/sh")).invoke(cli,
                                                           ["install-completion", "--shell", other])
    assert out.exit_code == 0 and "Installed " + other in out.output


def test_install_completion_where_the_home_cannot_hold_it_says_so(tmp_path):
    """nobody's HOME is /nonexistent; here HOME is a file: the real `d`, exit 255, no traceback."""
    home = tmp_path / "afile"
    home.write_text("")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SHELL": "/bin/bash"}
    out = subprocess.run(d_command() + ["install-completion"], env=env, capture_output=True,
                         text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert (out.returncode, out.stdout, out.stderr) == (255, "", (
        f"Cannot install the completion in {home}/.local/share/bash-completion/completions/d: Not "
        "a directory\n"
        "  hint: `d completion bash` prints it: save it where your shell reads it\n"))


def test_install_completion_unknown_shell(tmp_path):
    out = CliRunner(env={"HOME": str(tmp_path),
                         "SHELL": "/bin/tcsh"}).invoke(spec_cli(), ["install-completion"])
    assert out.exit_code == 2
    assert "--shell" in out.output


def test_write_regenerates_the_files(tmp_path):
    shutil.copytree(ROOT / "zpeer", tmp_path / "zpeer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "completions").mkdir()
    out = subprocess.run([sys.executable, "-m", "zpeer.cli.completion", "--write"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in comp.FILES.values():
        assert (tmp_path / "completions" / name).read_text() == (COMPLETIONS / name).read_text()


def test_import_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import sys, zpeer.cli.completion; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', "
                          "'peewee', 'msgpack')))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
