"""What the daemon's handlers and cores ask the loop to do: the one action shape.

Handlers never touch a socket; they return a list of actions, and zpeer.daemon.dispatch carries
them out in order:

    Send(header, data)                      a peer message (routed by header["to"])
    Reply(identity, rid, payload, frames)   the answer to a CLI request held on d.sock;
                                            frames: raw output the payload's events point to
"""
from typing import NamedTuple


class Send(NamedTuple):
    """A message for a peer (this node included), with its data frame or None."""

    header: dict
    data: object = None


class Reply(NamedTuple):
    """The answer to a CLI request."""

    identity: bytes
    rid: str
    payload: dict
    frames: tuple = ()
