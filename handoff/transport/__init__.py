"""ZeroMQ sockets: peers, workers, and the wire layout."""

from handoff.transport.sockets import Transport

__all__ = ["Transport"]
