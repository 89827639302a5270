#!/usr/bin/env python3
"""Write the end-to-end benchmark models: a ~1B Llama shape (dim 2048, 16 layers, 32 heads,
8 kv heads, ffn 8192) with the llama-spm vocabulary and random weights (fine for speed), as
model-Q4_0.gguf, model-Q2_K.gguf, model-TQ1_0.gguf and model-TQ2_0.gguf.

    python3 tools/make_bench_model.py OUT_DIR [--types Q4_0,Q2_K,TQ1_0,TQ2_0]

A float model (model-F16.gguf) is written first and quantized with llama.cpp's own quantizer
(llama-cpp-python, a benchmark-only tool) so the files are exactly what llama.cpp users have;
without it, the types the `gguf` package can quantize (Q4_0, TQ1_0, TQ2_0) are written with
that instead and the others are skipped with a message.

    python3 tools/make_bench_model.py OUT_DIR --types 2b4t

writes the BitNet b1.58 2B4T shape (30 layers, dim 2560, ffn 6912, 20/5 heads, llama-3
vocabulary; tools/bench_model_2b4t.py) with random ternary weights: model-2b4t-I2_S.gguf
(bitnet.cpp's I2_S, arch bitnet-b1.58, Q6_K tied embedding), model-2b4t-I2_S-f16emb.gguf
(F16 embedding, as published) and the speed twins model-2b4t-TQ1_0.gguf / -TQ2_0.gguf
(the same weights under the older `bitnet` arch, which llama.cpp runs with SiLU).

    python3 tools/make_bench_model.py OUT_DIR --types qwen3-1b   (or gemma3-1b)

writes a Qwen3-1.7B- or Gemma-3-1B-shaped model with random weights and the family's vocabulary
(tools/bench_model_shapes.py) as model-Q4_0.gguf and model-Q4_K_M.gguf, quantized by
llama.cpp; --vocab-dir adds folders to look for the vocabulary file in (Gemma's is in the
llama-cpp-python sdist's vendor/llama.cpp/models)."""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_model_shapes import SHAPES, make_shaped  # noqa: E402

FTYPES = {"Q4_0": 2, "Q2_K": 10, "TQ1_0": 36, "TQ2_0": 37}  # llama.cpp LLAMA_FTYPE_MOSTLY_*
VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                         "testdata", "vocab")
# llama-cpp-python's sdist vocabularies, where the tokenizer tests fetch them
LLAMA_CPP_VOCAB = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pylut",
                               "llama-cpp-python-0.3.36", "models")
DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                             "testdata", "vocab", "ggml-vocab-llama-spm.gguf")


def copy_tokenizer(writer, vocab_file):
    import gguf
    from pylut.formats.gguf_reader import GGUFFile
    with GGUFFile(vocab_file) as f:
        meta = dict(f.metadata)
    toks = meta["tokenizer.ggml.tokens"]
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_token_list(toks)
    if "tokenizer.ggml.scores" in meta:
        writer.add_token_scores([float(s) for s in meta["tokenizer.ggml.scores"]])
    writer.add_token_types([int(t) for t in meta["tokenizer.ggml.token_type"]])
    for key, fn in (("tokenizer.ggml.bos_token_id", writer.add_bos_token_id),
                    ("tokenizer.ggml.eos_token_id", writer.add_eos_token_id),
                    ("tokenizer.ggml.unknown_token_id", writer.add_unk_token_id)):
        if key in meta:
            fn(int(meta[key]))
    del gguf
    return len(toks)


def write_float_model(path, vocab_file, dim, layers, heads, kv_heads, ffn, ctx, seed, qtype=None):
    """Random weights as F16 (qtype None) or quantized with the gguf package (qtype name)."""
    import gguf
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    vocab = copy_tokenizer(w, vocab_file)
    hd = dim // heads
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_file_type(1)

    def mat(name, rows, cols):
        a = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        if qtype is None:
            w.add_tensor(name, a.astype(np.float16))
        else:
            t = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(a, t), raw_dtype=t)

    def vec(name, n):
        w.add_tensor(name, np.ones(n, np.float32))

    mat("token_embd.weight", vocab, dim)
    vec("output_norm.weight", dim)
    mat("output.weight", vocab, dim)
    for i in range(layers):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", dim)
        vec(p + "ffn_norm.weight", dim)
        mat(p + "attn_q.weight", dim, dim)
        mat(p + "attn_k.weight", kv_heads * hd, dim)
        mat(p + "attn_v.weight", kv_heads * hd, dim)
        mat(p + "attn_output.weight", dim, dim)
        mat(p + "ffn_gate.weight", ffn, dim)
        mat(p + "ffn_up.weight", ffn, dim)
        mat(p + "ffn_down.weight", dim, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--types", default="Q4_0,Q2_K,TQ1_0,TQ2_0",
                    help="comma-separated; 2b4t writes the BitNet 2B4T-shaped set")
    ap.add_argument("--vocab", default=DEFAULT_VOCAB, help="vocab-only GGUF to copy the tokenizer from")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-f16", action="store_true", help="keep model-F16.gguf")
    ap.add_argument("--vocab-dir", action="append", default=[],
                    help="qwen3-1b / gemma3-1b: another folder holding ggml-vocab-*.gguf files")
    a = ap.parse_args(argv)
    types = [t.strip() for t in a.types.split(",") if t.strip()]
    shaped = [t for t in types if t in SHAPES]
    if shaped:
        if len(shaped) > 1 or len(types) > 1:
            ap.error(f"{shaped[0]} is a set of its own (Q4_0 and Q4_K_M): one per OUT_DIR")
        return make_shaped(shaped[0], a.out_dir, [VOCAB_DIR, LLAMA_CPP_VOCAB] + a.vocab_dir, a.seed, a.keep_f16)
    if "2b4t" in types:
        from bench_model_2b4t import make_2b4t
        vocab = a.vocab if a.vocab != DEFAULT_VOCAB else os.path.join(VOCAB_DIR, "ggml-vocab-llama-bpe.gguf")
        if not os.path.exists(vocab):
            ap.error(f"llama-3 vocabulary file not found: {vocab} (pass --vocab)")
        os.makedirs(a.out_dir, exist_ok=True)
        make_2b4t(a.out_dir, vocab, a.seed)
        types.remove("2b4t")
        if not types:
            return 0
    bad = [t for t in types if t not in FTYPES]
    if bad:
        ap.error(f"unknown type(s) {bad}; choose from {sorted(FTYPES)}")
    if not os.path.exists(a.vocab):
        ap.error(f"vocabulary file not found: {a.vocab} (pass --vocab)")
    if a.dim % a.heads or a.heads % a.kv_heads:
        ap.error("dim must be a multiple of heads, heads a multiple of kv-heads")
    os.makedirs(a.out_dir, exist_ok=True)
    shape = (a.vocab, a.dim, a.layers, a.heads, a.kv_heads, a.ffn, a.ctx, a.seed)
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
        print("llama-cpp-python not installed: writing with the gguf package (Q2_K skipped)")
    if llama_cpp is not None:
        f16 = os.path.join(a.out_dir, "model-F16.gguf")
        if not os.path.exists(f16):
            t0 = time.time()
            write_float_model(f16, *shape)
            print(f"wrote {f16} in {time.time() - t0:.0f} s")
        for t in types:
            out = os.path.join(a.out_dir, f"model-{t}.gguf")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = FTYPES[t]
            params.nthread = os.cpu_count() or 1
            t0 = time.time()
            rc = llama_cpp.llama_model_quantize(f16.encode(), out.encode(), params)
            if rc != 0:
                print(f"llama.cpp failed to quantize {t} (rc {rc})")
                return 1
            print(f"wrote {out} ({os.path.getsize(out) / 1e6:.0f} MB) in {time.time() - t0:.0f} s")
        if not a.keep_f16:
            os.unlink(f16)
        return 0
    for t in types:
        if t == "Q2_K":
            print("skipping Q2_K: the gguf package cannot quantize K-quants (install llama-cpp-python)")
            continue
        out = os.path.join(a.out_dir, f"model-{t}.gguf")
        t0 = time.time()
        write_float_model(out, *shape, qtype=t)
        print(f"wrote {out} ({os.path.getsize(out) / 1e6:.0f} MB) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
