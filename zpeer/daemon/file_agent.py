"""The file agent: what a file copy runs on a peer in place of a shell (zpeer.filecopy).

    python -I -m zpeer.daemon.file_agent recv --peer ID [--checksum] -- DEST
        a push: the stream comes on stdin, the answers leave on stdout
    python -I -m zpeer.daemon.file_agent send --peer ID [--checksum] -- SRC...
        a pull: the stream leaves on stdout, the CLI's answer (which files it needs) comes on
        stdin, addressed to this peer

It runs as the copy's user (--user), in that user's home, as any command does: the kernel
applies that user's rights to every file. Exit 0 when every file went, 1 when some failed, 2
when the other side broke the stream's rules, 130 when stopped (SIGTERM: the copy was
cancelled; what it had half written is removed first).
"""
import os
import signal
import sys

from zpeer import filecopy

READ_BYTES = 1 << 20


class Stopped(Exception):
    """SIGTERM or SIGHUP: the copy was cancelled."""


def _stop(signum, _frame):
    raise Stopped()


def write_all(fd, data):
    """All of data to a blocking descriptor."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def receive(dest, checksum):
    """A push: write what stdin brings under dest; returns the exit status."""
    receiver = filecopy.Receiver(dest, lambda record: write_all(1, filecopy.pack(record)),
                                 checksum)
    rc = 0
    try:
        while receiver.state != "done":
            data = os.read(0, READ_BYTES)
            if not data:
                break
            receiver.feed(data)
        if receiver.state != "done":
            write_all(1, filecopy.pack(["F", None, "The copy ended before all of it came"]))
            rc = 1
    except filecopy.Violation as exc:
        write_all(1, filecopy.pack(["F", None, f"Refused the copy: {exc}"]))
        rc = 2
    finally:
        receiver.close()
    return rc or (1 if receiver.failures else 0)


def send(peer, srcs, checksum):
    """A pull: list the sources, then send the files this peer's answer asks for; returns the
    exit status."""
    entries, paths, errors = filecopy.walk(srcs, checksum)
    for record in filecopy.manifest_records(entries, errors):
        write_all(1, record)
    wanted = _need(peer)
    if wanted is None:
        return 1
    problems = []
    for i, entry in enumerate(entries):
        if entry["k"] == "f" and filecopy.has_bit(wanted, i):
            for piece in filecopy.file_records(i, entry, paths[i], problems):
                write_all(1, piece)
    write_all(1, filecopy.pack(["q"]))
    return 1 if errors or problems else 0


def _need(peer):
    """The CLI's answer for this peer (the bitmap of the files it needs), or None at EOF."""
    reader = filecopy.unpacker()
    while True:
        data = os.read(0, READ_BYTES)
        if not data:
            return None
        reader.feed(data)
        for record in reader:
            if (isinstance(record, list) and len(record) == 3 and record[0] == "n"
                    and record[1] == peer and isinstance(record[2], bytes)):
                return record[2]


def main(argv):
    """Run the agent; returns its exit status."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a gone reader is an error, cleaned up
    if len(argv) < 5 or argv[0] not in filecopy.OPS or argv[1] != "--peer":
        sys.stderr.write("usage: file_agent recv|send --peer ID [--checksum] -- PATH...\n")
        return 2
    op, peer, rest = argv[0], argv[2], argv[3:]
    if rest[0] == "--as":  # the copy's user, before any file is touched
        uid, gid, groups = rest[1].split(":")
        os.setgroups([int(g) for g in groups.split(",") if g])
        os.setresgid(int(gid), int(gid), int(gid))
        os.setresuid(int(uid), int(uid), int(uid))
        rest = rest[2:]
    checksum = rest[0] == "--checksum"
    paths = [os.path.abspath(os.path.expanduser(os.fsencode(p)))
             for p in rest[2 if checksum else 1:]]
    try:
        if op == "recv":
            return receive(paths[0], checksum)
        return send(peer, paths, checksum)
    except Stopped:
        return 130
    except OSError as exc:  # stdin or stdout itself failed: the channel is gone
        sys.stderr.write(f"zpeer file agent: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
