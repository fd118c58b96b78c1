"""One constructor per peer message type: the only place a header map is built.

Each returns the plain dict that zpeer.wire.protocol encodes (its schema checks what arrives);
senders add nothing but the leader's "from". Job messages carry the job id as their request id.
The channel messages (exec .. alive) are described in zpeer.wire.channel.
"""
import uuid


def new_rid():
    """A fresh request id for a message that is not about a job."""
    return uuid.uuid4().hex[:16]


# --- link: enrolment, liveness, RPCs -------------------------------------------------------
def hello(peer_id, hostname, version, pid, daemon_user, token=None):
    """A worker introduces itself (on every connect, and when the leader asks), with the
    account its daemon runs commands as (the access policy's default user)."""
    header = {"t": "hello", "rid": new_rid(), "id": peer_id, "hostname": hostname,
              "version": version, "role": "worker", "pid": pid, "daemon_user": daemon_user}
    if token:
        header["token"] = token
    return header


def welcome(rid, status, leader, gen, reason, beat_s=None):
    """The leader's answer to a hello: accepted, pending or rejected (with why). `acks`: this
    leader acknowledges audit copies (a worker keeps each until then)."""
    header = {"t": "welcome", "rid": rid, "status": status, "leader": leader, "gen": gen,
              "reason": reason, "acks": True}
    if beat_s is not None:
        header["hb"] = beat_s
    return header


def rehello(rid):
    """The leader asks a connection to say hello (after its restart, or once accepted)."""
    return {"t": "rehello", "rid": rid}


def heartbeat(clock_offset_s=None):
    """A worker's heartbeat, with its wall clock's difference to the leader's when it knows it."""
    header = {"t": "hb", "rid": new_rid()}
    if clock_offset_s is not None:
        header["offset"] = clock_offset_s
    return header


def heartbeat_reply(rid, gen, beat_s, wall):
    """The leader's answer: the peer set's generation, the interval to beat at, its wall clock."""
    return {"t": "hb", "rid": rid, "gen": gen, "hb": beat_s, "wall": wall}


def bye(reason):
    """The leader tells a removed peer to stop."""
    return {"t": "bye", "rid": "removed", "reason": reason}


def rpc(op, args, rid=None):
    """A worker's request to the leader (a registry query, or an audit copy)."""
    return {"t": "rpc", "rid": rid or new_rid(), "op": op, "args": args}


def rpc_result(rid, result):
    """The leader's answer to an rpc."""
    return {"t": "rpc_reply", "rid": rid, "ok": True, "result": result}


def rpc_error(rid, error):
    """The leader's refusal of an rpc: a ZpeerError's reply map."""
    return {"t": "rpc_reply", "rid": rid, "ok": False, "error": error}


# --- channels (zpeer.wire.channel) ---------------------------------------------------------
def exec_open(job, to, spec, credit, ttl_s):
    """Open an exec channel: run spec (cmd, dir, user, timeout, stdin, ...) on `to`, if it can
    start within ttl_s of leaving (zpeer.daemon.stamps)."""
    header = {"t": "exec", "rid": job, "job": job, "to": to, "credit": credit, "ttl": ttl_s}
    header.update(spec)
    return header


def started(job, to, pid):
    """The target's command runs (when its first output or exit does not say so first)."""
    return {"t": "started", "rid": job, "job": job, "to": to, "pid": pid}


def output(job, to, stream, seq, pid=None, tty=False):
    """A chunk of stream 1 or 2 (the data frame); the first message of a job names the pid.
    `tty`: a pseudo-terminal's screen output, which goes before bulk."""
    header = {"t": "out", "rid": job, "job": job, "to": to, "fd": stream, "seq": seq}
    if pid is not None:
        header["pid"] = pid
    if tty:
        header["tty"] = True
    return header


def credit(job, to, n, total):
    """The origin's reader consumed n bytes of output: the target may send that much more
    (`total`: the credit given in all, which a lost credit message cannot change)."""
    return {"t": "credit", "rid": job, "job": job, "to": to, "n": n, "total": total}


def stdin(job, to, eof, tty=False):
    """A chunk of stream 0 (the data frame); eof: nothing follows it. `tty`: keystrokes for a
    pseudo-terminal, which go before bulk. Its origin stamps where it starts (`at`, see
    zpeer.daemon.resend.StdinLog)."""
    header = {"t": "stdin", "rid": job, "job": job, "to": to, "eof": bool(eof)}
    if tty:
        header["tty"] = True
    return header


def fan(job, to, jobs, eof):
    """A chunk of stdin (the data frame) for each [job, target] of `jobs`, which the leader
    (`to`) copies to every target as its own stdin message."""
    return {"t": "fan", "rid": job, "job": job, "to": to, "jobs": jobs, "eof": bool(eof)}


def winsize(job, to, rows, cols):
    """The origin's terminal has a new size: the job's pseudo-terminal takes it (SIGWINCH)."""
    return {"t": "winsize", "rid": job, "job": job, "to": to, "rows": rows, "cols": cols}


def stdin_ack(job, to, n):
    """The command took n stdin bytes: the origin may send that much more."""
    return {"t": "stdin_ack", "rid": job, "job": job, "to": to, "n": n}


def cancel(job, to):
    """Stop the job: its process group is terminated (exit how=cancelled)."""
    return {"t": "cancel", "rid": job, "job": job, "to": to}


def exit_status(job, to, rc, how, nbytes, duration_s, seq, pid=None):
    """The job ended: rc, how (exit, timeout, cancelled), its output's size and the last seq."""
    header = {"t": "exit", "rid": job, "job": job, "to": to, "rc": rc, "how": how,
              "bytes": nbytes, "duration": duration_s, "seq": seq}
    if pid is not None:
        header["pid"] = pid
    return header


def error(job, to, err, sender=None):
    """The job ends in a zpeer failure; err is a ZpeerError's reply map. `sender` names the
    peer it stands for when another node (the leader, the origin itself) answers in its place."""
    header = {"t": "error", "rid": job[:64], "job": job, "to": to, "err": err}
    if sender is not None:
        header["from"] = sender
    return header


def alive(to, jobs, side, got=None, acked=None, gaps=None, stdin_got=None):
    """The jobs the sender still holds with `to`: side "origin" (it waits for them) or
    "target" (it runs them). An origin says, per job, the last output seq it took in order
    (`got`) and all the credit it gave (`acked`), and for a job with a gap (`gaps`) the highest
    seq it holds and the seqs missing below it (None: too many to name): what the target
    sends again. A target says, per job, how far it has the job's stdin (`stdin_got`, the end
    of input counted as one byte): what the origin sends again."""
    header = {"t": "alive", "rid": "alive", "to": to, "jobs": jobs, "side": side}
    if stdin_got is not None:
        header["stdin_got"] = stdin_got
    if got is not None:
        header["got"], header["acked"] = got, acked
    if gaps:
        header["gaps"] = gaps
    return header
