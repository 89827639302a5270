"""pylut.kernels - the Python face of the kernel core: quantize float matrices into packed
QMatrix objects, run table-lookup GEMV/GEMM, and choose the ISA and thread count."""
import logging
import os

import numpy as np

from . import _core
from ._core import Dq8Matrix, QMatrix, Tables, ThreadPool  # noqa: F401 (Dq8Matrix, Tables: re-exported by pylut)

log = logging.getLogger("pylut")

TYPE_T3 = _core.TYPE_T3
TYPE_F16 = _core.TYPE_F16
MODES = ("sym", "zp", "ternary", "t3")


# ---------------------------------------------------------------- threads

def physical_cores():
    """Physical cores available to this process (hyperthread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


_pools = {}


def get_pool(n_threads=None):
    """A shared persistent pool with n_threads (default: physical cores)."""
    n = physical_cores() if n_threads is None else int(n_threads)
    if n < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if n not in _pools:
        _pools[n] = ThreadPool(n)
    return _pools[n]


# ---------------------------------------------------------------- ISA

def cpu_features():
    """What this CPU runs and what pylut uses: {'isa', 'best', 'supported', 'flags', 'threads'}."""
    return {
        "isa": _core.isa_active(),
        "best": _core.isa_detect(),
        "supported": _core.isa_supported(),
        "flags": _core.cpu_flags(),
        "physical_cores": physical_cores(),
    }


def ternary_layout(tq=False):
    """How model loaders pack ternary weights on the active ISA by default: 't3' (1.67
    bits/weight, its own kernel) or 'b2' (two bit planes: more bytes, but where T3's kernel
    is slower per weight, as with AVX2, the faster decode). Both are exact.

    tq=True: for TQ1_0/TQ2_0 files, whose fp16 scale every 256 weights makes T3 groups of 256.
    The int8 prompt path takes T3 only in groups of 12n, so where it takes T3 at all (AVX-512
    VBMI) such files stay B2, whose prompts run on it."""
    if _core.ternary_as_planes():
        return "b2"
    if tq:
        probe = _core.QMatrix.from_trits(np.zeros((64, 192), np.int8), np.ones((64, 1), np.float32), group=192)
        if _core.i8_preferred(probe, 128):
            return "b2"
    return "t3"


def set_isa(name):
    """Force a kernel family ('scalar', 'avx2', 'avx512', 'avx512vbmi', 'neon', 'neon_dotprod')."""
    _core.isa_set(name)
    log.info("pylut: kernels set to %s", name)


def _init_isa():
    """Pick the best ISA once; PYLUT_ISA=name forces a lower one (tests, old-CPU checks)."""
    forced = os.environ.get("PYLUT_ISA", "").strip().lower()
    best = _core.isa_detect()
    if forced:
        if forced not in _core.ISA_BY_NAME or forced not in _core.isa_supported():
            log.warning("PYLUT_ISA=%s is not supported here (supported: %s); using %s",
                        forced, ", ".join(_core.isa_supported()), best)
            forced = ""
    _core.isa_set(forced or best)


_init_isa()


# ---------------------------------------------------------------- quantization

def _as_matrix(w):
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [m, k], got shape {w.shape}")
    if w.dtype.kind != "f":
        raise TypeError(f"weights must be floating point, got {w.dtype}")
    w = w.astype(np.float32, copy=False)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or inf")
    return w


def _grouped(w, group):
    m, k = w.shape
    k_pad = -(-k // group) * group
    wp = np.zeros((m, k_pad), np.float32)
    wp[:, :k] = w
    return wp.reshape(m, k_pad // group, group)


def _fp16(a):
    """Round to what the kernel stores, so codes are chosen against the real scale."""
    return a.astype(np.float16).astype(np.float32)


def quantize(w, bits=4, group=None, mode="sym"):
    """Quantize float W[m, k] round-to-nearest into a packed QMatrix (group: weights per
    scale along k; default 128, or 192 for 't3', where a multiple of 6 wastes no padding).

    mode 'sym': W = s*(q - (2^b-1)/2), one fp16 scale per group (the symmetric grid of the
                bit-plane method: no offset term at run time).
    mode 'zp':  W = s*q + min per group (asymmetric, fp16 scale and bias).
    mode 'ternary': W = s*t, t in {-1,0,1}, s = mean |w| per group (BitNet's absmean), stored
                as 2-bit codes t+1 with bias -s.
    mode 't3':  ternary with one absmean scale per group, packed densely (1.67 bits/weight;
                group up to 768, a multiple of 6 avoids padding)."""
    w = _as_matrix(w)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if group is None:
        group = 192 if mode == "t3" else 128
    if mode == "t3":
        if not isinstance(group, (int, np.integer)) or not 6 <= group <= _core.T3_MAX_GROUP:
            raise ValueError(f"t3 group must be in [6, {_core.T3_MAX_GROUP}], got {group!r}")
        m, k = w.shape
        wg = _grouped(w, group)
        s = _fp16(np.abs(wg).sum(axis=2) / np.maximum(1, np.count_nonzero(wg, axis=2)))
        s = np.where(s > 0, s, 1.0).astype(np.float32)
        trits = np.clip(np.rint(wg / s[:, :, None]), -1, 1).reshape(m, -1)[:, :k]
        return QMatrix.from_trits(np.ascontiguousarray(trits.astype(np.int8)), s, group=group)
    if mode == "ternary":
        bits = 2
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits!r}")
    if not isinstance(group, (int, np.integer)) or group % 8 or not _core.MIN_GROUP <= group <= _core.MAX_GROUP:
        raise ValueError(f"group must be a multiple of 8 in [{_core.MIN_GROUP}, {_core.MAX_GROUP}], got {group!r}")
    m, k = w.shape
    wg = _grouped(w, group)
    qmax = (1 << bits) - 1
    if mode == "ternary":
        s = _fp16(np.abs(wg).sum(axis=2) / np.maximum(1, np.count_nonzero(wg, axis=2)))
        s = np.where(s > 0, s, 1.0).astype(np.float32)
        q = np.clip(np.rint(wg / s[:, :, None]), -1, 1) + 1
        bias = -s
    elif mode == "sym":
        h = qmax / 2.0
        if bits == 1:  # sign quantization: the best scale is the mean magnitude
            s = np.abs(wg).mean(axis=2) / h
        else:
            s = np.abs(wg).max(axis=2) / h
        s = _fp16(s).astype(np.float32)
        # the symmetric grid has no zero level ((2^b-1)/2 is a half): an all-zero group keeps
        # scale 0, which makes every code mean 0 (a stand-in scale of 1 loaded it as +-0.5)
        q = np.clip(np.rint(wg / np.where(s > 0, s, 1.0)[:, :, None] + h), 0, qmax)
        bias = None
    else:  # zp
        lo, hi = _fp16(wg.min(axis=2)), wg.max(axis=2)
        s = _fp16((hi - lo) / qmax)
        s = np.where(s > 0, s, 1.0).astype(np.float32)
        q = np.clip(np.rint((wg - lo[:, :, None]) / s[:, :, None]), 0, qmax)
        bias = lo
    codes = np.ascontiguousarray(q.reshape(m, -1)[:, :k].astype(np.uint8))
    return QMatrix.from_codes(codes, s, bias, bits=bits, group=group)


def packed_form(q) -> str:
    """How a QMatrix is packed, as `pylut info` names it: 'F16' (fp16 kept), 'T3' (dense
    ternary), 'B<bits>' (bit planes), with ' 2-level' for K-quant super-block scales."""
    if q.type == TYPE_F16:
        return "F16"
    if q.type == TYPE_T3:
        return "T3"
    return f"B{q.bits}" + (" 2-level" if q.super_block else "")


def packed_types(tensors) -> dict:
    """{packed form: matrices} over a model's tensors (a tied output counted once), most first."""
    counts, seen = {}, set()
    for t in tensors.values():
        if isinstance(t, QMatrix) and id(t) not in seen:
            seen.add(id(t))
            form = packed_form(t)
            counts[form] = counts.get(form, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- GEMV / GEMM

def gemm(qm, x, n_threads=None, pool=None, int8=False, split=False):
    """y = W x for a packed matrix: x float32 [k] -> [m], or [n, k] -> [n, m]. int8=True:
    the prefill kernel (x quantized to int8 per scale group, codes unpacked to bytes) instead
    of the table lookups; B-type matrices, and T3 ones whose group is a multiple of 12 up to 256
    (the ternary loaders' 192). split=True with it: x as two int8 parts, its
    value and the value's rounding residual (~2^-15 of a group's largest value, not 2^-8)."""
    return _core.gemm_multi([qm], x, pool or get_pool(n_threads), int8=int8, split=split)[0]


def gemm_multi(mats, x, n_threads=None, pool=None, int8=False, split=False):
    """Several matrices reading the same x (q/k/v): one table build, one dispatch."""
    return _core.gemm_multi(list(mats), x, pool or get_pool(n_threads), int8=int8, split=split)
