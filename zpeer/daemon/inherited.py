"""What the daemon inherits from its launcher, made harmless for the commands it starts: open
file descriptors (marked close-on-exec), blocked signals (unblocked) and ignored ones (handled by
a do-nothing handler, which exec resets to the default)."""
import os
import signal

from zpeer.daemon.process import hold_working_directory


def prepare_spawning():
    """At daemon start: mark every fd above 2 it inherited close-on-exec (a background command
    holding a launcher's pipe or socket would keep it open), unblock every signal, undo the
    launcher's ignored ones (`_unignore_signals`), and hold the daemon's working directory,
    which `spawn` comes back to."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: try every number the fd limit allows
        fds = range(min(os.sysconf("SC_OPEN_MAX"), 1 << 16))
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # not open (the listing's own fd is closed by now)
    hold_working_directory()
    # signals the launcher blocked stay blocked in every child: `--user` commands (subprocess,
    # not posix_spawn) would get them so; the daemon has no use for a blocked signal either
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    _unignore_signals()


# Python ignores SIGPIPE and SIGXFSZ itself and subprocess restores them. Ignoring SIGTTIN/SIGTTOU
# decides whether the daemon's own terminal I/O from a background group stops it, and a fault's
# handler that returns runs the faulting instruction again: with a handler both would spin.
_KEEP_IGNORED = frozenset({signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTIN, signal.SIGTTOU,
                           signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                           signal.SIGTRAP, signal.SIGSYS})


def _ignore(_signum, _frame):
    """The handler that stands in for an inherited SIG_IGN (exec resets it to the default)."""


def _unignore_signals():
    """Turn the launcher's ignored signals into handlers that do nothing: the daemon still shrugs
    them off (nohup's SIGHUP, a script's `&` SIGINT), but exec resets a handled signal to its
    default, so `--user` commands (subprocess, not posix_spawn) no longer inherit them ignored.
    SIGCHLD goes back to its default: ignored, the kernel reaps the daemon's children itself and
    their exit codes are lost."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for signum in signal.valid_signals():
        if signum in _KEEP_IGNORED:
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                signal.signal(signum, _ignore)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP, or a number libc keeps for itself
            pass


def reignore_signals():
    """Before the daemon re-executes itself: the launcher's ignored signals (handled by _ignore
    since the start, which exec would reset to their defaults) are ignored again, so the new
    image starts as the first one did (a daemon started under nohup keeps shrugging off SIGHUP)."""
    for signum in signal.valid_signals():
        try:
            if signal.getsignal(signum) is _ignore:
                signal.signal(signum, signal.SIG_IGN)
        except (OSError, ValueError):
            pass
