"""What crosses a socket: multipart frames, the message schema, keys and join tokens, and the
CLI <-> daemon IPC link.

May import the shared vocabulary (zpeer.errors, zpeer.config) and zmq/msgpack; never
zpeer.daemon or zpeer.cli. No module here holds daemon state.
"""
