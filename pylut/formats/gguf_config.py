"""pylut.formats.gguf_config - a GGUF file's hyperparameters -> the config dict `_core.Model`
reads (dims, norms, RoPE and its scaling, windows, Gemma's soft-caps), each checked and
refused with the file and key named; gguf_model.py turns the tensors into weights.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import arch as archs
from .. import rope
from ..errors import ModelFileError
from . import quants
from .gguf_reader import GGUFFile

SUPPORTED_ARCHS = tuple(archs.ARCHS)   # how each one computes: pylut/arch.py
_REQUIRED = object()


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
