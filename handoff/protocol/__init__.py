"""The wire protocol: message declarations and the frame codec."""

from handoff.protocol.codec import decode, encode
from handoff.protocol.messages import REGISTRY, VERSION

__all__ = ["encode", "decode", "REGISTRY", "VERSION"]
