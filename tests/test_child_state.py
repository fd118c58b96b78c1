"""What a command gets from the daemon that starts it: fds 0-2 only, every signal at its default
disposition and none blocked, a session and process group of its own, its directory."""
import os
import signal
import subprocess

import pytest
from helpers.nodes import Node, d_command, free_port, run_python


def _launcher_state(inherited_fd):
    """Runs in the daemon's child before exec: a careless launcher (a script's `nohup d daemon &`
    ignores SIGHUP, SIGINT and SIGQUIT; some supervisors ignore SIGCHLD), which also blocks SIGUSR1
    and leaks a pipe end."""
    os.set_inheritable(inherited_fd, True)
    for signum in (signal.SIGQUIT, signal.SIGHUP, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


@pytest.fixture
def careless(tmp_path):
    """A leader daemon started by a careless launcher, and the pipe end it was handed."""
    node = Node(tmp_path, "vps", "127.0.0.1")
    node.d("setPeerConfig", "--role", "leader", "--id", "vps", "--bind", f"127.0.0.1:{free_port()}",
           check=0)
    leak_r, leak_w = os.pipe()
    try:
        node.start(pass_fds=(leak_w,), preexec_fn=lambda: _launcher_state(leak_w))
        yield node, leak_r
    finally:
        node.stop()
        os.close(leak_r)
        os.close(leak_w)


def test_a_command_inherits_no_fd_and_no_signal_state(careless):
    node, _ = careless
    # ls's own fd 3 is the directory it lists: a leaked fd would show up as 3 and push it to 4
    out = node.d("execOnPeer", "--peer", "vps", "--shellCmd",
                 "grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/self/fd", check=0)
    rows = [line.split("\t") for line in out.stdout.decode().splitlines()]
    (blk, blocked), (ign, ignored), *fds = rows
    assert (blk, ign, fds) == ("SigBlk:", "SigIgn:", [["0"], ["1"], ["2"], ["3"]])
    assert int(blocked, 16) == 0
    # glibc's posix_spawn leaves its two reserved signals (32, 33: no program can use them) ignored
    assert int(ignored, 16) & ~(1 << 31 | 1 << 32) == 0
    assert out.stderr == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs a root daemon")
def test_a_user_command_inherits_no_fd_and_no_signal_state(careless):
    node, _ = careless
    out = node.d("execOnPeer", "--peer", "vps", "--user", "nobody", "--directory", "/tmp",
                 "--shellCmd",
                 "id -un; grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/self/fd", check=0)
    assert out.stdout == (b"nobody\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
                          b"0\n1\n2\n3\n")


def test_exit_codes_and_the_launchers_ignored_signals(careless):
    # with SIGCHLD ignored the kernel reaps the daemon's children itself: every exit code was 255
    node, _ = careless
    out = node.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo hi; exit 7", check=7)
    assert (out.stdout, out.stderr) == (b"hi\n", b"")
    assert node.d("execOnPeer", "--peer", "vps", "--shellCmd", "kill -TERM $$",
                  check=143).stderr == b""
    # the launcher's SIGHUP is still shrugged off (nohup), only no longer passed on
    node.proc.send_signal(signal.SIGHUP)
    assert node.d("execOnPeer", "--peer", "vps", "--shellCmd", "exit 3", check=3).stdout == b""
    assert node.proc.poll() is None


def test_sigpipe_ends_a_pipeline_quietly(careless):
    # Python ignores SIGPIPE: a command that inherited that would print "Broken pipe" errors
    node, _ = careless
    out = node.d("execOnPeer", "--peer", "vps", "--shellCmd",
                 "yes | head -c 4; echo \" ${PIPESTATUS[*]}\"", check=0)
    assert (out.stdout, out.stderr) == (b"y\ny\n 141 0\n", b"")


def test_a_background_command_does_not_hold_the_launchers_pipe(careless):
    # `sleep &` outliving the call must not keep a pipe of the daemon's launcher open
    node, leak_r = careless
    node.d("execOnPeer", "--peer", "vps", "--shellCmd",
           "sleep 30 >/dev/null 2>&1 & echo $! > bg.pid", "--directory", node.home, check=0)
    with open(os.path.join(node.home, "bg.pid")) as f:
        bg = int(f.read())
    try:
        held = {os.readlink(f"/proc/{bg}/fd/{fd}") for fd in os.listdir(f"/proc/{bg}/fd")}
        assert f"pipe:[{os.fstat(leak_r).st_ino}]" not in held
        assert os.getsid(bg) != os.getsid(node.proc.pid)  # its own session, not the daemon's
    finally:
        os.kill(bg, signal.SIGKILL)


def test_directory_and_the_daemons_own_working_directory(careless):
    node, _ = careless
    out = node.d("execOnPeer", "--peer", "vps", "--directory", "/usr/bin", "--shellCmd",
                 "pwd -P; pwd", check=0)
    assert out.stdout == b"/usr/bin\n/usr/bin\n"
    # the daemon stepped into /usr/bin to start the command, and back out
    assert os.readlink(f"/proc/{node.proc.pid}/cwd") == os.getcwd()


@pytest.mark.parametrize("proc_mounted", [True, False])
def test_prepare_spawning_marks_inherited_fds_with_or_without_proc(proc_mounted):
    # in a child process of its own: it changes the process it runs in
    code = f"""if True:
        import os, signal
        from zpeer.daemon import inherited, process
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})
        for signum in (signal.SIGHUP, signal.SIGCHLD, signal.SIGTTOU, signal.SIGSEGV):
            signal.signal(signum, signal.SIG_IGN)
        r, w = os.pipe()
        os.set_inheritable(w, True)
        if not {proc_mounted}:
            real = os.listdir
            def listdir(path):
                if path.startswith("/proc"):
                    raise FileNotFoundError(path)
                return real(path)
            os.listdir = listdir
        inherited.prepare_spawning()
        print(os.get_inheritable(w), os.get_inheritable(1), process._cwd_fd is not None,
              signal.pthread_sigmask(signal.SIG_BLOCK, ()) == set())
        # ignored -> a do-nothing handler (exec resets it); SIGCHLD -> default; Python's own, the
        # terminal stops and the faults stay ignored
        print(signal.getsignal(signal.SIGHUP) is inherited._ignore,
              *[signal.getsignal(s).name for s in
                (signal.SIGCHLD, signal.SIGTTOU, signal.SIGPIPE, signal.SIGSEGV)])
    """
    out = run_python(code)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == ["False True True True",
                                       "True SIG_DFL SIG_IGN SIG_IGN SIG_IGN"]


def test_a_hangup_stops_the_daemon_cleanly_unless_it_was_started_under_nohup(careless, tmp_path):
    # its terminal closed: the jobs are reported interrupted (SIGHUP killed it on the spot before)
    node, _ = careless
    # nohup'd (the careless launcher ignores SIGHUP): shrugged off
    node.proc.send_signal(signal.SIGHUP)
    assert node.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo still here",
                  check=0).stdout == b"still here\n"
    assert node.proc.poll() is None
    node.d("restartDaemon", check=0)  # re-executed in place: still as its launcher started it
    node.proc.send_signal(signal.SIGHUP)
    assert node.d("execOnPeer", "--peer", "vps", "--shellCmd", "echo still here",
                  check=0).stdout == b"still here\n"
    assert node.proc.poll() is None
    node.stop()
    plain = Node(tmp_path, "plain", "127.0.0.1")
    plain.d("setPeerConfig", "--role", "leader", "--id", "plain", "--bind",
            f"127.0.0.1:{free_port()}", check=0)
    plain.start()
    try:
        cli = subprocess.Popen(d_command()
                               + ["execOnPeer", "--peer", "plain", "--shellCmd",
                                  "echo started; sleep 30"],
                               env=plain.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        assert cli.stdout.readline() == b"started\n"
        plain.proc.send_signal(signal.SIGHUP)
        assert plain.proc.wait(10) == 0
        _, err = cli.communicate(timeout=10)
        assert (cli.returncode, err.splitlines()[0]) == (255,
                                                         b"Interrupted: the daemon on plain "
                                                         b"stopped while the command ran")
        assert "daemon stopping" in plain.log()
    finally:
        plain.stop()
