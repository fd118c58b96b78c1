"""How long an exec has been on its way, measured without comparing two hosts' clocks.

Every message a link sends carries `tx`, the sender's own clock at sending. Each end keeps the
last `tx` it received from the other and when (on its own clock). An exec that leaves a node
carries the stamp of the next hop (`echo`) and how long this node held it (`held`). When the exec
arrives, the next hop reads its own clock:

    its own now - echo     = how long since it sent that stamp (its own clock only)
    - held                 = less the time the stamp spent at the sender (the sender's clock)
                           = an upper bound of the exec's transit (plus the stamp's own transit)

Each hop takes that bound off the exec's `ttl`; a target starts an exec only while its ttl is
left, and the origin never reports a job that was sent and never heard of as failed before that
ttl has passed (zpeer.daemon.origin): so an exec that the origin gave up on never starts later,
whatever held it on the way (a queue behind bulk data, a stopped or suspended target, a TCP
retransmission after an outage). The clock is CLOCK_BOOTTIME, which counts a suspend.
"""
import time

# a bound this far below zero means the stamp is not one of this host's (its clock restarted)
STAMP_SLACK_S = 1.0


def boot_s():
    """This host's clock for stamps: seconds since boot, suspends included."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def transit_s(echo, held, now):
    """An upper bound of how long a message that carries (echo, held) took to get here: None
    when it carries no stamp (a sender from before stamps), infinite when the stamp cannot be one
    of this host's (its clock restarted since): such a message is as old as can be."""
    if not isinstance(echo, (int, float)) or not isinstance(held, (int, float)):
        return None
    bound = (now - echo) - held
    return float("inf") if bound < -STAMP_SLACK_S else max(0.0, bound)


def spend(header, transit):
    """Take a transit bound off an exec's ttl (a sender from before stamps takes nothing)."""
    if transit is not None and isinstance(header.get("ttl"), (int, float)):
        header["ttl"] = header["ttl"] - transit
