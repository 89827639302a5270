"""The packed-model cache: repacking a GGUF file into bit planes takes seconds, so the result
is written once to an mmap-able file and the next load maps it (a few ms per tensor).

File layout (little-endian), format 8:
    prefix (40 bytes, zero-padded to 64): b"PYLUTPK\\0"  u32 format version  u32 0
        u64 header offset  u64 header bytes  u32 crc32 of the header  u32 0
    buffers, each 64-byte aligned at absolute offsets >= 64, described by the header
    the JSON header, last: [offset, nbytes] per buffer; the file ends where it ends.
The header is a trailer so that a model can be streamed into the file one tensor at a time
(``PackWriter``): nothing but the tensor being converted has to be in memory. A file whose
write was interrupted has header offset 0 and is refused; it is written under a temporary
name and renamed into place only when complete anyway.
Format 7 adds a CRC-32C to every buffer's [offset, nbytes, crc32c] and the source's content
fingerprint. The buffers' CRCs are verified the first time a file is mapped (GB/s on the
CPU's CRC instructions) and the success recorded beside it (``<pack>.verified``: the file's
size, mtime, ctime, inode and header CRC; a cache file just written is recorded at once,
its CRCs having been computed from the bytes written), so later maps skip it; the header's config and tensor
entries are type- and range-checked on every map, and buffers may not overlap.
The cache key is the source file's absolute path, size, mtime and content fingerprint
(``source_fingerprint``: CRC-32Cs of the first 16 MiB, where the metadata and tokenizer
live, the last MiB and 256 samples of 4 KiB between, or of the whole file when small) plus the load options, so an
edited or replaced model file is never served stale, even with its mtime restored. Any
unreadable cache file is logged and rebuilt: a cache is never a reason to fail.
"""
import glob
import hashlib
import json
import logging
import math
import mmap
import os
import struct
import tempfile
import time
import zlib
from typing import Callable, Optional

import numpy as np

from .. import _core
from .._version import __version__
from ..errors import ModelFileError

log = logging.getLogger("pylut")

MAGIC = b"PYLUTPK\0"
# 2: T3 fp16 scales; 3: implied-bias (zero) matrices; 4: two-level scales; 5: header last;
# 6: nibble sub-values ("sub_nibbles" in a matrix's header entry); 7: a CRC-32C per buffer
# and the source's content fingerprint; 8: configs carry the computed RoPE frequencies
# (rope_inv_freq, rope_attn_factor, rope_scaling)
# 9: the config's ffn_act, and bitnet's NEOX RoPE and SiLU (an 8 file may hold a bitnet
# model with the old settings)
# 10: a matrix's float32 post-scale ("post", absent for 1): I2_S's per-tensor scale, which a
# 9 file holds rounded to fp16
FORMAT_VERSION = 10
ALIGN = 64
_HEAD = struct.Struct("<8sII")          # magic, version, 0: the same in every version
_PREFIX = struct.Struct("<8sIIQQII")    # + header offset, header bytes, header crc32, 0
DATA_START = ALIGN
_WRITE_CHUNK = 1 << 26                  # a write() moves at most ~2 GiB on Linux
# Writes reach the file in whole 2 MiB-aligned pieces: Linux page caches (ext4, xfs) then hold
# the file in 2 MiB folios, which the mapping gets as huge pages. Decode weights streamed
# through 4 KiB pages run slower (TLB walks, and the hardware prefetchers stop at every
# 4 KiB page); the figures are in docs/benchmarks.md.
_HUGE = 2 << 20


def cache_dir() -> str:
    """$PYLUT_CACHE_DIR, else $XDG_CACHE_HOME/pylut, else ~/.cache/pylut."""
    d = os.environ.get("PYLUT_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "pylut")
    return d


_WHOLE_FILE = 32 << 20     # files up to this size are hashed whole
_HEAD_BYTES = 16 << 20     # else: the head (GGUF metadata and tokenizer), the tail, samples
_TAIL_BYTES = 1 << 20
_SAMPLES, _SAMPLE_BYTES = 256, 4096
_fingerprints: dict = {}   # (path, size, mtime, ctime, inode) -> fingerprint, within a process


def _file_fingerprint(path: str) -> str:
    """SHA-256 over the size and the CRC-32C of every MiB of the sampled ranges (CRCs in C
    over the mapping: a few ms, where hashing them all took ~0.1 s of each warm load)."""
    st = os.stat(path)
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if memo in _fingerprints:
        return _fingerprints[memo]
    size = st.st_size
    h = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= _WHOLE_FILE:
        ranges = [(0, size)]
    else:
        span = size - _HEAD_BYTES - _TAIL_BYTES
        ranges = [(0, _HEAD_BYTES)] + [(_HEAD_BYTES + span * i // _SAMPLES, _SAMPLE_BYTES)
                                       for i in range(_SAMPLES)] + [(size - _TAIL_BYTES, _TAIL_BYTES)]
    if size:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            data = np.frombuffer(mm, np.uint8)
            crcs = [_core.crc32c(data[at:min(at + (1 << 20), off + n)])
                    for off, n in ranges for at in range(off, off + n, 1 << 20)]
            del data
        finally:
            mm.close()
        h.update(np.asarray(crcs, np.uint32).tobytes())
    _fingerprints[memo] = fp = h.hexdigest()[:32]
    return fp


def source_fingerprint(path: str) -> str:
    """The content fingerprint of a model file (or of every file of a model folder)."""
    if os.path.isdir(path):
        h = hashlib.sha256()
        for f in sorted(os.listdir(path)):
            full = os.path.join(path, f)
            if os.path.isfile(full):
                h.update(f.encode() + b"\0" + _file_fingerprint(full).encode())
        return h.hexdigest()[:32]
    return _file_fingerprint(path)


def _fingerprint_if_any(path: str) -> str:
    try:
        return source_fingerprint(path)
    except OSError:  # a model built in memory: no source to compare with
        return ""


def cache_key(path: str, **options) -> str:
    """A file: its path, size, mtime and content fingerprint; a model folder: the same for
    every file in it."""
    if os.path.isdir(path):
        files = sorted(os.listdir(path))
        stamp = [[f, os.stat(os.path.join(path, f)).st_size, os.stat(os.path.join(path, f)).st_mtime_ns]
                 for f in files if os.path.isfile(os.path.join(path, f))]
    else:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns]
    ident = json.dumps([os.path.abspath(path), stamp, source_fingerprint(path), FORMAT_VERSION,
                        sorted(options.items())])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def cache_path(path: str, **options) -> str:
    name = os.path.basename(os.path.normpath(path))
    return os.path.join(cache_dir(), name + "." + cache_key(path, **options) + ".pylut")


# ---------------------------------------------------------------- writing

class CacheWriteError(OSError):
    """Writing a packed-model file failed (disk full, no permission, ...): the cache's
    problem, never the model's, so ``load_or_build`` falls back to loading without it."""


def _temp_pid(tmp: str) -> Optional[int]:
    # temp names are "<target>.<pid>.<random>.tmp"
    try:
        return int(tmp.rsplit(".", 3)[-3])
    except (IndexError, ValueError):
        return None


def _remove_stale_temps(out_path: str) -> None:
    """A process killed while writing leaves its temp file behind; it is never read (only a
    renamed, complete file is), but it holds disk space: remove those of dead writers."""
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX
        return
    for tmp in glob.glob(glob.escape(out_path) + ".*.tmp"):
        pid = _temp_pid(tmp)
        if pid is None or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue                      # its writer may still be running
        except ProcessLookupError:
            pass
        except OSError:                   # alive, someone else's process
            continue
        try:
            if time.time() - os.path.getmtime(tmp) < 60:  # a writer in another pid namespace?
                continue
            os.unlink(tmp)
            log.info("removed %s, left by an interrupted write", tmp)
        except OSError:
            pass


class PackWriter:
    """Streams a packed model into out_path one tensor at a time (``put`` / ``alias``), so a
    tensor's buffers can be freed as soon as they are written; ``finish`` appends the header
    and renames the temp file into place. Use as a context manager: leaving the block
    without ``finish`` (an exception) removes the temp file. Write failures raise
    CacheWriteError. The loaders take a writer as their ``sink``."""

    def __init__(self, out_path: str):
        self.out_path = os.path.abspath(out_path)
        self.entries: dict = {}
        self._written = 0
        self._staged = bytearray()
        self._f = None
        self.tmp = None
        directory = os.path.dirname(self.out_path)
        try:
            os.makedirs(directory, exist_ok=True)
            _remove_stale_temps(self.out_path)
            fd, self.tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                                            prefix=f"{os.path.basename(self.out_path)}.{os.getpid()}.")
            self._f = os.fdopen(fd, "wb", buffering=0)
            # header offset 0 until finish(): a file cut short says it is incomplete. Written
            # now, and staged again to go out with the first 2 MiB piece.
            prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, 0, 0, 0, 0).ljust(DATA_START, b"\0")
            self._write_all(memoryview(prefix))
            self._f.seek(0)
            self._written = 0
            self._staged += prefix
        except OSError as e:
            self.abort()
            raise CacheWriteError(e.errno, f"cannot create a packed-model file in {directory}: "
                                           f"{e.strerror or e}") from None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.abort()  # a no-op after finish(); else (an exception) the temp file goes

    def _write(self, buf) -> None:
        """Append buf: staged until the file offset is 2 MiB-aligned, then whole 2 MiB
        multiples go straight from buf (no copy)."""
        buf = memoryview(buf).cast("B")
        try:
            while len(buf):
                if self._staged or len(buf) < _HUGE:
                    n = min(len(buf), _HUGE - len(self._staged))
                    self._staged += buf[:n]
                    buf = buf[n:]
                    if len(self._staged) == _HUGE:
                        self._flush()
                    continue
                n = min(len(buf) // _HUGE * _HUGE, _WRITE_CHUNK)
                self._write_all(buf[:n])
                buf = buf[n:]
        except OSError as e:
            raise CacheWriteError(e.errno, f"cannot write {self.tmp}: {e.strerror or e}") from None

    def _flush(self) -> None:
        self._write_all(memoryview(self._staged))
        self._staged = bytearray()

    def _write_all(self, buf) -> None:
        while len(buf):  # an unbuffered write() may take less than it was given
            n = self._f.write(buf)
            self._written += n
            buf = buf[n:]

    @property
    def pos(self) -> int:
        return self._written + len(self._staged)

    def _pad(self) -> None:
        pad = -self.pos % ALIGN
        if pad:
            self._write(bytes(pad))

    def _add(self, arr) -> list:
        """Write one buffer straight from its memory (no tobytes() copy); its [offset, n]."""
        arr = np.ascontiguousarray(arr)
        self._pad()
        start = self.pos
        raw = arr.reshape(-1).view(np.uint8)
        self._write(memoryview(raw))
        return [start, arr.nbytes, _core.crc32c(raw)]

    def put(self, name: str, t) -> None:
        """Write a QMatrix or a float array under name."""
        if name in self.entries:
            raise ValueError(f"tensor {name!r} written twice")
        if isinstance(t, _core.QMatrix):
            e = {"kind": "q", "type": t.type, "m": t.shape[0], "k": t.shape[1], "group": t.group,
                 "has_bias": t.has_bias, "zero": t.zero, "super": t.super_block,
                 "sub_nibbles": t.sub_nibbles, "codes": self._add(t.codes_buf)}
            if t.post != 1.0:
                e["post"] = t.post
            for field in ("scale_buf", "bias_buf", "sub_scale_buf", "sub_bias_buf"):
                buf = getattr(t, field)
                e[field[:-4]] = None if buf is None else self._add(buf)
        else:
            a = np.asarray(t, dtype=np.float32)
            e = {"kind": "f", "shape": list(a.shape), "data": self._add(a)}
        self.entries[name] = e

    def alias(self, name: str, of: str) -> None:
        """name is the same tensor as `of` (the tied output = the embedding): stored once."""
        if of not in self.entries or self.entries[of]["kind"] == "alias":
            raise ValueError(f"alias {name!r} of {of!r}: no such tensor written")
        self.entries[name] = {"kind": "alias", "of": of}

    def finish(self, loaded) -> str:
        """Append the header (the model's metadata from `loaded`, a LoadedModel whose tensors
        went through put/alias), complete the prefix, and rename the file into place."""
        header = json.dumps({
            "pylut": __version__, "format": FORMAT_VERSION, "source": os.path.abspath(loaded.path),
            "config": loaded.config, "arch": loaded.arch, "tensor_types": loaded.tensor_types,
            "n_params": int(loaded.n_params), "bits_per_weight": float(loaded.bits_per_weight),
            "lossy": sorted(loaded.lossy), "tied_output": bool(loaded.tied_output), "tensors": self.entries,
            "source_fingerprint": loaded.source_fingerprint or _fingerprint_if_any(loaded.path),
        }).encode()
        self._pad()
        offset = self.pos
        self._write(header)
        try:
            self._flush()
            self._f.seek(0)
            self._write_all(memoryview(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, offset, len(header),
                                                    zlib.crc32(header), 0)))
            self._f.close()
            self._f = None
            os.replace(self.tmp, self.out_path)
        except OSError as e:
            self.abort()
            raise CacheWriteError(e.errno, f"cannot finish {self.out_path}: {e.strerror or e}") from None
        self.tmp = None
        return self.out_path

    def abort(self) -> None:
        """Drop the unfinished file (idempotent)."""
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


def save(loaded, out_path: str) -> None:
    """Write an in-memory LoadedModel to out_path (atomically: a temp file renamed into
    place). A tensor that is the same object as an earlier one is stored as its alias."""
    by_id = {}
    with PackWriter(out_path) as w:
        for name, t in loaded.tensors.items():
            if id(t) in by_id:  # tied output = the embedding: store once
                w.alias(name, by_id[id(t)])
            else:
                by_id[id(t)] = name
                w.put(name, t)
        w.finish(loaded)


# ---------------------------------------------------------------- reading

class PackFileError(ModelFileError):
    """A packed-model file is corrupt, forged or of another version (a ModelFileError)."""


def _read_header(f, pack_path: str, size: int):
    """(header dict, header offset, header crc) from the open file f, after every check that
    needs no tensor."""
    prefix = f.read(_PREFIX.size)
    if len(prefix) < _HEAD.size:
        raise PackFileError(f"{pack_path}: truncated header")
    magic, version, _ = _HEAD.unpack_from(prefix)
    if magic != MAGIC:
        raise PackFileError(f"{pack_path}: not a pylut packed-model file (bad magic)")
    if version != FORMAT_VERSION:  # before the rest: older versions lay the prefix out differently
        raise PackFileError(f"{pack_path}: packed format version {version}, this pylut reads {FORMAT_VERSION}")
    if len(prefix) < _PREFIX.size:
        raise PackFileError(f"{pack_path}: truncated header")
    _, _, _, hoff, hlen, crc, _ = _PREFIX.unpack(prefix)
    if hoff == 0:
        raise PackFileError(f"{pack_path}: incomplete packed-model file (its write was interrupted)")
    if hoff < DATA_START or hoff % ALIGN or hoff + hlen != size:
        raise PackFileError(f"{pack_path}: header at [{hoff}, +{hlen}) does not end the {size}-byte "
                            f"file (truncated or appended to?)")
    f.seek(hoff)
    raw = f.read(hlen)
    if len(raw) != hlen or zlib.crc32(raw) != crc:
        raise PackFileError(f"{pack_path}: corrupt header (checksum mismatch)")
    try:
        return json.loads(raw), hoff, crc
    except (ValueError, RecursionError) as e:
        raise PackFileError(f"{pack_path}: corrupt header ({e})") from None


def _map(f) -> np.ndarray:
    """The open file f as a read-only uint8 array over a shared mapping, asking for huge
    pages: a page cache rebuilt from disk (after eviction) then reads the file in 2 MiB
    folios."""
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: 4 KiB pages it is
            pass
    return np.frombuffer(m, dtype=np.uint8)


_Q_FIELDS = {"type": int, "m": int, "k": int, "group": int, "has_bias": bool, "super": int, "sub_nibbles": bool}
_Q_BUFFERS = {"codes": np.uint8, "scale": np.uint16, "bias": np.uint16, "sub_scale": None, "sub_bias": np.int8}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_header(pack_path: str, h, data_end: int) -> None:
    """Types and ranges of everything the header says, before anything is built from it: the
    config (loader.check_config), every tensor entry's fields, and every buffer span inside
    the data section, 64-byte aligned, with a CRC, and overlapping no other buffer."""
    from .gguf_model import check_config
    if not isinstance(h, dict) or not isinstance(h.get("tensors"), dict):
        raise PackFileError(f"{pack_path}: header without a tensor table")
    try:
        check_config(h.get("config"), pack_path)
    except ValueError as e:
        raise PackFileError(str(e)) from None
    for key, kind in (("source", str), ("arch", str), ("tensor_types", dict), ("n_params", int),
                      ("bits_per_weight", (int, float)), ("lossy", list), ("tied_output", bool),
                      ("source_fingerprint", str)):
        if not isinstance(h.get(key), kind) or (kind is int and isinstance(h.get(key), bool)):
            raise PackFileError(f"{pack_path}: header field {key!r} = {h.get(key)!r} has the wrong type")
    spans = []
    for name, e in h["tensors"].items():
        kind = e.get("kind") if isinstance(e, dict) else None
        if kind == "alias":
            if (name, e.get("of")) != ("output", "token_embd"):
                raise PackFileError(f"{pack_path}: tensor {name!r} aliases {e.get('of')!r}; only the tied "
                                    f"output may alias the embedding")
            continue
        if kind == "q":
            for f, t in _Q_FIELDS.items():
                v = e.get(f)
                if not isinstance(v, t) or (t is int and (isinstance(v, bool) or not 0 <= v < 1 << 31)):
                    raise PackFileError(f"{pack_path}: tensor {name!r} field {f!r} = {v!r} is invalid")
            z = e.get("zero")
            if z is not None and (not isinstance(z, (int, float)) or isinstance(z, bool) or not abs(z) <= 256):
                raise PackFileError(f"{pack_path}: tensor {name!r} zero = {z!r} is invalid")
            p = e.get("post", 1.0)
            if (not isinstance(p, (int, float)) or isinstance(p, bool) or not math.isfinite(p)
                    or not 0 < abs(p) <= np.finfo(np.float32).max or np.float32(p) == 0):
                raise PackFileError(f"{pack_path}: tensor {name!r} post = {p!r} is invalid")
            bufs = [e.get(b) for b in _Q_BUFFERS]
            if bufs[0] is None:
                raise PackFileError(f"{pack_path}: tensor {name!r} has no codes")
        elif kind == "f":
            shape = e.get("shape")
            if not isinstance(shape, list) or not all(_is_int(d) and 0 < d < 1 << 31 for d in shape):
                raise PackFileError(f"{pack_path}: tensor {name!r} shape {shape!r} is invalid")
            bufs = [e.get("data")]
        else:
            raise PackFileError(f"{pack_path}: tensor {name!r} has unknown kind {kind!r}")
        for span in bufs:
            if span is None:
                continue
            if (not isinstance(span, list) or len(span) != 3 or not all(map(_is_int, span))
                    or span[0] < DATA_START or span[0] % ALIGN or span[1] < 0 or span[0] + span[1] > data_end
                    or not 0 <= span[2] < 1 << 32):
                raise PackFileError(f"{pack_path}: tensor {name!r}: buffer {span!r} lies outside the file's "
                                    f"data or has no CRC")
            spans.append((span[0], span[1], name))
    spans.sort()
    for (a0, an, a_name), (b0, _, b_name) in zip(spans, spans[1:]):
        if a0 + an > b0:
            raise PackFileError(f"{pack_path}: buffers of {a_name!r} and {b_name!r} overlap")


def _verified_stamp(st: os.stat_result, crc: int) -> str:
    return json.dumps([st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, crc])


def _verify_buffers(pack_path: str, h, mm: np.ndarray, stamp: str) -> None:
    """Check every buffer's CRC-32C once per file: a recorded success (`stamp`: the mapped
    file's stat and header CRC, in <pack>.verified) skips it; a failure is a PackFileError."""
    marker = pack_path + ".verified"
    try:
        with open(marker) as f:
            if f.read() == stamp:
                return
    except OSError:
        pass
    t0 = time.perf_counter()
    total = 0
    for name, e in h["tensors"].items():
        for key in ("codes", "scale", "bias", "sub_scale", "sub_bias", "data"):
            span = e.get(key)
            if span is None:
                continue
            off, n, want = span
            got = 0
            for at in range(off, off + n, _HUGE):  # 2 MiB pieces, the GIL released in each
                got = _core.crc32c(mm[at:min(at + _HUGE, off + n)], got)
            if got != want:
                raise PackFileError(f"{pack_path}: tensor {name!r} buffer {key!r} fails its CRC-32C "
                                    f"(corrupt file)")
            total += n
    log.info("verified %s: %.0f MB of buffers in %.3f s (crc32c, %s)", pack_path, total / 1e6,
             time.perf_counter() - t0, _core.crc32c_impl())
    _record_verified(pack_path, stamp)


def _record_verified(pack_path: str, stamp: str = None) -> None:
    if stamp is None:
        with open(pack_path, "rb") as f:
            stamp = _verified_stamp(os.fstat(f.fileno()), _PREFIX.unpack(f.read(_PREFIX.size))[5])
    marker = pack_path + ".verified"
    try:
        with open(marker + f".{os.getpid()}.tmp", "w") as f:
            f.write(stamp)
        os.replace(marker + f".{os.getpid()}.tmp", marker)
    except OSError as e:  # a read-only place: verified again on each map
        log.debug("cannot record the verification of %s: %s", pack_path, e)


def load(pack_path: str, verify: bool = True, check_model: bool = True):
    """Map a packed-model file; returns a LoadedModel (zero-copy views of the mapping).
    verify: check the buffers' CRCs (once per file, see _verify_buffers). check_model: the
    tensors must be the config's model (False: any tensors, for tools that store arrays)."""
    from .gguf_model import LoadedModel
    with open(pack_path, "rb") as f:  # one open: the header, then the mapping
        st = os.fstat(f.fileno())
        h, data_end, header_crc = _read_header(f, pack_path, st.st_size)
        _check_header(pack_path, h, data_end)
        mm = _map(f)
    if verify:
        _verify_buffers(pack_path, h, mm, _verified_stamp(st, header_crc))

    def view(span, dtype):
        if span is None:
            return None
        off, n = span[0], span[1]
        if n % np.dtype(dtype).itemsize:
            raise PackFileError(f"{pack_path}: a buffer's size is not a whole number of elements")
        return mm[off: off + n].view(dtype)

    tensors = {}
    try:
        for name, e in h["tensors"].items():
            if e["kind"] == "q":
                nib = bool(e["sub_nibbles"])
                tensors[name] = _core.QMatrix.from_packed(
                    e["type"], e["m"], e["k"], e["group"], e["has_bias"], view(e["codes"], np.uint8),
                    view(e["scale"], np.uint16), view(e["bias"], np.uint16), e.get("zero"),
                    e["super"], view(e["sub_scale"], np.uint8 if nib else np.int8),
                    view(e["sub_bias"], np.int8), nib, e.get("post"))
            elif e["kind"] == "f":
                tensors[name] = view(e["data"], np.float32).reshape(e["shape"])
        for name, e in h["tensors"].items():
            if e["kind"] == "alias":
                tensors[name] = tensors[e["of"]]
        if check_model:
            _core.Model(h["config"], tensors)  # every tensor's shape fits the config (pointers only)
        return LoadedModel(config=h["config"], tensors=tensors, metadata={}, path=h["source"],
                           arch=h["arch"], tensor_types=h["tensor_types"], n_params=h["n_params"],
                           bits_per_weight=h["bits_per_weight"], lossy=set(h["lossy"]),
                           tied_output=h["tied_output"], source_fingerprint=h["source_fingerprint"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise PackFileError(f"{pack_path}: inconsistent packed model ({e})") from None


def check_source(loaded, pack_path: str) -> None:
    """A packed file's source (where the tokenizer is read) must be the file it was packed
    from: same content fingerprint, else a ModelFileError."""
    if not os.path.exists(loaded.path):
        raise ModelFileError(f"{pack_path}: its source GGUF {loaded.path} is gone; the tokenizer is read "
                             "from it. Put it back or re-run 'pylut convert' from the GGUF.")
    if source_fingerprint(loaded.path) != loaded.source_fingerprint:
        raise ModelFileError(f"{pack_path}: its source {loaded.path} changed since it was packed (content "
                             f"fingerprint differs); re-run 'pylut convert' from the GGUF")


def load_or_build(path: str, build: Callable, use_cache: bool = True, **options):
    """The cached packed model for (path, options), building it when missing.

    build(sink) loads the model: sink None keeps the tensors in memory (the returned
    LoadedModel holds them); a PackWriter receives each tensor as it is converted, so the
    model is streamed into the cache file and then mapped, like any later load, instead of
    ever being in memory whole."""
    if not use_cache:
        return build(None)
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
    try:
        with PackWriter(target) as writer:
            built = build(writer)
            built.source_fingerprint = source_fingerprint(path)
            writer.finish(built)
        # the CRCs were computed from the very bytes just written: recorded as verified, so
        # neither this map nor the next reads the whole file again
        loaded = load(target, verify=False)
        _record_verified(target)
    except (CacheWriteError, PackFileError) as e:
        # what was streamed is gone from memory: load again without the cache
        log.warning("could not write the packed-model cache %s (%s); loading without it", target, e)
        return build(None)
    log.info("wrote packed model cache %s", target)
    loaded.path = os.path.abspath(path)
    loaded.load_seconds = built.load_seconds
    return loaded


def convert(path: str, out_path: str, build: Callable) -> Optional[str]:
    """Stream the packed model of `path` into out_path (the `pylut convert` command);
    build(sink) as for load_or_build."""
    with PackWriter(out_path) as writer:
        writer.finish(build(writer))
    return out_path
