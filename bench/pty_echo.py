"""pty_echo_ms: keystroke to echo through `d shell` and through `ssh -tt` to a private sshd on
loopback, in the same run.

Each client runs on a pseudo-terminal of ours (its controlling terminal, as in a terminal
emulator) in front of a remote `cat` in canonical mode: a typed byte comes back as the remote
line discipline's echo. The time is from our write of the byte to our read of its echo, and
the two clients are measured in alternating rounds, so that both see the same machine.
"""
import os
import select
import shutil
import subprocess
import time

ECHO_TIMEOUT_S = 5.0
ROUND = 20  # keystrokes per client and round


class Typist:
    """A program on a pseudo-terminal of its own, typed into."""

    def __init__(self, argv, env=None):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([shutil.which("setsid"), "--ctty"] + argv, env=env,
                                     stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = b""

    def wait_for(self, text, timeout_s=20.0):
        """Read until text appeared (RuntimeError after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"no {text!r} from {self.proc.args[2:4]}: {self.seen[-300:]!r}")
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 65536)
        self.seen = self.seen.split(text, 1)[1]

    def cat(self):
        """Start the remote `cat` (from the shell's prompt) and wait until it echoes."""
        os.write(self.master, b"exec cat\r")
        self.wait_for(b"exec cat\r\n")
        self.echo_s()  # the first echo: cat runs

    def echo_s(self):
        """Seconds from typing one byte to its echo."""
        self.seen = b""
        start = time.perf_counter()
        os.write(self.master, b"x")
        deadline = start + ECHO_TIMEOUT_S
        while b"x" not in self.seen:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError("no echo")
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 65536)
        return time.perf_counter() - start

    def close(self):
        """Stop the client by its handle."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        os.close(self.master)


def measure(d_argv, d_env, ssh_argv, keystrokes):
    """{client: [seconds]} for `d shell` (d_argv) and ssh (ssh_argv, or None), alternating."""
    clients = {"d": Typist(d_argv, d_env)}
    if ssh_argv:
        clients["ssh"] = Typist(ssh_argv)
    try:
        for typist in clients.values():
            typist.wait_for(b"# " if os.geteuid() == 0 else b"$ ")
            typist.cat()
        times = {name: [] for name in clients}
        for _ in range(max(1, keystrokes // ROUND)):
            for name, typist in clients.items():
                times[name] += [typist.echo_s() for _ in range(ROUND)]
        return times
    finally:
        for typist in clients.values():
            typist.close()
