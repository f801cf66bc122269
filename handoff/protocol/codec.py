"""Messages <-> ZeroMQ frames: a msgpack header, then the blobs' frames untouched.

Header: ``[version, op, [field values...], [frames per blob...]]``, encoded and decoded by
msgspec: rows and argument trees are the typed structs of ``rows.py``, checked in C against each
message's annotations, and a bad field is a ProtocolError naming it. User values that msgpack
cannot carry as they are (a tuple or any other hashable a user picks as a DAG or function id)
travel as pickled ext values; a peer's frames are only decoded after the transport has
authenticated it, and the transport decodes a connection's messages before its hello with
``pickles=False``.
"""

from __future__ import annotations

import pickle
import re
from typing import Any, Callable, Sequence, Union, get_args, get_origin

import msgspec

from handoff.errors import ProtocolError
from handoff.protocol.messages import REGISTRY, VERSION, Dispatch, Done, Fetch, Locate, Message
from handoff.protocol import streams as _streams  # noqa: F401  (registers its messages)
from handoff.protocol.rows import FetchRow, ResultRow, TaskRow, ValueRef

__all__ = ["encode", "decode", "MAX_HEADER"]

MAX_HEADER = 64 * 1024 * 1024  # a header this large is garbage or an attack
_EXT_PICKLE = 1
# user values of these exact types cross as themselves; anything else (tuples, subclasses,
# enums, ...) is pickled so that it arrives as the same object
_PLAIN = frozenset({str, int, float, bool, type(None), bytes})


def _pickled(obj: Any) -> msgspec.msgpack.Ext:
    try:
        return msgspec.msgpack.Ext(_EXT_PICKLE, pickle.dumps(obj, protocol=5))
    except Exception as exc:  # the message would be unusable: say which value
        raise ProtocolError(f"cannot encode {type(obj).__name__} value {obj!r}: {exc}") from None


def _wire(value: Any) -> Any:
    return value if type(value) in _PLAIN else _pickled(value)


def _wire_ref(ref: ValueRef) -> ValueRef:
    if type(ref.dag_id) in _PLAIN and type(ref.key) in _PLAIN:
        return ref
    return msgspec.structs.replace(ref, dag_id=_wire(ref.dag_id), key=_wire(ref.key))


def _wire_tasks(rows: list) -> list:
    out = []
    for row in rows:
        if isinstance(row, TaskRow):
            refs = [_wire_ref(ref) for ref in row.refs]
            row = msgspec.structs.replace(row, function_id=_wire(row.function_id), refs=refs)
        out.append(row)
    return out


def _wire_results(rows: list) -> list:
    out = []
    for row in rows:
        if isinstance(row, ResultRow) and row.lost is not None and type(row.lost.function_id) not in _PLAIN:
            lost = msgspec.structs.replace(row.lost, function_id=_wire(row.lost.function_id))
            row = msgspec.structs.replace(row, lost=lost)
        out.append(row)
    return out


def _wire_fetches(rows: list) -> list:
    return [
        msgspec.structs.replace(row, dag_id=_wire(row.dag_id), key=_wire(row.key))
        if isinstance(row, FetchRow) and (type(row.dag_id) not in _PLAIN or type(row.key) not in _PLAIN)
        else row
        for row in rows
    ]


# the fields of rows that hold user values, per message: (field, rewrite)
_NESTED: dict[type, tuple[str, Callable[[list], list]]] = {
    Dispatch: ("tasks", _wire_tasks),
    Done: ("results", _wire_results),
    Fetch: ("rows", _wire_fetches),
    Locate: ("keys", lambda keys: [_wire(k) for k in keys]),
}


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != _EXT_PICKLE:
        raise ProtocolError(f"unknown msgpack extension {code}")
    return pickle.loads(data)


def _refuse_ext(code: int, data: memoryview) -> Any:
    # unpickling runs code: a sender that may not run code gets no pickled values decoded
    if code != _EXT_PICKLE:
        raise ProtocolError(f"unknown msgpack extension {code}")
    raise ProtocolError("a pickled value is not accepted here")


_encoder = msgspec.msgpack.Encoder(enc_hook=_pickled)
_header = msgspec.msgpack.Decoder(tuple[Any, Any, msgspec.Raw, Any])


class _Layout:
    """How one message type crosses: which top-level fields hold user values, and a decoder of
    its field values per trust level."""

    __slots__ = ("user_fields", "nested", "trusted", "untrusted")

    def __init__(self, cls: type[Message]) -> None:
        self.user_fields = tuple(i for i, t in enumerate(cls._types) if t is Any)
        self.nested = _NESTED.get(cls)
        fields_type = tuple.__class_getitem__(cls._types) if cls._types else tuple[()]
        self.trusted = msgspec.msgpack.Decoder(fields_type, ext_hook=_ext_hook)
        self.untrusted = msgspec.msgpack.Decoder(fields_type, ext_hook=_refuse_ext)


_LAYOUTS = {cls: _Layout(cls) for cls in REGISTRY.values()}


def encode(msg: Message) -> list:
    """Frames for ``msg``: the header, then each blob's frames in order."""
    cls = type(msg)
    layout = _LAYOUTS[cls]
    values = [getattr(msg, name) for name in cls._names]
    for i in layout.user_fields:
        values[i] = _wire(values[i])
    if layout.nested is not None:
        name, rewrite = layout.nested
        i = cls._names.index(name)
        values[i] = rewrite(values[i])
    blobs = getattr(msg, "blobs", None)
    if blobs:
        frames = [_encoder.encode([VERSION, cls.op, values, [len(b) for b in blobs]])]
        for b in blobs:
            frames.extend(b)
        return frames
    return [_encoder.encode([VERSION, cls.op, values, []])]


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
        version, op, packed, lengths = _header.decode(raw)
    except msgspec.ValidationError:
        raise ProtocolError("header is not [version, op, fields, blobs]") from None
    except Exception as exc:
        raise ProtocolError(f"undecodable header: {type(exc).__name__}: {exc}") from None
    if version != VERSION or type(version) is not int:
        raise ProtocolError(f"wire version {version!r}, this node speaks {VERSION}")
    cls = REGISTRY.get(op) if type(op) is str else None
    if cls is None:
        raise ProtocolError(f"unknown message type {op!r}")
    layout = _LAYOUTS[cls]
    try:
        values = (layout.trusted if pickles else layout.untrusted).decode(packed)
    except ProtocolError:
        raise
    except msgspec.ValidationError as exc:
        raise ProtocolError(_describe(cls, str(exc))) from None
    except Exception as exc:
        raise ProtocolError(f"{op}: undecodable fields: {type(exc).__name__}: {exc}") from None
    if type(lengths) is not list or not all(type(n) is int and n >= 0 for n in lengths):
        raise ProtocolError(f"{op}: bad blob lengths")
    if sum(lengths) != len(frames) - 1:
        raise ProtocolError(f"{op}: expected {sum(lengths)} data frames, got {len(frames) - 1}")
    if "blobs" in cls.__dataclass_fields__:
        blobs, pos = [], 1
        for n in lengths:
            blobs.append(list(frames[pos:pos + n]))
            pos += n
        return cls(*values, blobs=blobs)
    if lengths:
        raise ProtocolError(f"{op} carries no data frames")
    return cls(*values)


_PATH = re.compile(r" - at `\$((?:\[\d+\])*)[^`]*`$")


def _describe(cls: type[Message], error: str) -> str:
    """msgspec's error with its path (``$[2][0][1]``) spelt in field names."""
    found = _PATH.search(error)
    what = error[:found.start()] if found else error
    steps = [int(s) for s in re.findall(r"\d+", found.group(1))] if found else []
    if not steps:
        return f"{cls.op}: expected {len(cls._names)} fields: {what}"
    name, kind = cls._names[steps[0]], cls._types[steps[0]]
    for n, step in enumerate(steps[1:], 1):
        kind = _struct_in(kind)
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            step -= kind.__struct_config__.tag is not None  # a tagged row's slot 0 is its tag
            if step < 0:
                name, kind = name + ".<tag>", Any
                continue
            info = msgspec.structs.fields(kind)[step]
            name, kind = f"{name}.{info.name}", info.type
        elif get_origin(kind) is list:
            name, kind = f"{name}[{step}]", get_args(kind)[0]
        else:  # a tree node: which kind of node is in the wire data, not the type
            name += "".join(f"[{s}]" for s in steps[n:])
            break
    return f"{cls.op}: field {name!r}: {what}"


def _struct_in(kind: Any) -> Any:
    """``X | None`` of one struct is that struct (a union of several stays as it is)."""
    if get_origin(kind) is Union or type(kind).__name__ == "UnionType":
        members = [a for a in get_args(kind) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return kind
