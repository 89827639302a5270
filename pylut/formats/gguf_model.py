"""pylut.formats.gguf_model - a GGUF model file -> weights wired for the C forward pass (`_core.Model`).

    lm = load_gguf("model.gguf")
    model = lm.build()                       # _core.Model(lm.config, lm.tensors)

Matrices become packed ``QMatrix`` objects:

* integer-grid block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K) keep their codes and
  their per-group scale/bias (``quants.decode_codes``).  The kernel stores scale/bias as
  fp16: lossless for the legacy types, rounded for most K-quant groups (those tensors are
  listed in ``LoadedModel.lossy``).
* ternary TQ1_0/TQ2_0: the trits are packed densely as T3 (1.67 bits/weight) with the
  file's fp16 scale per 256-weight block: exact. bitnet.cpp's I2_S: the trits exactly, with
  its one float32 scale per tensor as fp16 (exact where the scale is fp16-representable).
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

from .. import _core, rope
from .. import arch as archs
from . import quants
from ..errors import ModelFileError
from ..options import F16
from .gguf_reader import GGUFFile, TensorInfo
from ..kernels import quantize

log = logging.getLogger("pylut")

SUPPORTED_ARCHS = tuple(archs.ARCHS)   # how each one computes: pylut/arch.py
MATRIX_TYPES = quants.SUPPORTED_TYPES + (quants.I2S_TYPE,)
DEFAULT_FLOAT_GROUP = 128
DEFAULT_T3_GROUP = 192  # 64 triples: no padding
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


_REQUIRED = object()


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


# ---------------------------------------------------------------- hyperparameters

def _fail(path: str, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: {what}")


def _hparam(meta: dict[str, Any], path: str, key: str, default: Any = _REQUIRED,
            kind: type = int) -> Any:
    """A scalar hyperparameter; per-layer arrays are accepted when all entries agree."""
    if key not in meta:
        if default is _REQUIRED:
            raise _fail(path, f"metadata key {key!r} is missing; the file was not written by a "
                              f"llama.cpp-compatible converter or is for another architecture")
        return default
    value = meta[key]
    if isinstance(value, (list, np.ndarray)):
        values = np.asarray(value).reshape(-1)
        if values.size == 0 or not np.all(values == values[0]):
            raise _fail(path, f"{key} varies per layer ({values[:8].tolist()}...); "
                              f"only uniform layers are supported")
        value = values[0].item()
    if isinstance(value, str) or (kind is int and isinstance(value, (float, bool))):
        raise _fail(path, f"{key} = {value!r} should be {'an integer' if kind is int else 'a number'}")
    value = kind(value)
    if not np.isfinite(value) or value <= 0:
        raise _fail(path, f"{key} = {value!r} must be positive")
    lo, hi = _HPARAM_RANGES.get(key.split(".", 1)[1], (None, None)) if "." in key else (None, None)
    if lo is not None and not lo <= value <= hi:
        raise _fail(path, f"{key} = {value!r} is out of range: expected {lo} to {hi}")
    return value


# Plausible bounds of each hyperparameter (key without the arch prefix): beyond them a value
# is corrupt, and sizes derived from it (per-layer lists, buffers) must never be allocated.
_HPARAM_RANGES = {
    "embedding_length": (1, 1 << 17),
    "attention.head_count": (1, 1 << 12),
    "attention.head_count_kv": (1, 1 << 12),
    "attention.key_length": (2, 1 << 12),
    "attention.value_length": (2, 1 << 12),
    "rope.dimension_count": (2, 1 << 12),
    "block_count": (1, 1 << 12),
    "feed_forward_length": (1, 1 << 20),
    "context_length": (1, (1 << 31) - 1),
    "attention.layer_norm_rms_epsilon": (1e-12, 0.1),
    "rope.freq_base": (1.0, 1e15),
}


def _read_config(f: GGUFFile, arch: str) -> dict[str, Any]:
    meta, path = f.metadata, f.path
    a = arch + "."
    if meta.get(a + "expert_count", 0):
        raise _fail(path, f"mixture-of-experts models ({a}expert_count = "
                          f"{meta[a + 'expert_count']}) are not supported")
    dim = _hparam(meta, path, a + "embedding_length")
    n_heads = _hparam(meta, path, a + "attention.head_count")
    n_kv_heads = _hparam(meta, path, a + "attention.head_count_kv", n_heads)
    if dim % n_heads and a + "attention.key_length" not in meta:
        raise _fail(path, f"embedding_length {dim} is not a multiple of head_count {n_heads} "
                          f"and {a}attention.key_length is absent")
    head_dim = _hparam(meta, path, a + "attention.key_length", dim // n_heads)
    value_dim = _hparam(meta, path, a + "attention.value_length", head_dim)
    if value_dim != head_dim:
        raise _fail(path, f"attention.key_length {head_dim} != value_length {value_dim} "
                          f"(not supported)")
    if n_heads % n_kv_heads:
        raise _fail(path, f"head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}")
    rope_dims = _hparam(meta, path, a + "rope.dimension_count", head_dim)
    if rope_dims != head_dim and (arch not in archs.PARTIAL_ROTARY_ARCHS or rope_dims > head_dim or rope_dims % 2):
        raise _fail(path, f"partial rotary embedding (rope.dimension_count {rope_dims}, head dim "
                          f"{head_dim}) is not supported for {arch}")
    n_layers = _hparam(meta, path, a + "block_count")
    # Every layer has its own tensors: a count beyond the file's tensors is corrupt, and is
    # refused before anything per layer is built.
    per_layer = 6 if archs.spec(arch).fused else 9
    if n_layers * per_layer > len(f.tensors):
        raise _fail(path, f"{a}block_count = {n_layers} needs at least {n_layers * per_layer} tensors, "
                          f"the file holds {len(f.tensors)}")
    if head_dim % 2:
        raise _fail(path, f"head dim {head_dim} ({a}attention.key_length) must be even")
    max_ctx = _hparam(meta, path, a + "context_length")
    # phi3 states its window under its own key (see arch.py); Mistral-style llama files under
    # attention.sliding_window: either windows every layer (Gemma's windowed layers are
    # _gemma_config's)
    window = (_window(meta, path, arch) if archs.spec(arch).window
              else 0 if archs.spec(arch).gemma else _sliding_window(meta, path, a))
    return dict(arch=arch,
                n_layers=n_layers,
                dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                ffn_dim=_hparam(meta, path, a + "feed_forward_length"),
                vocab=0,  # from token_embd.weight's shape
                max_ctx=max_ctx,
                norm_eps=_hparam(meta, path, a + "attention.layer_norm_rms_epsilon", kind=float),
                rope_theta=_hparam(meta, path, a + "rope.freq_base", 10000.0, kind=float),
                **({"rope_dims": rope_dims} if rope_dims != head_dim else {}),
                **({"sliding_window": window, "swa_layers": [True] * n_layers} if window else {}),
                **archs.model_config(arch, n_layers))


def _window(meta: dict[str, Any], path: str, arch: str) -> int:
    """The sliding-attention window the file states (0: none), applied to every layer as
    transformers does (llama.cpp reads phi3's and turns it off: see arch.py)."""
    key = archs.spec(arch).window
    if key is None or arch + "." + key not in meta:
        return 0
    window = meta[arch + "." + key]
    if isinstance(window, (bool, float, str)) or not isinstance(window, (int, np.integer)) or window < 0:
        raise _fail(path, f"{arch}.{key} = {window!r} should be a non-negative integer")
    return int(window)


def _sliding_window(meta: dict[str, Any], path: str, a: str) -> int:
    """{arch}.attention.sliding_window, 0 when absent or 0 (none): a Mistral-style window over
    every layer, applied as transformers applies it. llama.cpp's llama graph ignores the key
    and attends to every position: the same up to the window, different past it.
    (llama.cpp's converter writes no window for Mistral, so its files have none.)"""
    if a + "attention.sliding_window" not in meta or not meta[a + "attention.sliding_window"]:
        return 0
    return _hparam(meta, path, a + "attention.sliding_window")


# config key -> (type, low, high): what _core.Model accepts; every loader's config (and a
# packed file's header) passes check_config before anything is sized from it
CONFIG_RANGES = {
    "n_layers": (int, 1, 1 << 12), "dim": (int, 1, 1 << 17), "n_heads": (int, 1, 1 << 12),
    "n_kv_heads": (int, 1, 1 << 12), "head_dim": (int, 2, 512), "ffn_dim": (int, 1, 1 << 20),
    "vocab": (int, 1, 1 << 24), "max_ctx": (int, 1, (1 << 31) - 1),
    "norm_eps": (float, 1e-12, 0.1), "rope_theta": (float, 1.0, 1e15),
}
OPTIONAL_CONFIG_RANGES = {"rope_dims": (int, 2, 512), "sliding_window": (int, 1, (1 << 31) - 1)}


def check_config(cfg: Any, where: str) -> dict[str, Any]:
    """cfg as the C model reads it, or a ModelFileError naming `where` and the bad key."""
    if not isinstance(cfg, dict):
        raise _fail(where, f"model config should be an object, got {type(cfg).__name__}")
    if cfg.get("arch") not in SUPPORTED_ARCHS:
        raise _fail(where, f"config arch = {cfg.get('arch')!r}: expected one of {', '.join(SUPPORTED_ARCHS)}")
    if not isinstance(cfg.get("rope_neox"), bool):
        raise _fail(where, f"config rope_neox = {cfg.get('rope_neox')!r}: expected true or false")
    if cfg.get("ffn_act") not in archs.FFN_ACTIVATIONS:
        raise _fail(where, f"config ffn_act = {cfg.get('ffn_act')!r}: expected one of "
                           f"{', '.join(archs.FFN_ACTIVATIONS)}")
    ranges = dict(CONFIG_RANGES, **{k: r for k, r in OPTIONAL_CONFIG_RANGES.items() if k in cfg})
    for key, (kind, lo, hi) in ranges.items():
        v = cfg.get(key)
        ok_type = (isinstance(v, (int, np.integer)) if kind is int else isinstance(v, (int, float, np.number)))
        if isinstance(v, (bool, np.bool_)) or not ok_type or not lo <= v <= hi:
            raise _fail(where, f"config {key} = {v!r}: expected {'an integer' if kind is int else 'a number'} "
                               f"in {lo}..{hi}")
    if cfg["n_heads"] % cfg["n_kv_heads"] or cfg["head_dim"] % 2:
        raise _fail(where, f"config heads {cfg['n_heads']}/{cfg['n_kv_heads']}, head_dim {cfg['head_dim']}: "
                           f"expected n_kv_heads dividing n_heads and an even head_dim")
    skip = cfg.get("rope_skip_layers", [])
    if not isinstance(skip, list) or not all(isinstance(l, int) and not isinstance(l, bool)
                                             and 0 <= l < cfg["n_layers"] for l in skip):
        raise _fail(where, f"config rope_skip_layers = {skip!r}: expected layer indices")
    rope_dims = cfg.get("rope_dims", cfg["head_dim"])
    if rope_dims > cfg["head_dim"] or rope_dims % 2:
        raise _fail(where, f"config rope_dims = {rope_dims}: expected an even count up to head_dim {cfg['head_dim']}")
    inv = cfg.get("rope_inv_freq")  # computed by pylut.rope; a packed header could forge it
    if inv is not None and (not isinstance(inv, list) or len(inv) != rope_dims // 2
                            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                       and np.isfinite(x) and x > 0 for x in inv)):
        raise _fail(where, f"config rope_inv_freq: expected {rope_dims // 2} positive finite numbers")
    attn = cfg.get("rope_attn_factor", 1.0)
    if isinstance(attn, bool) or not isinstance(attn, (int, float)) or not 0 < attn <= 100:
        raise _fail(where, f"config rope_attn_factor = {attn!r}: expected a number in (0, 100]")
    _check_gemma_config(cfg, where)
    return cfg


def _check_gemma_config(cfg: dict[str, Any], where: str) -> None:
    """The optional Gemma keys (absent: the plain computation)."""
    for key in ("embd_scale", "attn_scale", "attn_softcap", "final_softcap"):
        v = cfg.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1e6:
            raise _fail(where, f"config {key} = {v!r}: expected a number in [0, 1e6]")
    window, layers = cfg.get("sliding_window", 0), cfg.get("swa_layers")
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window < 1 << 30:
        raise _fail(where, f"config sliding_window = {window!r}: expected an integer >= 0")
    if layers is not None and (not isinstance(layers, list) or len(layers) != cfg["n_layers"]
                               or not all(isinstance(x, bool) for x in layers)):
        raise _fail(where, f"config swa_layers: expected {cfg['n_layers']} true/false entries")
    inv = cfg.get("rope_inv_freq_swa")
    if inv is not None and (not isinstance(inv, list) or len(inv) != cfg["head_dim"] // 2
                            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                       and np.isfinite(x) and x > 0 for x in inv)):
        raise _fail(where, f"config rope_inv_freq_swa: expected {cfg['head_dim'] // 2} positive finite numbers")


def _gemma_config(meta: dict[str, Any], path: str, cfg: dict[str, Any]) -> None:
    """Gemma's settings as llama.cpp's gemma2 / gemma3 loaders read them (src/models/gemma2.cpp,
    gemma3.cpp): embeddings times sqrt(dim); scores times 1/sqrt(head_dim), or 1/sqrt(dim /
    n_heads) for the 27B sizes (46 and 62 layers); the soft-caps (Gemma 2: 50 and 30 unless
    the file says otherwise; Gemma 3: a final cap only if the file has one); the sliding
    window (Gemma 2: 4096 unless set; Gemma 3: windowed only when the key is set and > 0), its
    layer pattern (attention.sliding_window_pattern, a per-layer array or every n-th layer
    global) and the windowed layers' RoPE base (rope.freq_base_swa: Gemma 2 defaults to the
    global base and scaling, Gemma 3 to 10000 unscaled)."""
    a = cfg["arch"] + "."
    spec = archs.spec(cfg["arch"])
    gemma2 = cfg["arch"] == "gemma2"
    cfg["embd_scale"] = float(np.sqrt(cfg["dim"]))
    big = cfg["n_layers"] == (46 if gemma2 else 62)
    cfg["attn_scale"] = float(1.0 / np.sqrt(cfg["dim"] // cfg["n_heads"] if big else cfg["head_dim"]))

    def cap(key, default):
        v = meta.get(a + key, default)
        if v is None:
            return 0.0
        if isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v) or v < 0:
            raise _fail(path, f"{a}{key} = {v!r} should be a number >= 0")
        return float(v)
    cfg["attn_softcap"] = cap("attn_logit_softcapping", 50.0) if gemma2 else 0.0
    cfg["final_softcap"] = cap("final_logit_softcapping", 30.0 if gemma2 else None)
    window = meta.get(a + "attention.sliding_window", 4096 if gemma2 else 0)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise _fail(path, f"{a}attention.sliding_window = {window!r} should be an integer >= 0")
    if not window:
        return
    pattern = meta.get(a + "attention.sliding_window_pattern", spec.swa_pattern)
    if isinstance(pattern, (list, np.ndarray)):
        layers = [bool(x) for x in np.asarray(pattern).reshape(-1)]
        if len(layers) != cfg["n_layers"]:
            raise _fail(path, f"{a}attention.sliding_window_pattern has {len(layers)} entries for "
                              f"{cfg['n_layers']} layers")
    elif isinstance(pattern, bool) or not isinstance(pattern, (int, np.integer)) or pattern < 0:
        raise _fail(path, f"{a}attention.sliding_window_pattern = {pattern!r} should be an integer >= 0 "
                          f"or a per-layer array")
    else:
        layers = archs.swa_layers(cfg["n_layers"], int(pattern))
    cfg["sliding_window"] = int(window)
    cfg["swa_layers"] = layers
    base_swa = meta.get(a + "rope.freq_base_swa")
    if base_swa is not None:
        base_swa = _hparam(meta, path, a + "rope.freq_base_swa", kind=float)
    if gemma2:  # the global layers' base and scaling unless the file names another base
        if base_swa is not None:
            inv, _ = rope.inv_freq(cfg["head_dim"], base_swa, cfg.get("rope_scaling"))
            cfg["rope_inv_freq_swa"] = [float(x) for x in inv]
    else:
        inv, _ = rope.inv_freq(cfg["head_dim"], 10000.0 if base_swa is None else base_swa)
        cfg["rope_inv_freq_swa"] = [float(x) for x in inv]


def _rope_freqs(f: GGUFFile, cfg: dict[str, Any], name: str = "rope_freqs.weight") -> Optional[np.ndarray]:
    """rope_freqs.weight [rope_dims/2]: Llama 3.1's per-pair frequency divisors (or phi3's
    rope_factors_short/long.weight, the same kind of divisors), or None."""
    info = f.tensors.get(name)
    if info is None:
        return None
    want = (cfg.get("rope_dims", cfg["head_dim"]) // 2,)
    if tuple(info.shape) != want:
        raise _fail(f.path, f"tensor {name!r} has shape {tuple(info.shape)}, expected {want}")
    if info.type_name not in ("F32", "F16", "BF16"):
        raise _fail(f.path, f"tensor {name!r} has type {info.type_name}; expected a float type")
    factors = quants.dequantize(info.data, info.type_name, info.shape).reshape(-1).astype(np.float64)
    if not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise _fail(f.path, f"tensor {name!r} holds non-finite or non-positive factors")
    return factors


LONGROPE_TENSORS = ("rope_factors_short.weight", "rope_factors_long.weight")


def _rope_scaling(f: GGUFFile, cfg: dict[str, Any]) -> None:
    """Every RoPE setting of the file into cfg: rope.scaling.* with rope_freqs.weight, or
    phi3's LongRoPE factor pair (llama.cpp prefers rope_freqs where both are present; a file
    with both is refused rather than guessed)."""
    arch, path = cfg["arch"], f.path
    short, long = (_rope_freqs(f, cfg, n) for n in LONGROPE_TENSORS)
    n_ctx_train = _hparam(f.metadata, path, arch + ".context_length")
    if short is None and long is None:
        rope.apply(cfg, rope.gguf_scaling(f.metadata, arch, path, n_ctx_train), _rope_freqs(f, cfg))
        return
    if short is None or long is None or "rope_freqs.weight" in f.tensors:
        raise _fail(path, "LongRoPE needs both rope_factors_short.weight and rope_factors_long.weight "
                          "(and no rope_freqs.weight)")
    rope.apply(cfg, rope.gguf_longrope(f.metadata, arch, path, n_ctx_train, short, long))


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
    return ((q.type, q.group, q.has_bias, q.zero, q.super_block, q.sub_nibbles)
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
                                     get("sub_bias_buf"), form[5])


def ternary_one_scale(trits: np.ndarray, scale: float, ternary: str, lossy: set[str],
                       core_name: str) -> _core.QMatrix:
    """Trits [m, k] times one scale for the whole matrix (BitNet's ternary floats, I2_S):
    the trits exactly; the scale as the kernels' fp16 (lossy where it is not fp16-exact)."""
    scale = np.float32(scale)
    if np.float32(np.float16(scale)) != scale and core_name not in lossy:
        lossy.add(core_name)
        log.debug("%s: the per-tensor scale %r is rounded to fp16 for the kernel", core_name, float(scale))
    m, k = trits.shape  # one scale per row: any group; B2 takes the largest that divides k
    g = DEFAULT_T3_GROUP if ternary == "t3" else next((d for d in (256, 128, 64, 32) if k % d == 0), 256)
    k_pad = -(-k // g) * g
    return _ternary(trits, np.full((m, k_pad // g), scale, np.float32), g, ternary)


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
        return ternary_one_scale(trits, multiplier, ternary, lossy, core_name)
    if type_name in quants.FLOAT_TYPES:
        w = quants.decode_float(info.data, type_name, info.shape)
        if ternary_s is not None:
            return ternary_one_scale(np.sign(w).astype(np.int8), ternary_s * multiplier, ternary, lossy, core_name)
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
