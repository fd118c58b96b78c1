"""`zpeer-ssh` (also `d ssh`): OpenSSH's client command line over zpeer, so that the tools built on
ssh (rsync, git, scp, sftp, Ansible, ClusterShell, GNU parallel, ...) run over it unchanged.

Its arguments are ssh's (zpeer.cli.ssh_args parses them). `-G`, `-V` and `-O` are answered
without zmq or click: these modules import nothing but `os` and `sys` (what Python's own start
has loaded), because tools call them often (git's `-G` probe, Ansible's `-O check`). Running a
command is zpeer.cli.ssh_session's, imported only then.
"""
import os
import sys

from zpeer.cli.lines import say
from zpeer.cli.ssh_args import PROG, USAGE, SshExit, dump, mux_answer, parse


def main(argv=None):
    """Entry point of `zpeer-ssh` and `d ssh`: the exit status, as ssh's."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--help"]:
        sys.stdout.write(__doc__.split("\n\n")[0] + "\n\n" + USAGE + "\n")
        return 0
    try:
        settings = parse(args)
        if settings.dump:
            sys.stdout.write(dump(settings))
            return 0
        if settings.mux:
            say(mux_answer(settings.mux))
            return 0
        if settings.forwards and not settings.clear_forwardings:
            raise SshExit(255, f"{PROG}: port forwarding ({settings.forwards[0]}) is not "
                               "supported: zpeer runs commands, it forwards no ports")
    except SshExit as done:
        if done.message:
            say(done.message)
        return done.code
    from zpeer.cli.ssh_session import run

    return run(settings)


def console_main():
    """The `zpeer-ssh` console script."""
    code = main()
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os._exit(code)
