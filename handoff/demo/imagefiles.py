"""Image files without an imaging library: PNG (zlib, no filters) and binary PPM from uint8
RGB arrays, and PNG reading back for checks."""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["png_bytes", "ppm_bytes", "read_png"]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(img: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of a height x width x 3 uint8 array."""
    img = _rgb(img)
    h, w, _ = img.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)  # filter 0
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def ppm_bytes(img: np.ndarray) -> bytes:
    """A binary (P6) PPM of a height x width x 3 uint8 array."""
    img = _rgb(img)
    h, w, _ = img.shape
    return f"P6\n{w} {h}\n255\n".encode() + img.tobytes()


def read_png(data: bytes) -> np.ndarray:
    """An RGB PNG written by ``png_bytes`` (filter 0 rows) back as an array."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h = size
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 3)
    if rows[:, 0].any():
        raise ValueError("PNG rows use filters this reader does not undo")
    return rows[:, 1:].reshape(h, w, 3).copy()


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"an image is a height x width x 3 uint8 array, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)
