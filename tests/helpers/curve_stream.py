"""The baseline for a stream over a link: plain pyzmq, a CurveZMQ DEALER sending N bytes in
64 KiB messages to a ROUTER, nothing else (no zpeer).

    python curve_stream.py serve ADDRESS:PORT KEYFILE BYTES   # prints "ready", then the seconds
                                                              # from the first byte to the last
    python curve_stream.py send ADDRESS:PORT KEYFILE BYTES

KEYFILE holds the server's public and secret key (z85), one per line; serve writes it.
`baseline_s` runs both ends over a netlab link (tests and bench/wan.py).
"""
import os
import subprocess
import sys
import time

import zmq

try:
    from helpers.netlab import LEADER_IP, in_namespace
except ImportError:  # run as a script: only serve and send
    LEADER_IP = in_namespace = None

CHUNK_BYTES = 64 << 10


def serve(endpoint, keyfile, total):
    ctx = zmq.Context()
    public, secret = zmq.curve_keypair()
    with open(keyfile, "wb") as f:
        f.write(public + b"\n" + secret + b"\n")
    sock = ctx.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.bind(f"tcp://{endpoint}")
    print("ready", flush=True)
    got, first = 0, None
    while got < total:
        frames = sock.recv_multipart(copy=False)
        first = first or time.monotonic()
        got += len(frames[-1])
    print(f"{time.monotonic() - first:.4f}", flush=True)
    sock.close(0)
    ctx.term()


def send(endpoint, keyfile, total):
    ctx = zmq.Context()
    with open(keyfile, "rb") as f:
        server_public = f.read().split()[0]
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(f"tcp://{endpoint}")
    chunk = b"z" * CHUNK_BYTES
    sent = 0
    while sent < total:
        n = min(CHUNK_BYTES, total - sent)
        sock.send(chunk[:n])
        sent += n
    sock.close(linger=60000)  # until the server has it all
    ctx.term()


def baseline_s(lab, link, total, workdir):
    """Seconds a plain CurveZMQ DEALER -> ROUTER stream of `total` bytes takes from the link's
    worker namespace to the lab's leader namespace (first byte to last)."""
    keyfile = os.path.join(str(workdir), "curve.keys")
    endpoint = f"{LEADER_IP}:7801"
    server = subprocess.Popen([sys.executable, __file__, "serve", endpoint, keyfile, str(total)],
                              stdout=subprocess.PIPE, text=True,
                              preexec_fn=in_namespace(lab.leader_ns))
    sender = None
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the CurveZMQ baseline's server did not start")
        sender = subprocess.Popen([sys.executable, __file__, "send", endpoint, keyfile,
                                   str(total)], preexec_fn=in_namespace(link.ns))
        seconds = float(server.stdout.readline())
        server.wait(10)
        return seconds
    finally:
        for proc in (sender, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(10)
        server.stdout.close()
        if os.path.exists(keyfile):
            os.unlink(keyfile)


if __name__ == "__main__":
    verb, endpoint, keyfile, total = sys.argv[1:5]
    (serve if verb == "serve" else send)(endpoint, keyfile, int(total))
