"""Values and payloads as frames: pickle protocol 5 with large buffers out of band."""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import cloudpickle

__all__ = [
    "dumps_value", "loads_value", "dumps_payload", "loads_payload", "blob_nbytes", "OOB_MIN",
    "LocalValue", "is_local",
]

OOB_MIN = 64 * 1024  # smaller buffers stay in the pickle stream: a frame costs more than a copy


class LocalValue:
    """A value kept as a Python object in the node that made it (thread executor); it is
    pickled only if a peer asks for it."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj


def is_local(frames: Sequence[Any]) -> bool:
    return bool(frames) and isinstance(frames[0], LocalValue)


def dumps_value(obj: Any) -> list:
    """``[pickle bytes, buffer, ...]``; buffers of numpy arrays and the like are not copied."""
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OOB_MIN:
            return True
        buffers.append(raw)
        return False

    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        buffers.clear()
        head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
    return [head, *buffers]


def _view(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def loads_value(frames: Sequence[Any]) -> Any:
    """The inverse of dumps_value; out-of-band buffers are used in place, not copied."""
    if is_local(frames):
        return frames[0].obj
    return pickle.loads(_view(frames[0]), buffers=[_view(f) for f in frames[1:]])


def dumps_payload(code: Any, extra: Sequence[Any] = ()) -> bytes:
    """A callable and its extra arguments, shipped with cloudpickle (lambdas, closures)."""
    return cloudpickle.dumps((code, list(extra)), protocol=5)


def loads_payload(frame: Any) -> tuple:
    return pickle.loads(_view(frame))


def blob_nbytes(frames: Sequence[Any]) -> int:
    if is_local(frames):
        return 0
    total = 0
    for f in frames:
        total += f.nbytes if isinstance(f, memoryview) else len(f)
    return total
