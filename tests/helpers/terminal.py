"""A real terminal for the tests: a pseudo-terminal whose slave is the controlling terminal of
the program under test (as a terminal emulator makes it), driven from its master side."""
import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import termios
import time


class Terminal:
    """A program on its own pseudo-terminal: type into it, read its screen, resize it."""

    def __init__(self, argv, env, rows=24, cols=80):
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.modes = termios.tcgetattr(self.slave)  # what the program must leave as it found
        self.output = b""
        # setsid --ctty: the program leads a session whose controlling terminal is the slave,
        # so that it gets SIGWINCH (util-linux; no fork: the pid is the program's)
        self.proc = subprocess.Popen([shutil.which("setsid"), "--ctty"] + list(argv), env=env,
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave)

    def send(self, data):
        """Type bytes."""
        os.write(self.master, data)

    def read(self, timeout=0.1):
        """What the screen got within timeout (appended to self.output too)."""
        got = b""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            got += chunk
        self.output += got
        return got

    def expect(self, pattern, timeout=15):
        """Wait until the output since the last expect matches pattern (bytes regex); the
        match."""
        start = self.mark if hasattr(self, "mark") else 0
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output[start:])
            if found:
                self.mark = start + found.end()
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the screen in {timeout}s: "
                                     f"{self.output[start:][-2000:]!r}")
            if self.proc.poll() is not None:
                self.read(0.2)
                if not re.search(pattern, self.output[start:]):
                    raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}: "
                                         f"{self.output[start:][-2000:]!r}")
                continue
            self.read(0.05)

    def resize(self, rows, cols):
        """A new window size (the kernel sends SIGWINCH to the program's foreground group)."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout=15):
        """The program's exit status (the screen read to its end meanwhile)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout}s: {self.output[-2000:]!r}")
            self.read(0.05)
        self.read(0.05)
        return self.proc.returncode

    def modes_now(self):
        """The slave's termios now."""
        return termios.tcgetattr(self.slave)

    def close(self):
        """Stop the program by its handle if it still runs; close both ends."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
