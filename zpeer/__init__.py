"""zpeer: a brokerless ZeroMQ daemon and its `d` CLI that run commands across a fleet of peers."""

__version__ = "0.1.0"
