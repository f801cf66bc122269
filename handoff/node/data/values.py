"""Values and payloads as frames: pickle protocol 5 with large buffers out of band."""

from __future__ import annotations

import pickle
import sys
from typing import Any, Sequence

import cloudpickle

from handoff.node.data import shm

__all__ = [
    "dumps_value", "loads_value", "dumps_payload", "loads_payload", "dumps_args", "loads_args",
    "blob_nbytes", "OOB_MIN",
    "LocalValue", "is_local", "release_frames", "expand_frames", "has_shared",
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


def dumps_value(obj: Any, shm_owner: str | None = None) -> list:
    """``[pickle bytes, buffer, ...]``; buffers of numpy arrays and the like are not copied.

    With ``shm_owner`` (the file prefix of the node that will own the value), buffers of at least
    ``shm.SHM_MIN`` bytes are written once to shared memory and travel as descriptors.
    """
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OOB_MIN:
            return True
        if shm_owner is not None and raw.nbytes >= shm.SHM_MIN:
            descriptor = shm.write_buffer(raw, shm_owner)
            if descriptor is not None:
                buffers.append(descriptor)
                return False
        buffers.append(raw)
        return False

    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        release_frames([b"", *buffers])
        buffers.clear()
        head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
    return [head, *buffers]


def _view(frame: Any) -> Any:
    if type(frame) is bytes:  # most frames: skip the attribute probe for zmq.Frame
        return frame
    return frame.buffer if hasattr(frame, "buffer") else frame


def _buffer(frame: Any) -> Any:
    return shm.open_descriptor(frame) if shm.is_descriptor(frame) else _view(frame)


def has_shared(frames: Sequence[Any]) -> bool:
    return not is_local(frames) and any(shm.is_descriptor(f) for f in frames[1:])


def release_frames(frames: Sequence[Any]) -> None:
    """Unlink the shared-memory files of a value that is being dropped."""
    if is_local(frames):
        return
    for f in frames[1:]:
        if shm.is_descriptor(f):
            shm.unlink_descriptor(f)


def expand_frames(frames: Sequence[Any]) -> list:
    """The same value with every shared-memory buffer as bytes (mapped, not copied here),
    for a peer on another host."""
    return [frames[0], *(_buffer(f) for f in frames[1:])]


def loads_value(frames: Sequence[Any]) -> Any:
    """The inverse of dumps_value; out-of-band buffers are used in place, not copied."""
    if is_local(frames):
        return frames[0].obj
    return pickle.loads(_view(frames[0]), buffers=[_buffer(f) for f in frames[1:]])


def dumps_payload(code: Any, extra: Sequence[Any] = ()) -> bytes:
    """A callable and arguments bound to it, shipped with cloudpickle (lambdas, closures).

    A task's payload blob is ``[this frame]`` or ``[this frame, dumps_args(extra)]``: the run
    pickles each code object once and each function's own extra arguments apart, so the
    frame (the key of durations and of the workers' code caches) is shared by every
    function that runs the same code."""
    return cloudpickle.dumps((code, list(extra)), protocol=5)


def loads_payload(frame: Any) -> tuple:
    return pickle.loads(_view(frame))


def dumps_args(extra: Sequence[Any]) -> bytes:
    """A function's extra arguments: plain pickle for plain data (numbers, strings, bytes,
    containers of them, numeric arrays; about 10x faster than cloudpickle for small lists),
    cloudpickle for anything else, which may be code that plain pickle would refer to by a
    name the worker cannot resolve (``__main__`` functions, bound methods, lambdas)."""
    extra = list(extra)
    if _SCALARS.issuperset(map(type, extra)) or _plain(extra, [PLAIN_BUDGET]):
        return pickle.dumps(extra, protocol=5)
    return cloudpickle.dumps(extra, protocol=5)


def loads_args(frame: Any) -> list:
    return pickle.loads(_view(frame))


PLAIN_BUDGET = 1000  # objects inspected before giving up and using cloudpickle
_SCALARS = frozenset({int, float, complex, str, bytes, bytearray, bool, type(None)})
_CONTAINERS = frozenset({list, tuple, set, frozenset})


def _plain(obj: Any, budget: list) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind in _CONTAINERS:
        return all(_plain(x, budget) for x in obj)
    if kind is dict:
        return all(_plain(k, budget) and _plain(v, budget) for k, v in obj.items())
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind is numpy.ndarray:
        return not obj.dtype.hasobject
    return False


def blob_nbytes(frames: Sequence[Any]) -> int:
    if not frames:
        return 0
    head = frames[0]
    if type(head) is bytes:  # the common case: a pickle stream, never a descriptor
        total = len(head)
    elif isinstance(head, LocalValue):
        return 0
    else:
        total = _frame_nbytes(head)
    for i in range(1, len(frames)):
        total += _frame_nbytes(frames[i])
    return total


def _frame_nbytes(f: Any) -> int:
    if shm.is_descriptor(f):
        return shm.descriptor_size(f)
    return f.nbytes if isinstance(f, memoryview) else len(f)
