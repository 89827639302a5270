"""pylut.formats.gguf_model - a GGUF model file -> weights wired for the C forward pass (`_core.Model`).

    lm = load_gguf("model.gguf")
    model = lm.build()                       # _core.Model(lm.config, lm.tensors)

Matrices become packed ``QMatrix`` objects:

* integer-grid block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K) keep their codes and
  their per-group scale/bias (``quants.decode_codes``).  The kernel stores scale/bias as
  fp16: lossless for the legacy types, rounded for most K-quant groups (those tensors are
  listed in ``LoadedModel.lossy``).
* ternary TQ1_0/TQ2_0: the trits are packed densely as T3 (1.67 bits/weight) with the
  file's fp16 scale per 256-weight block: exact. bitnet.cpp's I2_S: the trits exactly, and
  its one float32 scale per tensor exactly too, as the matrix's float32 post-scale.
* F32/F16/BF16: ternary-valued matrices (what llama.cpp's BitNet converter writes) go to T3
  exactly; any other float matrix is quantized round-to-nearest with ``pylut.quantize``, or
  with ``bits="f16"`` kept as an F16 matrix (``keep_f16``: F16 exactly, BF16/F32 rounded).

Norm weights and biases stay float32 vectors.  Everything is copied out of the file, so the
mapping is closed before ``load_gguf`` returns.

Tensors go to a *sink* as they are converted: by default a dict (``LoadedModel.tensors``);
``packcache`` passes a ``PackWriter`` instead, which writes each one to the packed-model
file so the model is never in memory whole. Either way each tensor's source pages are
dropped from the resident set once it is converted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import _core
from .. import arch as archs
from . import quants
from ..errors import ModelFileError
from ..options import F16
from .gguf_config import (LONGROPE_TENSORS, SUPPORTED_ARCHS, _fail, _gemma_config, _read_config,  # noqa: F401
                          _rope_freqs, _rope_scaling, _window, check_config)
from .gguf_reader import GGUFFile, TensorInfo
from ..kernels import quantize

log = logging.getLogger("pylut")

MATRIX_TYPES = quants.SUPPORTED_TYPES + (quants.I2S_TYPE,)
DEFAULT_FLOAT_GROUP = 128
T3_KEY = "t3/g12"  # the packcache's name for how t3_group() picks (a pack of an older choice is rebuilt)


def t3_group(k: int) -> int:
    """The T3 group of a one-scale ternary matrix with k columns: a multiple of 12 from 96 to
    256 (whole pairs of triples and k-groups: the int8 prefill path takes it; not smaller, each
    group costs a float epilogue a token), the one that pads k least, the largest of those.
    2B4T: k 2560 -> 216 (2592 columns, where 192 padded to 2688), 6912 -> 216."""
    return min(range(96, 257, 12), key=lambda g: (-(-k // g) * g, -g))
TERNARY_LAYOUTS = ("t3", "b2")  # dense 1.67-bit packing, or two bit planes (codes 0..2, zero 1)


def _ternary(trits: np.ndarray, scale: np.ndarray, group: int, layout: str) -> _core.QMatrix:
    """Trits [m, k] in {-1, 0, 1} with scale [m, groups] -> QMatrix in the chosen layout;
    both hold the same weights exactly. B2's groups stop at MAX_GROUP (a larger ternary
    group's scale repeats over its pieces)."""
    if layout == "t3":
        return _core.QMatrix.from_trits(trits, scale, group=group)
    g = next((d for d in range(_core.MAX_GROUP, _core.MIN_GROUP - 1, -8) if group % d == 0), None)
    if g is None:
        raise ValueError(f"ternary group {group} has no B2 split (a multiple of 8 up to {_core.MAX_GROUP})")
    scale = np.repeat(scale, group // g, axis=1)
    codes = (trits + np.int8(1)).view(np.uint8)
    return _core.QMatrix.from_codes(codes, scale, None, bits=2, group=g, zero=1.0)



@dataclass
class LoadedModel:
    """What ``load_gguf`` read: ``config`` and ``tensors`` are ``_core.Model``'s arguments."""
    config: dict[str, Any]
    tensors: dict[str, Any]            # core name -> QMatrix or float32 vector
    metadata: dict[str, Any]           # the GGUF key/value metadata (tokenizer included)
    path: str
    arch: str
    tensor_types: dict[str, str]       # core name -> GGUF type name in the file
    n_params: int                      # elements of every tensor used (tied output once)
    bits_per_weight: float             # packed bytes * 8 / elements, over the matrices
    lossy: set[str] = field(default_factory=set)   # matrices whose scales fp16 rounded
    tied_output: bool = False          # output.weight absent: the embedding is reused
    load_seconds: float = 0.0
    source_fingerprint: str = ""       # packcache.source_fingerprint of the file it came from
    name: str | None = None            # what the model is called; None: the source file's name

    def build(self) -> _core.Model:
        return _core.Model(self.config, self.tensors)


class MemorySink:
    """The default tensor sink: keeps every converted tensor in ``tensors``. A sink has
    put(name, tensor) and alias(name, of) (name is the same tensor as `of`)."""

    def __init__(self):
        self.tensors: dict[str, Any] = {}

    def put(self, name: str, tensor: Any) -> None:
        self.tensors[name] = tensor

    def alias(self, name: str, of: str) -> None:
        self.tensors[name] = self.tensors[of]


# ---------------------------------------------------------------- expected tensors

@dataclass(frozen=True)
class _Spec:
    gguf_name: str
    core_name: str
    shape: tuple[int, ...]             # the file tensor's
    matrix: bool
    required: bool = True
    rows: Optional[tuple[int, int]] = None   # the core matrix is rows [r0, r1) of the tensor


def _fused_specs(p: str, cfg: dict[str, Any], fused_qkv: bool) -> list[_Spec]:
    """phi3's matrices (arch.py `fused`): q/k/v from attn_qkv's rows where the file has it,
    gate and up from the two halves of ffn_up."""
    dim, ffn = cfg["dim"], cfg["ffn_dim"]
    q_dim, kv_dim = cfg["n_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"]
    if fused_qkv:
        qkv = (q_dim + 2 * kv_dim, dim)
        specs = [_Spec(p + "attn_qkv.weight", p + "attn_q", qkv, True, rows=(0, q_dim)),
                 _Spec(p + "attn_qkv.weight", p + "attn_k", qkv, True, rows=(q_dim, q_dim + kv_dim)),
                 _Spec(p + "attn_qkv.weight", p + "attn_v", qkv, True, rows=(q_dim + kv_dim, q_dim + 2 * kv_dim))]
    else:
        specs = [_Spec(p + "attn_q.weight", p + "attn_q", (q_dim, dim), True),
                 _Spec(p + "attn_k.weight", p + "attn_k", (kv_dim, dim), True),
                 _Spec(p + "attn_v.weight", p + "attn_v", (kv_dim, dim), True)]
    return specs + [_Spec(p + "ffn_up.weight", p + "ffn_gate", (2 * ffn, dim), True, rows=(0, ffn)),
                    _Spec(p + "ffn_up.weight", p + "ffn_up", (2 * ffn, dim), True, rows=(ffn, 2 * ffn))]


def _expected(cfg: dict[str, Any], fused_qkv: bool = False) -> list[_Spec]:
    dim, ffn, vocab = cfg["dim"], cfg["ffn_dim"], cfg["vocab"]
    q_dim = cfg["n_heads"] * cfg["head_dim"]
    kv_dim = cfg["n_kv_heads"] * cfg["head_dim"]
    spec = archs.spec(cfg["arch"])
    specs = [_Spec("token_embd.weight", "token_embd", (vocab, dim), True),
             _Spec("output_norm.weight", "output_norm", (dim,), False)]
    if spec.output == "optional":
        specs.append(_Spec("output.weight", "output", (vocab, dim), True, required=False))
    for layer in range(cfg["n_layers"]):
        p = f"blk.{layer}."
        specs += [_Spec(p + "attn_norm.weight", p + "attn_norm", (dim,), False),
                  _Spec(p + "attn_output.weight", p + "attn_output", (dim, q_dim), True),
                  _Spec(p + "ffn_norm.weight", p + "ffn_norm", (dim,), False),
                  _Spec(p + "ffn_down.weight", p + "ffn_down", (dim, ffn), True)]
        if spec.fused:
            specs += _fused_specs(p, cfg, fused_qkv)
        else:
            specs += [_Spec(p + "attn_q.weight", p + "attn_q", (q_dim, dim), True),
                      _Spec(p + "attn_k.weight", p + "attn_k", (kv_dim, dim), True),
                      _Spec(p + "attn_v.weight", p + "attn_v", (kv_dim, dim), True),
                      _Spec(p + "ffn_gate.weight", p + "ffn_gate", (ffn, dim), True),
                      _Spec(p + "ffn_up.weight", p + "ffn_up", (ffn, dim), True)]
        if spec.qkv_bias != "none":
            for name, size in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
                specs.append(_Spec(p + name + ".bias", p + name + ".bias", (size,), False,
                                   required=spec.qkv_bias == "required"))
        if spec.qk_norm:
            specs += [_Spec(p + "attn_q_norm.weight", p + "attn_q_norm", (cfg["head_dim"],), False),
                      _Spec(p + "attn_k_norm.weight", p + "attn_k_norm", (cfg["head_dim"],), False)]
        if spec.sub_norms:
            specs += [_Spec(p + "attn_sub_norm.weight", p + "attn_sub_norm", (q_dim,), False),
                      _Spec(p + "ffn_sub_norm.weight", p + "ffn_sub_norm", (ffn,), False)]
        if spec.gemma:
            specs += [_Spec(p + "post_attention_norm.weight", p + "attn_post_norm", (dim,), False),
                      _Spec(p + "post_ffw_norm.weight", p + "ffn_post_norm", (dim,), False)]
    return specs


def _refuse_foreign(f: GGUFFile, cfg: dict[str, Any]) -> None:
    """Tensors the architecture has no place for but that would change the model if they
    were meant (llama.cpp refuses such a file too): an output head where it is tied, q/k/v
    biases where it has none."""
    spec = archs.spec(cfg["arch"])
    names = []
    if spec.output == "tied":
        names.append("output.weight")
    if spec.qkv_bias == "none":
        names += [f"blk.{l}.attn_{x}.bias" for l in range(cfg["n_layers"]) for x in ("q", "k", "v", "qkv")]
    for name in names:
        if name in f.tensors:
            raise _fail(f.path, f"tensor {name!r} has no place in the {cfg['arch']} architecture "
                                f"(its LM head is token_embd and it has no q/k/v biases; llama.cpp "
                                f"refuses this file too)")


# ---------------------------------------------------------------- tensor conversion

# K-quant block layouts: bytes per 256-weight super-block, offset of fp16 d, of fp16 dmin
_K_SUPER = {"Q2_K": (84, 80, 82), "Q3_K": (110, 108, None), "Q4_K": (144, 0, 2),
            "Q5_K": (176, 0, 2), "Q6_K": (210, 208, None)}


def _k_super(info: TensorInfo, q: quants.QuantCodes):
    """Two-level form of a K-quant: (d, sub_scale, dmin, sub_bias, zero) with scale = d *
    sub_scale and bias = dmin * sub_bias (or -zero * scale) exactly, or None."""
    size, d_off, dmin_off = _K_SUPER[q.type_name]
    m, k = q.codes.shape
    blocks = info.data.reshape(m, k // 256, size)
    field = lambda off: np.ascontiguousarray(blocks[:, :, off:off + 2]).view("<f2")[..., 0].astype(np.float32)  # noqa: E731
    gps = 256 // q.group

    def sub_values(full, level):
        lv = np.repeat(level, gps, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(lv != 0, full / lv, 0.0)
        if not np.all(np.isfinite(v)) or np.any((v < -128) | (v > 127)) or not np.array_equal(np.rint(v), v):
            return None
        v = v.astype(np.int8)
        return v if np.array_equal(lv * v.astype(np.float32), full) else None

    d = field(d_off)
    sc = sub_values(q.scale, d)
    if sc is None:
        return None
    if dmin_off is None:  # Q3_K, Q6_K: bias = -2^(b-1) * scale
        zero = float(1 << (q.bits - 1))
        return (d, sc, None, None, zero) if np.array_equal(q.bias, q.scale * np.float32(-zero)) else None
    dmin = field(dmin_off)
    mn = sub_values(q.bias, dmin)
    return None if mn is None else (d, sc, dmin, mn, None)


def _nibbles_fit(q: quants.QuantCodes, sc: np.ndarray, mn: np.ndarray | None) -> bool:
    """Q2_K's sub-scales and mins are 4-bit in the file, so they fit the nibble form (0.5
    bit/weight less); the 6-bit ones of Q4_K/Q5_K rarely would, and a matrix whose row pieces
    chose different forms is converted again whole, so those stay int8."""
    return (q.type_name == "Q2_K" and mn is not None and bool(np.all((sc >= 0) & (sc <= 15)))
            and bool(np.all((mn >= -15) & (mn <= 0))))


def _ternary_magnitude(w: np.ndarray) -> float | None:
    """s when w only holds -s, 0 and +s, 0.0 when w is all zero, else None."""
    s = float(np.abs(w).max()) if w.size else 0.0
    if not np.isfinite(s):
        return None
    magnitude = np.abs(w)
    return s if np.all((magnitude == s) | (magnitude == 0)) else None


def _ternary_float(info, rows: int) -> float | None:
    """s when a float matrix only holds -s, 0 and +s (a ternarized float matrix), else None;
    read `rows` rows at a time, so only a piece of it is ever decoded to float32."""
    found = set()
    for r0 in range(0, info.shape[0], rows):
        _, raw, shape = _row_slice(info, r0, r0 + rows)
        s = _ternary_magnitude(quants.decode_float(raw, info.type_name, shape))
        if s is None:
            return None
        if s:
            found.add(s)
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------- row pieces

# A big matrix is converted PIECE_WEIGHTS at a time (whole 64-row tiles): decoding makes a
# byte or a float per weight plus their scales, so converting the 32000 x 2048 Q6_K output
# of a 1B model at once took ~250 MB of temporaries; pieces bound them to a few MB, and
# each piece's source pages are dropped as soon as it is packed. Small pieces also keep
# glibc's adaptive mmap threshold low: with 4M-weight pieces ~16 MB of freed temporaries
# stayed in the heap (and resident) after the load; 256K costs no measurable time.
PIECE_WEIGHTS = 1 << 18
_BUFFERS = ("codes_buf", "scale_buf", "bias_buf", "sub_scale_buf", "sub_bias_buf")


def _rows_per_piece(m: int, k: int) -> int:
    tile = _core.TILE_M
    return max(tile, PIECE_WEIGHTS // max(1, k) // tile * tile) if m > tile else m


def _row_slice(info, r0: int, r1: int):
    """(file offset, raw bytes, shape) of rows [r0, r1) of a 2-D tensor's encoded data."""
    m, k = info.shape
    r1 = min(r1, m)
    row_bytes = info.nbytes // m
    return info.offset + r0 * row_bytes, info.data[r0 * row_bytes: r1 * row_bytes], (r1 - r0, k)


def _rows_info(info, r0: int, r1: int):
    """The TensorInfo (or SafetensorInfo) of rows [r0, r1) of info: a view, no copy."""
    offset, data, shape = _row_slice(info, r0, r1)
    return dataclasses.replace(info, shape=shape, offset=offset, nbytes=data.nbytes, data=data)


def _form(q: _core.QMatrix) -> tuple:
    return ((q.type, q.group, q.has_bias, q.zero, q.super_block, q.sub_nibbles, q.post)
            + tuple(getattr(q, b) is None for b in _BUFFERS))


def by_rows(info, convert: Callable, release: Callable | None = None) -> _core.QMatrix | None:
    """convert(info of some rows) -> QMatrix, applied to pieces of PIECE_WEIGHTS weights and
    assembled: every buffer of the layout is row-tile-major, so a piece of whole 64-row tiles
    packs into one contiguous slice of each. release(offset, nbytes) is told each piece's
    source range once it is packed. None when the pieces chose different forms (e.g. one
    piece's K-quant scales fit the two-level form and another's don't): convert it whole."""
    m, k = info.shape
    rows = _rows_per_piece(m, k)
    if rows >= m:
        return convert(info)
    tiles = -(-m // _core.TILE_M)
    bufs = form = None
    for r0 in range(0, m, rows):
        part = convert(_rows_info(info, r0, r0 + rows))
        if form is None:
            form = _form(part)
            per_tile = {b: getattr(part, b).size // (rows // _core.TILE_M) for b in _BUFFERS
                        if getattr(part, b) is not None}
            bufs = {b: np.empty(n * tiles, getattr(part, b).dtype) for b, n in per_tile.items()}
        elif _form(part) != form:
            return None
        t0 = r0 // _core.TILE_M
        for b, n in per_tile.items():
            src = getattr(part, b)
            bufs[b][t0 * n: t0 * n + src.size] = src
        del part
        if release is not None:
            offset, data = _row_slice(info, r0, r0 + rows)[:2]
            release(offset, data.nbytes)
    get = bufs.get
    return _core.QMatrix.from_packed(form[0], m, k, form[1], form[2], get("codes_buf"), get("scale_buf"),
                                     get("bias_buf"), form[3], form[4], get("sub_scale_buf"),
                                     get("sub_bias_buf"), form[5], form[6])


def ternary_one_scale(trits: np.ndarray, scale: float, ternary: str) -> _core.QMatrix:
    """Trits [m, k] times one scale for the whole matrix (BitNet's ternary floats, I2_S),
    both exactly: an fp16-exact scale as the group scales, any other as group scales of 1
    and the matrix's float32 post-scale (QMatrix.set_post), a multiply after the kernel
    (about 1 % of a prompt: only where fp16 would round)."""
    scale = np.float32(scale)
    m, k = trits.shape  # one scale per row: any group; B2 takes the largest that divides k
    g = t3_group(k) if ternary == "t3" else next((d for d in (256, 128, 64, 32) if k % d == 0), 256)
    k_pad = -(-k // g) * g
    exact = np.float32(np.float16(scale)) == scale
    q = _ternary(trits, np.full((m, k_pad // g), scale if exact else 1, np.float32), g, ternary)
    if not exact:
        q.set_post(scale)
    return q


def keep_f16(w: np.ndarray, lossy: set[str], core_name: str) -> _core.QMatrix:
    """Float weights [m, k] as an F16 matrix (bits="f16"): F16 sources exactly; BF16/F32 ones
    rounded to fp16, the matrix listed in `lossy` where any value changed. Values past fp16's
    range are refused (ValueError), never saturated."""
    q = _core.QMatrix.from_f16(w)
    if w.dtype != np.float16 and core_name not in lossy and not np.array_equal(
            w.astype(np.float16).astype(w.dtype), w):
        lossy.add(core_name)
        log.debug("%s: float weights rounded to fp16", core_name)
    return q


def _check_bits(bits) -> None:
    if not (isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and 1 <= bits <= 8) and bits != F16:
        raise ValueError(f"bits must be in 1..8 or {F16!r}, got {bits!r}")


def _matrix(info: TensorInfo, bits: int, group: int, multiplier: float,
            lossy: set[str], core_name: str, ternary_s: float | None = None, ternary: str = "t3"):
    """One GGUF matrix (or rows of one) -> QMatrix; multiplier folds a separate per-tensor
    scale in. ternary_s: for float types, the magnitude when the matrix is ternary.
    ternary: the layout of ternary matrices (TERNARY_LAYOUTS)."""
    type_name = info.type_name
    if type_name == quants.I2S_TYPE:  # info.data: the code bytes; the file's scale is in multiplier
        trits = quants.decode_i2s(info.data, info.shape).view(np.int8) - np.int8(1)
        return ternary_one_scale(trits, multiplier, ternary)
    if type_name in quants.FLOAT_TYPES:
        w = quants.decode_float(info.data, type_name, info.shape)
        if ternary_s is not None:
            return ternary_one_scale(np.sign(w).astype(np.int8), ternary_s * multiplier, ternary)
        if multiplier != 1.0:
            w = w * np.float32(multiplier)
        if bits == F16:
            return keep_f16(w, lossy, core_name)
        return quantize(w, bits=bits, group=group)

    q = quants.decode_codes(info.data, type_name, info.shape)
    if q.ternary and q.codes.size and int(q.codes.max()) <= 2 and 6 <= q.group <= _core.T3_MAX_GROUP:
        # the trits with the file's own per-block scales (dense T3 or B2 planes): lossless
        trits = q.codes.view(np.int8) - np.int8(1)
        scale = q.scale * np.float32(multiplier)
        if not np.array_equal(scale.astype(np.float16).astype(np.float32), scale):
            lossy.add(core_name)
        return _ternary(trits, scale, q.group, ternary)
    if q.group % 8 or not _core.MIN_GROUP <= q.group <= _core.MAX_GROUP:
        raise ValueError(f"group {q.group} of {type_name} does not fit the kernel")
    if type_name in _K_SUPER and multiplier == 1.0:
        two = _k_super(info, q)
        if two is not None:  # exact, and ~0.5-1 bit/weight smaller than fp16 per group
            d, sc, dmin, mn, zero = two
            return _core.QMatrix.from_codes_super(q.codes, d, sc, dmin, mn, bits=q.bits, group=q.group,
                                                  super_=256, zero=zero, nibbles=_nibbles_fit(q, sc, mn))
    scale, bias = q.scale, q.bias
    if multiplier != 1.0:
        scale, bias = scale * np.float32(multiplier), bias * np.float32(multiplier)
        q = quants.QuantCodes(q.codes, q.bits, q.group, scale, bias, q.ternary, type_name)
    if not quants.fp16_exact(q) and core_name not in lossy:  # (once, not once per piece)
        lossy.add(core_name)
        log.info("%s (%s): per-group scales/biases rounded to fp16 for the kernel",
                 info.name, type_name)
    zero = float(1 << (q.bits - 1))  # Q4_0, Q5_0, Q8_0, Q3_K, Q6_K: bias = -2^(b-1) * scale
    if np.array_equal(bias, scale * np.float32(-zero)):
        return _core.QMatrix.from_codes(q.codes, scale, None, bits=q.bits, group=q.group, zero=zero)
    return _core.QMatrix.from_codes(q.codes, scale, bias, bits=q.bits, group=q.group)


def _convert_matrix(f: GGUFFile, info: TensorInfo, bits: int, group: int, multiplier: float,
                    requant: str | None, lossy: set[str], core_name: str, ternary: str = "t3") -> _core.QMatrix:
    """_matrix (or requant's quantize) by row pieces, dropping source pages as it goes."""
    whole = False
    if info.type_name == quants.I2S_TYPE:
        # the codes go by row pieces like a block type's (rows are whole 128-weight blocks
        # when the row length is a multiple of 128; otherwise the tensor converts whole), and
        # the one float32 scale after them becomes the multiplier
        codes, scale = quants.i2s_split(info.data, info.shape)
        multiplier *= scale
        info = dataclasses.replace(info, data=codes, nbytes=codes.size)
        whole = info.shape[-1] % quants.I2S_BLOCK != 0
    if requant is not None:
        lossy.add(core_name)

        def convert(part):
            if part.type_name == quants.I2S_TYPE:
                w = (quants.decode_i2s(part.data, part.shape).view(np.int8) - np.int8(1)) * np.float32(multiplier)
            else:
                w = quants.dequantize(part.data, part.type_name, part.shape) * np.float32(multiplier)
            return quantize(w, **REQUANT[requant])
    else:
        ternary_s = None
        if info.type_name in quants.FLOAT_TYPES:
            ternary_s = _ternary_float(info, _rows_per_piece(*info.shape))

        def convert(part):
            return _matrix(part, bits, group, multiplier, lossy, core_name, ternary_s, ternary)
    q = None if whole else by_rows(info, convert, f.drop_pages)
    return convert(info) if q is None else q


def _vector(info: TensorInfo) -> np.ndarray:
    v = quants.dequantize(info.data, info.type_name, info.shape).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("contains NaN or inf")
    return np.ascontiguousarray(v, dtype=np.float32)


def _scalar_multiplier(f: GGUFFile, gguf_name: str) -> float:
    """BitNet files may carry a separate one-element scale beside a matrix (attn_q.scale)."""
    name = gguf_name[: -len(".weight")] + ".scale"
    info = f.tensors.get(name)
    if info is None:
        return 1.0
    if info.type_name not in quants.SUPPORTED_TYPES or info.n_elements != 1:
        raise _fail(f.path, f"tensor {name!r} ({info.type_name}, shape {info.shape}) should be "
                            f"a single float scale")
    return float(quants.dequantize(info.data, info.type_name, info.shape).reshape(-1)[0])


# ---------------------------------------------------------------- entry point

# requant name -> pylut.quantize arguments: every matrix is dequantized and quantized again
# round-to-nearest (lossy: the point is fewer bytes per token; see tools/requant_quality.py)
REQUANT = {
    "q4": dict(bits=4, group=32, mode="zp"),
    "q3": dict(bits=3, group=32, mode="zp"),
    "q2": dict(bits=2, group=32, mode="zp"),
    "ternary": dict(bits=2, group=192, mode="t3"),
}


def load_gguf(source, bits: int = 4, group: int | None = None, requant: str | None = None,
              sink=None, ternary: str = "t3") -> LoadedModel:
    """Read a llama / qwen2 / bitnet GGUF file into packed matrices for ``_core.Model``.

    source: the file's path, or a GGUFFile already open (left open: its owner closes it).

    bits, group: how float (F32/F16/BF16) matrices are quantized (bits "f16": kept as fp16,
    see keep_f16; group then unused); block-quantized tensors
    keep their own grid unless ``requant`` (one of REQUANT) asks to requantize every matrix.
    sink: where each converted tensor goes (see MemorySink); when given, the returned
    LoadedModel's ``tensors`` is empty and the sink holds (or has written) them.
    ternary: how ternary matrices (TQ1_0/TQ2_0, ternary-valued floats) are packed, 't3'
    (1.67 bits/weight) or 'b2' (two bit planes, 2.06 with TQ's scales); both are exact, the
    faster one depends on the ISA (pylut.kernels.ternary_layout()).
    Raises ModelFileError naming the file and the problem."""
    if ternary not in TERNARY_LAYOUTS:
        raise ValueError(f"ternary must be one of {', '.join(TERNARY_LAYOUTS)}, got {ternary!r}")
    if requant is not None and requant not in REQUANT:
        raise ValueError(f"requant must be one of {', '.join(REQUANT)}, got {requant!r}")
    if group is None:
        group = DEFAULT_FLOAT_GROUP
    _check_bits(bits)
    if not isinstance(group, (int, np.integer)) or group % 8 or not _core.MIN_GROUP <= group <= _core.MAX_GROUP:
        raise ValueError(f"group must be a multiple of 8 in [{_core.MIN_GROUP}, {_core.MAX_GROUP}], "
                         f"got {group!r}")
    start = time.perf_counter()
    given = isinstance(source, GGUFFile)
    path = source.path if given else os.fspath(source)
    with contextlib.nullcontext(source) if given else GGUFFile(path) as f:
        arch = f.architecture
        if arch not in SUPPORTED_ARCHS:
            raise _fail(path, f"unsupported architecture {arch!r} (general.architecture); "
                              f"supported: {', '.join(SUPPORTED_ARCHS)}")
        cfg = _read_config(f, arch)
        embd = f.tensors.get("token_embd.weight")
        if embd is None:
            raise _fail(path, "missing tensor 'token_embd.weight' (the token embedding)")
        if len(embd.shape) != 2:
            raise _fail(path, f"tensor 'token_embd.weight' has shape {embd.shape}, expected "
                              f"(vocab, {cfg['dim']})")
        cfg["vocab"] = int(embd.shape[0])
        _rope_scaling(f, cfg)
        if archs.spec(arch).gemma:
            _gemma_config(f.metadata, path, cfg)
        check_config(cfg, path)
        specs = _expected(cfg, fused_qkv="blk.0.attn_qkv.weight" in f.tensors)
        _refuse_foreign(f, cfg)

        # Check everything before the (slower) conversion, so a bad file fails fast.
        for spec in specs:
            info = f.tensors.get(spec.gguf_name)
            if info is None:
                if spec.required:
                    raise _fail(path, f"missing tensor {spec.gguf_name!r} (needed by {arch} "
                                      f"with {cfg['n_layers']} layers)")
                continue
            if tuple(info.shape) != spec.shape:
                raise _fail(path, f"tensor {spec.gguf_name!r} has shape {tuple(info.shape)}, "
                                  f"expected {spec.shape} from the hyperparameters")
            if spec.matrix and info.type_name not in MATRIX_TYPES:
                raise _fail(path, f"tensor {spec.gguf_name!r} has type {info.type_name}, which "
                                  f"pylut cannot load; supported matrix types: "
                                  f"{', '.join(MATRIX_TYPES)}")
            if not spec.matrix and info.type_name not in quants.SUPPORTED_TYPES:
                raise _fail(path, f"tensor {spec.gguf_name!r} has unsupported type {info.type_name}")

        memory = MemorySink() if sink is None else None
        out = memory or sink
        tensor_types: dict[str, str] = {}
        lossy: set[str] = set()
        n_params = packed_bytes = matrix_params = 0
        used = {n for n in ("rope_freqs.weight",) + LONGROPE_TENSORS if n in f.tensors}
        for spec in specs:
            info = f.tensors.get(spec.gguf_name)
            if info is None:
                continue
            used.add(spec.gguf_name)
            if spec.rows is not None:  # a fused tensor's part: its rows are a view of the file
                info = _rows_info(info, *spec.rows)
            try:
                if spec.matrix:
                    multiplier = _scalar_multiplier(f, spec.gguf_name)
                    if multiplier != 1.0:
                        used.add(spec.gguf_name[: -len(".weight")] + ".scale")
                    t = _convert_matrix(f, info, bits, group, multiplier, requant, lossy, spec.core_name,
                                        ternary)
                    packed_bytes += t.nbytes
                    matrix_params += t.shape[0] * t.shape[1]
                else:
                    t = _vector(info)
            except (ValueError, TypeError) as exc:
                if isinstance(exc, ModelFileError):
                    raise
                raise _fail(path, f"tensor {spec.gguf_name!r} ({info.type_name}, shape "
                                  f"{tuple(info.shape)}) cannot be loaded: {exc}") from exc
            out.put(spec.core_name, t)
            del t  # a streaming sink has written it: its buffers go now
            f.drop_pages(info.offset, info.nbytes)
            tensor_types[spec.core_name] = info.type_name
            n_params += info.n_elements
        tied = "output" not in tensor_types
        if tied:
            out.alias("output", "token_embd")
            tensor_types["output"] = tensor_types["token_embd"]
        unused = sorted(set(f.tensors) - used)
        if unused:
            log.debug("%s: unused tensors: %s", path, ", ".join(unused))
        metadata = dict(f.metadata)

    elapsed = time.perf_counter() - start
    lm = LoadedModel(config=cfg, tensors={} if memory is None else memory.tensors,
                     metadata=metadata, path=path, arch=arch,
                     tensor_types=tensor_types, n_params=n_params,
                     bits_per_weight=8.0 * packed_bytes / max(1, matrix_params),
                     lossy=lossy, tied_output=tied, load_seconds=elapsed)
    log.info("%s: %s, %d layers, dim %d, vocab %d, %.1fM params, %.2f bits/weight, %d lossy "
             "matrices, loaded in %.2f s", path, arch, cfg["n_layers"], cfg["dim"], cfg["vocab"],
             n_params / 1e6, lm.bits_per_weight, len(lossy), elapsed)
    return lm
