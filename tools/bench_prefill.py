#!/usr/bin/env python3
"""Prefill (N tokens at once), three GEMMs on the same codes in one run: the shared-table LUT
kernel, pylut's int8 prefill kernel (codes unpacked to bytes once per tile, int8 activations,
vpdpbusd; the scalar twin where the ISA has none) and the llama.cpp-style int8 baseline
(maddubs per token, bits 2 and 4 only). Prints tokens/s, which of the first two is faster,
and which one pylut's model picks - the measurement behind that rule
(pylut_gemm_i8_preferred in src/core/dispatch.c).

    python3 tools/bench_prefill.py [--threads 1,2] [--n 1,8,16,32,64] [--bits 2,3,4,6] [--json]

--group G sets the scale group (default 32); --ternary draws codes 0..2 with zero 1 (ternary
weights as two planes: TQ2_0, I2_S); --one-by-one adds the table GEMM run one token at a time
(the decode walk), the comparison behind PYLUT_B_MANY_FROM_* (src/core/kernels.h):

    python3 tools/bench_prefill.py --threads 1 --n 1,2,4,8,128 --shapes 6912x2560,2560x6912 \
        --bits 2 --group 256 --ternary --one-by-one
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
    ap.add_argument("--n", default="1,8,16,32,64", help="comma-separated token counts")
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="MxK list")
    ap.add_argument("--bits", default="2,3,4,6", help="bit widths 1..8 (the baseline runs 2 and 4)")
    ap.add_argument("--group", type=int, default=32, help="weights per scale group (default 32)")
    ap.add_argument("--ternary", action="store_true", help="codes 0..2 (ternary weights as 2 planes, zero 1)")
    ap.add_argument("--one-by-one", action="store_true",
                    help="also time the tables one token per call (the decode walk)")
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
    if any(t < 1 for t in threads) or any(n < 1 for n in ns) or any(not 1 <= b <= 8 for b in bits_list):
        ap.error("threads and n must be >= 1; bits must be in 1..8")
    if any(len(s) != 2 or s[1] % 128 for s in shapes):
        ap.error("shapes must be MxK with K a multiple of 128")

    rng = np.random.default_rng(0)
    rows, summary = [], {"isa": _core.isa_active()}
    print(f"prefill GEMM, isa={_core.isa_active()}: tokens/s (tables vs int8 prefill kernel vs "
          f"llama.cpp-style baseline)")
    print(f"{'shape':>12} {'bits':>4} {'thr':>3} {'N':>4} {'LUT':>9} {'int8':>9} {'int8/LUT':>8} "
          f"{'baseline':>9}  faster model")
    for (m, k) in shapes:
        for bits in bits_list:
            codes = rng.integers(0, 3 if a.ternary else 1 << bits, (m, k)).astype(np.uint8)
            s = rng.uniform(0.01, 0.02, (m, k // a.group)).astype(np.float32)
            lut_m = pylut.QMatrix.from_codes(codes, s, None, bits=bits, group=a.group,
                                             zero=1.0 if a.ternary else None)
            base_m = None
            if bits in (2, 4) and a.group % 32 == 0:  # the baseline's blocks are 32 weights
                s32 = np.repeat(s, a.group // 32, 1)
                base_m = pylut.Dq8Matrix(codes, s32, -s32 * ((1 << bits) - 1) / 2, bits)
            for nt in threads:
                pool = pylut.get_pool(nt)
                for n in ns:
                    x = rng.standard_normal((n, k)).astype(np.float32)

                    def run_lut():
                        _core.gemm_multi([lut_m], x, pool)

                    def run_int8():
                        _core.gemm_multi([lut_m], x, pool, int8=True)

                    def run_base():
                        qs = [base_m.quantize_x(x[i]) for i in range(n)]
                        base_m.gemv(np.stack([q[0] for q in qs]), np.stack([q[1] for q in qs]),
                                    np.stack([q[2] for q in qs]), pool)
                    reps = a.reps if n < 64 else max(1, a.reps - 1)
                    t_lut, t_i8 = best_time(run_lut, reps), best_time(run_int8, reps)
                    t_base = best_time(run_base, reps) if base_m is not None else float("nan")
                    one = ""
                    if a.one_by_one:
                        t_one = best_time(lambda: [_core.gemm_multi([lut_m], x[i:i + 1], pool) for i in range(n)], reps)
                        one = f"  1-by-1 {n / t_one:.1f} (batched {t_one / t_lut:.2f}x)"
                    faster = "int8" if t_i8 < t_lut else "lut"
                    model = "int8" if _core.i8_preferred(lut_m, n) else "lut"
                    print(f"{m:>6}x{k:<5} {bits:>4} {nt:>3} {n:>4} {n / t_lut:>9.1f} {n / t_i8:>9.1f} "
                          f"{t_lut / t_i8:>8.2f} {n / t_base:>9.1f}  {faster:>6} {model:>5}{one}")
                    rows.append(dict(m=m, k=k, bits=bits, threads=nt, n=n, lut_tps=n / t_lut, int8_tps=n / t_i8,
                                     baseline_tps=n / t_base if base_m is not None else None,
                                     int8_vs_lut=t_lut / t_i8, faster=faster, model_pick=model))
    for bits in bits_list:
        r = [x["int8_vs_lut"] for x in rows if x["bits"] == bits and x["n"] >= 16]
        if r:
            summary[f"prefill_int8_vs_lut_{bits}bit_min"] = min(r)
            summary[f"prefill_int8_vs_lut_{bits}bit_max"] = max(r)
    summary["model_picks_faster_frac"] = (sum(x["faster"] == x["model_pick"] for x in rows) / len(rows)
                                          if rows else float("nan"))
    summary["rows"] = rows
    print("summary: " + ", ".join(f"{k}={v:.2f}" for k, v in summary.items() if isinstance(v, float)))
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
