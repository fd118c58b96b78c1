"""contrib/sshgit.sh `sshCmd` against a real sshd on loopback (the bootstrap path)."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from helpers.nodes import ROOT

sys.path.insert(0, ROOT)
from bench.baselines import LocalSsh  # noqa: E402  (the bench's private sshd: own keys and config)

SSHGIT = os.path.join(ROOT, "contrib", "sshgit.sh")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = LocalSsh()
    if not server.start():
        server.close()
        pytest.skip(f"no local sshd: {server.reason}")
    wrapper_dir = tmp_path_factory.mktemp("sshbin")
    wrapper = wrapper_dir / "ssh"
    # real ssh, only pointed at the private sshd (port, key, no host key prompts)
    # the real ssh by path: the wrapper is "ssh" too
    argv = [shutil.which("ssh")] + server.base()[1:]
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')
    wrapper.chmod(0o755)
    yield server, str(wrapper_dir)
    server.close()


def ssh_cmd(sshd, directory, command):
    server, wrapper_dir = sshd
    env = dict(os.environ, PATH=f"{wrapper_dir}:{os.environ['PATH']}")
    script = f'. {shlex.quote(SSHGIT)}; sshCmd "$1" "$2" "$3"'
    return subprocess.run(["bash", "-c", script, "sshCmd", server.target(), directory, command],
                          env=env, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


def test_quoting_of_directory_and_command_over_real_ssh(sshd, tmp_path):
    odd = tmp_path / "dir with 'quotes' \"and\" $vars `ticks`"
    odd.mkdir()
    out = ssh_cmd(sshd, str(odd),
                  """printf '%s|' "$PWD" 'it'"'"'s' "a  b" '$HOME' "\\`x\\`"; exit 7""")
    assert out.returncode == 7, out.stderr
    assert out.stdout.decode() == f"{odd}|it's|a  b|$HOME|`x`|"


def test_status_stdout_stderr_and_missing_directory(sshd, tmp_path):
    out = ssh_cmd(sshd, str(tmp_path), "echo out; echo err >&2; exit 42")
    assert (out.returncode, out.stdout, out.stderr) == (42, b"out\n", b"err\n")
    out = ssh_cmd(sshd, str(tmp_path), "kill -TERM $$")
    assert out.returncode == 255  # OpenSSH reports a remote death by signal as 255 (zpeer: 128+N)
    out = ssh_cmd(sshd, str(tmp_path / "missing"), "echo never")
    assert out.returncode != 0 and out.stdout == b"" and b"missing" in out.stderr
