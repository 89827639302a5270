"""A plain numpy forward pass of the Llama family (llama, qwen2, the bitnets, phi3, gemma) over
float weights: the oracle the C forward pass is compared against (same dequantized weights).

How each architecture computes is written down here from llama.cpp's source, apart from
pylut/arch.py, so that a wrong assumption there cannot hide in both; llama.cpp's own logits
(tests/test_llamacpp_oracle.py) check this table in turn."""
import numpy as np

# GGUF arch -> (RoPE pairing, FFN activation): llama.cpp's llama_rope_type (NORM: adjacent
# pairs; NEOX: (i, i + head_dim/2)) and its graph builders' build_ffn; the 2B4T names from
# bitnet.cpp's build_bitnet_158. Sub-norms, and qwen3's per-head q/k norms (after the bias,
# before RoPE), are applied wherever the weights have them.
GGUF_ARCHS = {
    "llama": ("norm", "silu"),
    "qwen2": ("neox", "silu"),
    "qwen3": ("neox", "silu"),   # + attn_q_norm / attn_k_norm (src/models/qwen3.cpp)
    "bitnet": ("neox", "silu"),
    "bitnet-b1.58": ("neox", "relu2"),
    "bitnet-25": ("neox", "relu2"),
    # src/models/phi3.cpp: build_qkv splits the fused attn_qkv, build_ffn's LLM_FFN_SWIGLU over
    # the fused ffn_up is silu(first half) * second half; both split below where W has them
    "phi3": ("neox", "silu"),
    "smollm3": ("norm", "silu"),
    "gemma2": ("neox", "gelu_tanh"),
    "gemma3": ("neox", "gelu_tanh"),
}
# src/models/smollm3.cpp: use_rope = (il + 1) % n_no_rope_layer_step != 0, the step fixed at 4
NOPE_EVERY = {"smollm3": 4}


def rmsnorm(x, w, eps):
    x = x.astype(np.float64)
    return (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w).astype(np.float32)


def rotate(v, pos, theta, neox, inv_freq=None, scale=1.0, n_rot=None):
    """v: [n_heads, head_dim] at one position; the first n_rot dims (default all) rotate, the
    rest pass through (ggml_rope_ext's n_dims). inv_freq: [n_rot/2] scaled frequencies
    (config rope_inv_freq), else theta^(-2i/n_rot); scale multiplies cos and sin."""
    hd = n_rot or v.shape[-1]
    half = hd // 2
    inv = theta ** (-2.0 * np.arange(half) / hd) if inv_freq is None else np.asarray(inv_freq, np.float64)
    a = pos * inv
    c, s = np.cos(a) * scale, np.sin(a) * scale
    out = v.astype(np.float64).copy()
    r = v[:, :hd]
    if neox:
        x0, x1 = r[:, :half], r[:, half:]
        out[:, :half], out[:, half:hd] = x0 * c - x1 * s, x0 * s + x1 * c
    else:
        x0, x1 = r[:, 0::2], r[:, 1::2]
        out[:, 0:hd:2], out[:, 1:hd:2] = x0 * c - x1 * s, x0 * s + x1 * c
    return out.astype(np.float32)


def rope_frequencies(cfg):
    """(inverse frequency of each rotated pair [head_dim/2], cos/sin factor) from the config's
    rope_scaling, computed here as llama.cpp does, apart from pylut.rope (whose result the
    config carries as rope_inv_freq; the zoo tests compare the two):
      freq_factors (rope_freqs.weight) divide each pair's frequency (ggml_rope_ext's c);
      llama3: the per-pair factors convert_hf_to_gguf.py writes as rope_freqs.weight;
      linear: freq_scale = 1/factor; yarn: ggml's rope_yarn, the ramp between corr dims
      blending scaled and unscaled frequencies; its attention factor is taken as given."""
    hd, theta = cfg.get("rope_dims", cfg["head_dim"]), cfg["rope_theta"]   # rotated dims (n_rot)
    s = cfg.get("rope_scaling") or {"type": "default"}
    if s["type"] == "longrope":   # a loaded config holds the short set; for_context swaps it
        return longrope_inv_freq(cfg, s["short_factor"]), float(s["attention_factor"])
    i = np.arange(hd // 2, dtype=np.float64)
    freq = theta ** (-2.0 * i / hd)
    if s.get("freq_factors") is not None:
        freq = freq / np.asarray(s["freq_factors"], np.float64)
    kind = s["type"]
    if kind == "default":
        return freq, 1.0
    if kind == "linear":
        return freq / s["factor"], 1.0
    if kind == "llama3":
        orig, lo, hi, factor = (s["original_max_position_embeddings"], s["low_freq_factor"],
                                s["high_freq_factor"], s["factor"])
        factors = []
        for f in freq:
            wavelen = 2 * np.pi / f
            if wavelen < orig / hi:
                factors.append(1.0)
            elif wavelen > orig / lo:
                factors.append(factor)
            else:
                smooth = (orig / wavelen - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return freq / np.asarray(factors), 1.0
    if kind == "yarn":
        def corr_dim(n_rot):
            return hd * np.log(s["original_max_position_embeddings"] / (n_rot * 2 * np.pi)) / (2 * np.log(theta))
        start, end = corr_dim(s["beta_fast"]), corr_dim(s["beta_slow"])
        if s.get("truncate", True):
            start, end = np.floor(start), np.ceil(end)
        start, end = max(0.0, start), min(hd - 1.0, end)
        ramp = 1 - np.clip((i - start) / max(0.001, end - start), 0, 1)  # 1: keep the frequency
        return freq / s["factor"] * (1 - ramp) + freq * ramp, float(s["attention_factor"])
    raise ValueError(f"RoPE scaling {kind!r}: the reference does not compute it")


def longrope_inv_freq(cfg, factors):
    """LongRoPE's frequencies (transformers' _compute_longrope_parameters, ggml's freq_factors):
    each pair's theta^(-2i/n_rot) divided by its factor (the short or long set)."""
    n_rot = cfg.get("rope_dims", cfg["head_dim"])
    return cfg["rope_theta"] ** (-2.0 * np.arange(n_rot // 2) / n_rot) / np.asarray(factors, np.float64)


def streaming_mask(n, sink, window):
    """Additive mask of a streaming head: query p sees [0, sink) and (p - window, p]."""
    p, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.where((j <= p) & ((j < sink) | (j > p - window)), 0.0, -np.inf)


def window_mask(n, swa):
    """Additive mask of a sliding-window layer: query p sees (p - swa, p] (llama.cpp's
    is_masked_swa: masked when p - j >= swa)."""
    p, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.where((j <= p) & (p - j < swa), 0.0, -np.inf)


def gelu_tanh(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(cfg, W, tokens, streaming=None, sink=0, window=0, layout="gguf", rope=None, ffn_act=None):
    """W: name -> float32 array (matrices [out, in]). Returns logits [n, vocab].
    Gemma (gemma2 / gemma3, from llama.cpp's src/models/gemma2.cpp, gemma3.cpp): cfg's
    embd_scale multiplies the embeddings, attn_scale replaces 1/sqrt(head_dim), attn_softcap
    and final_softcap cap scores and logits (c * tanh(x / c)), layers flagged in swa_layers
    see only the last sliding_window positions and rotate with rope_inv_freq_swa; the
    weights' attn_q_norm / attn_k_norm (per head, before RoPE) and attn_post_norm /
    ffn_post_norm (each sub-block's output, before the residual add) apply where present.
    streaming: optional bool [n_layers, n_kv_heads]; those heads see only the first `sink`
    positions and the `window` most recent ones (DuoAttention's streaming heads).
    layout: "gguf" (q/k rows as llama.cpp's converters write them: GGUF_ARCHS) or "hf"
    (Hugging Face's half-split order, every arch). rope / ffn_act override the table.
    Fused phi3 weights (blk.N.attn_qkv: q, k, v rows; blk.N.ffn_up of 2 * ffn_dim rows with no
    ffn_gate: gate rows then up rows) are split here. cfg may set rope_dims (partial rotary) and
    rope_skip_layers (layers without RoPE; default: NOPE_EVERY's rule for the arch)."""
    table_rope, table_act = GGUF_ARCHS[cfg["arch"]]
    rope = rope or ("neox" if layout == "hf" else table_rope)
    ffn_act = ffn_act or table_act
    neox = {"neox": True, "norm": False}[rope]
    n_h, n_kv, hd, eps = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"], cfg["norm_eps"]
    x = W["token_embd"][np.asarray(tokens)].astype(np.float32) * np.float32(cfg.get("embd_scale") or 1.0)
    n = len(tokens)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    scale = cfg.get("attn_scale") or 1 / np.sqrt(hd)
    softcap, swa_layers = cfg.get("attn_softcap") or 0.0, cfg.get("swa_layers") or [False] * cfg["n_layers"]
    stream_mask = streaming_mask(n, sink, window) if streaming is not None else None
    every = NOPE_EVERY.get(cfg["arch"], 0)
    nope = set(cfg["rope_skip_layers"]) if "rope_skip_layers" in cfg else \
        {l for l in range(cfg["n_layers"]) if every and (l + 1) % every == 0}
    for l in range(cfg["n_layers"]):
        p = f"blk.{l}."
        xb = rmsnorm(x, W[p + "attn_norm"], eps)
        if p + "attn_qkv" in W:
            qkv = xb @ W[p + "attn_qkv"].T
            q, k, v = np.split(qkv, [n_h * hd, (n_h + n_kv) * hd], axis=1)
        else:
            q = xb @ W[p + "attn_q"].T + W.get(p + "attn_q.bias", 0)
            k = xb @ W[p + "attn_k"].T + W.get(p + "attn_k.bias", 0)
            v = xb @ W[p + "attn_v"].T + W.get(p + "attn_v.bias", 0)
        if p + "attn_q_norm" in W:
            q = rmsnorm(q.reshape(n, n_h, hd), W[p + "attn_q_norm"], eps).reshape(n, n_h * hd)
            k = rmsnorm(k.reshape(n, n_kv, hd), W[p + "attn_k_norm"], eps).reshape(n, n_kv * hd)
        swa = cfg.get("sliding_window", 0) if swa_layers[l] else 0
        inv = cfg.get("rope_inv_freq_swa") if swa and cfg.get("rope_inv_freq_swa") else cfg.get("rope_inv_freq")
        rot = (cfg["rope_theta"], neox, inv, cfg.get("rope_attn_factor", 1.0),
               cfg.get("rope_dims"))
        if l in nope:
            q, k = q.reshape(n, n_h, hd).astype(np.float32), k.reshape(n, n_kv, hd).astype(np.float32)
        else:
            q = np.stack([rotate(q[t].reshape(n_h, hd), t, *rot) for t in range(n)])
            k = np.stack([rotate(k[t].reshape(n_kv, hd), t, *rot) for t in range(n)])
        v = v.reshape(n, n_kv, hd)
        rep = n_h // n_kv
        out = np.empty((n, n_h, hd), np.float32)
        for h in range(n_h):
            streams = streaming is not None and streaming[l][h // rep]
            s = (q[:, h] @ k[:, h // rep].T).astype(np.float64) * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            s = s + (stream_mask if streams else mask)
            if swa:
                s = s + window_mask(n, swa)
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, h] = (s / s.sum(-1, keepdims=True)) @ v[:, h // rep]
        att = out.reshape(n, n_h * hd)
        if p + "attn_sub_norm" in W:
            att = rmsnorm(att, W[p + "attn_sub_norm"], eps)
        o = att @ W[p + "attn_output"].T
        if p + "attn_post_norm" in W:
            o = rmsnorm(o, W[p + "attn_post_norm"], eps)
        x = x + o
        xb = rmsnorm(x, W[p + "ffn_norm"], eps)
        if p + "ffn_gate" in W:
            g, u = xb @ W[p + "ffn_gate"].T, xb @ W[p + "ffn_up"].T
        else:
            g, u = np.split(xb @ W[p + "ffn_up"].T, 2, axis=1)
        if ffn_act == "relu2":
            h_ = np.maximum(g, 0) ** 2 * u
        elif ffn_act == "gelu_tanh":
            h_ = (gelu_tanh(g) * u).astype(np.float32)
        else:
            h_ = g / (1 + np.exp(-g)) * u
        if p + "ffn_sub_norm" in W:
            h_ = rmsnorm(h_, W[p + "ffn_sub_norm"], eps)
        o = h_ @ W[p + "ffn_down"].T
        if p + "ffn_post_norm" in W:
            o = rmsnorm(o, W[p + "ffn_post_norm"], eps)
        x = x + o
    logits = rmsnorm(x, W["output_norm"], eps) @ W["output"].T
    cap = cfg.get("final_softcap") or 0.0
    return (cap * np.tanh(logits.astype(np.float64) / cap)).astype(np.float32) if cap else logits
