"""One line on stderr, for the code paths that import next to nothing (zpeer-ssh's `-G`, a
terminal session that ends): no click, no zmq."""
import sys


def say(line):
    """One line on stderr (nothing if stderr is closed)."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
