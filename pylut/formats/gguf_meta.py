"""Minimal, self-contained GGUF *metadata* reader.

Only the header and the key/value section are parsed; tensor infos and tensor data are
never touched, so this is cheap even for multi-gigabyte model files (the file is memory
mapped and only the first few megabytes -- the vocabulary arrays -- are actually read).

Layout (GGUF v2/v3, little endian):
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64 | n_kv x (key, value_type u32, value)
Strings are a u64 byte length followed by UTF-8 bytes; arrays are an element type u32,
a u64 count and the packed elements.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Dict, Union

import numpy as np

from ..errors import ModelFileError

GGUF_MAGIC = b"GGUF"

# value type id -> (struct format, numpy dtype) for fixed-size scalars
_SCALAR_TYPES = {
    0: ("<B", np.uint8),
    1: ("<b", np.int8),
    2: ("<H", np.uint16),
    3: ("<h", np.int16),
    4: ("<I", np.uint32),
    5: ("<i", np.int32),
    6: ("<f", np.float32),
    7: ("<?", np.bool_),
    10: ("<Q", np.uint64),
    11: ("<q", np.int64),
    12: ("<d", np.float64),
}
_TYPE_STRING = 8
_TYPE_ARRAY = 9

PathLike = Union[str, "os.PathLike[str]"]


class _Cursor:
    """Bounds-checked little-endian reader over a buffer; truncation raises ValueError."""

    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf, path: str) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(
                f"{self.path}: truncated GGUF file (wanted {n} bytes at offset {self.pos}, "
                f"file has {self.size})"
            )

    def unpack(self, fmt: str, size: int):
        self._need(size)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self) -> int:
        return self.unpack("<I", 4)

    def u64(self) -> int:
        return self.unpack("<Q", 8)

    def raw_string(self) -> bytes:
        n = self.u64()
        self._need(n)
        start = self.pos
        self.pos += n
        return bytes(self.buf[start:self.pos])

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")


def _read_string_array(cur: _Cursor, count: int) -> list:
    # Hot path: vocabularies have up to ~250k entries. Binding locals and decoding in a
    # tight loop keeps this around 0.1 s for 150k strings.
    cur._need(8 * count)   # every string takes at least its length field: a forged count
    buf, pos, size = cur.buf, cur.pos, cur.size   # fails here, before the list is allocated
    unpack_from = struct.unpack_from
    out = [None] * count
    for i in range(count):
        if pos + 8 > size:
            cur.pos = pos
            cur._need(8)
        (n,) = unpack_from("<Q", buf, pos)
        pos += 8
        end = pos + n
        if end > size:
            cur.pos = pos
            cur._need(n)
        out[i] = str(buf[pos:end], "utf-8", "replace")
        pos = end
    cur.pos = pos
    return out


def _read_value(cur: _Cursor, vtype: int, depth: int = 0) -> Any:
    if vtype in _SCALAR_TYPES:
        fmt, _ = _SCALAR_TYPES[vtype]
        return cur.unpack(fmt, struct.calcsize(fmt))
    if vtype == _TYPE_STRING:
        return cur.string()
    if vtype == _TYPE_ARRAY:
        if depth > 4:
            raise ModelFileError(f"{cur.path}: GGUF arrays nested too deeply")
        item_type = cur.u32()
        count = cur.u64()
        if item_type in _SCALAR_TYPES:
            fmt, dtype = _SCALAR_TYPES[item_type]
            nbytes = count * np.dtype(dtype).itemsize
            cur._need(nbytes)
            arr = np.frombuffer(cur.buf, dtype=np.dtype(dtype).newbyteorder("<"),
                                count=count, offset=cur.pos).copy()
            cur.pos += nbytes
            return arr
        if item_type == _TYPE_STRING:
            return _read_string_array(cur, count)
        if item_type == _TYPE_ARRAY:
            cur._need(12 * count)   # an inner array takes at least its type and count
            return [_read_value(cur, _TYPE_ARRAY, depth + 1) for _ in range(count)]
        raise ModelFileError(f"{cur.path}: unknown GGUF array element type {item_type}")
    raise ModelFileError(f"{cur.path}: unknown GGUF value type {vtype}")


def read_gguf_metadata(path: PathLike) -> Dict[str, Any]:
    """Return the key/value metadata of a GGUF file as a dict.

    Scalars become Python numbers/bools/str, string arrays become ``list[str]`` and numeric
    arrays become numpy arrays. Also includes ``"GGUF.version"`` and ``"GGUF.tensor_count"``.
    Raises ModelFileError (a ValueError) on a bad magic, an unsupported version or a truncated file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4:
            raise ModelFileError(f"{path}: not a GGUF file (only {size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(mm, path)
    finally:
        mm.close()


def _parse(buf, path: str) -> Dict[str, Any]:
    cur = _Cursor(buf, path)
    cur._need(4)
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    cur.pos = 4
    version = cur.u32()
    if version not in (2, 3):
        raise ModelFileError(f"{path}: unsupported GGUF version {version} (need 2 or 3)")
    n_tensors = cur.u64()
    n_kv = cur.u64()
    meta: Dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.u32()
        meta[key] = _read_value(cur, vtype)
    return meta
