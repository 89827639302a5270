"""pylut.formats.hf_loader - a Hugging Face model folder (config.json + *.safetensors) -> the same
LoadedModel the GGUF loader makes, float weights quantized on load.

Hugging Face llama/mistral/qwen2/qwen3/phi3 checkpoints keep q/k rows in the half-split ("NEOX")
RoPE order (llama.cpp's converter permutes them to adjacent pairs when writing GGUF), so every
architecture here rotates (i, i + head_dim/2) pairs. Norm weights and biases stay float32.
Phi-3's fused qkv_proj and gate_up_proj are split by rows into the separate matrices.

GPTQ checkpoints (quantization_config.quant_method "gptq") keep their codes and scales
(pylut.formats.gptq); their embedding, norms and usually lm_head are float and take the float path.
BitNet checkpoints (quant_method "bitnet": BitNetForCausalLM, i.e. BitNet b1.58 2B4T with
ReLU^2 and sub-norms, and llama folders such as Falcon3-*-1.58bit) keep their packed trits
(pylut.formats.hf_bitnet) exactly, packed as T3 or B2 like a GGUF's ternary matrices.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from . import gptq, hf_bitnet
from .. import rope
from .. import arch as archs
from ..arch import spec as arch_spec
from ..errors import ModelFileError
from ..kernels import quantize
from ..options import F16
from .gguf_model import (DEFAULT_FLOAT_GROUP, REQUANT, TERNARY_LAYOUTS, LoadedModel, MemorySink, _check_bits,
                         _rows_info, by_rows, check_config, keep_f16, ternary_one_scale)
from .safetensors_reader import open_safetensors

log = logging.getLogger("pylut")

ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
         "BitNetForCausalLM": "bitnet-b1.58", "Qwen3ForCausalLM": "qwen3",
         "Phi3ForCausalLM": "phi3", "SmolLM3ForCausalLM": "smollm3",
         "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3"}
# config keys an architecture reads although the llama/qwen2 block refuses them
_READ_BY = {"smollm3": {"no_rope_layers", "no_rope_layer_interval"}}


def is_hf_folder(path) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def may_hold_ternary(path) -> bool:
    """Whether a folder is a BitNet checkpoint (packed ternary matrices): its config says so."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            qc = json.load(f).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return False  # load_hf reports the problem
    return isinstance(qc, dict) and qc.get("quant_method") == "bitnet"


# ---------------------------------------------------------------- config.json

# keys with no effect on the computed logits (bookkeeping, training-only, generation defaults)
_INERT_KEYS = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "initializer_range", "use_cache", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop",
    "pretraining_tp", "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
    "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "tie_encoder_decoder", "torchscript",
    "tokenizer_class", "auto_map", "use_return_dict", "prefix", "task_specific_params", "finetuning_task",
    "cross_attention_hidden_size", "add_cross_attention", "is_decoder", "pruned_heads", "max_length",
    "bad_words_ids", "num_labels", "quantization_config", "use_bfloat16", "keys_to_ignore_at_inference",
    "unsloth_version", "unsloth_fixed",
}
# quantities pylut's llama/qwen2 block does not compute: refused unless at their no-op value
_UNSUPPORTED = {
    "attn_logit_softcapping": (None,), "final_logit_softcapping": (None,), "query_pre_attn_scalar": (None,),
    "logit_scale": (None, 1, 1.0), "logits_scaling": (None, 1, 1.0), "embedding_multiplier": (None, 1, 1.0),
    "residual_multiplier": (None, 1, 1.0), "attention_multiplier": (None,), "scale_embedding": (None, False),
    "use_qk_norm": (None, False), "qk_layernorm": (None, False), "no_rope_layers": (None,),
    "no_rope_layer_interval": (None,), "mlp_bias": (None, False), "num_experts": (None, 0),
    "num_local_experts": (None, 0), "moe_intermediate_size": (None,), "layer_norm_eps": (None,),
    "norm_eps": (None,),
}
_SILU = ("silu", "swish")
# hidden_act each architecture's MLP computes (pylut/arch.py's ffn_act)
_ACTS = {"silu": _SILU, "relu2": ("relu2",)}


def _read_json(cfg_path: str) -> dict:
    try:
        with open(cfg_path) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{cfg_path}: cannot read the model config ({e})") from None
    if not isinstance(hf, dict):
        raise ModelFileError(f"{cfg_path}: the model config is not a JSON object")
    return hf


def _context(hf: dict, hf_arch: str, n_layers: int, max_ctx: int, cfg_path: str) -> int:
    """The context pylut can run exactly where it does not window the layers (Qwen2, Qwen3,
    SmolLM3: their windowed layers are picked by several keys): a checkpoint with
    sliding-window layers runs up to its window, where windowing is a no-op. (Mistral and
    Phi-3 windows are applied: WINDOWED; Gemma's: _gemma.)"""
    window = hf.get("sliding_window")
    if hf_arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        types = hf.get("layer_types")
        if types is None:  # older configs: the window applies from layer max_window_layers on
            use = bool(hf.get("use_sliding_window", False))
            windowed = use and window is not None and n_layers > int(hf.get("max_window_layers", n_layers))
        else:
            if not isinstance(types, list) or len(types) != n_layers or \
                    any(t not in ("full_attention", "sliding_attention") for t in types):
                raise ModelFileError(f"{cfg_path}: layer_types {types!r} should list full_attention / "
                                     f"sliding_attention for each of the {n_layers} layers")
            windowed = "sliding_attention" in types and bool(hf.get("use_sliding_window", False)) \
                and window is not None
    elif hf_arch == "SmolLM3ForCausalLM":  # the window, when used, is on the NoPE layers
        windowed = bool(hf.get("use_sliding_window", False)) and window is not None
    else:  # Llama's attention has no window; a stray key would be a misconfiguration
        if window is not None:
            raise ModelFileError(f"{cfg_path}: sliding_window = {window!r} is set, but LlamaForCausalLM "
                                 f"attends to every position; pylut will not guess which one applies")
        windowed = False
    if not windowed:
        return max_ctx
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ModelFileError(f"{cfg_path}: sliding_window = {window!r} should be a positive integer")
    if window < max_ctx:
        log.info("%s: sliding_window %d: the context is limited to the window, within which every "
                 "layer sees every position (pylut does not window these layers)", cfg_path, window)
        return window
    return max_ctx


# architectures whose sliding_window (null: none) windows every layer, in transformers'
# masks (a query at p sees (p - window, p]) and in pylut's; llama.cpp's llama and phi3 graphs
# attend to every position instead (docs/attention.md)
WINDOWED = ("MistralForCausalLM", "Phi3ForCausalLM")


def _every_layer_window(hf: dict, cfg: dict, cfg_path: str) -> None:
    window = hf.get("sliding_window")
    if window is None or window == 0:   # Phi-4-mini's converter-side "none" is 0 / null
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ModelFileError(f"{cfg_path}: sliding_window = {window!r} should be a positive integer")
    cfg["sliding_window"], cfg["swa_layers"] = window, [True] * cfg["n_layers"]


def _nope_layers(hf: dict, n_layers: int, cfg_path: str) -> list[int]:
    """SmolLM3's layers without RoPE: no_rope_layers (1: rotate, 0: not, per layer), else
    every no_rope_layer_interval-th layer (default 4), as transformers' SmolLM3Config builds it."""
    flags = hf.get("no_rope_layers")
    if flags is None:
        every = hf.get("no_rope_layer_interval", 4)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ModelFileError(f"{cfg_path}: no_rope_layer_interval = {every!r} should be a positive integer")
        flags = [int((l + 1) % every != 0) for l in range(n_layers)]
    if not isinstance(flags, list) or len(flags) != n_layers or any(f not in (0, 1) or isinstance(f, bool)
                                                                     for f in flags):
        raise ModelFileError(f"{cfg_path}: no_rope_layers = {flags!r} should hold 0 or 1 for each of the "
                             f"{n_layers} layers")
    return [l for l, rotates in enumerate(flags) if not rotates]


# ---------------------------------------------------------------- Gemma

# Gemma's config keys: read by _gemma (or inert), never refused as unsupported
_GEMMA_KEYS = {"hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
               "sliding_window", "layer_types", "sliding_window_pattern", "_sliding_window_pattern",
               "rope_local_base_freq", "use_bidirectional_attention", "cache_implementation"}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


def _gemma(hf: dict, cfg: dict, cfg_path: str) -> None:
    """transformers' Gemma2 / Gemma3 text model: embeddings times sqrt(hidden) (the
    normalizer), scores times query_pre_attn_scalar^-0.5, the soft-caps, GeGLU with the tanh
    GELU, and the sliding-window layers from layer_types (else the default pattern) with
    Gemma 3's local RoPE (rope_parameters.sliding_attention or rope_local_base_freq)."""
    arch = cfg["arch"]
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _GELU_TANH:
        raise ModelFileError(f"{cfg_path}: hidden_activation = {act!r} is not supported (Gemma's GeGLU "
                             f"uses the tanh GELU, gelu_pytorch_tanh)")
    if hf.get("use_bidirectional_attention"):
        raise ModelFileError(f"{cfg_path}: use_bidirectional_attention is set; pylut's attention is causal")
    cfg["embd_scale"] = float(np.sqrt(cfg["dim"]))
    qpas = hf.get("query_pre_attn_scalar", cfg["head_dim"])
    cfg["attn_scale"] = float(rope._number(cfg_path, "query_pre_attn_scalar", qpas)) ** -0.5
    for key, ours in (("attn_logit_softcapping", "attn_softcap"), ("final_logit_softcapping", "final_softcap")):
        v = hf.get(key)
        cfg[ours] = 0.0 if v is None else rope._number(cfg_path, key, v)
    if arch == "gemma3" and cfg["attn_softcap"]:
        raise ModelFileError(f"{cfg_path}: attn_logit_softcapping is set, but Gemma 3 computes no attention "
                             f"soft-cap (llama.cpp's converter refuses it too)")
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    theta, scaling = rope.hf_scaling(dict(hf, rope_parameters=params.get("full_attention", params)
                                          if isinstance(params, dict) else params, rope_scaling=None), cfg_path)
    cfg["rope_theta"] = theta
    rope.apply(cfg, scaling)
    window, n = hf.get("sliding_window"), cfg["n_layers"]
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ModelFileError(f"{cfg_path}: sliding_window = {window!r} should be a positive integer")
    types = hf.get("layer_types")
    if types is None:
        pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", archs.spec(arch).swa_pattern))
        layers = archs.swa_layers(n, int(pattern))
    elif not isinstance(types, list) or len(types) != n or \
            any(t not in ("full_attention", "sliding_attention") for t in types):
        raise ModelFileError(f"{cfg_path}: layer_types {types!r} should list full_attention / "
                             f"sliding_attention for each of the {n} layers")
    else:
        layers = [t == "sliding_attention" for t in types]
    cfg["sliding_window"], cfg["swa_layers"] = window, layers
    if arch == "gemma3":  # local layers: their own base, no scaling
        if local is not None:
            local_theta, local_scaling = rope.hf_scaling({"rope_parameters": local}, cfg_path)
        else:
            local_theta, local_scaling = float(hf.get("rope_local_base_freq", 10000.0)), {"type": "default"}
        inv, _ = rope.inv_freq(cfg["head_dim"], local_theta, local_scaling)
        cfg["rope_inv_freq_swa"] = [float(x) for x in inv]


def _config(path: str) -> tuple[dict, bool, gptq.GPTQConfig | hf_bitnet.BitNetQuant | None]:
    """Hyperparameters from config.json. Every key that sets a quantity pylut computes with is
    read, or refused with its name; a default stands only where the config says nothing."""
    cfg_path = os.path.join(path, "config.json")
    hf = _read_json(cfg_path)
    archs = hf.get("architectures") or []
    hf_arch = next((a for a in archs if a in ARCHS), None)
    if hf_arch is None:
        raise ModelFileError(f"{cfg_path}: unsupported architecture {archs or hf.get('model_type')!r}; "
                             f"supported: {', '.join(sorted(ARCHS))}")
    arch = ARCHS[hf_arch]
    qc = gptq.quantization_config(path, hf)
    if isinstance(qc, dict) and qc.get("quant_method") == "bitnet":
        quant = hf_bitnet.parse_config(qc, cfg_path)
    else:
        quant = gptq.parse_config(qc, cfg_path) if qc else None
    gemma = arch_spec(arch).gemma
    for key, neutral in _UNSUPPORTED.items():
        if gemma and key in _GEMMA_KEYS:
            continue
        if key in hf and hf[key] not in neutral and key not in _READ_BY.get(arch, ()):
            raise ModelFileError(f"{cfg_path}: {key} = {hf[key]!r} is not supported by pylut's "
                                 f"{arch} block (it computes no such quantity)")
    act, ffn_act = hf.get("hidden_act", "silu"), arch_spec(arch).ffn_act
    if not gemma and act not in _ACTS[ffn_act]:  # (Gemma's: _gemma)
        raise ModelFileError(f"{cfg_path}: hidden_act = {act!r} is not supported ({hf_arch}'s MLP is "
                             f"{ffn_act}-gated in pylut)")
    try:
        dim, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_layers = int(hf["num_hidden_layers"])
        head_dim = int(hf.get("head_dim") or dim // heads)
        cfg = dict(arch=arch, n_layers=n_layers, dim=dim, n_heads=heads,
                   n_kv_heads=int(hf.get("num_key_value_heads") or heads),
                   head_dim=head_dim, ffn_dim=int(hf["intermediate_size"]),
                   vocab=int(hf["vocab_size"]), max_ctx=int(hf.get("max_position_embeddings", 4096)),
                   norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_neox=True,
                   ffn_act=ffn_act)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{cfg_path}: missing or bad hyperparameter ({e})") from None
    if "max_position_embeddings" not in hf:
        log.info("%s: max_position_embeddings is absent; the context is limited to %d", cfg_path, cfg["max_ctx"])
    full_ctx = cfg["max_ctx"]
    if hf_arch in WINDOWED:
        _every_layer_window(hf, cfg, cfg_path)
    elif not gemma:  # (Gemma's windowed layers: _gemma)
        cfg["max_ctx"] = _context(hf, hf_arch, n_layers, full_ctx, cfg_path)
    if cfg["max_ctx"] < full_ctx:
        cfg["sliding_window"] = cfg["max_ctx"]   # the hook, as gguf_model (absent: no window)
    if cfg["norm_eps"] <= 0:
        raise ModelFileError(f"{cfg_path}: rms_norm_eps = {hf.get('rms_norm_eps')!r} must be positive")
    phi3 = hf_arch == "Phi3ForCausalLM"
    cfg["rope_theta"], scaling = (rope.hf_scaling(hf, cfg_path, partial_rotary=phi3) if not gemma
                                  else (10000.0, {"type": "default"}))  # (Gemma's: _gemma)
    if head_dim % 2:
        raise ModelFileError(f"{cfg_path}: head_dim {head_dim} is odd; RoPE rotates pairs")
    if phi3:
        if quant is not None:
            raise ModelFileError(f"{cfg_path}: GPTQ checkpoints of Phi3ForCausalLM (fused matrices) are not supported")
        rope_dims = rope.hf_rope_dims(hf, head_dim, cfg_path)
        if rope_dims != head_dim:
            cfg["rope_dims"] = rope_dims
    elif scaling["type"] == "longrope":
        raise ModelFileError(f"{cfg_path}: rope_type 'longrope' is read for Phi3ForCausalLM only")
    if arch == "smollm3":
        cfg["rope_skip_layers"] = _nope_layers(hf, n_layers, cfg_path)
    rope.apply(cfg, scaling)
    if gemma:
        _gemma(hf, cfg, cfg_path)
    # Llama reads attention_bias (q/k/v/o biases); Qwen2 always has q/k/v ones; Mistral has none
    bias = hf.get("attention_bias", False)
    if not isinstance(bias, bool):
        raise ModelFileError(f"{cfg_path}: attention_bias = {bias!r} should be true or false")
    if bias and (hf_arch in ("MistralForCausalLM", "BitNetForCausalLM", "Phi3ForCausalLM") or gemma):
        raise ModelFileError(f"{cfg_path}: attention_bias = true, but {hf_arch} has no attention "
                             f"biases; pylut will not guess whether they apply")
    cfg["attention_bias"] = arch == "qwen2" or bias
    tied = hf.get("tie_word_embeddings", gemma)
    if not isinstance(tied, bool):
        raise ModelFileError(f"{cfg_path}: tie_word_embeddings = {tied!r} should be true or false")
    read = {"hidden_size", "num_attention_heads", "num_hidden_layers", "head_dim", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "rope_scaling", "rope_parameters", "partial_rotary_factor", "original_max_position_embeddings",
            "hidden_act", "attention_bias", "tie_word_embeddings", "sliding_window", "use_sliding_window",
            "max_window_layers", "layer_types"}
    unknown = sorted(set(hf) - read - _INERT_KEYS - set(_UNSUPPORTED) - (_GEMMA_KEYS if gemma else set()))
    if unknown:
        log.warning("%s: config keys pylut does not know, ignored: %s", cfg_path, ", ".join(unknown))
    return check_config(cfg, cfg_path), tied, quant


def _wanted(cfg: dict, tied: bool) -> dict:
    """core name -> (HF name, shape, matrix?, required?, rows): rows (r0, r1) when the core
    matrix is those rows of the HF tensor (Phi-3's fused ones), else None."""
    L, d, kvd, ffn = cfg["n_layers"], cfg["dim"], cfg["n_kv_heads"] * cfg["head_dim"], cfg["ffn_dim"]
    qd = cfg["n_heads"] * cfg["head_dim"]
    want = {"token_embd": ("model.embed_tokens.weight", (cfg["vocab"], d), True, True),
            "output_norm": ("model.norm.weight", (d,), False, True)}
    if not tied:
        want["output"] = ("lm_head.weight", (cfg["vocab"], d), True, True)
    for i in range(L):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        if cfg["arch"] == "phi3":  # qkv_proj: q, k, v rows; gate_up_proj: chunk(2) -> gate, up
            qkv, gate_up = h + "self_attn.qkv_proj.weight", h + "mlp.gate_up_proj.weight"
            want.update({
                p + "attn_norm": (h + "input_layernorm.weight", (d,), False, True),
                p + "attn_q": (qkv, (qd + 2 * kvd, d), True, True, (0, qd)),
                p + "attn_k": (qkv, (qd + 2 * kvd, d), True, True, (qd, qd + kvd)),
                p + "attn_v": (qkv, (qd + 2 * kvd, d), True, True, (qd + kvd, qd + 2 * kvd)),
                p + "attn_output": (h + "self_attn.o_proj.weight", (d, qd), True, True),
                p + "ffn_norm": (h + "post_attention_layernorm.weight", (d,), False, True),
                p + "ffn_gate": (gate_up, (2 * ffn, d), True, True, (0, ffn)),
                p + "ffn_up": (gate_up, (2 * ffn, d), True, True, (ffn, 2 * ffn)),
                p + "ffn_down": (h + "mlp.down_proj.weight", (d, ffn), True, True),
            })
            continue
        want.update({
            p + "attn_norm": (h + "input_layernorm.weight", (d,), False, True),
            p + "attn_q": (h + "self_attn.q_proj.weight", (qd, d), True, True),
            p + "attn_k": (h + "self_attn.k_proj.weight", (kvd, d), True, True),
            p + "attn_v": (h + "self_attn.v_proj.weight", (kvd, d), True, True),
            p + "attn_output": (h + "self_attn.o_proj.weight", (d, qd), True, True),
            p + "ffn_norm": (h + "post_attention_layernorm.weight", (d,), False, True),
            p + "ffn_gate": (h + "mlp.gate_proj.weight", (ffn, d), True, True),
            p + "ffn_up": (h + "mlp.up_proj.weight", (ffn, d), True, True),
            p + "ffn_down": (h + "mlp.down_proj.weight", (d, ffn), True, True),
        })
        if arch_spec(cfg["arch"]).sub_norms:  # BitNet: RMSNorm before o_proj and before down_proj
            want[p + "attn_sub_norm"] = (h + "self_attn.attn_sub_norm.weight", (qd,), False, True)
            want[p + "ffn_sub_norm"] = (h + "mlp.ffn_sub_norm.weight", (ffn,), False, True)
        if arch_spec(cfg["arch"]).gemma:  # sandwich norms: Gemma's post_attention_layernorm is one
            want[p + "ffn_norm"] = (h + "pre_feedforward_layernorm.weight", (d,), False, True)
            want[p + "attn_post_norm"] = (h + "post_attention_layernorm.weight", (d,), False, True)
            want[p + "ffn_post_norm"] = (h + "post_feedforward_layernorm.weight", (d,), False, True)
        if arch_spec(cfg["arch"]).qk_norm:  # qwen3, gemma3: one RMSNorm weight per head dimension
            want[p + "attn_q_norm"] = (h + "self_attn.q_norm.weight", (cfg["head_dim"],), False, True)
            want[p + "attn_k_norm"] = (h + "self_attn.k_norm.weight", (cfg["head_dim"],), False, True)
        # qwen2 always has q/k/v biases; llama checkpoints with attention_bias do too
        for x, n in (("q", qd), ("k", kvd), ("v", kvd)):
            want[p + f"attn_{x}.bias"] = (h + f"self_attn.{x}_proj.bias", (n,), False, cfg["attention_bias"])
    return want


def _no_bias(st, base: str, path: str) -> None:
    """The block has no bias slot for o_proj / the MLP: a zero bias (AutoGPTQ can write one)
    is fine, anything else would be silently dropped."""
    name = base + ".bias"
    if name in st and np.any(st[name].to_float32() != 0):
        raise ModelFileError(f"{path}: tensor {name!r} is a nonzero bias, which pylut's "
                             f"llama/qwen2 block does not have for this projection")


def load_hf(path, bits: int = 4, group: int | None = None, requant: str | None = None,
            sink=None, ternary: str = "t3") -> LoadedModel:
    """Read a Hugging Face llama / mistral / qwen2 / qwen3 / BitNet folder. Float matrices are quantized to
    `bits` (or per `requant`), round-to-nearest with one fp16 scale and bias per group, or kept as
    fp16 with bits "f16" (exact for F16 checkpoints, BF16/F32 ones rounded and listed lossy); GPTQ
    matrices keep the checkpoint's codes and scales (see pylut.formats.gptq) unless `requant` is given.
    sink: where each converted tensor goes, as for ``gguf_model.load_gguf``.
    ternary: how BitNet checkpoints' packed ternary matrices are packed ('t3' or 'b2', both
    exact; see load_gguf)."""
    if ternary not in TERNARY_LAYOUTS:
        raise ValueError(f"ternary must be one of {', '.join(TERNARY_LAYOUTS)}, got {ternary!r}")
    path = os.fspath(path)
    start = time.perf_counter()
    cfg, tied, quant = _config(path)
    bitnet = quant if isinstance(quant, hf_bitnet.BitNetQuant) else None
    quant = None if bitnet else quant
    _check_bits(bits)
    requant_args = REQUANT[requant] if requant else None
    keep = bits == F16 and not requant_args
    qargs = requant_args or (None if keep else dict(bits=bits, group=group or DEFAULT_FLOAT_GROUP, mode="zp"))
    memory = MemorySink() if sink is None else None
    out = memory or sink
    types, lossy, n_params, packed_bytes, matrix_params = {}, set(), 0, 0, 0
    act_order, odd_zero = [], []
    with open_safetensors(path) as st:
        for core, (name, shape, matrix, required, *rows) in _wanted(cfg, tied).items():
            base = name[: -len(".weight")]
            if matrix and (rows or core.split(".")[-1] in ("attn_output", "ffn_gate", "ffn_up", "ffn_down")):
                _no_bias(st, base, path)
            # a GPTQ layer: its qweight is there, or a block's projection has neither it nor a
            # float weight (the error names the qweight); lm_head or a layer may be left float
            if quant is not None and matrix and (base + ".qweight" in st or
                                                 (core.startswith("blk.") and name not in st)):
                c = gptq.load_matrix(st, base, shape, quant, path, requant_args)
                out.put(core, c.matrix)
                types[core] = f"GPTQ{quant.bits}"
                packed_bytes += c.matrix.nbytes
                matrix_params += shape[0] * shape[1]
                for part in gptq.TENSOR_SUFFIXES:
                    st.drop_pages(base + part)
                if not c.exact:
                    lossy.add(core)
                if c.act_order:
                    act_order.append(core)
                if c.odd_sym_zero:
                    odd_zero.append(core)
                n_params += shape[0] * shape[1]
                del c
                continue
            if bitnet is not None and matrix and core.startswith("blk.") and hf_bitnet.is_packed(st, base, bitnet):
                trits, scale = hf_bitnet.load_matrix(st, base, shape, bitnet, path)
                if requant_args:
                    t = quantize(trits * np.float32(scale), **requant_args)
                    lossy.add(core)
                else:
                    t = ternary_one_scale(trits, scale, ternary)
                del trits
                out.put(core, t)
                types[core] = "ternary-U8"
                packed_bytes += t.nbytes
                matrix_params += shape[0] * shape[1]
                n_params += shape[0] * shape[1]
                del t
                st.drop_pages(name)
                continue
            if name not in st:
                if not required:
                    continue
                raise ModelFileError(f"{path}: missing tensor {name!r}")
            info = st[name]
            if tuple(info.shape) != shape:
                raise ModelFileError(f"{path}: tensor {name!r} has shape {tuple(info.shape)}, "
                                     f"expected {shape} from config.json")
            if rows:  # a fused tensor's part: a view of its rows
                info = _rows_info(info, *rows[0])
                shape = info.shape
            n_params += int(np.prod(shape))
            if matrix:
                def convert(part, name=name):
                    w = part.to_float32()
                    if not np.all(np.isfinite(w)):
                        raise ModelFileError(f"{path}: tensor {name!r} contains NaN or inf")
                    if keep:
                        return keep_f16(w, lossy, core)  # F16 -> float32 -> fp16 is exact
                    return quantize(w, **qargs)
                # by row pieces: a float32 copy of a whole embedding would be 4 bytes a weight
                t = by_rows(info, convert, lambda offset, n, name=name: st.drop_pages(name, offset, n))
                t = convert(info) if t is None else t
                packed_bytes += t.nbytes
                matrix_params += shape[0] * shape[1]
                if not keep:
                    lossy.add(core)
            else:  # a copy, even of F32: the mapping closes before the model is used
                t = np.array(info.to_float32(), np.float32)
                if not np.all(np.isfinite(t)):
                    raise ModelFileError(f"{path}: tensor {name!r} contains NaN or inf")
                if arch_spec(cfg["arch"]).gemma and core.endswith("norm"):
                    t += np.float32(1.0)  # Gemma's RMSNorm scales by (1 + weight), as llama.cpp's converter stores it
            out.put(core, t)
            del t  # a streaming sink has written it: its buffers go now
            st.drop_pages(name, info.offset, info.nbytes)
            types[core] = str(info.dtype)
    if tied:
        out.alias("output", "token_embd")
        types["output"] = types["token_embd"]
        if "token_embd" in lossy:
            lossy.add("output")
    if act_order:
        log.warning("%s: %d GPTQ matrices use act-order groups (desc_act) that are not contiguous "
                    "along the input; requantized round-to-nearest to %d bits, group %d (lossy)",
                    path, len(act_order), quant.bits, gptq.requant_group(quant))
    if odd_zero:
        log.warning("%s: %d GPTQ matrices are marked sym but have zero points other than %d; "
                    "is checkpoint_format (%s) right? loaded as declared", path, len(odd_zero),
                    1 << (quant.bits - 1), "gptq" if quant.zeros_minus_one else "gptq_v2")
    bpw = 8.0 * packed_bytes / max(1, matrix_params)
    loaded = LoadedModel(config=cfg, tensors={} if memory is None else memory.tensors, metadata={},
                         path=path, arch=cfg["arch"],
                         tensor_types=types, n_params=n_params, bits_per_weight=bpw,
                         lossy=lossy, tied_output=tied)
    loaded.load_seconds = time.perf_counter() - start
    log.info("%s: %s, %d layers, dim %d, %.1fM params%s, %d lossy matrices, loaded in %.2f s", path,
             cfg["arch"], cfg["n_layers"], cfg["dim"], n_params / 1e6,
             f", GPTQ {quant.bits}-bit" if quant else ", packed ternary" if bitnet else "", len(lossy),
             loaded.load_seconds)
    return loaded
