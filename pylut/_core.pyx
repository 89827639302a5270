# cython: language_level=3
"""pylut._core - thin wrappers over the C kernel core: thread pool, packed matrices,
activation tables, GEMV/GEMM, the int8 baseline and ISA dispatch.

One extension, written in parts by concern (msgpack's way): this file holds the shared
checks, ISA dispatch, the thread pool and the CRC-32C checksum; the parts are included below, each readable
alone: _attention.pxi (attention, KV codec), _matrices.pxi (QMatrix, Tables, GEMM, int8
baseline), _model.pxi (Model, Session: the forward pass), _bpe.pxi (the
tokenizer's BPE merge loop), _vecops.pxi (the forward pass's element-wise kernels). The C
declarations are all in cpylut.pxd.

Every argument is checked here (dtype, shape, contiguity) and again by the C side (sizes);
every kernel call runs with the GIL released."""
import threading

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int64_t, uint8_t, uint16_t, uint32_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from pylut.cpylut cimport *

cnp.import_array()

ISA_NAMES = {PYLUT_ISA_SCALAR: "scalar", PYLUT_ISA_AVX2: "avx2", PYLUT_ISA_AVX512: "avx512",
             PYLUT_ISA_AVX512VBMI: "avx512vbmi",
             PYLUT_ISA_NEON: "neon", PYLUT_ISA_NEON_DOT: "neon_dotprod"}
ISA_BY_NAME = {v: k for k, v in ISA_NAMES.items()}
TYPE_T3 = PYLUT_TYPE_T3
TYPE_F16 = PYLUT_TYPE_F16
F16_KALIGN = PYLUT_F16_KALIGN
MIN_GROUP = PYLUT_MIN_GROUP
MAX_GROUP = PYLUT_MAX_GROUP
TILE_M = PYLUT_TILE_M
T3_MAX_GROUP = 768
I8_CHUNK = 256  # PYLUT_I8_CHUNK (src/core/kernels.h): the largest group of a T3 matrix on the int8 path


cdef _check(int rc, what):
    if rc == PYLUT_EINVAL:
        raise ValueError(f"{what}: invalid sizes or arguments (rejected by the C kernel core)")
    if rc == PYLUT_ENOMEM:
        raise MemoryError(what)
    if rc == PYLUT_EFULL:
        raise MemoryError(f"{what}: the KV block pool is exhausted (every block is in use; close sessions "
                          f"or raise the pool's max_blocks)")
    if rc != PYLUT_OK:
        raise RuntimeError(f"{what}: error {rc}")


def _array(x, dtype, ndim, name):
    """x as a C-contiguous array of dtype; never silently copy a wrong dtype."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype.name}")
    if x.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return x


def _sized(x, dtype, n, name, unit="entries"):
    """_array(x, dtype, 1, name) holding exactly n elements (a packed buffer's layout size)."""
    x = _array(x, dtype, 1, name)
    if x.size != n:
        raise ValueError(f"{name.split(' (')[0]} has {x.size} {unit}, layout needs {n}")
    return x


# ---------------------------------------------------------------- ISA dispatch

def isa_detect():
    return ISA_NAMES[pylut_isa_detect()]

def isa_active():
    return ISA_NAMES[pylut_isa_active()]

def isa_supported():
    return [name for isa, name in ISA_NAMES.items() if pylut_isa_supported(isa)]

def isa_set(name):
    if name not in ISA_BY_NAME:
        raise ValueError(f"unknown ISA {name!r}; choose from {sorted(ISA_BY_NAME)}")
    if pylut_isa_set(ISA_BY_NAME[name]) != PYLUT_OK:
        raise ValueError(f"ISA {name!r} is not supported by this CPU/build (supported: {isa_supported()})")

def cpu_flags():
    return [f for f in pylut_cpu_flags().decode().split(",") if f]


def sanitize_selftest():
    """Read one byte past a 16-byte heap buffer: planted in tools/sanitize.sh's build only,
    where AddressSanitizer must abort the process with a heap-buffer-overflow report."""
    r = pylut_sanitize_selftest(16)
    if r < 0:
        raise RuntimeError("this build has no planted out-of-bounds read (tools/sanitize.sh "
                           "builds with -DPYLUT_SANITIZE_SELFTEST)")
    return r


# ---------------------------------------------------------------- thread pool

cdef class ThreadPool:
    """A persistent pool of n_threads (the calling thread is one of them)."""
    cdef pylut_pool *pool
    cdef object lock

    def __cinit__(self, int n_threads=1):
        if n_threads < 1 or n_threads > 512:
            raise ValueError(f"n_threads must be in 1..512, got {n_threads}")
        self.pool = pylut_pool_create(n_threads)
        if self.pool == NULL:
            raise MemoryError("could not create the thread pool")
        self.lock = threading.Lock()  # a pool runs one job at a time

    def __dealloc__(self):
        if self.pool != NULL:
            pylut_pool_free(self.pool)
            self.pool = NULL

    @property
    def n_threads(self):
        return pylut_pool_size(self.pool)


def read_bytes(buf, ThreadPool pool):
    """Read every byte of a uint8 array across the pool (read-bandwidth roofline)."""
    buf = _array(buf, np.uint8, 1, "buf")
    if buf.size < 64:
        raise ValueError("buffer too small")
    cdef const uint8_t[::1] bv = buf
    cdef int64_t n = bv.shape[0]
    cdef uint64_t r = 0
    with pool.lock:
        with nogil:
            r = pylut_read_bytes(pool.pool, &bv[0], n)
    return int(r)


# ---------------------------------------------------------------- checksums

def crc32c(buf, crc=0, bint scalar=False):
    """CRC-32C of a contiguous uint8 array (or any buffer of bytes), continuing from `crc`;
    scalar: the portable table version instead of the CPU's CRC instructions. GIL released."""
    cdef const uint8_t[::1] bv = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) \
        else np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    cdef uint32_t c = <uint32_t>(int(crc) & 0xFFFFFFFF)
    cdef size_t n = bv.shape[0]
    if n == 0:
        return int(c)
    with nogil:
        c = pylut_crc32c_scalar(c, &bv[0], n) if scalar else pylut_crc32c(c, &bv[0], n)
    return int(c)


def crc32c_impl():
    """Which CRC-32C path crc32c runs here: 'sse4.2', 'armv8-crc' or 'scalar'."""
    return pylut_crc32c_impl().decode()


# ---------------------------------------------------------------- the parts

include "_attention.pxi"
include "_matrices.pxi"
include "_model.pxi"
include "_bpe.pxi"
include "_vecops.pxi"
