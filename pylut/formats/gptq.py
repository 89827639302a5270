"""pylut.formats.gptq - GPTQ linear layers of a Hugging Face checkpoint (AutoGPTQ / GPTQModel /
optimum layout) -> pylut's bit-plane ``QMatrix``, losslessly where the grid allows it.

One linear layer W[N, K] (N outputs, K inputs) is stored as
    <name>.qweight  int32 [K*bits/32, N]   codes q[k, n], packed along K
    <name>.qzeros   int32 [G, N*bits/32]   zero points z[g, n], packed along N
    <name>.scales   fp16  [G, N]           scales s[g, n]
    <name>.g_idx    int32 [K]  (optional)  the group of input k; default k // group_size
and means W[n, k] = s[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]).

Packing: the int32 words, read in order, form one little-endian bit stream; value i sits at
bits [bits*i, bits*(i+1)). For 3 bits, 32 values fill 3 words and values 10 and 21 straddle
a word boundary (AutoGPTQ's pack loop writes exactly that stream).

Zero points: checkpoint_format "gptq" (v1, what AutoGPTQ and most Hub checkpoints write)
stores z - 1 in each field; "gptq_v2" (GPTQModel's internal format) stores z itself. A v1
field is decoded as (field + 1) mod 2^bits, as AutoGPTQ's reference dequantization does, so
a zero point of 0 (stored as 2^bits - 1) survives. AutoGPTQ's packer also ORed that -1's
sign bits into the fields above it in the same word; such files are damaged at the source
and load as written.

Repacking: pylut's groups are contiguous runs of 8..256 inputs (a multiple of 8), each with
one fp16 scale (and bias). Whenever g_idx is constant on aligned runs of some such width,
the codes and scales carry over unchanged:
* one zero point for the whole matrix (sym=True: z = 2^(bits-1)) -> the kernel's implied
  zero, W = s*(q - z): bit-exact.
* per-group zero points -> bias b = -s*z stored as fp16. s*z is exact in float32 (an fp16
  times an integer < 256), so the only error is rounding b to fp16: at most half an fp16
  ulp, |delta| <= 2^-11 * |s*z| (2^-25 absolute below fp16's normal range).
act-order checkpoints (desc_act=True) usually have g_idx in a permuted order, so a group's
inputs are scattered along K; pylut cannot permute activations, so those matrices are
dequantized exactly and requantized round-to-nearest (lossy, with a warning).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import _core
from ..errors import ModelFileError
from ..kernels import quantize

SUPPORTED_BITS = (2, 3, 4, 8)
FORMATS = {"gptq": True, "gptq_v2": False}  # checkpoint_format -> zeros stored minus one
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class GPTQConfig:
    bits: int
    group_size: int          # inputs per group; -1: one group for the whole row
    sym: bool
    desc_act: bool
    zeros_minus_one: bool    # v1 checkpoint_format: each stored zero is z - 1

    def n_groups(self, k: int) -> int:
        return 1 if self.group_size == -1 else -(-k // self.group_size)


def quantization_config(folder: str, hf_config: dict) -> dict | None:
    """config.json's quantization_config, or an older AutoGPTQ quantize_config.json beside it."""
    qc = hf_config.get("quantization_config")
    if qc:
        return qc
    legacy = os.path.join(folder, "quantize_config.json")
    if not os.path.exists(legacy):
        return None
    try:
        with open(legacy) as f:
            qc = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{legacy}: cannot read the quantization config ({e})") from None
    return {"quant_method": "gptq", **qc} if isinstance(qc, dict) else None


def parse_config(qc: dict, where: str) -> GPTQConfig:
    """Validate a quantization_config; anything but a GPTQ checkpoint pylut can read is refused."""
    if not isinstance(qc, dict):
        raise ModelFileError(f"{where}: quantization_config is not a JSON object")
    method = qc.get("quant_method", "?")
    if method != "gptq":
        raise ModelFileError(f"{where}: {method!r} quantized checkpoints are not supported (only "
                             f"GPTQ is); use the float checkpoint or a GGUF file")
    bits = qc.get("bits")
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ModelFileError(f"{where}: GPTQ bits = {bits!r}; pylut reads "
                             f"{', '.join(map(str, SUPPORTED_BITS))}-bit checkpoints")
    group_size = qc.get("group_size", -1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
        raise ModelFileError(f"{where}: GPTQ group_size = {group_size!r}; expected -1 or a positive integer")
    fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
    if fmt not in FORMATS:
        raise ModelFileError(f"{where}: GPTQ checkpoint_format {fmt!r} is not supported; "
                             f"expected one of {', '.join(FORMATS)}")
    if qc.get("dynamic"):
        raise ModelFileError(f"{where}: GPTQ per-module overrides (\"dynamic\") are not supported")
    return GPTQConfig(bits=bits, group_size=group_size, sym=bool(qc.get("sym", True)),
                      desc_act=bool(qc.get("desc_act", False)), zeros_minus_one=FORMATS[fmt])


# ---------------------------------------------------------------- unpacking

def unpack_rows(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """int32 words [count*bits/32, C] -> uint8 values [count, C], unpacked along axis 0."""
    w = np.ascontiguousarray(words).view(np.uint32)
    rows, cols = w.shape
    pad = -rows % bits  # whole blocks of `bits` words = 32 values each
    if pad:
        w = np.concatenate([w, np.zeros((pad, cols), np.uint32)])
    blocks = w.reshape(-1, bits, cols)
    out = np.empty((blocks.shape[0], 32, cols), np.uint8)
    mask = np.uint32((1 << bits) - 1)
    for i in range(32):
        word, shift = divmod(bits * i, 32)
        v = blocks[:, word] >> np.uint32(shift)
        if shift + bits > 32:  # the value's high bits open the next word
            v = v | (blocks[:, word + 1] << np.uint32(32 - shift))
        out[:, i] = v & mask
    return out.reshape(-1, cols)[:count]


# ---------------------------------------------------------------- one layer

TENSOR_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")  # a layer's tensors in the file

def _checked(st, name: str, dtypes: tuple[str, ...], shape: tuple[int, ...], path: str):
    """The SafetensorInfo of name, after checking that it exists with this dtype and shape."""
    if name not in st:
        raise ModelFileError(f"{path}: missing tensor {name!r} (GPTQ layers need qweight, qzeros "
                             f"and scales)")
    info = st[name]
    if info.dtype not in dtypes:
        raise ModelFileError(f"{path}: tensor {name!r} has dtype {info.dtype}, expected "
                             f"{' or '.join(dtypes)}")
    if tuple(info.shape) != shape:
        raise ModelFileError(f"{path}: tensor {name!r} has shape {tuple(info.shape)}, expected "
                             f"{shape} from config.json and the quantization_config")
    return info


def _contiguous_group(g_idx: np.ndarray) -> int | None:
    """The pylut group width (multiple of 8 in [MIN_GROUP, MAX_GROUP]) on whose aligned runs
    g_idx is constant, preferring the least padding of K and then the widest; None if none."""
    k = g_idx.shape[0]
    best = None
    for g in range(_core.MAX_GROUP, _core.MIN_GROUP - 1, -8):
        if np.array_equal(g_idx, g_idx[np.arange(k) // g * g]):
            k_pad = -(-k // g) * g
            if best is None or k_pad < best[0]:
                best = (k_pad, g)
    return None if best is None else best[1]


def requant_group(cfg: GPTQConfig) -> int:
    """Contiguous group for requantizing act-order layers: the checkpoint's own width, fitted."""
    g = _core.MAX_GROUP if cfg.group_size == -1 else cfg.group_size // 8 * 8
    return int(min(max(g, _core.MIN_GROUP), _core.MAX_GROUP))


@dataclass
class Layer:
    """One GPTQ layer decoded: codes q [N, K] and per-input scale/zero through g_idx."""
    name: str
    bits: int
    codes: np.ndarray        # uint8 [N, K]
    scales: np.ndarray       # float32 [G, N] (fp16 values when the file stores fp16)
    zeros: np.ndarray        # uint8 [G, N]
    g_idx: np.ndarray        # int64 [K]

    def dequantize(self) -> np.ndarray:
        """W[N, K] in float32 exactly: s*(q - z) is exact for fp16 s and |q - z| < 256."""
        s, z = self.scales[self.g_idx].T, self.zeros[self.g_idx].T.astype(np.float32)
        return s * (self.codes.astype(np.float32) - z)


def read_layer(st, base: str, n_out: int, n_in: int, cfg: GPTQConfig, path: str) -> Layer:
    """Read and check <base>.qweight/.qzeros/.scales/.g_idx for a [n_out, n_in] linear layer."""
    bits = cfg.bits
    for what, n in (("input features", n_in), ("output features", n_out)):
        if n * bits % 32:
            raise ModelFileError(f"{path}: {base}: {n} {what} at {bits} bits do not fill whole "
                                 f"int32 words; GPTQ packs 32 values per {bits} words")
    n_groups = cfg.n_groups(n_in)
    qweight = _checked(st, base + ".qweight", ("I32",), (n_in * bits // 32, n_out), path).array()
    qzeros = _checked(st, base + ".qzeros", ("I32",), (n_groups, n_out * bits // 32), path).array()
    scales = _checked(st, base + ".scales", ("F16", "BF16", "F32"), (n_groups, n_out), path).to_float32()
    if not np.all(np.isfinite(scales)):
        raise ModelFileError(f"{path}: tensor {base + '.scales'!r} contains NaN or inf")
    if base + ".g_idx" in st:
        g_idx = _checked(st, base + ".g_idx", ("I32", "I64"), (n_in,), path).array().astype(np.int64)
        if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= n_groups):
            raise ModelFileError(f"{path}: tensor {base + '.g_idx'!r} has group indices in "
                                 f"[{g_idx.min()}, {g_idx.max()}], outside [0, {n_groups})")
    else:
        g_idx = np.zeros(n_in, np.int64) if cfg.group_size == -1 else np.arange(n_in) // cfg.group_size
    codes = np.ascontiguousarray(unpack_rows(qweight, bits, n_in).T)
    zeros = unpack_rows(np.ascontiguousarray(qzeros.T), bits, n_out).T
    if cfg.zeros_minus_one:
        zeros = (zeros + np.uint8(1)) & np.uint8((1 << bits) - 1)
    return Layer(base, bits, codes, scales, np.ascontiguousarray(zeros), g_idx)


def repack(layer: Layer) -> tuple[_core.QMatrix, bool] | None:
    """(QMatrix, exact) keeping the layer's codes and scales, or None when g_idx does not
    give contiguous groups pylut can express (act-order)."""
    group = _contiguous_group(layer.g_idx)
    if group is None:
        return None
    firsts = layer.g_idx[::group]                      # the checkpoint group of each pylut group
    scale = np.ascontiguousarray(layer.scales[firsts].T)
    zero = layer.zeros[firsts].T
    exact = np.array_equal(scale.astype(np.float16).astype(np.float32), scale)
    if np.all(zero == zero.flat[0]):                   # one zero point: the implied-zero grid
        qm = _core.QMatrix.from_codes(layer.codes, scale, None, bits=layer.bits, group=group,
                                      zero=float(zero.flat[0]))
        return qm, exact
    bias = -scale * zero.astype(np.float32)            # exact in float32
    if np.abs(bias).max() > _FP16_MAX:
        raise ValueError("scale * zero exceeds the fp16 range of the kernel's biases")
    exact = exact and np.array_equal(bias.astype(np.float16).astype(np.float32), bias)
    return _core.QMatrix.from_codes(layer.codes, scale, bias, bits=layer.bits, group=group), exact


class Converted(NamedTuple):
    matrix: _core.QMatrix
    exact: bool              # dequantize() equals the checkpoint's W bit for bit
    act_order: bool          # requantized because g_idx scatters the groups along K
    odd_sym_zero: bool       # sym=True yet a zero point is not 2^(bits-1)


def load_matrix(st, base: str, shape: tuple[int, int], cfg: GPTQConfig, path: str,
                requant_args: dict | None = None) -> Converted:
    """One GPTQ layer [n_out, n_in] -> QMatrix. requant_args (pylut.quantize arguments)
    requantize on request; otherwise only act-order layers are requantized."""
    layer = read_layer(st, base, shape[0], shape[1], cfg, path)
    try:
        return _convert(layer, cfg, requant_args)
    except ValueError as e:
        raise ModelFileError(f"{path}: GPTQ layer {base!r} cannot be repacked: {e}") from None


def _convert(layer: Layer, cfg: GPTQConfig, requant_args: dict | None) -> Converted:
    # a v2 checkpoint labelled v1 (or the reverse) decodes every symmetric zero off by one
    odd = cfg.sym and not np.all(layer.zeros == 1 << (cfg.bits - 1))
    if requant_args is not None:
        return Converted(quantize(layer.dequantize(), **requant_args), False, False, odd)
    packed = repack(layer)
    if packed is not None:
        return Converted(packed[0], packed[1], False, odd)
    w = layer.dequantize()
    return Converted(quantize(w, bits=cfg.bits, group=requant_group(cfg), mode="zp"), False, True, odd)
