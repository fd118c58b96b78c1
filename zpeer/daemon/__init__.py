"""`d daemon`: one event loop per node serving its CLI socket, its peer link and the commands
it runs.

May import zpeer.wire and the shared vocabulary; never zpeer.cli. The cores (origin sessions,
target jobs) take messages and return actions; only the loop touches sockets.
"""
