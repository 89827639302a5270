"""pylut.hf_loader - a Hugging Face model folder (config.json + *.safetensors) -> the same
LoadedModel the GGUF loader makes, float weights quantized on load.

Hugging Face llama/mistral/qwen2 checkpoints keep q/k rows in the half-split ("NEOX") RoPE
order (llama.cpp's converter permutes them to adjacent pairs when writing GGUF), so every
architecture here rotates (i, i + head_dim/2) pairs. Norm weights and biases stay float32.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from .errors import ModelFileError
from .kernels import quantize
from .loader import DEFAULT_FLOAT_GROUP, REQUANT, LoadedModel
from .safetensors_reader import open_safetensors

log = logging.getLogger("pylut")

ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def is_hf_folder(path) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def _config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{cfg_path}: cannot read the model config ({e})") from None
    archs = hf.get("architectures") or []
    arch = next((ARCHS[a] for a in archs if a in ARCHS), None)
    if arch is None:
        raise ModelFileError(f"{cfg_path}: unsupported architecture {archs or hf.get('model_type')!r}; "
                             f"supported: {', '.join(sorted(ARCHS))}")
    if hf.get("quantization_config"):
        raise ModelFileError(f"{cfg_path}: quantized checkpoints "
                             f"({hf['quantization_config'].get('quant_method', '?')}) are not supported yet; "
                             "use the float checkpoint or a GGUF file")
    try:
        dim, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        cfg = dict(arch=arch, n_layers=int(hf["num_hidden_layers"]), dim=dim, n_heads=heads,
                   n_kv_heads=int(hf.get("num_key_value_heads") or heads),
                   head_dim=int(hf.get("head_dim") or dim // heads), ffn_dim=int(hf["intermediate_size"]),
                   vocab=int(hf["vocab_size"]), max_ctx=int(hf.get("max_position_embeddings", 4096)),
                   norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(hf.get("rope_theta", 10000.0)),
                   rope_neox=True)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{cfg_path}: missing or bad hyperparameter ({e})") from None
    if hf.get("rope_scaling"):
        log.warning("%s: rope_scaling is ignored; quality may drop past the original context", cfg_path)
    return cfg, bool(hf.get("tie_word_embeddings", False))


def load_hf(path, bits: int = 4, group: int | None = None, requant: str | None = None) -> LoadedModel:
    """Read a Hugging Face llama / mistral / qwen2 folder; matrices are quantized to `bits`
    (or per `requant`), round-to-nearest with one fp16 scale and bias per group."""
    path = os.fspath(path)
    start = time.perf_counter()
    cfg, tied = _config(path)
    qargs = REQUANT[requant] if requant else dict(bits=bits, group=group or DEFAULT_FLOAT_GROUP, mode="zp")
    L, d, kvd, ffn = cfg["n_layers"], cfg["dim"], cfg["n_kv_heads"] * cfg["head_dim"], cfg["ffn_dim"]
    qd = cfg["n_heads"] * cfg["head_dim"]
    # core name -> (HF name, shape, matrix?)
    want = {"token_embd": ("model.embed_tokens.weight", (cfg["vocab"], d), True),
            "output_norm": ("model.norm.weight", (d,), False)}
    if not tied:
        want["output"] = ("lm_head.weight", (cfg["vocab"], d), True)
    for i in range(L):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        want.update({
            p + "attn_norm": (h + "input_layernorm.weight", (d,), False),
            p + "attn_q": (h + "self_attn.q_proj.weight", (qd, d), True),
            p + "attn_k": (h + "self_attn.k_proj.weight", (kvd, d), True),
            p + "attn_v": (h + "self_attn.v_proj.weight", (kvd, d), True),
            p + "attn_output": (h + "self_attn.o_proj.weight", (d, qd), True),
            p + "ffn_norm": (h + "post_attention_layernorm.weight", (d,), False),
            p + "ffn_gate": (h + "mlp.gate_proj.weight", (ffn, d), True),
            p + "ffn_up": (h + "mlp.up_proj.weight", (ffn, d), True),
            p + "ffn_down": (h + "mlp.down_proj.weight", (d, ffn), True),
        })
        if cfg["arch"] == "qwen2":
            for x, n in (("q", qd), ("k", kvd), ("v", kvd)):
                want[p + f"attn_{x}.bias"] = (h + f"self_attn.{x}_proj.bias", (n,), False)
    tensors, types, n_params = {}, {}, 0
    with open_safetensors(path) as st:
        for core, (name, shape, matrix) in want.items():
            if name not in st:
                raise ModelFileError(f"{path}: missing tensor {name!r}")
            info = st[name]
            if tuple(info.shape) != shape:
                raise ModelFileError(f"{path}: tensor {name!r} has shape {tuple(info.shape)}, "
                                     f"expected {shape} from config.json")
            w = info.to_float32()
            if not np.all(np.isfinite(w)):
                raise ModelFileError(f"{path}: tensor {name!r} contains NaN or inf")
            tensors[core] = quantize(w, **qargs) if matrix else np.ascontiguousarray(w, np.float32)
            types[core] = str(info.dtype)
            n_params += w.size
    if tied:
        tensors["output"], types["output"] = tensors["token_embd"], types["token_embd"]
    mats = [t for k, t in tensors.items() if hasattr(t, "codes_buf") and not (tied and k == "output")]
    bpw = 8.0 * sum(q.nbytes for q in mats) / max(1, sum(q.shape[0] * q.shape[1] for q in mats))
    loaded = LoadedModel(config=cfg, tensors=tensors, metadata={}, path=path, arch=cfg["arch"],
                         tensor_types=types, n_params=n_params, bits_per_weight=bpw,
                         lossy=set(k for k, t in tensors.items() if hasattr(t, "codes_buf")),
                         tied_output=tied)
    loaded.load_seconds = time.perf_counter() - start
    log.info("%s: %s, %d layers, dim %d, %.1fM params, quantized on load in %.2f s", path, cfg["arch"],
             L, d, n_params / 1e6, loaded.load_seconds)
    return loaded
