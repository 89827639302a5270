#!/usr/bin/env python3
"""Prefill (N tokens at once): the shared-table LUT GEMM against the int8 multiply-add path
(codes unpacked to bytes, maddubs with int8 activations, weights reused from L1 across
tokens), same matrix, same codes, same run. Prints tokens/s for both and which one wins per
shape, bit width and N - the measurement behind pylut's choice of prefill kernel.

    python3 tools/bench_prefill.py [--threads 1,2] [--n 1,8,32,128] [--json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pylut  # noqa: E402
from pylut import _core  # noqa: E402


def best_time(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--n", default="1,8,32,128", help="comma-separated token counts")
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="MxK list")
    ap.add_argument("--bits", default="2,4", help="bit widths (2 and 4: the int8 path's formats)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    a = ap.parse_args(argv)
    try:
        threads = [int(t) for t in a.threads.split(",")]
        ns = [int(t) for t in a.n.split(",")]
        bits_list = [int(b) for b in a.bits.split(",")]
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    except ValueError:
        ap.error("--threads, --n, --bits take comma-separated integers; --shapes takes MxK,MxK")
    if any(t < 1 for t in threads) or any(n < 1 for n in ns) or any(b not in (2, 4) for b in bits_list):
        ap.error("threads and n must be >= 1; bits must be 2 or 4")
    if any(len(s) != 2 or s[1] % 128 for s in shapes):
        ap.error("shapes must be MxK with K a multiple of 128")

    rng = np.random.default_rng(0)
    rows, summary = [], {"isa": _core.isa_active()}
    print(f"prefill GEMM, isa={_core.isa_active()}: tokens/s (LUT shared tables vs int8 multiply-add)")
    print(f"{'shape':>12} {'bits':>4} {'thr':>3} {'N':>4} {'LUT tok/s':>10} {'int8 tok/s':>10} {'LUT/int8':>8}  pick")
    for (m, k) in shapes:
        for bits in bits_list:
            codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
            s = rng.uniform(0.01, 0.02, (m, k // 128)).astype(np.float32)
            lut_m = pylut.QMatrix.from_codes(codes, s, None, bits=bits, group=128)
            s32 = np.repeat(s, 4, axis=1)
            i8_m = pylut.I8Matrix(codes, s32, -s32 * ((1 << bits) - 1) / 2, bits)
            for nt in threads:
                pool = pylut.get_pool(nt)
                for n in ns:
                    x = rng.standard_normal((n, k)).astype(np.float32)

                    def run_lut():
                        _core.gemm_multi([lut_m], x, pool)

                    def run_i8():
                        qs = [i8_m.quantize_x(x[i]) for i in range(n)]
                        i8_m.gemv(np.stack([q[0] for q in qs]), np.stack([q[1] for q in qs]),
                                  np.stack([q[2] for q in qs]), pool)
                    reps = a.reps if n < 64 else max(1, a.reps - 1)
                    t_lut, t_i8 = best_time(run_lut, reps), best_time(run_i8, reps)
                    ratio = t_i8 / t_lut
                    pick = "lut" if ratio >= 1 else "int8"
                    print(f"{m:>6}x{k:<5} {bits:>4} {nt:>3} {n:>4} {n / t_lut:>10.1f} {n / t_i8:>10.1f} {ratio:>8.2f}  {pick}")
                    rows.append(dict(m=m, k=k, bits=bits, threads=nt, n=n, lut_tps=n / t_lut, int8_tps=n / t_i8,
                                     lut_vs_int8=ratio, pick=pick))
    for bits in bits_list:
        r = [x["lut_vs_int8"] for x in rows if x["bits"] == bits and x["n"] > 1]
        if r:
            summary[f"prefill_lut_vs_int8_{bits}bit_min"] = min(r)
            summary[f"prefill_lut_vs_int8_{bits}bit_max"] = max(r)
    summary["rows"] = rows
    print("summary: " + ", ".join(f"{k}={v:.2f}" for k, v in summary.items() if isinstance(v, float)))
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
