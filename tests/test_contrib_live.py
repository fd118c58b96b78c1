"""contrib/zpeer.sh against a live 3-node loopback cluster, sourced in bash, zsh and sh.

tests/test_contrib.py checks the exact argv the helpers give `d` (with a fake `d`); here the real
`d` talks to real daemons: vps 127.0.0.1 (leader), desktop 127.0.0.2, laptop 127.0.0.4.
"""
import os
import shlex
import subprocess
import sys

import pytest
from helpers.nodes import ROOT, d_command, wait_for
from helpers.tools import shells

HELPERS = os.path.join(ROOT, "contrib", "zpeer.sh")
# Each remote command tells which daemon ran it: children inherit the daemon's ZPEER_HOME.
WHO = 'basename "$ZPEER_HOME"'



def run(shell, node_env, script, input=None):
    """Source the helpers in `shell` with a node's environment (`d` on PATH) and run script."""
    bindir = os.path.dirname(d_command()[0]) if len(d_command()) == 1 else os.path.join(ROOT, "bin")
    env = dict(node_env, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    prog = f". {shlex.quote(HELPERS)}\n{script}"
    argv = [shell, "-f", "-c", prog] if shell == "zsh" else [shell, "-c", prog]
    return subprocess.run(argv, env=env, input=input, capture_output=True, timeout=30,
                          stdin=None if input is not None else subprocess.DEVNULL)


@pytest.mark.parametrize("shell", shells())
def test_get_peer_id_by_ip(shell, shared_cluster):
    for origin in ("desktop", "vps"):
        env = shared_cluster.nodes[origin].env
        for ip, peer in (("127.0.0.1", "vps"), ("127.0.0.2", "desktop"), ("127.0.0.4", "laptop")):
            out = run(shell, env, f"getPeerIdByIp {ip}")
            assert (out.returncode, out.stdout, out.stderr) == (0, f"{peer}\n".encode(), b""), \
                (origin, ip)
        out = run(shell, env, "getPeerIdByIp 127.0.0.9")
        assert (out.returncode, out.stdout, out.stderr) == (1, b"",
                                                            b"No peer found with IP: 127.0.0.9\n")


@pytest.mark.parametrize("shell", shells())
def test_exec_on_peer_by_ip(shell, shared_cluster, tmp_path):
    env = shared_cluster.desktop.env
    odd = tmp_path / """it's a "dir" $HOME `x` ;"""
    odd.mkdir()
    cmd = f'printf "%s|%s\\n" "$PWD" "$({WHO})"; echo "to stderr" >&2; exit 7'
    out = run(shell, env, f"execOnPeerByIp 127.0.0.4 {shlex.quote(str(odd))} {shlex.quote(cmd)}")
    assert (out.returncode, out.stdout, out.stderr) == (7, f"{odd}|laptop\n".encode(),
                                                        b"to stderr\n")

    out = run(shell, env, f"execOnPeerByIp 127.0.0.1 '' {shlex.quote(cmd)}")  # "" = the remote home
    assert (out.returncode, out.stdout) == (7, f"{os.path.expanduser('~')}|vps\n".encode())

    # stdin is forwarded
    out = run(shell, env, "execOnPeerByIp 127.0.0.2 /tmp 'wc -c'", input=b"12345")
    assert (out.returncode, out.stdout) == (0, b"5\n")

    marker = tmp_path / "ran"
    out = run(shell, env, f"execOnPeerByIp 127.0.0.9 /tmp 'touch {marker}'")
    assert (out.returncode, out.stdout, out.stderr) == (1, b"",
                                                        b"No peer found with IP: 127.0.0.9\n")
    assert not marker.exists()

    out = run(shell, env, "execOnPeerByIp 127.0.0.4 /no/such/dir true")
    assert (out.returncode, out.stderr) == (255, b"Directory not found on laptop: /no/such/dir\n")


@pytest.mark.parametrize("shell", shells())
def test_for_each_peer(shell, shared_cluster):
    out = run(shell, shared_cluster.laptop.env,
              f'forEachPeer \'echo "$({WHO})"; [ "$({WHO})" != desktop ] || exit 4\'')
    assert out.returncode == 4  # the largest remote status
    assert sorted(out.stdout.decode().splitlines()) == ["desktop: desktop", "laptop: laptop",
                                                        "vps: vps"]
    assert out.stderr.decode().startswith("--\n")
    assert sorted(out.stderr.decode().splitlines()[1:]) == ["desktop: rc 4", "laptop: ok",
                                                            "vps: ok"]


@pytest.mark.parametrize("shell", shells())
def test_helpers_without_a_daemon(shell, tmp_path):
    """The local daemon is down: zpeer's own failure (255, `Failed to connect`), not `No peer
    found`."""
    env = dict(os.environ, ZPEER_HOME=str(tmp_path / "nodaemon"))
    for script in ("getPeerIdByIp 127.0.0.2", "execOnPeerByIp 127.0.0.2 /tmp true",
                   "forEachPeer true"):
        out = run(shell, env, script)
        assert out.returncode == 255, (script, out.stderr)
        assert out.stderr.startswith(b"Failed to connect\n"), script
        assert b"No peer found" not in out.stderr, script


def test_for_each_peer_skips_offline_peers(shared_cluster):
    """`forEachPeer` is for every *online* peer: a laptop that is switched off is not a failure."""
    laptop = shared_cluster.laptop
    laptop.stop()
    try:
        wait_for(lambda: not shared_cluster.online("laptop"), what="laptop offline")
        out = run("bash", shared_cluster.desktop.env, f"forEachPeer '{WHO}'")
        assert (out.returncode,
                sorted(out.stdout.decode().splitlines())) == (0, ["desktop: desktop", "vps: vps"])
        assert sorted(out.stderr.decode().splitlines()) == ["--", "desktop: ok", "vps: ok"]
    finally:  # give the module's shared cluster back whole
        laptop.start()
        wait_for(lambda: shared_cluster.online("laptop"), what="laptop back online")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
