"""Decoders for ggml block-quantized tensors into an *integer-code* form.

Every supported block format stores, per group of ``group`` consecutive weights along
a row, an unsigned integer grid value (the "code") plus an affine map back to floats.
``decode_codes`` exposes exactly that:

    weight[m, k] = scale[m, k // group] * codes[m, k] + bias[m, k // group]

so the table-lookup kernels can repack the codes into bit planes and keep one
scale/bias pair per group.  Signed grids (Q4_0's q-8, Q3_K's q-4, Q6_K's q-32, the
ternary -1/0/+1, ...) are shifted to unsigned codes and the shift is folded into
``bias``; K-quant super-block scales are folded into the per-group ``scale``/``bias``
(``d*sc`` and ``-dmin*m``), computed in float32 in the same order as ggml so the values
are the ones ggml itself uses.

Exactness versus ggml's reference dequantization: ``scale`` and ``bias`` are exact
float32 values (an fp16 times a small integer), and so is ``scale * code``: it needs at
most 24 significant bits -- 11 from the fp16 plus at most 13 from sub-block scale times
code (Q6_K: 7 + 6; Q8_0: 8 + 0; the others fewer).  Hence ``scale * code + bias`` evaluated in
float32 rounds at most once, in the final addition -- exactly where the reference
dequantizer rounds too (it adds the same two exact terms or rounds nothing at all), so
the results are bit-identical.  Only zeros may differ in sign (0.0 vs -0.0), and
non-finite fp16 scales in a file may yield NaN where the reference yields +-inf.

fp16 storage of scale/bias (``fp16_exact``): lossless for Q4_0/Q5_0/Q8_0/TQ1_0/TQ2_0
(d and a power-of-two multiple of it; only |d| large enough to overflow -8d/-16d/-128d
breaks this) and Q4_1/Q5_1 (d and m are fp16 already).  Generally lossy for the
K-quants, where d*sc needs up to 11+7 significant bits: on random blocks only about
15-50% of the per-group values survive the round trip.

Block layouts (byte ranges inside one block) are documented beside each decoder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from .gguf_reader import ggml_type_info

logger = logging.getLogger("pylut")

FLOAT_TYPES = ("F32", "F16", "BF16")

# Decode at most this many blocks at once so temporaries stay a few tens of MB even for
# the largest embedding matrices.
_BLOCKS_PER_CHUNK = 8192


@dataclass
class QuantCodes:
    """Integer-code form of a quantized [M, K] matrix (see module docstring)."""
    codes: np.ndarray   # uint8 [M, K]
    bits: int           # code width; ternary types report 2 (three levels 0, 1, 2)
    group: int          # consecutive elements of a row sharing one scale/bias
    scale: np.ndarray   # float32 [M, K // group]
    bias: np.ndarray    # float32 [M, K // group]
    ternary: bool = False
    type_name: str = ""

    @property
    def shape(self) -> Tuple[int, int]:
        return self.codes.shape

    def dequantize(self) -> np.ndarray:
        """float32 [M, K] weights, bit-identical to ggml's dequantization."""
        return _affine_to_float32(self.codes, self.scale, self.bias, self.group)


# ---------------------------------------------------------------------- byte helpers
def _f16_field(blocks: np.ndarray, start: int) -> np.ndarray:
    """Little-endian fp16 at byte ``start`` of every block, as float32 [n, 1]."""
    field = np.ascontiguousarray(blocks[:, start:start + 2])
    return field.view("<f2").astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """[n, c, b] bytes -> [n, c, 2*b] values: all low nibbles first, then all high ones."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def _crumbs(packed: np.ndarray) -> np.ndarray:
    """[n, c, b] bytes -> [n, c, 4*b] 2-bit values, bit pairs 0-1 first, then 2-3, ..."""
    return np.concatenate([(packed >> shift) & 0x03 for shift in (0, 2, 4, 6)], axis=-1)


def _bit_planes(packed: np.ndarray) -> np.ndarray:
    """[n, b] bytes -> [n, 8*b] bits where element ``p*b + j`` is bit ``p`` of byte ``j``.

    This is how Q3_K/Q5_K spread their extra high bit: plane 0 covers elements 0..b-1.
    """
    n, width = packed.shape
    bits = np.unpackbits(packed, axis=1, bitorder="little").reshape(n, width, 8)
    return bits.transpose(0, 2, 1).reshape(n, 8 * width)


def _k_quant_6bit_scales(packed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales/mins 4-7
    take their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the
    spare top bits of bytes 0-3 / 4-7.
    """
    lo_sc, lo_min, packed_hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([lo_sc & 0x3F, (packed_hi & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    mins = np.concatenate([lo_min & 0x3F, (packed_hi >> 4) | ((lo_min >> 6) << 4)], axis=1)
    return scales, mins


# ---------------------------------------------------------------------- block decoders
# Each takes uint8 blocks [n, block_bytes] and returns (codes uint8 [n, block_elems],
# scale float32 [n, groups_per_block], bias float32 [n, groups_per_block]).

def _decode_q4_0(blocks):
    # d f16 | 16 bytes: element j in low nibble of byte j, element 16+j in the high nibble
    d = _f16_field(blocks, 0)
    codes = _nibbles(blocks[:, None, 2:18]).reshape(-1, 32)
    return codes, d, d * np.float32(-8)


def _decode_q4_1(blocks):
    # d f16 | m f16 | 16 nibble bytes as in Q4_0; weight = d*q + m
    d, m = _f16_field(blocks, 0), _f16_field(blocks, 2)
    codes = _nibbles(blocks[:, None, 4:20]).reshape(-1, 32)
    return codes, d, m


def _five_bit_codes(qh_bytes, low_bytes):
    # 32 high bits packed in a little-endian u32: bit j belongs to element j
    high = np.unpackbits(np.ascontiguousarray(qh_bytes), axis=1, bitorder="little")
    return _nibbles(low_bytes[:, None, :]).reshape(-1, 32) | (high << 4)


def _decode_q5_0(blocks):
    # d f16 | qh u32 | 16 nibble bytes; code = nibble | high_bit << 4, weight = d*(code-16)
    d = _f16_field(blocks, 0)
    return _five_bit_codes(blocks[:, 2:6], blocks[:, 6:22]), d, d * np.float32(-16)


def _decode_q5_1(blocks):
    # d f16 | m f16 | qh u32 | 16 nibble bytes; weight = d*code + m
    d, m = _f16_field(blocks, 0), _f16_field(blocks, 2)
    return _five_bit_codes(blocks[:, 4:8], blocks[:, 8:24]), d, m


def _decode_q8_0(blocks):
    # d f16 | 32 int8; the unsigned code is q + 128 (flipping the sign bit does that)
    d = _f16_field(blocks, 0)
    return blocks[:, 2:34] ^ np.uint8(0x80), d, d * np.float32(-128)


def _decode_q2_k(blocks):
    # 16 scale bytes (low nibble scale, high nibble min) | 64 bytes of 2-bit codes in two
    # 128-element halves (each byte holds elements j, j+32, j+64, j+96 of its half)
    # | d f16 | dmin f16
    sub = blocks[:, 0:16]
    d, dmin = _f16_field(blocks, 80), _f16_field(blocks, 82)
    codes = _crumbs(blocks[:, 16:80].reshape(-1, 2, 32)).reshape(-1, 256)
    scale = d * (sub & 0x0F).astype(np.float32)
    bias = -(dmin * (sub >> 4).astype(np.float32))
    return codes, scale, bias


def _decode_q3_k(blocks):
    # 32 bytes high-bit planes | 64 bytes 2-bit low parts (layout of Q2_K) | 12 bytes of
    # sixteen 6-bit scales biased by 32 | d f16.  ggml's value is low - 4*(1 - high), so
    # the unsigned code low | high<<2 equals value + 4.
    d = _f16_field(blocks, 108)
    low = _crumbs(blocks[:, 32:96].reshape(-1, 2, 32)).reshape(-1, 256)
    codes = low | (_bit_planes(blocks[:, 0:32]) << 2)
    packed = blocks[:, 96:108]
    # scale i: low 4 bits from byte i%8 (nibble i//8), top 2 bits from byte 8+i%4 (pair i//4)
    low4 = np.concatenate([packed[:, 0:8] & 0x0F, packed[:, 0:8] >> 4], axis=1)
    top2 = np.concatenate([(packed[:, 8:12] >> s) & 0x03 for s in (0, 2, 4, 6)], axis=1)
    signed = (low4 | (top2 << 4)).astype(np.int16) - 32
    scale = d * signed.astype(np.float32)
    return codes, scale, scale * np.float32(-4)


def _decode_q4_k(blocks):
    # d f16 | dmin f16 | 12 bytes 6-bit scales/mins | 128 bytes: four 64-element chunks,
    # byte j of a chunk holds element j (low nibble) and 32+j (high nibble)
    d, dmin = _f16_field(blocks, 0), _f16_field(blocks, 2)
    sc, mn = _k_quant_6bit_scales(blocks[:, 4:16])
    codes = _nibbles(blocks[:, 16:144].reshape(-1, 4, 32)).reshape(-1, 256)
    return codes, d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))


def _decode_q5_k(blocks):
    # d f16 | dmin f16 | 12 bytes scales/mins | 32 bytes high-bit planes | 128 bytes of
    # nibbles laid out as in Q4_K
    d, dmin = _f16_field(blocks, 0), _f16_field(blocks, 2)
    sc, mn = _k_quant_6bit_scales(blocks[:, 4:16])
    low = _nibbles(blocks[:, 48:176].reshape(-1, 4, 32)).reshape(-1, 256)
    codes = low | (_bit_planes(blocks[:, 16:48]) << 4)
    return codes, d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))


def _decode_q6_k(blocks):
    # 128 bytes low nibbles: two 128-element halves, byte j of a half holds elements j and
    # 64+j | 64 bytes high 2-bit parts: byte j of a half holds elements j, 32+j, 64+j,
    # 96+j | 16 int8 scales | d f16.  ggml's value is code - 32.
    d = _f16_field(blocks, 208)
    low = _nibbles(blocks[:, 0:128].reshape(-1, 2, 64)).reshape(-1, 256)
    high = _crumbs(blocks[:, 128:192].reshape(-1, 2, 32)).reshape(-1, 256)
    scale = d * np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
    return low | (high << 4), scale, scale * np.float32(-32)


_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _base3_digits(packed: np.ndarray, n_digits: int) -> np.ndarray:
    """[n, b] bytes -> [n, n_digits*b] trits, digit p of byte j at ``p*b + j``.

    TQ1_0 stores five trits per byte as a fixed-point fraction: byte = ceil(v*256/243)
    for the base-3 number v.  Multiplying by 3^p (mod 256) moves digit p to the top and
    (x*3) >> 8 then reads it off.
    """
    shifted = packed[:, None, :] * _POW3[:n_digits, None]   # uint8 arithmetic wraps, as intended
    return ((shifted.astype(np.uint16) * 3) >> 8).astype(np.uint8).reshape(packed.shape[0], -1)


def _decode_tq1_0(blocks):
    # 48 bytes of five trits each (32 bytes -> elements 0..159, 16 bytes -> 160..239)
    # | 4 bytes of four trits each (240..255) | d f16; value = d * (trit - 1)
    d = _f16_field(blocks, 52)
    codes = np.concatenate([_base3_digits(blocks[:, 0:32], 5),
                            _base3_digits(blocks[:, 32:48], 5),
                            _base3_digits(blocks[:, 48:52], 4)], axis=1)
    return codes, d, -d


def _decode_tq2_0(blocks):
    # 64 bytes of 2-bit codes laid out as Q2_K | d f16; value = d * (code - 1)
    d = _f16_field(blocks, 64)
    codes = _crumbs(blocks[:, 0:64].reshape(-1, 2, 32)).reshape(-1, 256)
    return codes, d, -d


# type name -> (decoder, code bits, group size, ternary)
_DECODERS: Dict[str, Tuple[Callable, int, int, bool]] = {
    "Q4_0": (_decode_q4_0, 4, 32, False),
    "Q4_1": (_decode_q4_1, 4, 32, False),
    "Q5_0": (_decode_q5_0, 5, 32, False),
    "Q5_1": (_decode_q5_1, 5, 32, False),
    "Q8_0": (_decode_q8_0, 8, 32, False),
    "Q2_K": (_decode_q2_k, 2, 16, False),
    "Q3_K": (_decode_q3_k, 3, 16, False),
    "Q4_K": (_decode_q4_k, 4, 32, False),
    "Q5_K": (_decode_q5_k, 5, 32, False),
    "Q6_K": (_decode_q6_k, 6, 16, False),
    "TQ1_0": (_decode_tq1_0, 2, 256, True),
    "TQ2_0": (_decode_tq2_0, 2, 256, True),
}

QUANT_TYPES = tuple(_DECODERS)
SUPPORTED_TYPES = FLOAT_TYPES + QUANT_TYPES


# ---------------------------------------------------------------------- public API
def _as_rows(raw: np.ndarray, type_name: str, shape: Sequence[int]) -> Tuple[np.ndarray, int, int]:
    """Check ``raw`` against (type, shape); return (raw as flat uint8, M, K)."""
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 0 for s in shape):
        raise ValueError(f"invalid tensor shape {shape}")
    block_elems, block_bytes = ggml_type_info(type_name)
    n_cols = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if n_cols % block_elems:
        raise ValueError(f"{type_name}: row length {n_cols} is not a multiple of the block "
                         f"size {block_elems}")
    expected = n_rows * (n_cols // block_elems) * block_bytes
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    raw = raw.reshape(-1)
    if raw.size != expected:
        raise ValueError(f"{type_name} tensor of shape {shape} needs {expected} bytes, got {raw.size}")
    return raw, n_rows, n_cols


def decode_float(raw: np.ndarray, type_name: str, shape: Sequence[int]) -> np.ndarray:
    """F32/F16/BF16 raw bytes -> float32 array of ``shape`` (F32 is a zero-copy view)."""
    if type_name not in FLOAT_TYPES:
        raise ValueError(f"decode_float handles {FLOAT_TYPES}, not {type_name!r}")
    raw, _, _ = _as_rows(raw, type_name, shape)
    shape = tuple(int(s) for s in shape)
    if type_name == "F32":
        return raw.view("<f4").reshape(shape)
    if type_name == "F16":
        return raw.view("<f2").astype(np.float32).reshape(shape)
    # bfloat16 is the top half of a float32
    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def decode_codes(raw: np.ndarray, type_name: str, shape: Sequence[int]) -> QuantCodes:
    """Block-quantized raw bytes of an [M, K] tensor -> ``QuantCodes`` (see module doc).

    Tensors with more than two dimensions are treated as [prod(leading dims), K].
    """
    if type_name not in _DECODERS:
        raise ValueError(f"no integer-code decoder for {type_name!r}; supported: {QUANT_TYPES}")
    decoder, bits, group, ternary = _DECODERS[type_name]
    raw, n_rows, n_cols = _as_rows(raw, type_name, shape)
    block_elems, block_bytes = ggml_type_info(type_name)
    blocks = raw.reshape(-1, block_bytes)
    n_blocks = blocks.shape[0]
    groups_per_block = block_elems // group

    codes = np.empty((n_blocks, block_elems), dtype=np.uint8)
    scale = np.empty((n_blocks, groups_per_block), dtype=np.float32)
    bias = np.empty((n_blocks, groups_per_block), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):   # inf/nan d in a file stays inf/nan
        for start in range(0, n_blocks, _BLOCKS_PER_CHUNK):
            stop = min(start + _BLOCKS_PER_CHUNK, n_blocks)
            codes[start:stop], scale[start:stop], bias[start:stop] = decoder(blocks[start:stop])

    if type_name == "TQ2_0" and n_blocks and codes.max() > 2:
        # 2-bit field value 3 is outside the ternary alphabet; ggml decodes it as +2*d.
        logger.warning("TQ2_0 tensor contains the non-ternary code 3; ternary kernels will "
                       "not reproduce it exactly")
    return QuantCodes(codes=codes.reshape(n_rows, n_cols), bits=bits, group=group,
                      scale=scale.reshape(n_rows, n_cols // group),
                      bias=bias.reshape(n_rows, n_cols // group),
                      ternary=ternary, type_name=type_name)


# ---------------------------------------------------------------------- I2_S (bitnet.cpp)
# bitnet.cpp's ternary type (GGUF type id 36; upstream ggml reused the id). Not a block type
# of the ggml table: the whole tensor, flattened row-major, is cut into blocks of 128 weights
# -> 32 bytes, byte j of a block holding weight j in bits 7-6, j+32 in bits 5-4, j+64 in 3-2
# and j+96 in 1-0; the 2-bit code c means the trit c - 1 (3 is never written). After the
# n/4 code bytes come one little-endian float32, the per-tensor scale, and padding: the
# tensor spans n/4 + 32 bytes. weight = scale * (code - 1). This is the x86 layout, the one
# published files use; bitnet.cpp's ARM builds (since Nov 2025) pack 64 weights per 16 bytes
# instead, which nothing marks in the file, so such a file reads as wrong weights.
I2S_TYPE = "I2_S"
I2S_BLOCK = 128                 # weights per block
I2S_TAIL = 32                   # bytes after the codes: the float32 scale, then padding
_I2S_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8)   # bits of weight j, j+32, j+64, j+96


def i2s_nbytes(n_elements: int) -> int:
    """Bytes an I2_S tensor of n_elements spans in the file (codes, scale, padding)."""
    return n_elements // 4 + I2S_TAIL


def i2s_split(raw: np.ndarray, shape: Sequence[int]) -> Tuple[np.ndarray, float]:
    """An I2_S tensor's bytes -> (the n/4 code bytes, a view; the float32 scale)."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if n % I2S_BLOCK:
        raise ValueError(f"I2_S holds whole blocks of {I2S_BLOCK} weights; shape {tuple(shape)} has {n}")
    raw = np.asarray(raw).reshape(-1)
    if raw.dtype != np.uint8 or raw.size != i2s_nbytes(n):
        raise ValueError(f"I2_S tensor of shape {tuple(shape)} spans {i2s_nbytes(n)} bytes, got {raw.size}")
    scale = float(np.ascontiguousarray(raw[n // 4: n // 4 + 4]).view("<f4")[0])
    if not np.isfinite(scale):
        raise ValueError(f"I2_S scale is {scale}")
    return raw[: n // 4], scale


def decode_i2s(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """I2_S code bytes (i2s_split's first part, or whole 128-weight blocks of it) of a
    tensor of `shape` -> codes uint8 [M, K] in 0..2 (trit + 1). Code 3 is refused."""
    shape = tuple(int(s) for s in shape)
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    n = n_rows * shape[-1]
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if n % I2S_BLOCK or packed.size != n // 4:
        raise ValueError(f"I2_S codes of shape {shape} need {n // 4} bytes in whole blocks of "
                         f"{I2S_BLOCK} weights, got {packed.size}")
    blocks = packed.reshape(-1, 1, I2S_BLOCK // 4)                      # [n/128, 1, 32]
    codes = (blocks >> _I2S_SHIFTS[None, :, None]) & np.uint8(3)        # [n/128, 4, 32]
    codes = codes.reshape(n_rows, shape[-1])
    if np.any(packed & (packed >> 1) & np.uint8(0x55)):   # a 2-bit field with both bits set
        bad = np.flatnonzero(codes.reshape(-1) == 3)
        r, c = divmod(int(bad[0]), shape[-1])
        raise ValueError(f"I2_S code 3 (not a ternary value) at weight [{r}, {c}] and {bad.size - 1} "
                         f"more; the file is corrupt or not in bitnet.cpp's x86 I2_S layout")
    return codes


def encode_i2s(trits: np.ndarray, scale: float) -> np.ndarray:
    """trits int8 [M, K] in {-1, 0, 1} (M*K a multiple of 128) -> the n/4 + 32 bytes of an
    I2_S tensor (the inverse of decode_i2s and i2s_split; used to write test files)."""
    codes = (np.asarray(trits, np.int8).reshape(-1, 4, I2S_BLOCK // 4) + 1).astype(np.uint8)
    packed = np.bitwise_or.reduce(codes << _I2S_SHIFTS[None, :, None], axis=1).reshape(-1)
    tail = np.zeros(I2S_TAIL, np.uint8)
    tail[:4] = np.array([scale], "<f4").view(np.uint8)
    return np.concatenate([packed, tail])


def _affine_to_float32(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                       group: int) -> np.ndarray:
    # Plain float32 is exact here (see module docstring); rows are processed in chunks to
    # bound the temporaries.
    n_rows, n_cols = codes.shape
    out = np.empty((n_rows, n_cols), dtype=np.float32)
    rows_per_chunk = max(1, (1 << 22) // max(n_cols, 1))
    for r0 in range(0, n_rows, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, n_rows)
        grouped = out[r0:r1].reshape(r1 - r0, -1, group)
        np.multiply(codes[r0:r1].reshape(r1 - r0, -1, group), scale[r0:r1, :, None],
                    out=grouped, dtype=np.float32)
        grouped += bias[r0:r1, :, None]
    return out


def dequantize(raw: np.ndarray, type_name: str, shape: Sequence[int]) -> np.ndarray:
    """Any supported type (and I2_S) -> float32 array of ``shape``."""
    if type_name == I2S_TYPE:
        packed, scale = i2s_split(raw, shape)
        trits = decode_i2s(packed, shape).view(np.int8) - np.int8(1)
        return (trits * np.float32(scale)).reshape(tuple(int(s) for s in shape))
    if type_name in FLOAT_TYPES:
        return np.array(decode_float(raw, type_name, shape), dtype=np.float32, copy=True)
    q = decode_codes(raw, type_name, shape)
    with np.errstate(over="ignore", invalid="ignore"):
        return q.dequantize().reshape(tuple(int(s) for s in shape))


def fp16_exact(q: QuantCodes) -> bool:
    """True when every scale and bias survives a float32 -> float16 -> float32 round trip.

    The kernels keep per-group scale/bias in fp16, so this says whether repacking the
    tensor for them is lossless (beyond the codes, which are always kept exactly).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        for values in (q.scale, q.bias):
            if not np.array_equal(values.astype(np.float16).astype(np.float32), values):
                return False
    return True
