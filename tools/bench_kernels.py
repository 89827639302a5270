"""Decode-GEMV benchmark of the table-lookup kernels against this machine's read bandwidth
and against the int8 dequant-dot baseline (llama.cpp style), in one run.

    python tools/bench_kernels.py                 # full run: 4 Llama shapes, 1 and 2 threads
    python tools/bench_kernels.py --json          # ... last line is one JSON object
    python tools/bench_kernels.py --quick         # smoke run (< 30 s)
    python tools/bench_kernels.py --threads 1 --shapes 4096x4096 --mb 512 --isa avx2

Method (what every number means):
- Weight set: per shape and type ONE random matrix is quantized, then its packed buffers are
  cloned (QMatrix.from_packed on copies) until the set holds >= --mb MB of packed bytes, so
  a pass streams from DRAM, not from the 32 MB L3. The clones live back to back (64-byte
  aligned) in one large numpy allocation, like a packed model loaded into memory, and so
  are paged the same way as the bandwidth probe's buffer (numpy asks for transparent huge
  pages on large arrays; separate small arrays would get 4 KiB pages and more TLB misses). A pass = one GEMV per
  matrix of the set.
- Decode builds one lookup table per activation vector and shares it among the matrices that
  read that vector, so the table is built ONCE per pass, outside the timed loop (its build
  time is shown separately, column 'tbl us'). The int8 baseline likewise quantizes its
  activation vector once per pass, outside the timed loop.
- Kernel time = BEST of --passes passes (ms/GEMV = pass time / matrices in the set).
  GB/s = packed bytes read (QMatrix.nbytes: codes + scales (+ biases)) / time.
- Roofline: _core.read_bytes over a buffer as large as the weight set, same pool and thread
  count, sampled before every pass and after the last one (the VM's bandwidth drifts). The
  denominator is the MAX of those samples (conservative): 'roof' = kernel GB/s / that max.
- int8 baseline: pylut.Dq8Matrix with the same codes as the 2-bit (and 4-bit) LUT matrix,
  group-32 fp16 scale + bias (Q2/Q4-style), cloned to >= --mb MB as well. 'x int8' = int8
  time per GEMV / LUT time per GEMV on the same shape (= tokens/s ratio).
- Disturbance: each measurement records the CPU share other processes (and VM steal) used
  meanwhile ('load', from /proc/stat); if > 15 %, or its bandwidth samples disagree by > 15 %,
  it is repeated after a short sleep (--retries), keeping the least disturbed attempt; one
  still disturbed is flagged 'noisy'.
- Summary keys (roofline_*, lut_vs_int8_*) are the WORST (minimum) over the shapes run,
  leaving out 'noisy' measurements where the same type/threads has a clean one.
  roofline_tern_* uses the dense 1.67-bit ternary packing 't3'; the 2-plane 'tern' rows
  are shown for information, as are the 4-bit and 3-bit rows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pylut  # noqa: E402
from pylut import _core  # noqa: E402

DEFAULT_SHAPES = "4096x4096,11008x4096,4096x11008,2048x8192"
QUICK_SHAPES = "4096x4096,2048x8192"
# name -> (quantize kwargs, int8 baseline bits or None)
TYPES = {
    "2bit": (dict(bits=2, group=128, mode="sym"), 2),
    "t3": (dict(bits=2, group=256, mode="t3"), None),  # 256: llama.cpp's TQ block
    "tern": (dict(bits=2, group=128, mode="ternary"), None),
    "3bit": (dict(bits=3, group=128, mode="sym"), None),
    "4bit": (dict(bits=4, group=128, mode="sym"), 4),
    "f16": (None, None),  # QMatrix.from_f16: fp16 weights, fp32 sums (src/f16/); --types only
}
TARGETS = {  # key -> minimum
    "roofline_2bit_t1": 0.85, "roofline_2bit_t2": 0.90,
    "roofline_tern_t1": 0.85, "roofline_tern_t2": 0.90,
    "lut_vs_int8_2bit_t1": 1.5,
}
RETRY_SLEEP_S = 2.0
_wait = {"left": 90.0}  # total seconds a run may sleep waiting for quiet (--quick: 4)
MEMBW_C = ROOT.parent / "shared" / "tools" / "membw.c"


# ---------------------------------------------------------------- CLI

def parse_shapes(text):
    shapes = []
    for item in text.replace("×", "x").split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"shape {item!r} is not MxK (e.g. 4096x4096)")
        m, k = int(parts[0]), int(parts[1])
        if not (32 <= m <= 1 << 20 and 128 <= k <= 1 << 20):
            raise argparse.ArgumentTypeError(f"shape {item!r}: need 32 <= M and 128 <= K (<= 2^20)")
        shapes.append((m, k))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def parse_threads(text):
    try:
        ts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: comma-separated integers, e.g. 1,2")
    if not ts or any(not 1 <= t <= 256 for t in ts):
        raise argparse.ArgumentTypeError(f"--threads {text!r}: each count must be in 1..256")
    return sorted(set(ts))


def parse_types(text):
    ts = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in ts if t not in TYPES]
    if not ts or bad:
        raise argparse.ArgumentTypeError(f"--types: unknown {bad}; choose from {list(TYPES)}")
    return ts


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=parse_threads, default=None, help="thread counts (default 1,2)")
    p.add_argument("--mb", type=positive_int, default=None,
                   help="MB of packed weights per set (default 256; --quick 64)")
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help=f"comma-separated MxK (default {DEFAULT_SHAPES})")
    p.add_argument("--types", type=parse_types, default=None,
                   help=f"LUT types (default {','.join(TYPES)}; --quick 2bit,t3)")
    p.add_argument("--passes", type=positive_int, default=None,
                   help="timed passes per measurement, best is kept (default 7; --quick 3)")
    p.add_argument("--retries", type=int, default=None,
                   help="re-measure a disturbed measurement up to N more times (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="small smoke run (< 30 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--isa", default=None, help=f"force a kernel ISA (supported: {', '.join(_core.isa_supported())})")
    p.add_argument("--no-membw", action="store_true", help="skip the ../shared/tools/membw.c cross-check")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p


# ---------------------------------------------------------------- measurement

def _carve(arena, off, src):
    """Copy src into arena at a 64-byte aligned offset; return (view with src's dtype, next offset)."""
    off = -(-off // 64) * 64
    view = arena[off:off + src.nbytes].view(src.dtype)
    view[...] = src
    return view, off + src.nbytes


def clone_into(q, arena, off):
    """A QMatrix whose buffers are copies of q's, placed in arena (one big allocation, like
    a packed-model file loaded into memory, and paged like the bandwidth probe's buffer)."""
    m, k = q.shape
    bufs = []
    for b in (q.codes_buf, q.scale_buf, q.bias_buf):
        if b is None:
            bufs.append(None)
        else:
            v, off = _carve(arena, off, b)
            bufs.append(v)
    return pylut.QMatrix.from_packed(q.type, m, k, q.group, q.has_bias, *bufs), off


def n_copies(nbytes_one, mb):
    return max(1, -(-mb * 1_000_000 // nbytes_one))


class Roof:
    """Read-bandwidth samples over a buffer the size of the weight set."""

    def __init__(self, max_bytes):
        # filled with non-zero data so every page is real (calloc'd zero pages would be cached)
        self.buf = np.full(max_bytes, 0x5A, np.uint8)
        self.all = {}  # threads -> list of GB/s

    def sample(self, nbytes, pool, nt):
        view = self.buf[:nbytes]
        t0 = time.perf_counter()
        _core.read_bytes(view, pool)
        gbs = nbytes / (time.perf_counter() - t0) / 1e9
        self.all.setdefault(nt, []).append(gbs)
        return gbs


def lut_set(q, mb):
    """n clones of q (q itself not included) in one arena, >= mb MB of packed bytes in all."""
    n = n_copies(q.nbytes, mb)
    arena = np.empty(n * (q.nbytes + 4 * 64), np.uint8)
    mats, off = [], 0
    for _ in range(n):
        c, off = clone_into(q, arena, off)
        mats.append(c)
    return mats, sum(x.nbytes for x in mats)


def int8_set(codes, w, bits, mb):
    """Dq8Matrix clones with the same codes and group-32 fp16 scale/bias from w (Q2/Q4 style)."""
    m, k = codes.shape
    half = ((1 << bits) - 1) / 2.0
    s = np.abs(w.reshape(m, k // 32, 32)).max(axis=2) / half
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    b = (-half * s).astype(np.float32)
    first = pylut.Dq8Matrix(codes, s, b, bits)
    mats = [first] + [pylut.Dq8Matrix(codes, s, b, bits) for _ in range(n_copies(first.nbytes, mb) - 1)]
    return mats, sum(x.nbytes for x in mats)


def bench_lut(mats, x, pool):
    tables = _core.Tables(mats[0], 1)
    gemm = _core.gemm_multi

    def run_pass():
        tables.build(x, pool)  # once per pass, outside the timed region
        t0 = time.perf_counter()
        for q in mats:
            gemm([q], x, pool, tables)
        return time.perf_counter() - t0
    return run_pass


def hot_gbps(q, x, pool, reps=30):
    """The kernel on ONE matrix over and over (cache-resident when it fits the L3): its compute
    ceiling in GB/s of packed bytes. Near the DRAM figure = compute-bound from DRAM."""
    tables = _core.Tables(q, 1)
    tables.build(x, pool)
    for _ in range(3):
        _core.gemm_multi([q], x, pool, tables)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _core.gemm_multi([q], x, pool, tables)
        ts.append(time.perf_counter() - t0)
    return q.nbytes / min(ts) / 1e9


def table_build_us(q, x, pool, reps=20):
    tables = _core.Tables(q, 1)
    tables.build(x, pool)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tables.build(x, pool)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e6


def _cpu_snapshot():
    """(busy jiffies of the whole machine, total jiffies, this process's CPU seconds), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    t = os.times()
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], sum(v), t.user + t.system


def foreign_load(a, b):
    """Fraction of the machine's CPU time used by OTHER processes (and VM steal) between two
    snapshots; None where /proc/stat is missing."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((b[0] - a[0]) - (b[2] - a[2]) * hz) / (b[1] - a[1]))


def measure_once(pass_fn, nbytes, roof, pool, nt, passes):
    """pass_fn() returns the timed seconds of its kernel loop (setup excluded). Interleaved:
    bw sample, pass, bw sample, pass, ..., bw sample. -> (best s, max bw, min bw, foreign load)."""
    pass_fn()  # warm-up: page faults, pool wake-up
    snap0 = _cpu_snapshot()
    bws, times = [], []
    for _ in range(passes):
        bws.append(roof.sample(nbytes, pool, nt))
        times.append(pass_fn())
    bws.append(roof.sample(nbytes, pool, nt))
    return min(times), max(bws), min(bws), foreign_load(snap0, _cpu_snapshot())


def measure_pass_fn(pass_fn, nbytes, roof, pool, nt, passes, retries):
    """measure_once, repeated (up to `retries` more times) while the measurement looks disturbed:
    other processes used > 15 % of the CPUs, or the bandwidth samples around it disagree by
    > 15 %. Keeps the least disturbed attempt. -> dict(best, bw, bw_min, load, attempts)."""
    tried = []
    for attempt in range(retries + 1):
        best, bw, bw_min, load = measure_once(pass_fn, nbytes, roof, pool, nt, passes)
        tried.append(dict(best=best, bw=bw, bw_min=bw_min, load=load, attempts=attempt + 1))
        if (load is None or load <= 0.15) and bw_min >= 0.85 * bw:
            break
        if attempt < retries and _wait["left"] > 0:
            nap = min(RETRY_SLEEP_S, _wait["left"])
            _wait["left"] -= nap
            time.sleep(nap)  # let the other job (or the host) move on
    out = min(tried, key=lambda r: ((r["load"] or 0.0) + (1 - r["bw_min"] / r["bw"])))
    out["attempts"] = len(tried)
    out["noisy"] = (out["load"] is not None and out["load"] > 0.15) or out["bw_min"] < 0.85 * out["bw"]
    return out


def bench_int8(mats, x, pool):
    def run_pass():
        xq, xs, xsum = mats[0].quantize_x(x)  # once per pass, outside the timed region
        t0 = time.perf_counter()
        for im in mats:
            im.gemv(xq, xs, xsum, pool)
        return time.perf_counter() - t0
    return run_pass


def run_membw(threads, mb):
    """Compile and run the steering side's membw.c once per thread count (cross-check only)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not MEMBW_C.exists() or not cc:
        return {}
    out = {}
    with tempfile.TemporaryDirectory() as td:
        exe = os.path.join(td, "membw")
        flags = ["-mavx2"] if os.uname().machine in ("x86_64", "AMD64") else []
        try:
            subprocess.run([cc, "-O3", "-pthread", *flags, str(MEMBW_C), "-o", exe],
                           check=True, capture_output=True, timeout=60)
            for nt in threads:
                r = subprocess.run([exe, str(nt), str(max(64, mb))], capture_output=True,
                                   text=True, timeout=120)
                for tok in r.stdout.split():
                    if tok.startswith("read_GBps="):
                        out[nt] = float(tok.split("=")[1])
        except (subprocess.SubprocessError, OSError, ValueError):
            pass
    return out


# ---------------------------------------------------------------- main

def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.retries is not None and args.retries < 0:
        parser.error("--retries must be >= 0")
    if args.retries is None:
        args.retries = 1 if args.quick else 3
    if args.quick:
        _wait["left"] = 4.0
    if args.isa is not None:
        if args.isa not in _core.ISA_BY_NAME or args.isa not in _core.isa_supported():
            parser.error(f"--isa {args.isa!r} is not supported here (supported: {', '.join(_core.isa_supported())})")
        _core.isa_set(args.isa)
    threads = args.threads or [1, 2]
    shapes = args.shapes or parse_shapes(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    types = args.types or (["2bit", "t3"] if args.quick else [t for t in TYPES if t != "f16"])
    mb = args.mb or (64 if args.quick else 256)
    passes = args.passes or (3 if args.quick else 7)

    t_start = time.time()
    load0 = os.getloadavg()
    isa = _core.isa_active()
    print(f"pylut kernel bench: isa={isa} cpus={os.cpu_count()} physical_cores={pylut.kernels.physical_cores()} "
          f"threads={threads} set>={mb} MB passes={passes} (best pass kept; bw = max of samples around it)")
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
          + ("  (machine busy: numbers may be noisy, re-run)" if load0[0] > 0.5 else ""))
    pools = {nt: pylut.get_pool(nt) for nt in threads}
    # the largest set: clones round up, so allow one matrix of slack (4-bit of the biggest shape)
    biggest = max(m * k for m, k in shapes)
    roof = Roof(mb * 1_000_000 + biggest + (1 << 20))

    rows = []
    hdr = (f"{'shape':>11} {'type':>5} {'thr':>3} {'bpw':>5} {'mats':>4} {'MB':>5} {'ms/GEMV':>8} "
           f"{'GB/s':>6} {'bw GB/s':>7} {'roof':>6} {'x int8':>6} {'tbl us':>6} {'hot':>5} {'load':>5} {'try':>3}")
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(0)
    for m, k in shapes:
        w = rng.standard_normal((m, k), dtype=np.float32)
        x = rng.standard_normal(k, dtype=np.float32)
        for tname in types:
            qkw, i8bits = TYPES[tname]
            q = pylut.QMatrix.from_f16(w) if qkw is None else pylut.quantize(w, **qkw)
            mats, nbytes = lut_set(q, mb)
            lut_res = {}
            for nt in threads:
                pool = pools[nt]
                r = measure_pass_fn(bench_lut(mats, x, pool), nbytes, roof, pool, nt, passes, args.retries)
                best, bw = r["best"], r["bw"]
                gbs = nbytes / best / 1e9
                lut_res[nt] = dict(shape=f"{m}x{k}", type=tname, threads=nt, kind="lut",
                                   bpw=round(q.bits_per_weight, 3), n_mats=len(mats), set_mb=nbytes / 1e6,
                                   ms_per_gemv=best / len(mats) * 1e3, gbps=gbs, bw_gbps=bw,
                                   roof=gbs / bw, tbl_us=table_build_us(q, x, pool), load=r["load"],
                                   hot_gbps=hot_gbps(mats[0], x, pool),
                                   bw_min=r["bw_min"], attempts=r["attempts"], noisy=r["noisy"])
            i8_res = {}
            if i8bits is not None and k % (256 // i8bits) == 0:
                codes = q.unpack_codes()
                del mats
                imats, inbytes = int8_set(codes, w, i8bits, mb)
                del codes
                for nt in threads:
                    pool = pools[nt]
                    r = measure_pass_fn(bench_int8(imats, x, pool), inbytes, roof, pool, nt, passes, args.retries)
                    best, bw = r["best"], r["bw"]
                    gbs = inbytes / best / 1e9
                    i8_res[nt] = dict(shape=f"{m}x{k}", type=f"i8q{i8bits}", threads=nt, kind="int8",
                                      bpw=round(8.0 * imats[0].nbytes / (m * k), 3), n_mats=len(imats),
                                      set_mb=inbytes / 1e6, ms_per_gemv=best / len(imats) * 1e3,
                                      gbps=gbs, bw_gbps=bw, roof=gbs / bw, tbl_us=None, load=r["load"],
                                      bw_min=r["bw_min"], attempts=r["attempts"], noisy=r["noisy"])
                    lut_res[nt]["vs_int8"] = i8_res[nt]["ms_per_gemv"] / lut_res[nt]["ms_per_gemv"]
                del imats
            else:
                del mats
            for res in (lut_res, i8_res):
                for nt in threads:
                    if nt not in res:
                        continue
                    r = res[nt]
                    rows.append(r)
                    vs = f"{r['vs_int8']:6.2f}" if r.get("vs_int8") is not None else f"{'':>6}"
                    tb = f"{r['tbl_us']:6.0f}" if r.get("tbl_us") is not None else f"{'':>6}"
                    hot = f"{r['hot_gbps']:5.0f}" if r.get("hot_gbps") is not None else f"{'':>5}"
                    ld = f"{r['load']:5.0%}" if r["load"] is not None else f"{'?':>5}"
                    print(f"{r['shape']:>11} {r['type']:>5} {nt:>3} {r['bpw']:5.2f} {r['n_mats']:>4} "
                          f"{r['set_mb']:5.0f} {r['ms_per_gemv']:8.3f} {r['gbps']:6.1f} {r['bw_gbps']:7.1f} "
                          f"{r['roof']:6.1%} {vs} {tb} {hot} {ld} {r['attempts']:>3}"
                          + ("  noisy" if r["noisy"] else ""), flush=True)
        del w

    membw = {} if args.no_membw else run_membw(threads, mb)
    load1 = os.getloadavg()

    # ---------------- summary
    run_max = {nt: max(v) for nt, v in roof.all.items()}
    for r in rows:
        r["roof_runmax"] = r["gbps"] / run_max[r["threads"]]
    def worst(tname, nt, field):
        """Minimum over shapes; a shape whose measurement stayed disturbed after the retries is
        left out when some shape was measured cleanly (listed in 'excluded_noisy')."""
        cand = [r for r in rows if r["kind"] == "lut" and r["type"] == tname and r["threads"] == nt
                and r.get(field) is not None]
        clean = [r for r in cand if not r["noisy"]]
        use = clean or cand
        return min(r[field] for r in use) if use else None

    summary = {}
    for nt in (1, 2):
        summary[f"roofline_2bit_t{nt}"] = worst("2bit", nt, "roof")
        summary[f"roofline_tern_t{nt}"] = worst("t3", nt, "roof")
        summary[f"roofline_tern2plane_t{nt}"] = worst("tern", nt, "roof")
        summary[f"roofline_4bit_t{nt}"] = worst("4bit", nt, "roof")
        summary[f"roofline_3bit_t{nt}"] = worst("3bit", nt, "roof")
        summary[f"roofline_2bit_t{nt}_vs_runmax"] = worst("2bit", nt, "roof_runmax")
        summary[f"roofline_tern_t{nt}_vs_runmax"] = worst("t3", nt, "roof_runmax")
        summary[f"lut_vs_int8_2bit_t{nt}"] = worst("2bit", nt, "vs_int8")
        summary[f"lut_vs_int8_4bit_t{nt}"] = worst("4bit", nt, "vs_int8")
        summary[f"read_bw_gbps_t{nt}"] = max(roof.all[nt]) if nt in roof.all else None
        summary[f"read_bw_gbps_t{nt}_min"] = min(roof.all[nt]) if nt in roof.all else None
        summary[f"membw_gbps_t{nt}"] = membw.get(nt)

    print()
    print("read bandwidth (pylut read_bytes, all samples this run):")
    for nt in threads:
        s = roof.all.get(nt, [])
        mb_ = f"   membw.c: {membw[nt]:.1f} GB/s" if nt in membw else ""
        print(f"  t{nt}: max {max(s):.1f}  median {float(np.median(s)):.1f}  min {min(s):.1f} GB/s "
              f"({len(s)} samples){mb_}")
    noisy = [r for r in rows if r["noisy"]]
    if noisy:
        print(f"WARNING: {len(noisy)} of {len(rows)} measurements stayed disturbed after retries "
              "(other processes on the CPUs or bandwidth samples disagreeing): re-run on a quiet machine;")
        print("  the summary leaves them out where the same type/threads has a clean shape: "
              + ", ".join(f"{r['shape']}/{r['type']}/t{r['threads']}" for r in noisy))
    print("'hot' = GB/s of the same kernel on one cache-resident matrix (compute ceiling); "
          "'tbl us' = one table build (outside the timed loop)")
    print("'load' = CPU share used by other processes (and VM steal) during the measurement; "
          "'try' = attempts (a disturbed measurement is repeated)")
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}   elapsed {time.time() - t_start:.0f} s")
    print()
    print("summary (worst over the shapes measured cleanly; roof = fraction of the max read bandwidth "
          "sampled around that measurement):")
    ok_all = True
    for key, target in TARGETS.items():
        v = summary.get(key)
        if v is None:
            verdict = "n/a (not measured)"
        else:
            ok = v >= target
            ok_all &= ok
            verdict = "PASS" if ok else "FAIL"
        shown = "   -  " if v is None else (f"{v:6.3f}" if key.startswith("lut") else f"{v:6.1%}")
        tshown = f"{target:.2f}x" if key.startswith("lut") else f"{target:.0%}"
        print(f"  {key:<22} {shown}  target >= {tshown:<6} {verdict}")

    if args.json:
        obj = dict(summary)
        obj.update(isa=isa, threads=threads, mb=mb, passes=passes, quick=args.quick,
                   shapes=[f"{m}x{k}" for m, k in shapes], types=types,
                   loadavg_start=list(load0), loadavg_end=list(load1), noisy_rows=len(noisy),
                   excluded_noisy=[f"{r['shape']}/{r['type']}/t{r['threads']}" for r in noisy],
                   targets=TARGETS, all_targets_pass=ok_all,
                   timing="best pass; table build / int8 x-quantization once per pass, outside the timed loop",
                   rows=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
        print(json.dumps(obj))
    return 1 if (args.strict and not ok_all) else 0


if __name__ == "__main__":
    sys.exit(main())
