"""Messages <-> ZeroMQ frames: a msgpack header, then the blobs' frames untouched.

Header: ``[version, op, [field values...], [frames per blob...]]``. Keys that msgpack cannot
carry (any hashable a user picks as a DAG or function id) travel as pickled ext values; a
peer's frames are only decoded after the transport has authenticated it, and the transport
decodes a connection's messages before its hello with ``pickles=False``.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import msgpack

from handoff.errors import ProtocolError
from handoff.protocol.messages import REGISTRY, VERSION, Message

__all__ = ["encode", "decode", "MAX_HEADER"]

MAX_HEADER = 64 * 1024 * 1024  # a header this large is garbage or an attack
_EXT_PICKLE = 1


def _default(obj: Any) -> Any:
    # strict_types sends tuples, subclasses of plain types and other objects here; pickling
    # them keeps a tuple key a tuple on the other side
    try:
        return msgpack.ExtType(_EXT_PICKLE, pickle.dumps(obj, protocol=5))
    except Exception as exc:  # the message would be unusable: say which value
        raise ProtocolError(f"cannot encode {type(obj).__name__} value {obj!r}: {exc}") from None


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _EXT_PICKLE:
        raise ProtocolError(f"unknown msgpack extension {code}")
    return pickle.loads(data)


def _refuse_ext(code: int, data: bytes) -> Any:
    # unpickling runs code: a sender that may not run code gets no pickled values decoded
    if code != _EXT_PICKLE:
        raise ProtocolError(f"unknown msgpack extension {code}")
    raise ProtocolError("a pickled value is not accepted here")


_packer = msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)


def encode(msg: Message) -> list:
    """Frames for ``msg``: the header, then each blob's frames in order."""
    cls = type(msg)
    values = [getattr(msg, name) for name in cls._names]
    blobs = getattr(msg, "blobs", None)
    if blobs:
        header = _packer.pack([VERSION, cls.op, values, [len(b) for b in blobs]])
        frames = [header]
        for b in blobs:
            frames.extend(b)
        return frames
    return [_packer.pack([VERSION, cls.op, values, []])]


def decode(frames: Sequence[Any], pickles: bool = True) -> Message:
    """The message in ``frames`` (bytes or zmq.Frame); ProtocolError on anything malformed.
    With ``pickles=False`` a pickled value in the header is a ProtocolError, never loaded."""
    if not frames:
        raise ProtocolError("empty message")
    head = frames[0]
    raw = head.bytes if hasattr(head, "bytes") else head
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("header is not bytes")
    if len(raw) > MAX_HEADER:
        raise ProtocolError(f"header of {len(raw)} bytes is too large")
    try:
        header = msgpack.unpackb(
            raw, use_list=True, raw=False, strict_map_key=False,
            ext_hook=_ext_hook if pickles else _refuse_ext,
        )
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable header: {type(exc).__name__}: {exc}") from None
    if not isinstance(header, list) or len(header) != 4:
        raise ProtocolError("header is not [version, op, fields, blobs]")
    version, op, values, lengths = header
    if version != VERSION:
        raise ProtocolError(f"wire version {version!r}, this node speaks {VERSION}")
    cls = REGISTRY.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {op!r}")
    if not isinstance(values, list) or len(values) != len(cls._names):
        raise ProtocolError(f"{op}: expected {len(cls._names)} fields")
    for name, kinds, value in zip(cls._names, cls._kinds, values):
        if not isinstance(value, kinds) or (kinds[0] is int and isinstance(value, bool)):
            raise ProtocolError(f"{op}: field {name!r} has type {type(value).__name__}")
    if not isinstance(lengths, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths
    ):
        raise ProtocolError(f"{op}: bad blob lengths")
    if sum(lengths) != len(frames) - 1:
        raise ProtocolError(f"{op}: expected {sum(lengths)} data frames, got {len(frames) - 1}")
    if lengths and "blobs" not in cls.__dataclass_fields__:
        raise ProtocolError(f"{op} carries no data frames")
    if "blobs" in cls.__dataclass_fields__:
        blobs, pos = [], 1
        for n in lengths:
            blobs.append(list(frames[pos:pos + n]))
            pos += n
        return cls(*values, blobs=blobs)
    return cls(*values)
