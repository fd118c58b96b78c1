"""zpeer: a brokerless ZeroMQ daemon and its `d` CLI that run commands across a fleet of peers.

Layers, bottom to top; a module imports only from its own layer or the ones below it:

    zpeer.*        shared vocabulary: errors, config, targets, peer records, recipes, logging,
                   version, trace (no sockets, no daemon state)
    zpeer.wire     what crosses a socket: frames, the message schema, channels, keys, the
                   CLI <-> daemon IPC link
    zpeer.daemon   `d daemon`: the event loop, its links to peers, the registry and audit, and
                   the cores that run and follow commands
    zpeer.cli      `d`: commands, the exec client, output sinks, tables, completion, demo

The CLI reaches a daemon only over IPC (zpeer.wire.ipc); it imports zpeer.daemon for `d daemon`
itself and for `d dbSanityCheck` on a node whose daemon is not running. The daemon never
imports zpeer.cli.
"""

__version__ = "0.1.0"
