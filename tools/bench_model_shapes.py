"""Qwen3- and Gemma-3-shaped benchmark models: random weights in the published shapes of
Qwen3-1.7B (the 1B class of Qwen3) and Gemma-3-1B, written as F16 with the architectures'
own GGUF keys and tensors (what llama.cpp's converter writes) and a real vocabulary of the
family, then quantized by llama.cpp. Used by tools/make_bench_model.py --types qwen3-1b,gemma3-1b.

Vocabularies: Qwen3 has Qwen2's (ggml-vocab-qwen2.gguf, 151936 tokens, pre-tokenizer qwen2).
llama.cpp ships no Gemma 3 vocabulary file; Gemma 4's (ggml-vocab-gemma-4.gguf, in the
llama-cpp-python sdist's vendor/llama.cpp/models) has the same 262144 tokens, which set the
size of the tied LM head, the part of a 1B Gemma's step that the vocabulary decides."""
import os
import time

import numpy as np

# hidden, layers, heads, kv heads, head dim, FFN, context, RoPE base and the family's keys, from
# the published config.json files (Qwen/Qwen3-1.7B, google/gemma-3-1b-it); both tie the LM head
SHAPES = {
    "qwen3-1b": dict(arch="qwen3", vocab="ggml-vocab-qwen2.gguf", dim=2048, layers=28, heads=16, kv_heads=8,
                     head_dim=128, ffn=6144, ctx=40960, rope_theta=1000000.0, eps=1e-6),
    "gemma3-1b": dict(arch="gemma3", vocab="ggml-vocab-gemma-4.gguf", dim=1152, layers=26, heads=4, kv_heads=1,
                      head_dim=256, ffn=6912, ctx=32768, rope_theta=1000000.0, eps=1e-6,
                      sliding_window=512, rope_theta_swa=10000.0),
}
QUANTS = {"Q4_0": 2, "Q4_K_M": 15}   # llama.cpp LLAMA_FTYPE_MOSTLY_*


def find_vocab(name, dirs):
    """The first dirs/name that exists, or None."""
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    return None


def copy_vocab(writer, vocab_file):
    """Every tokenizer key of a vocab-only GGUF (tokens, scores, types, merges, special ids,
    flags); the number of tokens."""
    from pylut.formats.gguf_reader import GGUFFile
    with GGUFFile(vocab_file) as f:
        meta = dict(f.metadata)
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in meta:
        writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    if "tokenizer.ggml.scores" in meta:
        writer.add_token_scores([float(s) for s in meta["tokenizer.ggml.scores"]])
    writer.add_token_types([int(t) for t in meta["tokenizer.ggml.token_type"]])
    if "tokenizer.ggml.merges" in meta:
        writer.add_token_merges(list(meta["tokenizer.ggml.merges"]))
    for key, fn in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                    ("unknown_token_id", writer.add_unk_token_id), ("padding_token_id", writer.add_pad_token_id),
                    ("add_bos_token", writer.add_add_bos_token), ("add_space_prefix", writer.add_add_space_prefix)):
        if "tokenizer.ggml." + key in meta:
            value = meta["tokenizer.ggml." + key]
            fn(value if isinstance(value, bool) else int(value))
    return len(meta["tokenizer.ggml.tokens"])


def write_f16(path, s, vocab_file, seed):
    """The F16 model of shape s (a SHAPES entry): random matrices, unit norm weights (GGUF
    norms are stored as the multiplier, Gemma's +1 included)."""
    import gguf
    rng = np.random.default_rng(seed)
    arch, dim, hd = s["arch"], s["dim"], s["head_dim"]
    w = gguf.GGUFWriter(path, arch)
    vocab = copy_vocab(w, vocab_file)
    w.add_block_count(s["layers"])
    w.add_context_length(s["ctx"])
    w.add_embedding_length(dim)
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_rope_freq_base(s["rope_theta"])
    if "sliding_window" in s:
        w.add_sliding_window(s["sliding_window"])
        w.add_float32(f"{arch}.rope.freq_base_swa", s["rope_theta_swa"])
    w.add_file_type(1)

    def mat(name, rows, cols):
        w.add_tensor(name, (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16))

    def vec(name, n):
        w.add_tensor(name, np.ones(n, np.float32))

    q, kv = s["heads"] * hd, s["kv_heads"] * hd
    mat("token_embd.weight", vocab, dim)
    vec("output_norm.weight", dim)
    for i in range(s["layers"]):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", dim)
        mat(p + "attn_q.weight", q, dim)
        mat(p + "attn_k.weight", kv, dim)
        mat(p + "attn_v.weight", kv, dim)
        vec(p + "attn_q_norm.weight", hd)
        vec(p + "attn_k_norm.weight", hd)
        mat(p + "attn_output.weight", dim, q)
        vec(p + "ffn_norm.weight", dim)
        mat(p + "ffn_gate.weight", s["ffn"], dim)
        mat(p + "ffn_up.weight", s["ffn"], dim)
        mat(p + "ffn_down.weight", dim, s["ffn"])
        if arch == "gemma3":   # the sandwich norms
            vec(p + "post_attention_norm.weight", dim)
            vec(p + "post_ffw_norm.weight", dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_shaped(name, out_dir, vocab_dirs, seed, keep_f16=False):
    """out_dir/model-F16.gguf (kept only with keep_f16), then model-Q4_0.gguf and
    model-Q4_K_M.gguf through llama.cpp's quantizer. Returns 0, or 1 with a message."""
    import llama_cpp
    s = SHAPES[name]
    vocab = find_vocab(s["vocab"], vocab_dirs)
    if vocab is None:
        print(f"{s['vocab']} not found in {', '.join(vocab_dirs)} (pass --vocab-dir)")
        return 1
    os.makedirs(out_dir, exist_ok=True)
    f16 = os.path.join(out_dir, "model-F16.gguf")
    t0 = time.time()
    write_f16(f16, s, vocab, seed)
    print(f"wrote {f16} ({os.path.getsize(f16) / 1e6:.0f} MB) in {time.time() - t0:.0f} s")
    for qname, ftype in QUANTS.items():
        out = os.path.join(out_dir, f"model-{qname}.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = os.cpu_count() or 1
        t0 = time.time()
        if llama_cpp.llama_model_quantize(f16.encode(), out.encode(), params) != 0:
            print(f"llama.cpp failed to quantize {qname}")
            return 1
        print(f"wrote {out} ({os.path.getsize(out) / 1e6:.0f} MB) in {time.time() - t0:.0f} s")
    if not keep_f16:
        os.unlink(f16)
    return 0
