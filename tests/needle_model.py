"""A tiny llama GGUF with hand-set weights in which exactly one kv head retrieves: the needle
in a haystack for streaming-head tests (tests/test_streaming_model.py, tools/bench_streaming.py).

Tokens (made-up vocabulary of 64): BOS 0; the question QUESTION; needle tokens NEEDLE + c,
each carrying answer code c (c < N_CODES); answer tokens ANSWER + c; the rest is filler.

Residual stream (dim 64): dims 0..7 the answer code (needle tokens only), dim 8 the needle
marker, dim 9 the question marker, dims 16..47 random "content" every token has, dims 48..55
the answer channel. Random heads and feed-forwards only read and write content dims, so the
marker and code dims reach layer 1 clean.

The retrieval head is layer 1, kv head 1 (query heads 2 and 3). Its query is the question
marker and its key the needle marker, both in dims 14 and 15 of the head: RoPE pair 7 of 8,
whose angle per position is freq_base^(-14/16) = 3e-11 radians with freq_base 1e12, so the
match does not fade with distance. The needle scores ~30 above every other position, the
head's value copies the code dims and its output writes them to the answer channel, which
the output matrix reads as the answer token's logit (~50, against +-3 for the others).
Without the needle in view the head averages codeless values: no answer logit at all."""
from pathlib import Path

import gguf
import gguf.quants
import numpy as np

from model_builder import _made_up_tokenizer

VOCAB = 64
QUESTION = 2
NEEDLE = 10
ANSWER = 20
N_CODES = 8
FILLER = range(30, VOCAB)
RETRIEVAL_HEAD = (1, 1)  # (layer, kv head)
DIM, N_HEADS, N_KV, HD, N_LAYERS, FFN = 64, 4, 2, 16, 2, 64


def build_needle_gguf(path, context_length: int = 4096, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    content = slice(16, 48)
    w = {}

    def weak(rows, cols, gain, rows_to=None):
        """Random [rows, cols] reading content dims only (and writing only rows_to)."""
        m = np.zeros((rows, cols), np.float32)
        m[:, content] = rng.normal(0, gain / np.sqrt(32), (rows, 32))
        if rows_to is not None:
            keep = np.zeros(rows, bool)
            keep[rows_to] = True
            m[~keep] = 0
        return m

    emb = np.zeros((VOCAB, DIM), np.float32)
    emb[:, content] = rng.normal(0, 1, (VOCAB, 32))
    for c in range(N_CODES):
        emb[NEEDLE + c, c] = 4.0
        emb[NEEDLE + c, 8] = 4.0
    emb[QUESTION, 9] = 4.0
    w["token_embd.weight"] = emb
    out = np.zeros((VOCAB, DIM), np.float32)
    out[:, content] = rng.normal(0, 0.3, (VOCAB, 32))
    for c in range(N_CODES):
        out[ANSWER + c] = 0
        out[ANSWER + c, 48 + c] = 10.0
    w["output.weight"] = out
    w["output_norm.weight"] = np.ones(DIM, np.float32)
    content_rows = np.arange(16, 48)
    for l in range(N_LAYERS):
        p = f"blk.{l}."
        w[p + "attn_norm.weight"] = np.ones(DIM, np.float32)
        w[p + "ffn_norm.weight"] = np.ones(DIM, np.float32)
        wq, wk, wv = weak(N_HEADS * HD, DIM, 1.0), weak(N_KV * HD, DIM, 1.0), weak(N_KV * HD, DIM, 1.0)
        wo = np.zeros((DIM, N_HEADS * HD), np.float32)
        wo[content_rows] = rng.normal(0, 0.3 / np.sqrt(N_HEADS * HD), (32, N_HEADS * HD))
        if (l, 1) == RETRIEVAL_HEAD:
            kvh = RETRIEVAL_HEAD[1]
            for qh in (2 * kvh, 2 * kvh + 1):  # both query heads of kv head 1
                wq[qh * HD:(qh + 1) * HD] = 0
                wq[qh * HD + 14, 9] = 2.5
                wo[:, qh * HD:(qh + 1) * HD] = 0
            wk[kvh * HD:(kvh + 1) * HD] = 0
            wk[kvh * HD + 14, 8] = 2.5
            wv[kvh * HD:(kvh + 1) * HD] = 0
            for c in range(N_CODES):
                wv[kvh * HD + c, c] = 1.0
                wo[48 + c, 2 * kvh * HD + c] = 2.0  # query head 2 writes the answer channel
        w[p + "attn_q.weight"], w[p + "attn_k.weight"], w[p + "attn_v.weight"] = wq, wk, wv
        w[p + "attn_output.weight"] = wo
        w[p + "ffn_gate.weight"] = weak(FFN, DIM, 1.0)
        w[p + "ffn_up.weight"] = weak(FFN, DIM, 1.0)
        down = np.zeros((DIM, FFN), np.float32)
        down[content_rows] = rng.normal(0, 0.1 / np.sqrt(FFN), (32, FFN))
        w[p + "ffn_down.weight"] = down

    writer = gguf.GGUFWriter(str(path), "llama")
    _made_up_tokenizer(writer, VOCAB)
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(context_length)
    writer.add_embedding_length(DIM)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(1e12)
    writer.add_rope_dimension_count(HD)
    for name, t in w.items():
        if t.ndim == 2:  # Q8_0 keeps an all-zero block exactly zero (scale 0)
            writer.add_tensor(name, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def haystack(n_tokens: int, depth: int, code: int, seed: int = 0) -> list:
    """BOS, filler, the needle of `code` at position `depth`, filler, the question last."""
    rng = np.random.default_rng(seed)
    ids = [0] + [int(t) for t in rng.choice(list(FILLER), n_tokens - 2)] + [QUESTION]
    ids[depth] = NEEDLE + code
    return ids


def answers(model, n_tokens: int, depths, seed: int = 0) -> list:
    """(depth, code, the model's greedy answer is right) for each depth."""
    out = []
    for i, d in enumerate(depths):
        code = (i * 3 + seed) % N_CODES
        logits = model.eval(haystack(n_tokens, d, code, seed + i))
        out.append((d, code, int(np.argmax(logits)) == ANSWER + code))
    return out
