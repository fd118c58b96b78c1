"""How many heartbeat intervals of silence mean what, on every node.

A worker redials a leader silent for REDIAL_SILENCE_BEATS intervals; the leader takes a peer
silent for 3 off its table; a link silent for JOBS_SILENCE_BEATS loses the jobs across it
(its node says "Lost the leader"). An origin's own limit for a target lies past that, so that a
dead leader is reported as such, whatever the interval.
"""

REDIAL_SILENCE_BEATS = 2
JOBS_SILENCE_BEATS = 4
ORIGIN_SLACK_S = 0.5  # the origin's limit: the link's, plus this
RESEND_AFTER_BEATS = 2  # what a receiver lacks this long after it went goes again (both ways)


def origin_limit_s(heartbeat_s):
    """No word from a target for this long means it is gone."""
    return JOBS_SILENCE_BEATS * heartbeat_s + ORIGIN_SLACK_S


def resend_after_s(heartbeat_s):
    """Output or stdin not had this long after it was sent goes again: each side's alive, which
    says what it has, comes every interval."""
    return RESEND_AFTER_BEATS * heartbeat_s
