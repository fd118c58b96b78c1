"""zpeer-ssh as ssh's users know it: OpenSSH's option grammar, sshd's way of running a command,
ssh's exit statuses and errors, and standard streams of any kind (through the real script, on
one cluster for the module: vps runs zpeer-ssh, laptop is the peer)."""
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers.nodes import d_command, pid_alive, wait_for, zpeer_ssh_command

HOME = pwd.getpwuid(os.getuid()).pw_dir  # the daemons' user: the remote user of these tests
USER = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="module")
def c(shared_cluster):
    return shared_cluster


def env(c, **extra):
    return {**os.environ, "ZPEER_HOME": c.vps.home, **extra}


def ssh(c, *args, input=None, extra_env=None, timeout=30, **kw):
    """Run zpeer-ssh ARGS from vps; CompletedProcess with bytes output."""
    kw.setdefault("stdin", None if input is not None else subprocess.DEVNULL)
    return subprocess.run(zpeer_ssh_command() + list(args), input=input, capture_output=True,
                          timeout=timeout, env=env(c, **(extra_env or {})), **kw)


def settings(c, *args):
    """`zpeer-ssh -G ARGS` as a dict of its lines (first value of each key)."""
    out = ssh(c, "-G", *args)
    assert out.returncode == 0, out.stderr
    pairs = [line.split(" ", 1) for line in out.stdout.decode().splitlines()]
    return {k: v for k, v in reversed(pairs)}


# --- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("args, user, hostname, port", [
    (["laptop"], USER, "laptop", "22"),
    (["-l", "bob", "laptop"], "bob", "laptop", "22"),
    (["-lbob", "-p2222", "laptop"], "bob", "laptop", "2222"),
    (["-4Cqxp", "2222", "bob@laptop"], "bob", "laptop", "2222"),
    (["laptop", "-l", "bob", "-p", "7"], "bob", "laptop", "7"),  # options after the destination
    (["-o", "User=bob", "-o", "user=eve", "laptop"], "bob", "laptop", "22"),  # the first wins
    (["-o", "USER bob", "-oPort=9", "laptop"], "bob", "laptop", "9"),
    (["-o", 'User="bob"', "-o", "Port = 9", "laptop"], "bob", "laptop", "9"),
    (["-l", "bob", "eve@laptop"], "bob", "laptop", "22"),
    (["eve@laptop", "-l", "bob"], "eve", "laptop", "22"),
    (["[laptop]"], USER, "laptop", "22"),
    (["ssh://bob@laptop:2200"], "bob", "laptop", "2200"),
    (["SSH://laptop/"], USER, "laptop", "22"),
    (["-o", "HostName=desktop", "laptop"], USER, "desktop", "22"),
    (["-vvv", "-i", "/nonexistent/key", "-F", "/dev/null", "-o", "ControlMaster=auto", "-o",
      "ControlPath=/tmp/%r@%h", "-o", "ForwardX11 no", "-A", "-a", "-k", "-K", "-M", "-S",
      "/tmp/x", "-J", "jump", "-E", "/dev/null", "-c", "aes128-ctr", "-m", "hmac-sha2-256",
      "-b", "127.0.0.1", "-B", "lo", "-I", "p11", "-P", "tag", "-6", "-Y", "-y", "-g", "laptop"],
     USER, "laptop", "22"),
])
def test_option_grammar_as_ssh_parses_it(c, args, user, hostname, port):
    got = settings(c, *args)
    assert (got["user"], got["hostname"], got["port"]) == (user, hostname, port)


def test_tty_stdin_and_env_settings_as_ssh_resolves_them(c):
    assert settings(c, "laptop")["requesttty"] == "auto"
    assert settings(c, "-t", "laptop")["requesttty"] == "yes"
    assert settings(c, "-tt", "laptop")["requesttty"] == "force"
    assert settings(c, "-t", "-o", "RequestTTY=no", "laptop")["requesttty"] == "yes"
    assert settings(c, "-o", "requesttty=force", "-T", "laptop")["requesttty"] == "no"
    assert settings(c, "-n", "-N", "laptop")["stdinnull"] == "yes"
    out = ssh(c, "-G", "-o", "SendEnv=LC_*", "-o", "SendEnv LANG", "-o", "SetEnv=A=1 B=2",
              "-o", "SetEnv=C=3", "laptop").stdout.decode().splitlines()
    assert [x for x in out if x.startswith(("sendenv", "setenv"))] == [
        "sendenv LC_*", "sendenv LANG", "setenv A=1", "setenv B=2"]


@pytest.mark.parametrize("args, line", [
    (["-z", "laptop"], "zpeer-ssh: unknown option -- z"),
    (["laptop", "-p"], "zpeer-ssh: option requires an argument -- p"),
    (["-p", "x", "laptop"], "Bad port 'x'"),
    (["-e", "xy", "laptop"], "Bad escape character 'xy'."),
    (["-O", "bogus", "laptop"], "Invalid multiplex command."),
    (["-L", "8080:localhost:80", "laptop", "true"],
     "zpeer-ssh: port forwarding (-L) is not supported: zpeer runs commands, it forwards no ports"),
    (["-R8080:localhost:80", "laptop"],
     "zpeer-ssh: port forwarding (-R) is not supported: zpeer runs commands, it forwards no ports"),
    (["-D", "1080", "laptop"],
     "zpeer-ssh: port forwarding (-D) is not supported: zpeer runs commands, it forwards no ports"),
    (["-o", "LocalForward=1 h:2", "laptop"],
     "zpeer-ssh: port forwarding (LocalForward) is not supported: zpeer runs commands, it forwards "
     "no ports"),
    (["-W", "host:22", "laptop"], "zpeer-ssh: -W (forwarding) is not supported: zpeer runs "
                                  "commands, it forwards no connections"),
    (["-O", "forward", "laptop"], "zpeer-ssh: -O forward is not supported: zpeer forwards no "
                                  "connections"),
    ([], "usage: zpeer-ssh [-46AaCfGgKkMNnqsTtVvXxYy] [-e escape_char] [-l login_name] "
         "[-o option] [-p port] ... [user@]peer [command [argument ...]]"),
])
def test_refusals_are_one_line_and_255(c, args, line):
    out = ssh(c, *args)
    assert (out.returncode, out.stdout, out.stderr.decode()) == (255, b"", line + "\n")


def test_version_and_master_control_answer_at_once(c):
    out = ssh(c, "-V")
    assert out.returncode == 0 and out.stderr.startswith(b"zpeer-ssh 0.") and out.stdout == b""
    for word, said in (("check", b"Master running"), ("exit", b"Exit request sent."),
                       ("stop", b"Stop listening request sent.")):
        out = ssh(c, "-O", word, "-o", "ControlPath=/nonexistent", "laptop")
        assert out.returncode == 0 and out.stderr.startswith(said), out
    # ClearAllForwardings (as scp passes it) takes back the forwarding asked for
    out = ssh(c, "-L", "1:h:2", "-oClearAllForwardings=yes", "laptop", "echo", "ok")
    assert (out.returncode, out.stdout) == (0, b"ok\n"), out.stderr


def test_answers_without_a_daemon_import_no_zmq_nor_click(c):
    """-G, -V and -O are what tools call most: Python's start, and nothing heavy on top."""
    code = ("import sys; from zpeer.cli.ssh import main\n"
            "for args in (['-G', 'laptop'], ['-V'], ['-O', 'check', 'laptop']):\n"
            "    assert main(args) == 0\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('zmq', 'click', 'msgpack',"
            " 'json', 'subprocess', 'socket', 'zpeer') and m not in ('zpeer', 'zpeer.cli',"
            " 'zpeer.cli.ssh', 'zpeer.cli.ssh_args', 'zpeer.cli.lines')]\n"
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()


# --- what runs, where, as whom ---------------------------------------------------------------
def test_words_joined_and_run_by_the_users_shell_in_home(c):
    out = ssh(c, "laptop", "echo", "a  b", "'c  d'", "$0", "$PWD", "$HOME")
    assert (out.returncode, out.stdout, out.stderr) == (
        0, f"a b c  d {os.path.basename(pwd.getpwuid(os.getuid()).pw_shell)} {HOME} {HOME}\n"
           .encode(), b"")
    # options after the destination, then the command with its own options; `--` ends ssh's
    out = ssh(c, "laptop", "-o", "SetEnv=X=1", "echo", "-n", "$X")
    assert out.stdout == b"1"
    out = ssh(c, "laptop", "--", "echo", "-l", "x")
    assert out.stdout == b"-l x\n"
    assert ssh(c, "laptop", "echo ok").stdout == b"ok\n"  # one word, as tools pass it


def test_no_command_runs_a_login_shell_reading_stdin(c):
    out = ssh(c, "laptop", input=b'echo "$0" "$PWD"\nexit 3\n')
    assert (out.returncode, out.stdout) == (
        3, f"-{os.path.basename(pwd.getpwuid(os.getuid()).pw_shell)} {HOME}\n".encode())
    assert out.stderr == b"Pseudo-terminal will not be allocated because stdin is not a terminal.\n"
    out = ssh(c, "-T", "laptop", input=b"echo hi\n")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"hi\n", b"")
    out = ssh(c, "-q", "laptop", input=b"echo hi\n")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"hi\n", b"")


@pytest.mark.parametrize("args", [["-tt", "laptop", "tty"], ["-t", "-t", "laptop", "tty"],
                                  ["-o", "RequestTTY=force", "laptop", "tty"]])
def test_a_forced_terminal_is_a_pseudo_terminal_on_the_peer(c, args):
    out = ssh(c, *args)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rb"/dev/pts/\d+\r\n", out.stdout), out.stdout


def test_a_forced_terminal_without_a_command_is_the_users_login_shell(c):
    shell = os.path.basename(pwd.getpwuid(os.getuid()).pw_shell)
    out = ssh(c, "-tt", "laptop", input=b'echo "[$0]"; exit 3\n')
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert f"[-{shell}]".encode() in out.stdout


def test_t_without_a_terminal_is_ssh_s_warning_then_the_command(c):
    out = ssh(c, "-t", "laptop", "echo", "ran")
    assert (out.returncode, out.stdout, out.stderr) == (
        0, b"ran\n", b"Pseudo-terminal will not be allocated because stdin is not a terminal.\n")


def test_variables_sent_as_ssh_sends_them(c):
    extra = {"GIT_PROTOCOL": "version=2", "LC_ZP": "fr", "ZP_B": "x", "ZP_NOT_SENT": "no"}
    # `SendEnv -PATTERN` takes back the patterns listed before that it matches
    out = ssh(c, "-o", "SendEnv=LC_* ZP_B ZP_NONE", "-o", "SendEnv=-ZP_?", "-o",
              'SetEnv=ZP_SET="a b" ZPEER_JOB=mine', "laptop",
              'echo "$GIT_PROTOCOL|$LC_ZP|$ZP_B|$ZP_NOT_SENT|$ZP_SET|$ZPEER_JOB"',
              extra_env=extra)
    assert out.returncode == 0, out.stderr
    line = out.stdout.decode().strip().split("|")
    assert line[:5] == ["version=2", "fr", "", "", "a b"]
    assert line[5] != "mine"  # zpeer's own job id is not the caller's to set
    # GIT_PROTOCOL goes whether SendEnv names it or not
    out = ssh(c, "laptop", "echo $GIT_PROTOCOL", extra_env={"GIT_PROTOCOL": "version=2"})
    assert out.stdout == b"version=2\n"


def test_user_from_l_at_or_option(c):
    for args in (["-l", USER, "laptop"], [f"{USER}@laptop"], ["-o", f"User={USER}", "laptop"]):
        out = ssh(c, *args, "id", "-un")
        assert (out.returncode, out.stdout) == (0, f"{USER}\n".encode()), out.stderr
    out = ssh(c, "no-such-user-zp@laptop", "true")
    assert (out.returncode, out.stdout, out.stderr) == (
        255, b"", b"zpeer-ssh: No such user on laptop: no-such-user-zp\n")


def test_peer_by_id_brackets_uri_or_the_ip_it_registered_from(c):
    want = f"{c.laptop.home}\n".encode()
    for dest in ("laptop", "[laptop]", "ssh://laptop:22", "127.0.0.4", f"{USER}@127.0.0.4"):
        out = ssh(c, dest, "echo $ZPEER_HOME")
        assert (out.returncode, out.stdout) == (0, want), (dest, out.stderr)


def test_d_ssh_is_the_same_program(c):
    out = subprocess.run(d_command() + ["ssh", "-o", "SetEnv=Z=1", "laptop", "echo", "$Z", "$0"],
                         capture_output=True, env=env(c), timeout=30, stdin=subprocess.DEVNULL)
    assert (out.returncode, out.stdout.split()[0]) == (0, b"1"), out.stderr
    out = subprocess.run(d_command() + ["ssh", "-G", "bob@laptop"], capture_output=True,
                         env=env(c), timeout=30)
    assert b"\nuser bob\nhostname laptop\n" in out.stdout


# --- exit statuses and errors ----------------------------------------------------------------
def test_exit_statuses_as_ssh(c):
    assert ssh(c, "laptop", "exit 3").returncode == 3
    assert ssh(c, "laptop", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    out = ssh(c, "nope", "true")
    assert (out.returncode, out.stdout, out.stderr) == (
        255, b"", b"zpeer-ssh: Peer not found: nope\n")
    out = ssh(c, "-v", "nope", "true")
    lines = out.stderr.decode().splitlines()
    assert out.returncode == 255 and lines[0] == "zpeer-ssh: Peer not found: nope"
    assert len(lines) == 2 and lines[1].startswith("zpeer-ssh: hint: run `d listPeers`")
    out = ssh(c, "laptop", "true", extra_env={"ZPEER_HOME": c.vps.home + "-none"})
    assert (out.returncode, out.stderr) == (255, b"zpeer-ssh: Failed to connect\n")


def test_stderr_after_stdout_closed_and_both_byte_exact(c):
    out = ssh(c, "laptop", "printf 'o\\0\\377'; exec 1>&-; sleep 0.2; printf 'e\\0' >&2; exit 4")
    assert (out.returncode, out.stdout, out.stderr) == (4, b"o\0\xff", b"e\0")


def test_subsystem_sftp_only(c):
    out = ssh(c, "-s", "laptop", "nfs")
    assert (out.returncode, out.stderr) == (
        255, b"zpeer-ssh: subsystem request failed: nfs (zpeer runs the subsystem sftp only)\n")


# --- standard streams ------------------------------------------------------------------------
def test_stdin_of_any_block_size_and_its_eof_reach_the_remote(c):
    data = os.urandom(3 << 20) + b"tail"
    out = ssh(c, "laptop", "sha256sum; echo done", input=data)
    assert out.stdout == hashlib.sha256(data).hexdigest().encode() + b"  -\ndone\n"
    # written by a slow writer in odd sizes (the remote sees every byte, then EOF)
    writer = subprocess.Popen(["sh", "-c", "for i in 1 2 3; do head -c 70001 /dev/zero; "
                               "sleep 0.05; printf x; done"], stdout=subprocess.PIPE)
    out = ssh(c, "laptop", "wc -c", stdin=writer.stdout)
    writer.wait(10)
    assert out.stdout.strip() == str(3 * 70002).encode()


def test_yes_into_head(c):
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        out = ssh(c, "laptop", "head", "-n", "2", stdin=yes.stdout, timeout=20)
    finally:
        yes.kill()
        yes.wait(5)
    assert (out.returncode, out.stdout) == (0, b"y\ny\n")


def test_non_blocking_socket_streams_as_rsync_hands_them(c):
    """Both standard streams one non-blocking socket (rsync's way): nothing lost either way."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    data = os.urandom(8 << 20)
    proc = subprocess.Popen(zpeer_ssh_command() + ["laptop", "cat"], stdin=theirs, stdout=theirs,
                            env=env(c))
    theirs.close()
    got = bytearray()
    ours.setblocking(True)
    sent = 0
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(ours, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + 30
    while len(got) < len(data) and time.monotonic() < deadline:
        for _, events in sel.select(1):
            if events & selectors.EVENT_WRITE and sent < len(data):
                sent += ours.send(data[sent:sent + 65536])
                if sent == len(data):
                    ours.shutdown(socket.SHUT_WR)
                    sel.modify(ours, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                got += ours.recv(1 << 20)
    assert proc.wait(20) == 0
    ours.close()
    assert bytes(got) == data


def test_a_reader_that_goes_away_ends_the_call_and_the_remote(c, tmp_path):
    pidfile = tmp_path / "pid"
    reader = subprocess.Popen(["head", "-c", "5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc = subprocess.Popen(zpeer_ssh_command() + ["laptop", f"echo $$ > {pidfile}; exec yes"],
                            stdout=reader.stdin, stdin=subprocess.DEVNULL, env=env(c))
    reader.stdin.close()
    assert reader.stdout.read() == b"y\ny\ny"
    reader.wait(5)
    assert proc.wait(10) == 141  # 128 + SIGPIPE, as a pipeline's writer whose reader left
    remote = int(pidfile.read_text())
    wait_for(lambda: not pid_alive(remote), timeout=2, what="the remote yes to be killed")


# --- a client that is killed, or whose parent goes away --------------------------------------
def start_sleeper(c, tmp_path, **popen):
    """zpeer-ssh running a remote `sleep` in a group (with a child of its own); (its process,
    the remote shell's pid)."""
    pidfile = tmp_path / "remote.pid"
    popen.setdefault("stdout", subprocess.DEVNULL)
    proc = subprocess.Popen(zpeer_ssh_command() + [
        "laptop", f"sleep 60 & echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"],
        stdin=subprocess.DEVNULL, env=env(c), **popen)
    wait_for(pidfile.exists, timeout=10, what="the remote command to start")
    return proc, int(pidfile.read_text())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_client_kills_the_remote_group_within_2s(c, tmp_path, sig):
    proc, remote = start_sleeper(c, tmp_path)
    proc.send_signal(sig)  # (not reaped yet: a zombie client counts as gone too)
    killed = time.monotonic()
    wait_for(lambda: not pid_alive(remote), timeout=3, what="the remote group to be killed")
    assert time.monotonic() - killed < 2.0
    assert proc.wait(10) == (-sig if sig == signal.SIGKILL else 128 + sig)


def test_vanished_parent_kills_the_remote_group_within_2s(c, tmp_path):
    pidfile = tmp_path / "remote.pid"
    argv = zpeer_ssh_command() + ["laptop", f"sleep 60 & echo $$ > {pidfile}.tmp; "
                                            f"mv {pidfile}.tmp {pidfile}; wait"]
    code = ("import subprocess, sys\n"
            f"p = subprocess.Popen({argv!r}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
            "print(p.pid, flush=True)\n"
            "sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env(c))
    client = int(parent.stdout.readline())
    try:
        wait_for(pidfile.exists, timeout=10, what="the remote command to start")
        remote = int(pidfile.read_text())
        parent.kill()
        parent.wait(5)
        gone = time.monotonic()
        wait_for(lambda: not pid_alive(remote), timeout=3, what="the remote group to be killed")
        assert time.monotonic() - gone < 2.0
        wait_for(lambda: not pid_alive(client), timeout=10, what="zpeer-ssh to leave")
    finally:
        if pid_alive(client):
            os.kill(client, signal.SIGKILL)
        parent.kill()
        parent.wait(5)


def test_f_goes_to_the_background(c, tmp_path):
    mark = tmp_path / "mark"
    started = time.monotonic()
    rc = subprocess.run(zpeer_ssh_command() + ["-f", "laptop", f"sleep 0.5; echo bg > {mark}"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, env=env(c), timeout=30).returncode
    assert rc == 0 and time.monotonic() - started < 0.5
    wait_for(mark.exists, timeout=10, what="the background command")


def test_sftp_subsystem_without_sftp_server_names_the_package(c):
    """A peer without sftp-server: its daemon in a mount namespace where each one is /dev/null."""
    from zpeer.cli.ssh_session import SFTP_SERVERS

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount namespace")
    hide = "".join(f"mount --bind /dev/null {p} && " for p in SFTP_SERVERS if os.path.exists(p))
    node = c.worker("bare", "127.0.0.6", start=False)
    node.command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    hide + 'exec "$@"', "sh"] + node.command
    node.start()
    node.d("registerWorker", "--id", "bare", "--token", c.token(), "--source-ip", "127.0.0.6",
           check=0)
    out = ssh(c, "-s", "bare", "sftp")
    assert (out.returncode, out.stdout, out.stderr) == (
        255, b"", b"zpeer-ssh: no sftp-server on bare: install the package openssh-sftp-server "
                  b"(Debian, Ubuntu) or openssh-server (Fedora, Arch, Alpine) there\n")
    assert ssh(c, "-s", "laptop", "sftp", input=b"").returncode == 0  # there it is


@pytest.mark.parametrize("env", [{"A=B": "x"}, {"": "x"}, {"A": "x\0y"}, {"A": 1}, ["A"],
                                 {f"V{i}": "" for i in range(257)}])
def test_the_variables_an_exec_sets_are_checked(env):
    """What another daemon sends as `env` (zpeer-ssh's SendEnv/SetEnv) is checked on arrival."""
    from zpeer.daemon.process import exec_env
    from zpeer.errors import BadRequest

    with pytest.raises(BadRequest):
        exec_env(env)
    assert exec_env({"GIT_PROTOCOL": "version=2"}) == {"GIT_PROTOCOL": "version=2"}
