"""Reader for the safetensors format, single files and sharded checkpoints.

Layout of one file:
    header_len u64 (little endian) | header: header_len bytes of UTF-8 JSON | data
The JSON object maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
(offsets relative to the start of the data section) plus an optional "__metadata__"
object of string -> string.  A sharded checkpoint adds ``model.safetensors.index.json``
whose "weight_map" maps every tensor name to the shard file holding it.

Files are memory mapped and tensors are exposed as zero-copy numpy views; everything
read from the header is validated first, so malformed files raise ``ModelFileError``.
"""
from __future__ import annotations

import json
import logging
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import ModelFileError
from .mapped_file import MappedFile

logger = logging.getLogger("pylut")

PathLike = Union[str, "os.PathLike[str]"]

# The reference implementation refuses headers above 100 MB; so do we, which also keeps
# a garbage length from making us parse gigabytes as JSON.
MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_FILE_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"

# safetensors dtype -> numpy dtype of one element.  BF16 has no numpy dtype; it is
# exposed as its raw uint16 bit pattern (see SafetensorsFile.to_float32).
DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}

_HINT_CORRUPT = "the file is probably truncated or corrupt; re-download it"


def _reject_duplicates(pairs):
    # json.loads would silently keep the last of two equal tensor names
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


@dataclass(frozen=True)
class SafetensorInfo:
    """One tensor: ``offset`` is absolute in ``path``; ``data`` is a zero-copy uint8 view."""
    name: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int
    nbytes: int
    data: np.ndarray
    path: str

    def array(self) -> np.ndarray:
        """Zero-copy typed view of the tensor (BF16 as its uint16 bit pattern)."""
        return self.data.view(DTYPES[self.dtype]).reshape(self.shape)

    def to_float32(self) -> np.ndarray:
        """A float32 copy (or view, for F32) of a floating-point tensor."""
        if self.dtype == "BF16":
            return (self.data.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(self.shape)
        if self.dtype == "F32":
            return self.array()
        return self.array().astype(np.float32)


class SafetensorsFile(MappedFile):
    """One memory-mapped ``.safetensors`` file.

    Attributes: ``path``, ``metadata`` (the "__metadata__" dict, possibly empty),
    ``tensors`` (OrderedDict name -> SafetensorInfo, in data order).
    """

    EXPECTED = "a safetensors file"

    def __init__(self, path: PathLike) -> None:
        self.metadata: Dict[str, str] = {}
        self.tensors: "OrderedDict[str, SafetensorInfo]" = OrderedDict()
        super().__init__(path)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _error(self, what: str, hint: str = _HINT_CORRUPT) -> ModelFileError:
        return super()._error(what, hint)

    def _parse(self) -> None:
        if self._size < 8:
            raise self._error(f"truncated file: {self._size} bytes, too short for the 8-byte "
                              f"header length")
        header_len = struct.unpack_from("<Q", self._mmap, 0)[0]
        if header_len > self._size - 8:
            raise self._error(f"header length {header_len} runs past the end of the file "
                              f"({self._size} bytes)",
                              "the file is truncated, or not a safetensors file at all")
        if header_len > MAX_HEADER_BYTES:
            raise self._error(f"header length {header_len} exceeds {MAX_HEADER_BYTES} bytes",
                              "the file is corrupt or not a safetensors file")
        raw_header = self._mmap[8:8 + header_len]
        try:
            header = json.loads(raw_header.decode("utf-8"), object_pairs_hook=_reject_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._error(f"header is not valid UTF-8 JSON ({exc})",
                              "the file is corrupt or not a safetensors file") from None
        if not isinstance(header, dict):
            raise self._error(f"header is a JSON {type(header).__name__}, expected an object",
                              "the file is corrupt or not a safetensors file")

        data_start = 8 + header_len
        data_size = self._size - data_start
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise self._error("__metadata__ is not a JSON object", "the file is corrupt")
        self.metadata = {str(k): v for k, v in metadata.items()}

        entries = [self._parse_entry(name, entry, data_size) for name, entry in header.items()]
        entries.sort(key=lambda e: (e[3], e[4]))
        previous_end, previous_name = 0, None
        for name, dtype, shape, begin, end in entries:
            if begin < previous_end:
                raise self._error(f"tensors {previous_name!r} and {name!r} overlap in the data "
                                  f"section", "the file is corrupt")
            if begin > previous_end:
                logger.debug("%s: %d unused bytes before tensor %r", self.path,
                             begin - previous_end, name)
            view = self.slice(data_start + begin, end - begin, f"tensor {name!r}", _HINT_CORRUPT)
            self.tensors[name] = SafetensorInfo(name, dtype, shape, data_start + begin,
                                                end - begin, view, self.path)
            previous_end, previous_name = end, name

    def _parse_entry(self, name: str, entry: Any, data_size: int):
        if not isinstance(entry, dict):
            raise self._error(f"header entry for tensor {name!r} is not an object", "the file is corrupt")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise self._error(f"tensor {name!r} has unknown dtype {dtype!r}",
                              f"supported dtypes are {', '.join(DTYPES)}; convert the checkpoint")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise self._error(f"tensor {name!r} has invalid shape {shape!r}",
                              "expected a list of non-negative integers; the file is corrupt")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise self._error(f"tensor {name!r} has invalid data_offsets {offsets!r}",
                              "expected [begin, end]; the file is corrupt")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise self._error(f"tensor {name!r} data_offsets [{begin}, {end}] are outside the "
                              f"data section of {data_size} bytes", _HINT_CORRUPT)
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        expected = n_elements * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise self._error(f"tensor {name!r} ({dtype}, shape {tuple(shape)}) needs {expected} "
                              f"bytes but its data_offsets span {end - begin}", "the file is corrupt")
        return name, dtype, tuple(shape), begin, end

    def close(self) -> None:
        self.tensors = OrderedDict()
        super().close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self.tensors)} tensors)"


class SafetensorsModel:
    """All tensors of a checkpoint: one file, or the shards named by an index file.

    ``path`` may be a ``.safetensors`` file, a ``*.index.json`` file, or a directory
    holding ``model.safetensors`` or ``model.safetensors.index.json``.
    """

    def __init__(self, path: PathLike) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_FILE_NAME)
            single = os.path.join(path, SINGLE_FILE_NAME)
            if os.path.isfile(index):
                path = index
            elif os.path.isfile(single):
                path = single
            else:
                raise ModelFileError(f"{path}: directory has neither {INDEX_FILE_NAME} nor "
                                     f"{SINGLE_FILE_NAME}; point at the checkpoint directory or file")
        self.path = path
        self.files: List[SafetensorsFile] = []
        self.tensors: "OrderedDict[str, SafetensorInfo]" = OrderedDict()
        self.metadata: Dict[str, Any] = {}
        try:
            if path.endswith(".json"):
                self._open_index(path)
            else:
                self._add_file(SafetensorsFile(path))
                self.metadata = dict(self.files[0].metadata)
        except BaseException:
            self.close()
            raise

    def _add_file(self, shard: SafetensorsFile) -> None:
        self.files.append(shard)
        for name, info in shard.tensors.items():
            if name in self.tensors:
                raise ModelFileError(f"{shard.path}: tensor {name!r} also appears in "
                                     f"{self.tensors[name].path}; the shards are inconsistent, "
                                     f"re-download the checkpoint")
            self.tensors[name] = info

    def _open_index(self, index_path: str) -> None:
        try:
            with open(index_path, "rb") as handle:
                index = json.loads(handle.read().decode("utf-8"))
        except OSError as exc:
            raise ModelFileError(f"{index_path}: cannot open index ({exc.strerror or exc}); "
                                 f"check the path") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelFileError(f"{index_path}: index is not valid JSON ({exc}); "
                                 f"re-download it") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise ModelFileError(f"{index_path}: index has no valid \"weight_map\" object "
                                 f"(tensor name -> shard file name); re-download it")
        self.metadata = dict(index.get("metadata") or {})
        base = os.path.dirname(index_path)
        shard_names = list(OrderedDict.fromkeys(weight_map.values()))
        for shard_name in shard_names:
            if os.path.isabs(shard_name) or ".." in shard_name.replace("\\", "/").split("/"):
                raise ModelFileError(f"{index_path}: shard name {shard_name!r} points outside the "
                                     f"checkpoint directory; refusing to open it")
            shard_path = os.path.join(base, shard_name)
            if not os.path.isfile(shard_path):
                raise ModelFileError(f"{index_path}: shard {shard_name!r} listed in the index is "
                                     f"missing; download all shards into {base or '.'}")
            self._add_file(SafetensorsFile(shard_path))
        for name, shard_name in weight_map.items():
            info = self.tensors.get(name)
            expected_path = os.path.normpath(os.path.join(base, shard_name))
            if info is None or os.path.normpath(info.path) != expected_path:
                raise ModelFileError(f"{index_path}: index places tensor {name!r} in "
                                     f"{shard_name!r} but that shard does not contain it; "
                                     f"the index and shards do not match, re-download them")
        extra = [name for name in self.tensors if name not in weight_map]
        if extra:
            logger.warning("%s: %d tensors present in shards but not in the index (e.g. %r)",
                           index_path, len(extra), extra[0])

    def __getitem__(self, name: str) -> SafetensorInfo:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def drop_pages(self, name: str, offset: Optional[int] = None, nbytes: Optional[int] = None) -> None:
        """Drop tensor `name`'s source pages (or those of [offset, offset+nbytes) of its file)
        from the resident set, once they are converted."""
        info = self.tensors.get(name)
        shard = next((f for f in self.files if info is not None and f.path == info.path), None)
        if shard is not None:
            shard.drop_pages(info.offset if offset is None else offset,
                             info.nbytes if nbytes is None else nbytes)

    def close(self) -> None:
        for shard in self.files:
            shard.close()
        self.files = []
        self.tensors = OrderedDict()

    def __enter__(self) -> "SafetensorsModel":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_safetensors(path: PathLike) -> SafetensorsModel:
    """Open a safetensors checkpoint (file, index JSON or directory)."""
    return SafetensorsModel(path)
