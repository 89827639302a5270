"""The packed-model cache: repacking a GGUF file into bit planes takes seconds, so the result
is written once to an mmap-able file and the next load maps it (a few ms per tensor).

File layout (little-endian):
    b"PYLUTPK\\0"  u32 format version  u32 0  u64 header bytes  JSON header  (pad to 64)
    blobs, each 64-byte aligned, described by the header: [offset, nbytes] per buffer.
The cache key is the source file's absolute path, size and mtime plus the load options, so
an edited or replaced model file is never served stale. Any unreadable cache file is logged
and rebuilt: a cache is never a reason to fail.
"""
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from typing import Callable, Optional

import numpy as np

from . import _core
from ._version import __version__

log = logging.getLogger("pylut")

MAGIC = b"PYLUTPK\0"
FORMAT_VERSION = 4  # 2: T3 fp16 scales; 3: implied-bias (zero) matrices; 4: two-level scales
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")


def cache_dir() -> str:
    """$PYLUT_CACHE_DIR, else $XDG_CACHE_HOME/pylut, else ~/.cache/pylut."""
    d = os.environ.get("PYLUT_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "pylut")
    return d


def cache_key(path: str, **options) -> str:
    """A file: its path, size and mtime; a model folder: the same for every file in it."""
    if os.path.isdir(path):
        files = sorted(os.listdir(path))
        stamp = [[f, os.stat(os.path.join(path, f)).st_size, os.stat(os.path.join(path, f)).st_mtime_ns]
                 for f in files if os.path.isfile(os.path.join(path, f))]
    else:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns]
    ident = json.dumps([os.path.abspath(path), stamp, FORMAT_VERSION, sorted(options.items())])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def cache_path(path: str, **options) -> str:
    name = os.path.basename(os.path.normpath(path))
    return os.path.join(cache_dir(), name + "." + cache_key(path, **options) + ".pylut")


# ---------------------------------------------------------------- writing

def save(loaded, out_path: str) -> None:
    """Write a LoadedModel to out_path (atomically: a temp file renamed into place)."""
    blobs, entries, offset = [], {}, 0
    by_id = {}

    def add(arr):
        nonlocal offset
        arr = np.ascontiguousarray(arr)
        start = offset
        blobs.append((start, arr))
        offset = -(-(offset + arr.nbytes) // ALIGN) * ALIGN
        return [start, arr.nbytes]

    for name, t in loaded.tensors.items():
        if id(t) in by_id:  # tied output = the embedding: store once
            entries[name] = {"kind": "alias", "of": by_id[id(t)]}
            continue
        by_id[id(t)] = name
        if isinstance(t, _core.QMatrix):
            e = {"kind": "q", "type": t.type, "m": t.shape[0], "k": t.shape[1], "group": t.group,
                 "has_bias": t.has_bias, "zero": t.zero, "super": t.super_block, "codes": add(t.codes_buf)}
            for field in ("scale_buf", "bias_buf", "sub_scale_buf", "sub_bias_buf"):
                buf = getattr(t, field)
                e[field[:-4]] = None if buf is None else add(buf)
            entries[name] = e
        else:
            a = np.asarray(t, dtype=np.float32)
            entries[name] = {"kind": "f", "shape": list(a.shape), "data": add(a)}
    header = json.dumps({
        "pylut": __version__, "format": FORMAT_VERSION, "source": os.path.abspath(loaded.path),
        "config": loaded.config, "arch": loaded.arch, "tensor_types": loaded.tensor_types,
        "n_params": int(loaded.n_params), "bits_per_weight": float(loaded.bits_per_weight),
        "lossy": sorted(loaded.lossy), "tied_output": bool(loaded.tied_output), "tensors": entries,
    }).encode()
    data_start = -(-(_PREFIX.size + len(header)) // ALIGN) * ALIGN
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out_path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header)))
            f.write(header)
            for start, arr in blobs:
                f.seek(data_start + start)
                f.write(arr.tobytes())
            f.truncate(data_start + offset)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- reading

class PackFileError(ValueError):
    pass


def load(pack_path: str):
    """Map a packed-model file; returns a LoadedModel (zero-copy views of the mapping)."""
    from .loader import LoadedModel
    size = os.path.getsize(pack_path)
    with open(pack_path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise PackFileError(f"{pack_path}: truncated header")
        magic, version, _, hlen = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise PackFileError(f"{pack_path}: not a pylut packed-model file (bad magic)")
        if version != FORMAT_VERSION:
            raise PackFileError(f"{pack_path}: packed format version {version}, this pylut reads {FORMAT_VERSION}")
        if hlen > size - _PREFIX.size:
            raise PackFileError(f"{pack_path}: header runs past the end of the file")
        try:
            h = json.loads(f.read(hlen))
        except ValueError as e:
            raise PackFileError(f"{pack_path}: corrupt header ({e})") from None
    data_start = -(-(_PREFIX.size + hlen) // ALIGN) * ALIGN
    mm = np.memmap(pack_path, dtype=np.uint8, mode="r")

    def view(span, dtype):
        if span is None:
            return None
        off, n = int(span[0]), int(span[1])
        if off < 0 or n < 0 or data_start + off + n > size or n % np.dtype(dtype).itemsize:
            raise PackFileError(f"{pack_path}: a buffer lies outside the file (truncated?)")
        return mm[data_start + off: data_start + off + n].view(dtype)

    tensors = {}
    try:
        for name, e in h["tensors"].items():
            if e["kind"] == "q":
                tensors[name] = _core.QMatrix.from_packed(
                    e["type"], e["m"], e["k"], e["group"], e["has_bias"], view(e["codes"], np.uint8),
                    view(e["scale"], np.uint16), view(e["bias"], np.uint16), e.get("zero"),
                    e["super"], view(e["sub_scale"], np.int8), view(e["sub_bias"], np.int8))
            elif e["kind"] == "f":
                tensors[name] = view(e["data"], np.float32).reshape(e["shape"])
        for name, e in h["tensors"].items():
            if e["kind"] == "alias":
                tensors[name] = tensors[e["of"]]
        return LoadedModel(config=h["config"], tensors=tensors, metadata={}, path=h["source"],
                           arch=h["arch"], tensor_types=h["tensor_types"], n_params=h["n_params"],
                           bits_per_weight=h["bits_per_weight"], lossy=set(h["lossy"]),
                           tied_output=h["tied_output"])
    except (KeyError, TypeError, ValueError) as e:
        raise PackFileError(f"{pack_path}: inconsistent packed model ({e})") from None


def load_or_build(path: str, build: Callable, use_cache: bool = True, **options):
    """The cached packed model for (path, options), building and saving it when missing."""
    if not use_cache:
        return build()
    target = cache_path(path, **options)
    if os.path.exists(target):
        t0 = time.perf_counter()
        try:
            loaded = load(target)
            loaded.path = os.path.abspath(path)
            log.info("mapped packed model %s in %.3f s", target, time.perf_counter() - t0)
            return loaded
        except (PackFileError, OSError) as e:
            log.warning("ignoring unreadable packed-model cache (%s); rebuilding", e)
    loaded = build()
    try:
        save(loaded, target)
        log.info("wrote packed model cache %s", target)
    except OSError as e:
        log.warning("could not write the packed-model cache %s (%s)", target, e)
    return loaded


def convert(path: str, out_path: str, build: Callable) -> Optional[str]:
    """Write the packed model of `path` to out_path (the `pylut convert` command)."""
    save(build(), out_path)
    return out_path
