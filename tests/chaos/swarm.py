"""Many zpeer WorkerLinks in one process, for reconnect-storm tests (cheaper than 50 daemons).

Usage: python swarm.py LEADER_ADDR LEADER_KEY COUNT HEARTBEAT_S SOURCE_IP
Each link is the real zpeer.daemon.worker.WorkerLink (same socket options, same back-off). It prints
`up N` whenever the number of links with a completed CURVE handshake changes, and exits when
its stdin closes.
"""
import os
import select
import sys
import time

import zmq

from zpeer.daemon.worker import WorkerLink


def main():
    """Run the swarm until stdin closes."""
    leader, key, count, heartbeat_s, source_ip = sys.argv[1:6]
    ctx = zmq.Context()
    links = []
    for i in range(int(count)):
        public, secret = zmq.curve_keypair()
        cfg = {"id": f"swarm{i:03d}", "heartbeat_s": float(heartbeat_s), "leader": leader,
               "leader_key": key, "source_ip": source_ip}
        links.append(WorkerLink(ctx, cfg, public, secret, "swarm"))
    poller = zmq.Poller()
    for link in links:
        poller.register(link.sock, zmq.POLLIN)
        poller.register(link.monitor, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    by_sock = {link.sock: link for link in links}
    by_monitor = {link.monitor: link for link in links}
    shown = None
    while True:
        ready = dict(poller.poll(50))
        if sys.stdin.fileno() in ready and select.select([sys.stdin], [], [], 0)[0]:
            if not os.read(sys.stdin.fileno(), 1):
                break
        for sock in ready:
            if sock in by_monitor:
                by_monitor[sock].on_monitor()
            elif sock in by_sock:
                try:
                    while True:
                        by_sock[sock].receive()
                except zmq.Again:
                    pass
        now = time.monotonic()
        for link in links:
            link.tick(now)
        up = sum(1 for link in links if link.handshake_ok)
        if up != shown:
            shown = up
            print(f"up {up}", flush=True)
    for link in links:
        link.close()
    ctx.term()


if __name__ == "__main__":
    main()
