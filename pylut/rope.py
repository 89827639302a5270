"""pylut.rope - RoPE frequencies of every supported scaling, computed once in Python: the
per-pair inverse frequencies and YaRN's / LongRoPE's cos/sin factor that the C forward pass
and the numpy reference both rotate with (config keys rope_inv_freq, rope_attn_factor), over
the leading rope_dims dims of each head (partial rotary; default all of them).

Sources of truth: transformers' modeling_rope_utils (ROPE_INIT_FUNCTIONS) for Hugging Face
configs, ggml's rope (freq_factors, freq_scale, YaRN ramp and mscale) for GGUF files. The
two agree: a frequency factor f divides a pair's inverse frequency, linear scaling divides
all of them, YaRN blends the divided and undivided ones along a ramp over the pairs.
LongRoPE (Phi-3.5/4-mini) has two sets of per-pair factors, short and long, and one of them
is in force for the whole session: llama.cpp picks by the context it was given (for_context),
transformers by the sequence length; both scale cos and sin by the attention factor.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np

from .errors import ModelFileError

log = logging.getLogger("pylut")

DEFAULT_THETA = 10000.0
SCALING_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
LLAMACPP_CTX_PAD = 256  # llama.cpp rounds n_ctx up to this before comparing it (llama-context.cpp)
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0

# ---------------------------------------------------------------- the frequencies


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature (paper eq. 21): 1 + 0.1 * mscale * ln(factor)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_ramp(head_dim: int, theta: float, original_ctx: float, beta_fast: float, beta_slow: float,
               truncate: bool) -> np.ndarray:
    """[head_dim/2]: 1 where a pair keeps its frequency (it turns more than beta_fast times in
    the original context), 0 where it is divided by the factor (fewer than beta_slow turns)."""
    def pair_of(turns):  # the pair index at which a frequency turns `turns` times
        return head_dim * math.log(original_ctx / (turns * 2 * math.pi)) / (2 * math.log(theta))
    low, high = pair_of(beta_fast), pair_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # transformers and ggml both keep the ramp finite
    ramp = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0.0, 1.0)
    return 1.0 - ramp


def inv_freq(head_dim: int, theta: float, scaling: Optional[dict] = None,
             freq_factors: Optional[np.ndarray] = None, long: bool = False) -> tuple[np.ndarray, float]:
    """-> (inverse frequency of each rotated pair [head_dim/2] float32, cos/sin factor).
    head_dim: the rotated dims (rope_dims). scaling: {"type": one of SCALING_TYPES, ...its
    parameters} (see hf_scaling / gguf_scaling / gguf_longrope); freq_factors: GGUF
    rope_freqs.weight [head_dim/2], dividing each pair's frequency. LongRoPE divides by its
    short factors, or its long ones when `long` (see uses_long_factors)."""
    scaling = scaling or {"type": "default"}
    base = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [head_dim/2]
    if freq_factors is not None:
        base = base / np.asarray(freq_factors, np.float64)
    kind, attn = scaling["type"], 1.0
    if kind == "default":
        inv = base
    elif kind == "linear":
        inv = base / scaling["factor"]
    elif kind == "llama3":
        factor, orig = scaling["factor"], scaling["original_max_position_embeddings"]
        lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / base
        inv = np.where(wavelen > orig / lo, base / factor, base)
        smooth = (orig / wavelen - lo) / (hi - lo)
        medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
        inv = np.where(medium, (1 - smooth) * inv / factor + smooth * inv, inv)
    elif kind == "yarn":
        factor = scaling["factor"]
        keep = _yarn_ramp(head_dim, theta, scaling["original_max_position_embeddings"], scaling["beta_fast"],
                          scaling["beta_slow"], scaling.get("truncate", True))
        inv = base / factor * (1 - keep) + base * keep
        attn = scaling["attention_factor"]
    elif kind == "longrope":
        factors = np.asarray(scaling["long_factor" if long else "short_factor"], np.float64)
        if factors.shape != base.shape:
            raise ModelFileError(f"LongRoPE has {factors.size} factors, expected {base.size} (half the rotated dims)")
        inv = base / factors
        attn = scaling["attention_factor"]
    else:
        raise ModelFileError(f"RoPE scaling type {kind!r} is not supported "
                             f"(supported: {', '.join(SCALING_TYPES)})")
    return inv.astype(np.float32), float(attn)


def apply(cfg: dict, scaling: dict, freq_factors: Optional[np.ndarray] = None) -> dict:
    """Store the scaling and its computed frequencies in a model config (JSON-friendly).
    LongRoPE's short factors are stored; for_context swaps in the long ones where they apply."""
    inv, attn = inv_freq(cfg.get("rope_dims", cfg["head_dim"]), cfg["rope_theta"], scaling, freq_factors)
    cfg["rope_scaling"] = dict(scaling)
    if freq_factors is not None:
        cfg["rope_scaling"]["freq_factors"] = [float(x) for x in np.asarray(freq_factors).reshape(-1)]
    cfg["rope_inv_freq"] = [float(x) for x in inv]
    cfg["rope_attn_factor"] = attn
    return cfg


def uses_long_factors(scaling: Optional[dict], n_ctx: int) -> bool:
    """LongRoPE's choice as llama.cpp makes it (llama_model::get_rope_factors): the long
    factors when the context, rounded up to LLAMACPP_CTX_PAD, exceeds the original one."""
    if not scaling or scaling.get("type") != "longrope":
        return False
    padded = -(-int(n_ctx) // LLAMACPP_CTX_PAD) * LLAMACPP_CTX_PAD
    return padded > scaling["original_max_position_embeddings"]


def for_context(cfg: dict, n_ctx: int) -> dict:
    """cfg as a session of n_ctx positions runs it: a copy with LongRoPE's long-factor
    frequencies where uses_long_factors says so, else cfg itself."""
    scaling = cfg.get("rope_scaling")
    if not uses_long_factors(scaling, n_ctx):
        return cfg
    inv, _ = inv_freq(cfg.get("rope_dims", cfg["head_dim"]), cfg["rope_theta"], scaling, long=True)
    return dict(cfg, rope_inv_freq=[float(x) for x in inv])


def describe(cfg: dict) -> str:
    """One line for `pylut info`: the base and the scaling in force."""
    s = dict(cfg.get("rope_scaling") or {"type": "default"})
    kind = s.pop("type")
    ff = s.pop("freq_factors", None)
    factors = {k: s.pop(k) for k in ("short_factor", "long_factor") if k in s}
    parts = [f"base {cfg['rope_theta']:g}", kind]
    if cfg.get("rope_dims", cfg["head_dim"]) != cfg["head_dim"]:
        parts.insert(1, f"partial rotary {cfg['rope_dims']} of {cfg['head_dim']} dims")
    if s:
        parts.append("(" + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in sorted(s.items())) + ")")
    if ff is not None:
        parts.append(f"freq factors {min(ff):g}..{max(ff):g} (rope_freqs.weight)")
    for name, f in factors.items():
        parts.append(f"{name.split('_')[0]} factors {min(f):g}..{max(f):g}")
    if factors:
        parts.append(f"(long ones when n_ctx rounded up to {LLAMACPP_CTX_PAD} exceeds "
                     f"{s['original_max_position_embeddings']:g}, as llama.cpp)")
    if cfg.get("rope_skip_layers"):
        parts.append("; no RoPE on layers " + ", ".join(map(str, cfg["rope_skip_layers"])))
    if cfg.get("rope_attn_factor", 1.0) != 1.0 and "attention_factor" not in s:
        parts.append(f"attn factor {cfg['rope_attn_factor']:.6g}")
    return " ".join(parts)


# ---------------------------------------------------------------- Hugging Face configs

# per scaling type: parameter -> required? (rope_type / type / rope_theta /
# partial_rotary_factor are handled for every type)
_HF_PARAMS = {
    "default": {},
    "linear": {"factor": True},
    "llama3": {"factor": True, "low_freq_factor": True, "high_freq_factor": True,
               "original_max_position_embeddings": False},
    "yarn": {"factor": False, "attention_factor": False, "beta_fast": False, "beta_slow": False,
             "mscale": False, "mscale_all_dim": False, "original_max_position_embeddings": False,
             "truncate": False},
    "longrope": {"short_factor": True, "long_factor": True, "factor": False, "attention_factor": False,
                 "original_max_position_embeddings": False},
}
# older names of LongRoPE in Phi-3 configs ("su" before transformers named it longrope)
_HF_ALIASES = {"su": "longrope"}


def _number(where: str, key: str, value: Any, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ModelFileError(f"{where}: {key} = {value!r} must be a {'positive ' if positive else ''}number")
    return float(value)


def hf_scaling(hf: dict, where: str, partial_rotary: bool = False) -> tuple[float, dict]:
    """(rope base, scaling dict) from a config.json in either layout: transformers >= 5's
    `rope_parameters` or the older top-level `rope_theta` + `rope_scaling`. Anything that would
    change the rotation and is not computed here is refused with its name.
    partial_rotary: the architecture reads partial_rotary_factor (hf_rope_dims), else a
    factor other than 1 is refused."""
    new, old = hf.get("rope_parameters"), hf.get("rope_scaling")
    for key, v in (("rope_parameters", new), ("rope_scaling", old)):
        if v is not None and not isinstance(v, dict):
            raise ModelFileError(f"{where}: {key} = {v!r} should be an object")
    if new and old and new != old:
        raise ModelFileError(f"{where}: both rope_parameters and rope_scaling are set and differ; "
                             f"which one the checkpoint was trained with is ambiguous")
    params = dict(new or old or {})
    nested = [k for k, v in params.items() if isinstance(v, dict)]
    if nested:
        raise ModelFileError(f"{where}: rope_parameters per layer type ({', '.join(nested)}) are not supported")

    def one_of(key_a, a, key_b, b):
        if a is not None and b is not None and a != b:
            raise ModelFileError(f"{where}: {key_a} = {a!r} and {key_b} = {b!r} disagree")
        return a if a is not None else b

    theta = one_of("rope_parameters.rope_theta", params.pop("rope_theta", None), "rope_theta", hf.get("rope_theta"))
    theta = DEFAULT_THETA if theta is None else _number(where, "rope_theta", theta)
    kind = one_of("rope_type", params.pop("rope_type", None), "type", params.pop("type", None)) or "default"
    kind = _HF_ALIASES.get(kind, kind)
    prf = one_of("rope_parameters.partial_rotary_factor", params.pop("partial_rotary_factor", None),
                 "partial_rotary_factor", hf.get("partial_rotary_factor"))
    if prf is not None and _number(where, "partial_rotary_factor", prf) != 1.0 and not partial_rotary:
        raise ModelFileError(f"{where}: partial_rotary_factor = {prf!r}: partial rotary embeddings are not supported")
    if kind not in _HF_PARAMS:
        raise ModelFileError(f"{where}: rope_type {kind!r} is not supported (supported: {', '.join(_HF_PARAMS)})")
    allowed = _HF_PARAMS[kind]
    for key in params:
        if key not in allowed:
            raise ModelFileError(f"{where}: RoPE parameter {key!r} is not used by rope_type {kind!r} "
                                 f"and pylut does not compute it")
    for key, required in allowed.items():
        if required and params.get(key) is None:
            raise ModelFileError(f"{where}: rope_type {kind!r} needs {key!r}")
    out: dict[str, Any] = {"type": kind}
    if kind == "longrope":
        return theta, _hf_longrope(hf, params, where)
    if kind in ("llama3", "yarn"):  # transformers: the top-level value wins, then max_position_embeddings
        orig = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings") \
            or hf.get("max_position_embeddings")
        if orig is None:
            raise ModelFileError(f"{where}: rope_type {kind!r} needs original_max_position_embeddings")
        out["original_max_position_embeddings"] = _number(where, "original_max_position_embeddings", orig)
    if kind in ("linear", "llama3"):
        out["factor"] = _number(where, "factor", params["factor"])
    if kind == "llama3":
        out["low_freq_factor"] = _number(where, "low_freq_factor", params["low_freq_factor"])
        out["high_freq_factor"] = _number(where, "high_freq_factor", params["high_freq_factor"])
        if out["high_freq_factor"] <= out["low_freq_factor"]:
            raise ModelFileError(f"{where}: high_freq_factor must exceed low_freq_factor")
    if kind == "yarn":
        factor = params.get("factor")
        if factor is None:  # DeepSeek-style: the context ratio
            factor = _number(where, "max_position_embeddings", hf.get("max_position_embeddings")) \
                / out["original_max_position_embeddings"]
        out["factor"] = factor = _number(where, "factor", factor)
        attn = params.get("attention_factor")
        if attn is None:
            ms, ms_all = params.get("mscale"), params.get("mscale_all_dim")
            attn = (_yarn_mscale(factor, _number(where, "mscale", ms, False)) /
                    _yarn_mscale(factor, _number(where, "mscale_all_dim", ms_all, False))
                    if ms and ms_all else _yarn_mscale(factor))
        out["attention_factor"] = _number(where, "attention_factor", attn)
        out["beta_fast"] = _number(where, "beta_fast", params.get("beta_fast") or YARN_BETA_FAST)
        out["beta_slow"] = _number(where, "beta_slow", params.get("beta_slow") or YARN_BETA_SLOW)
        truncate = params.get("truncate", True)
        if not isinstance(truncate, bool):
            raise ModelFileError(f"{where}: truncate = {truncate!r} should be true or false")
        out["truncate"] = truncate
    return theta, out


def _factor_list(where: str, key: str, v: Any) -> list[float]:
    if not isinstance(v, list) or not v:
        raise ModelFileError(f"{where}: {key} should be a non-empty list of numbers")
    return [_number(where, f"{key}[{i}]", x) for i, x in enumerate(v)]


def _hf_longrope(hf: dict, params: dict, where: str) -> dict:
    """LongRoPE as transformers' _compute_longrope_parameters reads it: Phi-3's top-level
    original_max_position_embeddings wins over the one in rope_parameters; factor defaults to
    max_position_embeddings / original; the attention factor to sqrt(1 + ln factor / ln original)
    (1 when factor <= 1), which is also what llama.cpp's converter writes."""
    orig = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    if orig is None:
        raise ModelFileError(f"{where}: rope_type 'longrope' needs original_max_position_embeddings")
    orig = _number(where, "original_max_position_embeddings", orig)
    factor = params.get("factor")
    if factor is None:
        factor = _number(where, "max_position_embeddings", hf.get("max_position_embeddings")) / orig
    factor = _number(where, "factor", factor)
    attn = params.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    short, long = (_factor_list(where, k, params[k]) for k in ("short_factor", "long_factor"))
    if len(short) != len(long):
        raise ModelFileError(f"{where}: short_factor has {len(short)} entries, long_factor {len(long)}")
    return {"type": "longrope", "original_max_position_embeddings": orig, "factor": factor,
            "attention_factor": _number(where, "attention_factor", attn), "short_factor": short, "long_factor": long}


def hf_rope_dims(hf: dict, head_dim: int, where: str) -> int:
    """The dims RoPE rotates: int(head_dim * partial_rotary_factor) as transformers computes
    them (Phi-4-mini: 0.75), the factor read where hf_scaling reads it."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    prf = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    prf = hf.get("partial_rotary_factor") if prf is None else prf
    if prf is None:
        return head_dim
    dims = int(head_dim * _number(where, "partial_rotary_factor", prf))
    if dims < 2 or dims > head_dim or dims % 2:
        raise ModelFileError(f"{where}: partial_rotary_factor {prf!r} rotates {dims} of {head_dim} dims; "
                             f"expected an even count from 2 to head_dim")
    return dims


# ---------------------------------------------------------------- GGUF metadata


def gguf_scaling(meta: dict, arch: str, where: str, n_ctx_train: int) -> dict:
    """The scaling a GGUF file's `{arch}.rope.scaling.*` keys ask for, as llama.cpp applies it
    (freq_scale = 1/factor; YaRN with ext_factor 1 and mscale 1 + 0.1 ln(factor) times
    rope.scaling.attn_factor). rope_freqs.weight, if present, is applied on top by the caller.

    convert_hf_to_gguf.py writes a checkpoint's own YaRN settings as rope.scaling.yarn_*
    (beta_fast, beta_slow, attn_factor = transformers' attention_factor); llama.cpp's
    llama/qwen graphs do not read them and keep 32, 1 and 1 + 0.1 ln(factor). pylut computes
    what the checkpoint states, as transformers does, and logs where that differs."""
    a = arch + ".rope.scaling."
    kind = meta.get(a + "type", "none") or "none"
    factor = meta.get(a + "factor")
    legacy = meta.get(arch + ".rope.scale_linear")  # older converters' linear factor
    if kind == "none" and legacy is not None and float(legacy) != 1.0:
        kind, factor = "linear", legacy
    if kind == "none" or (kind == "linear" and factor is not None and float(factor) == 1.0):
        return {"type": "default"}
    if kind not in ("linear", "yarn"):
        raise ModelFileError(f"{where}: RoPE scaling type {kind!r} ({a}type) is not supported "
                             f"(supported: none, linear, yarn)")
    if factor is None:
        raise ModelFileError(f"{where}: {a}type is {kind!r} but {a}factor is missing")
    factor = _number(where, a + "factor", float(factor))
    if kind == "linear":
        return {"type": "linear", "factor": factor}
    orig = meta.get(a + "original_context_length", n_ctx_train)
    attn = _number(where, a + "attn_factor", float(meta.get(a + "attn_factor", 1.0)))
    stated = {k: meta[a + k] for k in ("yarn_beta_fast", "yarn_beta_slow", "yarn_attn_factor") if a + k in meta}
    if stated:
        log.info("%s: YaRN as the checkpoint states it (%s); llama.cpp's %s graph uses beta 32/1 and "
                 "attention factor 1 + 0.1 ln(factor) instead", where,
                 ", ".join(f"{k} {float(v):g}" for k, v in stated.items()), arch)
    mscale = _yarn_mscale(factor)
    if "yarn_attn_factor" in stated:  # transformers' attention_factor: the cos/sin factor itself
        mscale = _number(where, a + "yarn_attn_factor", float(stated["yarn_attn_factor"]))
    ext = float(meta.get(a + "yarn_ext_factor", 1.0))
    if ext != 1.0:
        raise ModelFileError(f"{where}: {a}yarn_ext_factor = {ext:g} is not supported (only 1)")
    return {"type": "yarn", "factor": factor,
            "original_max_position_embeddings": _number(where, a + "original_context_length", float(orig)),
            "beta_fast": _number(where, a + "yarn_beta_fast", float(meta.get(a + "yarn_beta_fast", YARN_BETA_FAST))),
            "beta_slow": _number(where, a + "yarn_beta_slow", float(meta.get(a + "yarn_beta_slow", YARN_BETA_SLOW))),
            "truncate": True, "attention_factor": attn * mscale}


def gguf_longrope(meta: dict, arch: str, where: str, n_ctx_train: int, short: np.ndarray,
                  long: np.ndarray) -> dict:
    """LongRoPE of a phi3 file: rope_factors_short/long.weight with rope.scaling.attn_factor
    (what the converter computed from the HF config; llama.cpp multiplies cos and sin by it
    whichever factors are in force) and rope.scaling.original_context_length (n_ctx_orig,
    default the training context), which for_context compares n_ctx with."""
    a = arch + ".rope.scaling."
    if gguf_scaling(meta, arch, where, n_ctx_train)["type"] != "default":
        raise ModelFileError(f"{where}: rope_factors_long/short.weight together with {a}type "
                             f"{meta.get(a + 'type')!r} is not supported")
    orig = _number(where, a + "original_context_length", float(meta.get(a + "original_context_length", n_ctx_train)))
    attn = _number(where, a + "attn_factor", float(meta.get(a + "attn_factor", 1.0)))
    return {"type": "longrope", "original_max_position_embeddings": orig, "attention_factor": attn,
            "short_factor": [float(x) for x in short], "long_factor": [float(x) for x in long]}
