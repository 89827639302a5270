"""pylut.arch - the one table of how each supported architecture computes, per llama.cpp.

Every architecture pylut runs is the same Llama-family block (RMSNorm, GQA attention with
RoPE, gated FFN); they differ only in the rows below. The values are read from llama.cpp's
source (src/llama-model.cpp ``llama_rope_type``, src/models/<arch>.cpp graph builders and
tensor loaders) and, for the 2B4T names llama.cpp does not know, from bitnet.cpp's fork;
tests/test_llamacpp_oracle.py checks them against llama.cpp's own logits.

    rope        "norm": rotate adjacent pairs (2i, 2i+1); "neox": rotate (i, i + head_dim/2).
                llama.cpp's llama converter permutes Q/K rows into the adjacent order; the
                qwen2 and bitnet converters keep Hugging Face's half-split order.
    ffn_act     gate activation of the gated FFN: "silu" (silu(g) * u), "relu2"
                (relu(g)^2 * u) or "gelu_tanh" (GELU's tanh form, gelu(g) * u: Gemma's GeGLU).
    sub_norms   attn_sub_norm (RMSNorm of the attention output before wo) and ffn_sub_norm
                (RMSNorm of the gated product before w_down) are required.
    qkv_bias    attn_{q,k,v}.bias: "required", "optional", or "none" (llama.cpp's loader has
                no bias tensors for the arch and refuses a file with them; so does pylut).
    output      "optional": output.weight, else the LM head is token_embd;
                "tied": the LM head is always token_embd (llama.cpp's loader has no output
                tensor for the arch and refuses a file that carries one, so pylut does too).
    qk_norm     attn_q_norm / attn_k_norm [head_dim] are required: each q and k head is
                RMS-normalized (norm_eps) after its bias and before RoPE (qwen3, gemma3).
    fused       phi3's converter keeps Hugging Face's fused matrices: attn_qkv (q, k, v rows
                one after another; separate attn_q/k/v are accepted too, as llama.cpp's
                create_tensor_qkv does) and ffn_up holding the gate's rows then the up rows
                (ggml_swiglu: silu(first half) * second half), no ffn_gate. The loader splits
                them by rows into the separate matrices, which the forward pass reads from
                one table set anyway, so nothing is lost by splitting.
    window      the metadata key of the sliding-attention window, or None. phi3 files carry
                {arch}.attention.sliding_window (0: none, the converter's mark for Phi-4).
                pylut windows every layer as transformers does (keys more than `window - 1`
                positions back are masked); llama.cpp reads it and then turns Phi's windowed
                attention off (so does its llama graph with Mistral's window).
    nope_every  N > 0: the layers l with (l + 1) % N == 0 rotate neither q nor k (SmolLM3's NoPE
                layers; llama.cpp's n_no_rope_layer_step, fixed in its source, not in the file).
    gemma       Gemma's block (src/models/gemma2.cpp, gemma3.cpp): embeddings times sqrt(dim);
                sandwich norms (attn_post_norm, ffn_post_norm: RMSNorm of each sub-block's
                output before its residual add) required; the converter has already added
                Gemma's +1 to every norm weight, so GGUF weights are used as they are.
    swa_pattern sliding-window layers by default (the file's attention.sliding_window_pattern
                overrides it): layer l is windowed when l % n < n - 1 (llama.cpp's
                set_swa_pattern); 0: the architecture has no sliding window.
"""
from __future__ import annotations

from dataclasses import dataclass

ROPE_PAIRINGS = ("norm", "neox")
FFN_ACTIVATIONS = ("silu", "relu2", "gelu_tanh")


@dataclass(frozen=True)
class ArchSpec:
    rope: str
    ffn_act: str
    sub_norms: bool
    qkv_bias: str
    output: str
    qk_norm: bool = False
    fused: bool = False
    window: str | None = None
    nope_every: int = 0
    gemma: bool = False
    swa_pattern: int = 0


ARCHS: dict[str, ArchSpec] = {
    "llama":        ArchSpec(rope="norm", ffn_act="silu",  sub_norms=False, qkv_bias="optional", output="optional"),
    "qwen2":        ArchSpec(rope="neox", ffn_act="silu",  sub_norms=False, qkv_bias="required", output="optional"),
    # llama.cpp's qwen3 loader takes q/k/v biases where a file has them (create_tensor_qkv)
    "qwen3":        ArchSpec(rope="neox", ffn_act="silu",  sub_norms=False, qkv_bias="optional", output="optional",
                             qk_norm=True),
    # 1bitLLM bitnet_b1_58 (large, 3B): llama.cpp's `bitnet` graph
    "bitnet":       ArchSpec(rope="neox", ffn_act="silu",  sub_norms=True,  qkv_bias="none",     output="tied"),
    # BitNet b1.58 2B4T (bitnet.cpp's build_bitnet_158, Hugging Face hidden_act "relu2"); both
    # names occur in published files
    "bitnet-b1.58": ArchSpec(rope="neox", ffn_act="relu2", sub_norms=True,  qkv_bias="optional", output="optional"),
    "bitnet-25":    ArchSpec(rope="neox", ffn_act="relu2", sub_norms=True,  qkv_bias="optional", output="optional"),
    # Phi-3-mini, Phi-3.5-mini, Phi-4-mini (src/models/phi3.cpp); LongRoPE factors and partial
    # rotary are RoPE settings (pylut/rope.py), not rows of this table
    "phi3":         ArchSpec(rope="neox", ffn_act="silu",  sub_norms=False, qkv_bias="none",     output="optional",
                             fused=True, window="attention.sliding_window"),
    # SmolLM3 (src/models/smollm3.cpp): llama's block, RoPE skipped on every 4th layer
    "smollm3":      ArchSpec(rope="norm", ffn_act="silu",  sub_norms=False, qkv_bias="optional", output="optional",
                             nope_every=4),
    # Gemma 2: attention and final-logit soft-caps, every other layer windowed
    "gemma2":       ArchSpec(rope="neox", ffn_act="gelu_tanh", sub_norms=False, qkv_bias="none", output="tied",
                             gemma=True, swa_pattern=2),
    # Gemma 3 (text): q/k norms, five windowed layers in six with their own RoPE base
    "gemma3":       ArchSpec(rope="neox", ffn_act="gelu_tanh", sub_norms=False, qkv_bias="none", output="optional",
                             gemma=True, qk_norm=True, swa_pattern=6),
}

# architectures whose files may rotate only the leading rope.dimension_count dims of a head
# (partial rotary; llama.cpp's n_rot), checked against transformers and llama.cpp
PARTIAL_ROTARY_ARCHS = ("phi3",)

# architectures whose matrices are ternary by construction (their converters write ternary
# values even into float tensors)
TERNARY_ARCHS = tuple(a for a, s in ARCHS.items() if s.sub_norms)


def spec(arch: str) -> ArchSpec:
    return ARCHS[arch]


def features(cfg: dict) -> list[str]:
    """What `pylut info` lists about how a loaded model computes (its config's arch and keys)."""
    s = ARCHS[cfg["arch"]]
    out = [f"RoPE pairs {'(i, i+d/2)' if cfg['rope_neox'] else '(2i, 2i+1)'}", f"FFN {cfg['ffn_act']}-gated"]
    if s.qk_norm:
        out.append("per-head q/k RMSNorm")
    if s.sub_norms:
        out.append("attention/FFN sub-norms")
    if s.gemma:
        out.append("sandwich norms")
    if s.nope_every:
        out.append(f"no RoPE on every {s.nope_every}th layer")
    window, layers = cfg.get("sliding_window"), cfg.get("swa_layers")
    if window and layers is not None:
        out.append(f"sliding window {window} on {sum(layers)} of {len(layers)} layers"
                   + (" (own RoPE frequencies)" if cfg.get("rope_inv_freq_swa") is not None else ""))
    elif window:
        out.append(f"sliding window {window} (context limited to it)")
    caps = [f"{name} {cfg[key]:g}" for key, name in (("attn_softcap", "attention"), ("final_softcap", "final"))
            if cfg.get(key)]
    if caps:
        out.append("soft-caps: " + ", ".join(caps))
    if cfg.get("embd_scale"):
        out.append(f"embeddings x {cfg['embd_scale']:.4g}")
    if cfg.get("attn_scale"):
        out.append(f"attention scale {cfg['attn_scale']:.4g}")
    return out


def model_config(arch: str, n_layers: int) -> dict:
    """The forward pass's per-architecture settings (keys of ``_core.Model``'s config)."""
    s = ARCHS[arch]
    out = dict(rope_neox=s.rope == "neox", ffn_act=s.ffn_act)
    if s.nope_every:
        out["rope_skip_layers"] = [l for l in range(n_layers) if (l + 1) % s.nope_every == 0]
    return out


def swa_layers(n_layers: int, pattern: int) -> list[bool]:
    """Which layers are windowed for a pattern n: l % n < n - 1 (n = 0: every layer; n = 1:
    none), as llama.cpp's llama_hparams::set_swa_pattern."""
    return [pattern == 0 or layer % pattern < pattern - 1 for layer in range(n_layers)]
