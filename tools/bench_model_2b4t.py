"""The BitNet b1.58 2B4T-shaped benchmark models: random ternary weights written as bitnet.cpp's
I2_S (arch `bitnet-b1.58`, the published file's keys) and as TQ1_0/TQ2_0 speed twins under the
older `bitnet` arch that llama.cpp runs. Used by tools/make_bench_model.py --types 2b4t."""
import os
import time

import numpy as np

# ----------------------------------------------------------------------------
# shape and metadata of microsoft/bitnet-b1.58-2B-4T-gguf (ggml-model-i2_s.gguf)

SHAPE_2B4T = dict(layers=30, dim=2560, ffn=6912, heads=20, kv_heads=5, ctx=4096)
ROPE_THETA = 500000.0
RMS_EPS = 1e-5
FTYPE_I2_S = 40          # llama_ftype LLAMA_FTYPE_MOSTLY_I2_S in bitnet.cpp's llama.cpp
FTYPES_TWIN = {"TQ1_0": 36, "TQ2_0": 37}  # llama_ftype of upstream llama.cpp
GGML_TYPE_I2_S = 36      # bitnet.cpp's tensor type id (upstream reused 36 for a removed type)
QK_I2_S = 128            # weights per I2_S block (x86 layout of the published file)

# The published file carries no activation key: ReLU² is implied by `bitnet-b1.58`. Nor does
# it carry tokenizer.ggml.pre (readers must fall back to the llama-bpe rules themselves).
CHAT_TEMPLATE = ("{% for message in messages %}"
                 "{% if loop.first and message['role'] != 'system' %}{{ bos_token }}{% endif %}"
                 "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>"
                 "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}")


# ----------------------------------------------------------------------------
# I2_S: 2-bit codes, 128 weights -> 32 bytes; byte j of a block holds weight j in bits 7-6,
# j+32 in 5-4, j+64 in 3-2, j+96 in 1-0; code = value + 1; then one float32 per-tensor scale,
# padded to n/4 + 32 bytes (bitnet.cpp sizes the tensor that way).

def pack_i2_s(codes, scale):
    """codes: (rows, cols) int8 in {-1, 0, 1}, flattened row-major -> uint8 (n/4 + 32,)."""
    flat = codes.reshape(-1)
    n = flat.size
    if n % QK_I2_S:
        raise ValueError(f"I2_S needs a multiple of {QK_I2_S} weights, got {n}")
    q = (flat + 1).astype(np.uint8).reshape(-1, 4, 32)       # (blocks, quarter, j)
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    out = np.zeros(n // 4 + 32, np.uint8)
    out[:n // 4] = packed.reshape(-1)
    out[n // 4:n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return out


def unpack_i2_s(data, n):
    """Inverse of pack_i2_s: (codes (n,) int8, scale)."""
    b = data[:n // 4].reshape(-1, 32)
    q = np.stack([(b >> s) & 3 for s in (6, 4, 2, 0)], axis=1)  # (blocks, quarter, j)
    return q.reshape(-1).astype(np.int8) - 1, float(data[n // 4:n // 4 + 4].view(np.float32)[0])


# ----------------------------------------------------------------------------
# Q6_K quantizer (gguf's package only dequantizes it). Super-block of 256: 16 sub-blocks of
# 16 with an int8 scale each, one f16 d; codes q in [-32, 31] stored as q + 32 split into a
# low nibble (ql, 128 bytes) and 2 high bits (qh, 64 bytes). Block bytes: ql qh scales d.

def quantize_q6_k(x):
    """x: (rows, cols) float32, cols % 256 == 0 -> uint8 (rows, cols / 256 * 210)."""
    rows, cols = x.shape
    blk = x.reshape(-1, 16, 16).astype(np.float32)                 # (blocks, sub, 16)
    amax_i = np.argmax(np.abs(blk), axis=2)
    peak = np.take_along_axis(blk, amax_i[..., None], axis=2)[..., 0]
    sub_scale = -peak / 32.0                                         # the peak maps to -32
    d = (np.max(np.abs(sub_scale), axis=1) / 127.0).astype(np.float16)   # (blocks,)
    df = d.astype(np.float32)
    inv_d = np.divide(1.0, df, out=np.zeros_like(df), where=df != 0)
    sc = np.clip(np.rint(sub_scale * inv_d[:, None]), -128, 127).astype(np.int8)  # (blocks, 16)
    step = df[:, None] * sc.astype(np.float32)                       # (blocks, 16)
    inv_step = np.divide(1.0, step, out=np.zeros_like(step), where=step != 0)
    q = np.clip(np.rint(blk * inv_step[..., None]), -32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)                     # (blocks, half, k, i)
    # weight h*128 + k*32 + i: low nibble in ql[h*64 + (k&1)*32 + i] at bit 4*(k>>1),
    # high 2 bits in qh[h*32 + i] at bit 2*k
    lo = q & 0x0F
    ql = (lo[:, :, 0:2] | (lo[:, :, 2:4] << 4)).reshape(-1, 128)
    hi = q >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(-1, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(-1, 1).view(np.uint8)], axis=1)
    return out.reshape(rows, cols // 256 * 210)


# ----------------------------------------------------------------------------
# random model

MATRICES = (  # name, rows, cols as functions of the shape
    ("attn_q", lambda s: s["dim"], lambda s: s["dim"]),
    ("attn_k", lambda s: s["kv_heads"] * s["dim"] // s["heads"], lambda s: s["dim"]),
    ("attn_v", lambda s: s["kv_heads"] * s["dim"] // s["heads"], lambda s: s["dim"]),
    ("attn_output", lambda s: s["dim"], lambda s: s["dim"]),
    ("ffn_gate", lambda s: s["ffn"], lambda s: s["dim"]),
    ("ffn_up", lambda s: s["ffn"], lambda s: s["dim"]),
    ("ffn_down", lambda s: s["dim"], lambda s: s["ffn"]),
)


def ternary_weights(shape, seed):
    """{name: (codes (rows, cols) int8, scale)} for every layer; the scales are f16-exact so
    the TQ twins (f16 block scale) carry exactly the I2_S file's weights."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(shape["layers"]):
        for name, rows, cols in MATRICES:
            r, c = rows(shape), cols(shape)
            codes = rng.choice(np.array([-1, 0, 1], np.int8), size=(r, c), p=[0.3, 0.4, 0.3])
            scale = float(np.float16(rng.uniform(0.5, 2.0) / np.sqrt(c)))
            out[f"blk.{i}.{name}.weight"] = (codes, scale)
    return out


def write_kv(w, arch, shape, vocab_meta, ftype, twin):
    import gguf
    w.add_name("bitnet2b")
    if not twin:
        w.add_vocab_size(len(vocab_meta["tokens"]))
    w.add_context_length(shape["ctx"])
    w.add_embedding_length(shape["dim"])
    w.add_block_count(shape["layers"])
    w.add_feed_forward_length(shape["ffn"])
    w.add_rope_dimension_count(shape["dim"] // shape["heads"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_add_bos_token(True)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    if twin:  # upstream llama.cpp warns loudly without it; the I2_S file mirrors the original
        w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(vocab_meta["tokens"])
    w.add_token_scores([0.0] * len(vocab_meta["tokens"]))
    w.add_token_types(vocab_meta["token_type"])
    w.add_token_merges(vocab_meta["merges"])
    w.add_bos_token_id(128000)
    w.add_eos_token_id(128001)
    w.add_pad_token_id(128001)
    w.add_chat_template(CHAT_TEMPLATE)
    del gguf


def read_vocab(vocab_file):
    import gguf
    r = gguf.GGUFReader(vocab_file)

    def arr(key, conv):
        f = r.fields[key]
        return [conv(f.parts[i]) for i in f.data]
    meta = {"tokens": arr("tokenizer.ggml.tokens", lambda p: bytes(p).decode("utf-8")),
            "token_type": arr("tokenizer.ggml.token_type", lambda p: int(p[0])),
            "merges": arr("tokenizer.ggml.merges", lambda p: bytes(p).decode("utf-8"))}
    if len(meta["tokens"]) != 128256 or bytes(r.fields["tokenizer.ggml.model"].parts[-1]) != b"gpt2":
        raise ValueError(f"{vocab_file}: not the llama-3 vocabulary (128256 gpt2 tokens)")
    return meta


def write_model(path, kind, shape, weights, vocab_meta, embd, embd_q6k):
    """kind: 'I2_S', 'I2_S-f16emb', 'TQ1_0' or 'TQ2_0'."""
    import gguf
    twin = kind.startswith("TQ")
    arch = "bitnet" if twin else "bitnet-b1.58"
    w = gguf.GGUFWriter(path, arch)
    write_kv(w, arch, shape, vocab_meta, FTYPES_TWIN[kind] if twin else FTYPE_I2_S, twin)
    dim, ffn = shape["dim"], shape["ffn"]
    if kind == "I2_S-f16emb":
        w.add_tensor("token_embd.weight", embd.astype(np.float16))
    else:
        # (rows, bytes) uint8: the writer derives the element shape from the byte shape
        w.add_tensor("token_embd.weight", embd_q6k, raw_dtype=gguf.GGMLQuantizationType.Q6_K)
    ones = np.ones
    w.add_tensor("output_norm.weight", ones(dim, np.float32))
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(dim, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add_ternary(w, p + name + ".weight", weights[p + name + ".weight"], kind)
        w.add_tensor(p + "attn_sub_norm.weight", ones(dim, np.float32))
        w.add_tensor(p + "ffn_norm.weight", ones(dim, np.float32))
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            add_ternary(w, p + name + ".weight", weights[p + name + ".weight"], kind)
        w.add_tensor(p + "ffn_sub_norm.weight", ones(ffn, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_ternary(w, name, codes_scale, kind):
    import gguf
    codes, scale = codes_scale
    if kind.startswith("I2_S"):
        # int8 view: the writer keeps raw_shape as given for non-uint8 data, and packs the
        # dtype id as a plain integer (gguf's enum has no I2_S)
        w.add_tensor(name, pack_i2_s(codes, scale).view(np.int8), raw_shape=codes.shape,
                     raw_dtype=GGML_TYPE_I2_S)
    else:
        t = gguf.GGMLQuantizationType[kind]
        w.add_tensor(name, gguf.quants.quantize(codes.astype(np.float32) * np.float32(scale), t),
                     raw_dtype=t)


def make_2b4t(out_dir, vocab_file, seed, kinds=("I2_S", "I2_S-f16emb", "TQ1_0", "TQ2_0")):
    shape = dict(SHAPE_2B4T)
    vocab_meta = read_vocab(vocab_file)
    t0 = time.time()
    weights = ternary_weights(shape, seed)
    rng = np.random.default_rng(seed + 1)
    embd = rng.standard_normal((len(vocab_meta["tokens"]), shape["dim"]), dtype=np.float32)
    embd_q6k = quantize_q6_k(embd)
    print(f"2b4t: random weights and Q6_K embedding in {time.time() - t0:.0f} s")
    for kind in kinds:
        path = os.path.join(out_dir, f"model-2b4t-{kind}.gguf")
        t0 = time.time()
        write_model(path, kind, shape, weights, vocab_meta, embd, embd_q6k)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.time() - t0:.0f} s")
    return 0
