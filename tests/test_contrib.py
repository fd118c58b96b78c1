"""contrib/: the shell helpers (against fake `d` and `ssh` on PATH) and the systemd unit."""
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.tools import shells
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
END = "--END-OF-CALL--"

# A stand-in for `d`: records its argv (NUL-separated, binary safe) and answers like the real one.
FAKE_D = r"""#!/bin/bash
printf '%s\0' "$@" "$END_MARK" >> "$FAKE_LOG"
case $1 in
getPeerIdByIp)
    [[ -n ${FAKE_D_FAIL:-} ]] && { echo "Failed to connect (is \`d daemon\` running?)" >&2
                                   exit 255; }
    [[ $2 == 127.0.0.2 ]] && { echo alpha; exit 0; }
    echo "Error: no peer has IP $2" >&2; exit 1 ;;
execOnPeer)
    echo "ran on peer"; echo "remote err" >&2; exit "${FAKE_EXIT:-0}" ;;
listPeers)
    [[ -n ${FAKE_D_FAIL:-} ]] && { echo "Failed to connect" >&2; exit 255; }
    [[ "$2 $3" == "--ids --online" ]] && { printf '%s\n' alpha beta; exit 0; } ;;
esac
exit 64
"""

# A stand-in for `ssh`: records its argv, then does what sshd does with the command words: joins
# them with spaces and runs the result with the account's login shell, from its home directory.
FAKE_SSH = r"""#!/bin/bash
printf '%s\0' "$@" "$END_MARK" >> "$FAKE_LOG"
[[ $1 == -- ]] || { echo "fake ssh: expected -- first" >&2; exit 255; }
[[ -n ${FAKE_SSH_DOWN:-} ]] && { echo "ssh: connect to host: Connection refused" >&2; exit 255; }
shift 2
cd "$HOME" && exec "${REMOTE_SHELL:-bash}" -c "$*"
"""


@pytest.fixture
def fakes(tmp_path):
    """PATH with the fake `d` and `ssh` first; (env, a function that reads the recorded calls)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("d", FAKE_D), ("ssh", FAKE_SSH)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    log = tmp_path / "calls"
    log.write_bytes(b"")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FAKE_LOG=str(log), END_MARK=END,
               HOME=str(home), LC_ALL="C.UTF-8")

    def calls():
        words = log.read_bytes().decode().split("\0")[:-1]
        out, cur = [], []
        for w in words:
            if w == END:
                out.append(cur)
                cur = []
            else:
                cur.append(w)
        return out
    return env, calls



def run(shell, file, script, env, **kw):
    prog = f". {shlex.quote(str(CONTRIB / file))}\n{script}"
    argv = [shell, "-f", "-c", prog] if shell == "zsh" else [shell, "-c", prog]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, **kw)


# ---- contrib/zpeer.sh


@pytest.mark.parametrize("shell", shells())
def test_get_peer_id_by_ip(shell, fakes):
    env, calls = fakes
    out = run(shell, "zpeer.sh", "getPeerIdByIp 127.0.0.2", env)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"alpha\n", b"")
    assert calls() == [["getPeerIdByIp", "127.0.0.2"]]

    out = run(shell, "zpeer.sh", "getPeerIdByIp 127.0.0.9", env)
    assert (out.returncode, out.stdout, out.stderr) == (1, b"",
                                                        b"No peer found with IP: 127.0.0.9\n")

    out = run(shell, "zpeer.sh", "getPeerIdByIp 127.0.0.2", dict(env, FAKE_D_FAIL="1"))
    assert out.returncode == 255
    assert out.stderr.startswith(b"Failed to connect") and b"No peer found" not in out.stderr

    assert run(shell, "zpeer.sh", "getPeerIdByIp", env).returncode == 2


@pytest.mark.parametrize("shell", shells())
def test_exec_on_peer_by_ip(shell, fakes):
    env, calls = fakes
    cmd = """echo "it's $HOME" `id -u` 'a  b' \\ \n"""
    out = run(shell, "zpeer.sh", f"execOnPeerByIp 127.0.0.2 '/srv/my dir' {shlex.quote(cmd)}",
              dict(env, FAKE_EXIT="7"))
    assert (out.returncode, out.stdout, out.stderr) == (7, b"ran on peer\n", b"remote err\n")
    assert calls() == [["getPeerIdByIp", "127.0.0.2"],
                       ["execOnPeer", "--peer", "alpha", "--directory", "/srv/my dir", "--shellCmd",
                        cmd]]

    out = run(shell, "zpeer.sh", "execOnPeerByIp 127.0.0.2 '' uptime", env)
    assert out.returncode == 0
    # "" = remote home
    assert calls()[-1] == ["execOnPeer", "--peer", "alpha", "--shellCmd", "uptime"]

    before = len(calls())
    out = run(shell, "zpeer.sh", "execOnPeerByIp 127.0.0.9 /tmp uptime", env)
    assert (out.returncode, out.stderr) == (1, b"No peer found with IP: 127.0.0.9\n")
    assert [c[0] for c in calls()[before:]] == ["getPeerIdByIp"]  # nothing ran

    out = run(shell, "zpeer.sh", "execOnPeerByIp 127.0.0.2 /tmp uptime", dict(env, FAKE_D_FAIL="1"))
    assert out.returncode == 255
    assert run(shell, "zpeer.sh", "execOnPeerByIp 127.0.0.2 /tmp", env).returncode == 2


@pytest.mark.parametrize("shell", shells())
def test_for_each_peer(shell, fakes):
    env, calls = fakes
    out = run(shell, "zpeer.sh", "forEachPeer 'uname -a; echo \"$HOSTNAME\"'",
              dict(env, FAKE_EXIT="3"))
    assert (out.returncode, out.stdout) == (3, b"ran on peer\n")
    assert calls() == [["listPeers", "--ids", "--online"],
                       ["execOnPeer", "--peer", "alpha,beta", "--shellCmd",
                        'uname -a; echo "$HOSTNAME"']]
    assert run(shell, "zpeer.sh", "forEachPeer", env).returncode == 2
    before = len(calls())
    out = run(shell, "zpeer.sh", "forEachPeer uptime", dict(env, FAKE_D_FAIL="1"))
    assert (out.returncode, out.stderr) == (255, b"Failed to connect\n")
    assert [c[0] for c in calls()[before:]] == ["listPeers"]  # nothing ran


def test_helpers_survive_set_e(fakes):
    """Scripts often run under `set -eu`: a miss must still print the message and return 1."""
    env, _ = fakes
    out = run("bash", "zpeer.sh",
              "set -euo pipefail\nif ! id=$(getPeerIdByIp 127.0.0.9); then echo handled; fi\n"
              "getPeerIdByIp 127.0.0.2", env)
    assert (out.returncode, out.stdout) == (0, b"handled\nalpha\n")
    assert out.stderr == b"No peer found with IP: 127.0.0.9\n"


# ---- contrib/sshgit.sh


def ssh_expect(env, directory, cmd):
    """What running CMD in DIR on this machine prints, to compare sshCmd against."""
    return subprocess.run(["/bin/bash", "-c", cmd], cwd=directory, env=env, capture_output=True,
                          timeout=30)


@pytest.mark.parametrize("shell", shells())
@pytest.mark.parametrize("remote", ["bash", "sh", "zsh"])
def test_ssh_cmd_quoting(shell, remote, fakes, tmp_path):
    if shutil.which(remote) is None:
        pytest.skip(f"{remote} not installed")
    env, calls = fakes
    env = dict(env, REMOTE_SHELL=remote)
    odd = tmp_path / """it's a "dir" $HOME `x` * \\ ~"""
    odd.mkdir()
    cmd = ("""printf '[%s]\\n' "$PWD" 'single '"'"' quote' "dollar \\$HOME" '`backticks`' """
           """* 'two\nlines'; exit 5""")
    out = run(shell, "sshgit.sh",
              f"sshCmd root@127.0.0.1 {shlex.quote(str(odd))} {shlex.quote(cmd)}", env)
    want = ssh_expect(env, odd, cmd)
    assert want.returncode == 5 and b"[" + str(odd).encode() + b"]\n" in want.stdout
    assert (out.returncode, out.stdout, out.stderr) == (5, want.stdout, want.stderr)
    (argv,) = calls()
    assert argv[:2] == ["--", "root@127.0.0.1"] and len(argv) == 3  # one remote word


@pytest.mark.parametrize("shell", shells())
def test_ssh_cmd_home_and_errors(shell, fakes):
    env, calls = fakes
    home = Path(env["HOME"])
    (home / "src dir").mkdir()
    out = run(shell, "sshgit.sh", "sshCmd u@127.0.0.1 '~/src dir' pwd", env)
    assert (out.returncode, out.stdout) == (0, str(home / "src dir").encode() + b"\n")
    for d in ("", "~"):
        out = run(shell, "sshgit.sh", f"sshCmd u@127.0.0.1 '{d}' pwd", env)
        assert (out.returncode, out.stdout) == (0, str(home).encode() + b"\n")
    out = run(shell, "sshgit.sh", "sshCmd u@127.0.0.1 /nonexistent 'echo ran'", env)
    assert out.returncode != 0 and b"ran" not in out.stdout  # a failed cd runs nothing
    out = run(shell, "sshgit.sh", "sshCmd u@127.0.0.1 / true", dict(env, FAKE_SSH_DOWN="1"))
    assert out.returncode == 255
    out = run(shell, "sshgit.sh", "sshCmd -oProxyCommand=x / true", env)
    assert calls()[-1][:2] == ["--", "-oProxyCommand=x"]  # a host, never an ssh option
    assert run(shell, "sshgit.sh", "sshCmd u@127.0.0.1 /", env).returncode == 2


names = st.text(st.characters(min_codepoint=1, blacklist_categories=("Cs",),
                              blacklist_characters="/"),
                min_size=1,
                max_size=20).filter(lambda s: s not in (".", "..") and not s.startswith("~")
                                                and len(s.encode()) < 200)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dirname=names,
       payload=st.text(st.characters(min_codepoint=1, blacklist_categories=("Cs",)), max_size=40))
def test_ssh_cmd_is_byte_exact(fakes, tmp_path, dirname, payload):
    """Any directory name and any text reach the remote shell unchanged."""
    env, _ = fakes
    directory = tmp_path / "dirs" / dirname
    directory.mkdir(parents=True, exist_ok=True)
    cmd = f"printf %s {shlex.quote(payload)}; pwd >&2"
    out = run("bash", "sshgit.sh",
              f"sshCmd u@127.0.0.1 {shlex.quote(str(directory))} {shlex.quote(cmd)}", env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == payload
    assert out.stderr.decode() == f"{directory}\n"


# ---- contrib/zpeer.service


def unit_settings():
    """[(section, key, value)] of the unit file, in order."""
    section, found = None, []
    for line in (CONTRIB / "zpeer.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            found.append((section, key, value))
    return found


def test_unit_directives():
    units = unit_settings()
    get = lambda sec, key: [v for s, k, v in units if (s, k) == (sec, key)]  # noqa: E731
    assert get("Service", "ExecStart") == ["/usr/local/bin/d daemon"]
    assert not re.search(r"[|;&<>]|sh -c", get("Service", "ExecStart")[0])  # no shell, no pipes
    assert get("Service", "Type") == ["simple"]
    assert get("Service", "Restart") == ["on-failure"]
    assert get("Service", "StateDirectory") == ["zpeer"]
    assert "ZPEER_HOME=/var/lib/zpeer" in get("Service", "Environment")
    after = " ".join(get("Unit", "After")).split()
    assert "network-online.target" in after and "wg-quick@wg0.service" in after
    assert "network-online.target" in " ".join(get("Unit", "Wants"))
    required = " ".join(get("Unit", "Wants") + get("Unit", "Requires") + get("Unit", "BindsTo"))
    # ordered after the tunnel when it is used, never requiring it
    assert "wg-quick" not in required
    assert get("Install", "WantedBy") == ["multi-user.target"]


def test_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    # verify insists that ExecStart's program exists: point it at a stand-in with the same role.
    fake_d = tmp_path / "d"
    fake_d.write_text("#!/bin/sh\n")
    fake_d.chmod(0o755)
    unit = tmp_path / "zpeer.service"
    text = (CONTRIB / "zpeer.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/d", str(fake_d)))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "zpeer.service" not in out.stderr, out.stderr  # no warning about any line of the unit
