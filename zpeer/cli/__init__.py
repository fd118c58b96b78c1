"""`d`: the command line. Parses with click, talks to the local daemon over zpeer.wire.ipc,
renders what comes back.

May import zpeer.wire and the shared vocabulary. Imports of zpeer.daemon stay inside the
commands that need it (`d daemon`, `d dbSanityCheck` without a daemon), so `d execOnPeer`
never loads daemon code.
"""
