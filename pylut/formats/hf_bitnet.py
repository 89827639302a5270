"""pylut.formats.hf_bitnet - packed ternary matrices of Hugging Face BitNet checkpoints
(quantization_config.quant_method "bitnet": BitNet b1.58 2B4T's BitNetForCausalLM, and llama
folders such as Falcon3-*-1.58bit and Llama3-8B-1.58) -> trits and one scale per matrix.

The layout is transformers' (integrations/bitnet.py, pack_weights / unpack_weights): a
matrix of R*4 output rows is stored as uint8 [R, in], four 2-bit codes per byte along the
output dimension: bits 2i..2i+1 of byte [r, c] hold row i*R + r, column c, and the weight
is code - 1 (code 3 never occurs). Beside it, `<proj>.weight_scale` holds one number per
matrix, whose meaning depends on the linear class:

    linear_class "bitlinear" (the default; 2B4T, Falcon3): y = (x @ trits.T) / weight_scale,
        so w = (code - 1) / weight_scale
    linear_class "autobitlinear", quantization_mode "offline": y = (x @ trits.T) * weight_scale

Both layers also quantize their input to int8 per token; pylut's kernels quantize
activations their own way (as for every other model), so only the weights are taken over.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelFileError

CODES_PER_BYTE = 4


@dataclass(frozen=True)
class BitNetQuant:
    divide: bool                      # w = trits / weight_scale (bitlinear), else * weight_scale
    not_converted: tuple[str, ...]    # modules left as float (modules_to_not_convert)


def parse_config(qc: dict, where: str) -> BitNetQuant:
    """quantization_config of a "bitnet" checkpoint; what pylut cannot compute is refused."""
    linear = qc.get("linear_class", "bitlinear")
    mode = qc.get("quantization_mode", "offline")
    if linear not in ("bitlinear", "autobitlinear"):
        raise ModelFileError(f"{where}: quantization_config.linear_class = {linear!r}: expected "
                             f"'bitlinear' or 'autobitlinear'")
    if mode != "offline":
        raise ModelFileError(f"{where}: quantization_config.quantization_mode = {mode!r}: only offline "
                             f"(packed ternary) checkpoints are supported; online mode ternarizes "
                             f"float weights at every step")
    if qc.get("use_rms_norm", False):
        raise ModelFileError(f"{where}: quantization_config.use_rms_norm = true (an RMSNorm inside every "
                             f"linear layer) is not supported")
    skip = qc.get("modules_to_not_convert") or ()
    if not isinstance(skip, (list, tuple)) or not all(isinstance(s, str) for s in skip):
        raise ModelFileError(f"{where}: quantization_config.modules_to_not_convert = {skip!r} should "
                             f"be a list of module names")
    return BitNetQuant(divide=linear == "bitlinear", not_converted=tuple(skip))


def is_packed(st, base: str, quant: BitNetQuant) -> bool:
    """Whether module `base` (e.g. model.layers.0.self_attn.q_proj) is a packed ternary matrix."""
    if any(base == s or base.endswith("." + s) or base.startswith(s + ".") for s in quant.not_converted):
        return False
    info = st[base + ".weight"] if base + ".weight" in st else None
    return info is not None and info.dtype == "U8"


def unpack_trits(packed: np.ndarray) -> np.ndarray:
    """uint8 [R, in] -> codes uint8 [4R, in] (row i*R + r from bits 2i of byte row r)."""
    shifts = (2 * np.arange(CODES_PER_BYTE, dtype=np.uint8))[:, None, None]
    return ((packed[None] >> shifts) & np.uint8(3)).reshape(-1, packed.shape[1])


def load_matrix(st, base: str, shape: tuple[int, int], quant: BitNetQuant, path: str) -> tuple[np.ndarray, float]:
    """(trits int8 [out, in], scale) with w = trits * scale for module `base`."""
    name = base + ".weight"
    info = st[name]
    out, k = shape
    want = (out // CODES_PER_BYTE, k)
    if out % CODES_PER_BYTE or tuple(info.shape) != want:
        raise ModelFileError(f"{path}: tensor {name!r} has shape {tuple(info.shape)}, expected {want} "
                             f"(uint8, {CODES_PER_BYTE} ternary rows per byte row) for a {shape} matrix")
    codes = unpack_trits(info.array())
    bad = np.flatnonzero(codes.reshape(-1) == 3)
    if bad.size:
        r, c = divmod(int(bad[0]), k)
        raise ModelFileError(f"{path}: tensor {name!r} holds the code 3 (not a ternary value) for weight "
                             f"[{r}, {c}] and {bad.size - 1} more")
    scale_name = base + ".weight_scale"
    if scale_name not in st:
        raise ModelFileError(f"{path}: missing tensor {scale_name!r} (the scale of the packed {name!r})")
    s = st[scale_name].to_float32().reshape(-1)
    if s.size != 1 or not np.isfinite(s[0]) or s[0] == 0:
        raise ModelFileError(f"{path}: tensor {scale_name!r} should be one finite nonzero number, got "
                             f"{s[:4].tolist()} ({s.size} values)")
    scale = float(np.float32(1) / s[0]) if quant.divide else float(s[0])
    return codes.view(np.int8) - np.int8(1), scale
