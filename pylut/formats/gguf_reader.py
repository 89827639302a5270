"""GGUF model file reader (format versions 2 and 3, little endian).

The file is memory mapped; tensor payloads are exposed as zero-copy ``numpy.uint8``
views into the mapping, so opening a multi-gigabyte model costs only the header parse.

Layout:
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv      x (key: string, value_type u32, value)
    n_tensors x (name: string, n_dims u32, dims u64[n_dims] (innermost first),
                 ggml_type u32, offset u64 (relative to the data section))
    padding to ``general.alignment`` (default 32), then the tensor data section.
Strings are a u64 byte count followed by UTF-8 bytes; arrays are an element type u32,
a u64 count and the packed elements.

Every length, count and offset read from the file is checked against the file size
before it is used, so a corrupt or truncated file raises ``ModelFileError`` (with the
file name, what is wrong and a hint) instead of reading out of bounds or allocating
absurd amounts of memory.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ModelFileError
from .mapped_file import MappedFile, drop_mapped_pages  # noqa: F401 (drop_mapped_pages: re-exported)

logger = logging.getLogger("pylut")

PathLike = Union[str, "os.PathLike[str]"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                 # ggml tensors have at most 4 dimensions
MAX_TENSORS = 1_000_000      # far beyond any real model; guards against garbage counts
MAX_KV = 1_000_000
MAX_ARRAY_NESTING = 8

# ggml type id -> (name, elements per block, bytes per block).  Checked against
# gguf.constants.GGML_QUANT_SIZES in the tests.  Ids 4, 5, 31-33 and 36-38 belonged to
# formats that ggml has removed; files using them must be re-converted.
GGML_TYPES: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
GGML_TYPE_IDS: Dict[str, int] = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}
# bitnet.cpp's I2_S is not a block type: one float32 scale per tensor follows its codes, so a
# tensor of n weights spans n/4 + 32 bytes (formats.quants, "I2_S"). Upstream ggml reused the
# id for a removed type, so only bitnet.cpp's files carry it.
I2S_TYPE_ID = 36

# metadata value type id -> (struct format, numpy dtype) for fixed-size scalars
_SCALAR_VALUE_TYPES = {
    0: ("<B", np.dtype("<u1")),
    1: ("<b", np.dtype("<i1")),
    2: ("<H", np.dtype("<u2")),
    3: ("<h", np.dtype("<i2")),
    4: ("<I", np.dtype("<u4")),
    5: ("<i", np.dtype("<i4")),
    6: ("<f", np.dtype("<f4")),
    7: ("<?", np.dtype("?")),
    10: ("<Q", np.dtype("<u8")),
    11: ("<q", np.dtype("<i8")),
    12: ("<d", np.dtype("<f8")),
}
_VALUE_TYPE_STRING = 8
_VALUE_TYPE_ARRAY = 9
_VALUE_TYPE_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32",
                     6: "FLOAT32", 7: "BOOL", 8: "STRING", 9: "ARRAY", 10: "UINT64",
                     11: "INT64", 12: "FLOAT64"}

_HINT_REDOWNLOAD = "the file is probably truncated or corrupt; re-download or re-convert it"


def ggml_type_info(type_name: str) -> Tuple[int, int]:
    """(elements per block, bytes per block) for a ggml type name such as "Q4_K"."""
    try:
        _, block_elems, block_bytes = GGML_TYPES[GGML_TYPE_IDS[type_name]]
    except KeyError:
        raise ValueError(f"unknown ggml type name {type_name!r}; known: {sorted(GGML_TYPE_IDS)}") from None
    return block_elems, block_bytes


def tensor_nbytes(type_name: str, shape: Tuple[int, ...]) -> int:
    """Bytes taken by a tensor of ``shape`` (numpy order) stored as ``type_name``."""
    n_elements = int(np.prod(shape, dtype=object)) if shape else 1
    if type_name == "I2_S":
        return n_elements // 4 + 32
    block_elems, block_bytes = ggml_type_info(type_name)
    return n_elements // block_elems * block_bytes


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file.

    ``shape`` is in numpy order (outermost first, i.e. the GGUF dims reversed), so a
    weight matrix with ``out_features`` rows of ``in_features`` reads as (out, in).
    ``offset`` is the absolute byte offset in the file; ``data`` is a zero-copy uint8
    view of the ``nbytes`` raw bytes (still block-encoded for quantized types).
    """
    name: str
    shape: Tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    nbytes: int
    data: np.ndarray

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


_U64 = struct.Struct("<Q")


class _Cursor:
    """Sequential little-endian reader over the mapped file; every read is bounds checked.

    ``section`` names the part of the file being parsed so that truncation errors can
    say where the file ends unexpectedly.
    """

    def __init__(self, buf: mmap.mmap, size: int, path: str) -> None:
        self.buf = buf
        self.size = size
        self.path = path
        self.pos = 0
        self.section = "header"

    def fail(self, what: str, hint: str = _HINT_REDOWNLOAD) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what} (in the {self.section}, at byte offset "
                              f"{self.pos} of {self.size}); {hint}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated file: {what} needs {n} bytes but only "
                            f"{max(self.size - self.pos, 0)} remain")

    def remaining(self) -> int:
        return self.size - self.pos

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def raw_string(self, what: str) -> bytes:
        length = self.u64(f"length of {what}")
        if length > self.remaining():
            raise self.fail(f"{what} claims a length of {length} bytes, which runs past the end "
                            f"of the file ({self.remaining()} bytes remain)")
        data = self.buf[self.pos:self.pos + length]
        self.pos += length
        return data

    def strings(self, count: int, what: str) -> List[str]:
        """`count` strings in a row (a vocabulary: up to ~250k of them), read as ``string``
        with strict=False would; the error text is built only when a read fails."""
        buf, pos, size, unpack_from = self.buf, self.pos, self.size, _U64.unpack_from
        out: List[str] = [""] * count
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"length of element {i} of {what}")
            (length,) = unpack_from(buf, pos)
            pos += 8
            if length > size - pos:
                self.pos = pos
                raise self.fail(f"element {i} of {what} claims a length of {length} bytes, which runs "
                                f"past the end of the file ({size - pos} bytes remain)")
            data = buf[pos:pos + length]
            pos += length
            try:
                out[i] = data.decode("utf-8")
            except UnicodeDecodeError:
                out[i] = data.decode("utf-8", "surrogateescape")  # see string()
        self.pos = pos
        return out

    def string(self, what: str, strict: bool) -> str:
        data = self.raw_string(what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if strict:
                raise self.fail(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            # Vocabulary entries of some tokenizers are raw byte sequences; keep them
            # losslessly (s.encode("utf-8", "surrogateescape") gives the bytes back).
            return data.decode("utf-8", "surrogateescape")


class GGUFFile(MappedFile):
    """A memory-mapped GGUF file.

    Attributes: ``path``, ``version``, ``metadata`` (key -> value; numeric arrays are
    numpy arrays, string arrays are lists), ``tensors`` (OrderedDict name -> TensorInfo,
    in file order), ``alignment``, ``data_offset`` (absolute start of the data section),
    ``architecture``.  Use as a context manager or call ``close()``.
    """

    EXPECTED = "a GGUF model file"

    def __init__(self, path: PathLike) -> None:
        self.version = 0
        self.metadata: Dict[str, Any] = {}
        self.metadata_types: Dict[str, int] = {}
        self.tensors: "OrderedDict[str, TensorInfo]" = OrderedDict()
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        super().__init__(path)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public API
    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.metadata

    def close(self) -> None:
        """Release the mapping.  Views handed out earlier keep it alive until they die."""
        self.tensors = OrderedDict()
        super().close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, arch={self.architecture!r}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        cur = _Cursor(self._mmap, self._size, self.path)
        self._parse_header(cur)
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key/value count")
        # Each KV entry needs at least 8 (key length) + 4 (value type) + 1 bytes, each
        # tensor info at least 8 + 4 + 4 + 8; a count that cannot fit is garbage.
        if n_tensors > MAX_TENSORS or n_tensors * 24 > cur.remaining():
            raise cur.fail(f"absurd tensor count {n_tensors}")
        if n_kv > MAX_KV or n_kv * 13 > cur.remaining():
            raise cur.fail(f"absurd metadata key/value count {n_kv}")

        cur.section = "metadata key/value section"
        for index in range(n_kv):
            self._parse_kv(cur, index)
        self._apply_alignment()

        cur.section = "tensor info section"
        infos = [self._parse_tensor_info(cur, index) for index in range(n_tensors)]

        # The data section starts at the first aligned offset after the tensor infos.
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        if n_tensors and self.data_offset > self._size:
            raise self._error(f"truncated file: tensor data section should start at byte "
                              f"{self.data_offset} but the file has {self._size} bytes",
                              _HINT_REDOWNLOAD)
        self._place_tensors(infos)
        logger.debug("opened %r", self)

    def _parse_header(self, cur: _Cursor) -> None:
        if self._size < 4 or self._mmap[:4] != GGUF_MAGIC:
            found = bytes(self._mmap[:4])
            raise self._error(f"bad magic {found!r}, expected {GGUF_MAGIC!r}",
                              "this is not a GGUF file (safetensors/PyTorch checkpoints must be "
                              "converted with llama.cpp's convert_hf_to_gguf.py first)")
        cur.pos = 4
        version = cur.u32("format version")
        if version not in SUPPORTED_VERSIONS:
            if version == 1:
                hint = "GGUF v1 is obsolete; re-convert the model with a current llama.cpp"
            elif version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                hint = "this looks like a big-endian GGUF file; only little-endian files are supported"
            else:
                hint = "supported versions are 2 and 3; the file may be corrupt or from a newer tool"
            raise self._error(f"unsupported GGUF version {version}", hint)
        self.version = version

    def _parse_kv(self, cur: _Cursor, index: int) -> None:
        key = cur.string(f"key of metadata entry #{index}", strict=True)
        if key in self.metadata:
            raise cur.fail(f"duplicate metadata key {key!r}", "the file is corrupt; re-convert it")
        value_type = cur.u32(f"value type of metadata key {key!r}")
        self.metadata[key] = self._parse_value(cur, value_type, key, depth=0)
        self.metadata_types[key] = value_type

    def _parse_value(self, cur: _Cursor, value_type: int, key: str, depth: int) -> Any:
        scalar = _SCALAR_VALUE_TYPES.get(value_type)
        if scalar is not None:
            value = cur.scalar(scalar[0], f"value of metadata key {key!r}")
            return value
        if value_type == _VALUE_TYPE_STRING:
            return cur.string(f"string value of metadata key {key!r}", strict=False)
        if value_type == _VALUE_TYPE_ARRAY:
            return self._parse_array(cur, key, depth)
        raise cur.fail(f"metadata key {key!r} has unknown value type {value_type}",
                       "the file is corrupt or uses a newer GGUF revision")

    def _parse_array(self, cur: _Cursor, key: str, depth: int) -> Any:
        if depth >= MAX_ARRAY_NESTING:
            raise cur.fail(f"metadata key {key!r} nests arrays more than {MAX_ARRAY_NESTING} deep",
                           "the file is corrupt")
        elem_type = cur.u32(f"array element type of metadata key {key!r}")
        count = cur.u64(f"array length of metadata key {key!r}")
        scalar = _SCALAR_VALUE_TYPES.get(elem_type)
        if scalar is not None:
            dtype = scalar[1]
            nbytes = count * dtype.itemsize
            if nbytes > cur.remaining():
                raise cur.fail(f"array of metadata key {key!r} claims {count} elements "
                               f"({nbytes} bytes), which runs past the end of the file")
            # Copy so that metadata never pins the mapping (close() can then unmap).
            if elem_type == 7:  # bool: any non-zero byte is true, as in C
                values = np.frombuffer(self._mmap, np.uint8, count=count, offset=cur.pos) != 0
            else:
                values = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=cur.pos)
                values = values.astype(dtype.newbyteorder("="), copy=True)
            cur.pos += nbytes
            return values
        if elem_type in (_VALUE_TYPE_STRING, _VALUE_TYPE_ARRAY):
            # every element needs at least its 8-byte length / 12-byte array header
            min_size = 8 if elem_type == _VALUE_TYPE_STRING else 12
            if count * min_size > cur.remaining():
                raise cur.fail(f"array of metadata key {key!r} claims {count} elements, which "
                               f"runs past the end of the file")
            if elem_type == _VALUE_TYPE_STRING:
                return cur.strings(count, f"metadata array {key!r}")
            return [self._parse_array(cur, key, depth + 1) for _ in range(count)]
        raise cur.fail(f"metadata array {key!r} has unknown element type {elem_type}",
                       "the file is corrupt or uses a newer GGUF revision")

    def _apply_alignment(self) -> None:
        if "general.alignment" not in self.metadata:
            return
        alignment = self.metadata["general.alignment"]
        value_type = self.metadata_types["general.alignment"]
        if (value_type not in (0, 2, 4, 10) or alignment <= 0
                or alignment & (alignment - 1) or alignment > 1 << 30):
            raise self._error(f"general.alignment = {alignment!r} "
                              f"({_VALUE_TYPE_NAMES.get(value_type, value_type)}) is invalid",
                              "it must be an unsigned power of two; the file is corrupt")
        self.alignment = int(alignment)

    def _parse_tensor_info(self, cur: _Cursor, index: int) -> Tuple[str, Tuple[int, ...], int, int]:
        name = cur.string(f"name of tensor #{index}", strict=True)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (ggml allows at most "
                           f"{MAX_DIMS})", "the file is corrupt")
        dims = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
        ggml_type = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"data offset of tensor {name!r}")
        return name, tuple(reversed(dims)), ggml_type, offset

    def _place_tensors(self, infos: List[Tuple[str, Tuple[int, ...], int, int]]) -> None:
        """Validate types, sizes and offsets, then build the zero-copy views."""
        data_size = self._size - self.data_offset
        spans = []
        for name, shape, ggml_type, rel_offset in infos:
            if name in self.tensors:
                raise self._error(f"duplicate tensor name {name!r}", "the file is corrupt; re-convert it")
            if ggml_type not in GGML_TYPES and ggml_type != I2S_TYPE_ID:
                raise self._error(f"tensor {name!r} has unknown ggml type id {ggml_type}",
                                  "the type may be a removed legacy format (re-convert the model "
                                  "with a current llama.cpp) or the file is corrupt")
            n_elements = 1
            for dim in shape:
                n_elements *= dim
            if ggml_type == I2S_TYPE_ID:
                if n_elements % 128:
                    raise self._error(f"tensor {name!r} of type I2_S has shape {shape}: its "
                                      f"{n_elements} weights are not whole blocks of 128",
                                      "the file is corrupt or was written by a broken converter")
                type_name, nbytes = "I2_S", tensor_nbytes("I2_S", shape)
            else:
                type_name, block_elems, block_bytes = GGML_TYPES[ggml_type]
                row = shape[-1] if shape else 1
                if row % block_elems or n_elements % block_elems:
                    raise self._error(f"tensor {name!r} of type {type_name} has shape {shape}: the "
                                      f"row length {row} (element count {n_elements}) is not a "
                                      f"multiple of the block size {block_elems}",
                                      "the file is corrupt or was written by a broken converter")
                nbytes = n_elements // block_elems * block_bytes
            if rel_offset % self.alignment:
                raise self._error(f"tensor {name!r} data offset {rel_offset} is not a multiple "
                                  f"of the alignment {self.alignment}", "the file is corrupt")
            if rel_offset > data_size or nbytes > data_size - rel_offset:
                raise self._error(f"truncated file: tensor {name!r} ({type_name}, shape {shape}, "
                                  f"{nbytes} bytes at data offset {rel_offset}) runs past the end "
                                  f"of the file ({data_size} bytes of tensor data present)",
                                  _HINT_REDOWNLOAD)
            start = self.data_offset + rel_offset
            view = self.slice(start, nbytes, f"tensor {name!r}", _HINT_REDOWNLOAD)
            self.tensors[name] = TensorInfo(name, shape, ggml_type, type_name, start, nbytes, view)
            spans.append((start, nbytes, name))

        spans.sort()
        for (start_a, size_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
            if start_a + size_a > start_b:
                raise self._error(f"tensors {name_a!r} and {name_b!r} overlap (bytes "
                                  f"{start_a}..{start_a + size_a} and {start_b}..)",
                                  "the file is corrupt")


def open_gguf(path: PathLike) -> GGUFFile:
    """Convenience alias for ``GGUFFile(path)``."""
    return GGUFFile(path)


def read_gguf_metadata(path: PathLike) -> Dict[str, Any]:
    """A GGUF file's key/value metadata as a dict (string arrays as ``list[str]``, numeric
    arrays as numpy arrays), plus ``"GGUF.version"`` and ``"GGUF.tensor_count"``; the whole
    header is checked as GGUFFile checks it, and the mapping is released before returning."""
    with GGUFFile(path) as f:
        meta = dict(f.metadata)
        meta["GGUF.version"] = f.version
        meta["GGUF.tensor_count"] = len(f.tensors)
    return meta
