#!/usr/bin/env python3
"""End-to-end speed on one model file: prefill (a 128-token prompt) and decode (64 tokens,
greedy) tokens/s for pylut at 1 and 2 threads, peak RSS, and the share of a decode step
spent in Python. When llama-cpp-python is importable (a benchmark-only tool, never a pylut
dependency) the same file runs through llama.cpp in the same run and the ratios are printed.
Each engine runs in its own subprocess so peak RSS is its own.

    python3 tools/bench_e2e.py MODEL.gguf [--threads 1,2] [--prompt 128] [--gen 64] [--rounds 3] [--json]
    python3 tools/bench_e2e.py MODEL.gguf --peer bitnet.cpp [--peer-bin BUILD/bin]

--peer bitnet.cpp runs Microsoft's bitnet.cpp (built from source, tools/PEERS.md) instead of
llama.cpp: its llama-bench from --peer-bin or $PYLUT_BITNET_CPP (the build's bin folder),
pp = one batch of the prompt's length, tg = that many single-token decodes, best sample of
--reps. Its decode starts from an empty cache, pylut's after the prompt (a few percent in the
peer's favour at these lengths). Same JSON keys: ratio_* = pylut / the peer.

The engines alternate for --rounds rounds and each keeps its best figures (this machine's
speed drifts); peak RSS is the highest of pylut's runs, the first of which builds the packed
cache when it is cold (the first-load peak). The header names both engines' instruction sets.

Like for like on an older CPU class: --isa avx2 runs pylut's AVX2 kernels (PYLUT_ISA) on an
AVX-512 machine; build the peer the same way into a folder of its own and put it first on
PYTHONPATH (its dependencies may come from a native build's folder after it):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
        pip install --target /tmp/llcpp_avx2 --no-deps llama-cpp-python
    PYTHONPATH=/tmp/llcpp_avx2:/tmp/llcpp python3 tools/bench_e2e.py MODEL.gguf --isa avx2
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def prompt_ids(vocab, n, seed=0):
    # ids from the middle of the vocabulary: ordinary tokens, not control/byte tokens
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(min(1000, vocab // 4), vocab - 1, n)]


def best_time(reps, reset, run):
    """Fastest of reps runs, each after reset() (outside the timing)."""
    best = float("inf")
    for _ in range(reps):
        reset()
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_pylut(path, threads, n_prompt, n_gen, reps):
    sys.path.insert(0, os.path.join(HERE, ".."))
    import pylut
    t0 = time.perf_counter()
    m = pylut.load(path, n_ctx=n_prompt + n_gen + 8, n_threads=max(threads))
    out = {"engine": "pylut", "load_s": time.perf_counter() - t0, "isa": pylut.cpu_features()["isa"]}
    ids = prompt_ids(m.loaded.config["vocab"], n_prompt)
    for t in threads:
        m.pool = pylut.get_pool(t)
        m.reset()
        m.state.forward(ids[:8], m.pool)  # warm-up: page in the weights
        out[f"prefill_tps_t{t}"] = n_prompt / best_time(reps, m.reset, lambda: m.eval(ids))
        # decode through the public generate path (sampling, stop checks, detokenizing)
        gen_best, overhead = float("inf"), 1.0
        for _ in range(reps):
            m.reset()
            m.generate(ids, max_tokens=n_gen, temperature=0, repeat_penalty=1.0)
            steps = max(1, m.stats["gen_tokens"] - 1)
            if m.stats["gen_s"] / steps < gen_best:
                gen_best = m.stats["gen_s"] / steps
                # share of a decode step spent outside the C forward call (sampling,
                # stop checks, detokenizing, the Python around the call)
                overhead = 1.0 - m.stats["forward_s"] / m.stats["gen_s"]
        out[f"decode_tps_t{t}"] = 1.0 / gen_best
        out[f"python_overhead_frac_t{t}"] = overhead
    out["rss_mb"] = rss_mb()
    return out


def worker_llama(path, threads, n_prompt, n_gen, reps):
    import llama_cpp
    from llama_cpp import Llama
    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else str(info)
    feats = [f.split("=")[0].strip() for f in info.replace("CPU :", "").split("|") if f.strip().endswith("= 1")]
    out = {"engine": "llama.cpp", "isa": "+".join(f for f in feats if f.startswith(("AVX", "NEON", "SVE"))) or "?"}

    def last_logits(llm):
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
    for t in threads:
        llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 8, n_threads=t, n_threads_batch=t,
                    n_batch=n_prompt, n_ubatch=n_prompt, verbose=False)
        ids = prompt_ids(llm.n_vocab(), n_prompt)
        llm.eval(ids[:8])
        out[f"prefill_tps_t{t}"] = n_prompt / best_time(reps, llm.reset, lambda m=llm: m.eval(ids))
        dec = float("inf")
        for _ in range(reps):
            llm.reset()
            llm.eval(ids)
            tok = int(np.argmax(last_logits(llm)))
            t0 = time.perf_counter()
            for _ in range(n_gen - 1):
                llm.eval([tok])
                tok = int(np.argmax(last_logits(llm)))
            dec = min(dec, (time.perf_counter() - t0) / (n_gen - 1))
        out[f"decode_tps_t{t}"] = 1.0 / dec
        del llm
    out["rss_mb"] = rss_mb()
    return out


BITNET_ENV = "PYLUT_BITNET_CPP"


def find_bitnet_bench(peer_bin):
    """bitnet.cpp's llama-bench from --peer-bin or $PYLUT_BITNET_CPP (a file or its bin
    folder); a clear message when it is missing."""
    where = peer_bin or os.environ.get(BITNET_ENV)
    if not where:
        raise SystemExit(f"--peer bitnet.cpp: name its build with --peer-bin BUILD/bin or "
                         f"{BITNET_ENV}=BUILD/bin (how to build it: tools/PEERS.md)")
    exe = os.path.join(where, "llama-bench") if os.path.isdir(where) else where
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise SystemExit(f"--peer bitnet.cpp: no executable llama-bench at {exe} "
                         f"(build it as tools/PEERS.md says)")
    return exe


def bitnet_isa(exe):
    # llama-bench does not print the CPU features it was built for; the build's CMake cache does
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(exe))), "CMakeCache.txt")
    try:
        opts = dict(ln.split(":BOOL=", 1) for ln in open(cache).read().splitlines() if ":BOOL=" in ln)
    except OSError:
        return "?"
    if opts.get("GGML_NATIVE") == "ON":
        return "native"
    return "+".join(k[5:] for k, v in sorted(opts.items())
                    if k.startswith("GGML_AVX") and v == "ON") or "?"


def worker_bitnet(path, threads, n_prompt, n_gen, reps, exe):
    """bitnet.cpp's own llama-bench: pp (one batch of n_prompt) and tg (n_gen single-token
    decodes) per thread count, each test warmed up once then run reps times."""
    cmd = [exe, "-m", path, "-p", str(n_prompt), "-n", str(n_gen),
           "-t", ",".join(str(t) for t in threads), "-b", str(n_prompt), "-ub", str(n_prompt),
           "-r", str(reps), "-ngl", "0", "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}): "
                           f"{r.stderr.strip().splitlines()[-3:]}")
    out = {"engine": "bitnet.cpp", "isa": bitnet_isa(exe)}
    for test in json.loads(r.stdout):
        t = int(test["n_threads"])
        n_tok, kind = (test["n_gen"], "decode") if test["n_gen"] else (test["n_prompt"], "prefill")
        out[f"{kind}_tps_t{t}"] = max(1e9 * n_tok / ns for ns in test["samples_ns"])
        out.setdefault("build", f"{test.get('build_commit')} ({test.get('build_number')})")
    missing = [f"{k}_tps_t{t}" for t in threads for k in ("prefill", "decode")
               if f"{k}_tps_t{t}" not in out]
    if missing:
        raise RuntimeError(f"llama-bench gave no {missing}")
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return out


def run_worker(engine, args):
    cmd = [sys.executable, os.path.abspath(__file__), args.model, "--worker", engine,
           "--threads", args.threads, "--prompt", str(args.prompt), "--gen", str(args.gen),
           "--reps", str(args.reps)]
    if engine == "bitnet.cpp":
        cmd += ["--peer-bin", args.peer_bin]
    env = dict(os.environ)
    if args.isa and engine == "pylut":
        env["PYLUT_ISA"] = args.isa
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        print(f"{engine} failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


def best_of(a, b):
    """Two runs of one engine: the higher tokens/s per figure (with its Python share), the
    higher peak RSS (the conservative side), the first run's load time."""
    out = dict(a)
    for k, v in b.items():
        if "_tps_t" in k and v > a.get(k, 0.0):
            out[k] = v
            t = k.split("_t")[-1]
            if k.startswith("decode") and f"python_overhead_frac_t{t}" in b:
                out[f"python_overhead_frac_t{t}"] = b[f"python_overhead_frac_t{t}"]
        elif k == "rss_mb":
            out[k] = max(a[k], v)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate the engines this many times, keep each one's best (default 3)")
    ap.add_argument("--no-peer", action="store_true", help="skip the peer even when installed")
    ap.add_argument("--peer", choices=["llama.cpp", "bitnet.cpp"], default="llama.cpp",
                    help="the engine to compare with (default llama.cpp via llama-cpp-python)")
    ap.add_argument("--peer-bin", help=f"bitnet.cpp's build/bin folder or its llama-bench "
                                       f"(default ${BITNET_ENV})")
    ap.add_argument("--isa", help="force pylut's kernels to this ISA (avx2, avx512, scalar, ...), "
                                  "e.g. to match a peer built for an older CPU class")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--worker", choices=["pylut", "llama.cpp", "bitnet.cpp"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        threads = [int(t) for t in a.threads.split(",")]
    except ValueError:
        ap.error("--threads takes comma-separated integers, e.g. 1,2")
    if any(t < 1 for t in threads) or a.prompt < 1 or a.gen < 2 or a.reps < 1 or a.rounds < 1:
        ap.error("threads, prompt, reps and rounds must be >= 1, gen >= 2")
    if not os.path.exists(a.model):
        ap.error(f"model file not found: {a.model}")
    if a.worker == "bitnet.cpp":
        print(json.dumps(worker_bitnet(a.model, threads, a.prompt, a.gen, a.reps, a.peer_bin)))
        return 0
    if a.worker:
        fn = worker_pylut if a.worker == "pylut" else worker_llama
        print(json.dumps(fn(a.model, threads, a.prompt, a.gen, a.reps)))
        return 0

    res = {"model": os.path.basename(a.model), "load_avg": os.getloadavg()[0], "rounds": a.rounds}
    use_peer = not a.no_peer
    peer_name = a.peer
    if use_peer and peer_name == "bitnet.cpp":
        a.peer_bin = find_bitnet_bench(a.peer_bin)
        res["peer"] = peer_name
    elif use_peer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python not installed: pylut figures only")
            use_peer = False
    # Engines alternate, round after round, and each keeps its best figures: on a shared
    # machine whose speed drifts by tens of percent within a minute, one run of each in a
    # row would compare two different machines.
    ours, peer = None, None
    for r in range(a.rounds):
        o = run_worker("pylut", a)
        if o is None:
            return 1
        if a.isa and o.get("isa") != a.isa.strip().lower():
            print(f"--isa {a.isa}: not available here, pylut ran {o.get('isa')}")
            return 2
        ours = o if ours is None else best_of(ours, o)
        if use_peer:
            p = run_worker(peer_name, a)
            if p is not None:
                peer = p if peer is None else best_of(peer, p)
        if a.rounds > 1:
            print(f"round {r + 1}: pylut "
                  + ", ".join(f"{k} {o[k]:.1f}" for k in sorted(o) if k.endswith("tps_t1") or k.endswith("tps_t2"))
                  + ("" if not use_peer or p is None else f"; {peer_name} " + ", ".join(
                      f"{k} {p[k]:.1f}" for k in sorted(p) if k.endswith("tps_t1") or k.endswith("tps_t2"))),
                  flush=True)
    print(f"{a.model}: prompt {a.prompt} tok, decode {a.gen} tok, isa {ours.get('isa')}"
          + (f" ({peer_name}: {peer.get('isa')})" if peer else "")
          + f", load {ours['load_s']:.2f} s, load avg {res['load_avg']:.2f}")
    res["isa"] = ours.get("isa")
    if peer:
        res["peer_isa"] = peer.get("isa")
    print(f"{'':>10} {'threads':>7} {'prefill t/s':>12} {'decode t/s':>11} {'py ovh':>7}")
    for t in threads:
        print(f"{'pylut':>10} {t:>7} {ours[f'prefill_tps_t{t}']:>12.1f} {ours[f'decode_tps_t{t}']:>11.2f} "
              f"{ours[f'python_overhead_frac_t{t}']:>7.1%}")
        if peer:
            print(f"{peer_name:>10} {t:>7} {peer[f'prefill_tps_t{t}']:>12.1f} {peer[f'decode_tps_t{t}']:>11.2f}")
        for k in ("prefill", "decode"):
            res[f"{k}_tps_t{t}"] = ours[f"{k}_tps_t{t}"]
            if peer:
                res[f"peer_{k}_tps_t{t}"] = peer[f"{k}_tps_t{t}"]
                res[f"ratio_{k}_t{t}"] = ours[f"{k}_tps_t{t}"] / peer[f"{k}_tps_t{t}"]
    res["python_overhead_frac"] = max(ours[f"python_overhead_frac_t{t}"] for t in threads)
    res["rss_mb"] = ours["rss_mb"]
    print(f"peak RSS: pylut {ours['rss_mb']:.0f} MB" + (f", {peer_name} {peer['rss_mb']:.0f} MB" if peer else ""))
    if peer:
        res["peer_rss_mb"] = peer["rss_mb"]
        res["rss_ratio"] = ours["rss_mb"] / peer["rss_mb"]
        if "build" in peer:
            res["peer_build"] = peer["build"]
        print(f"ratios (pylut / {peer_name}): "
              + ", ".join(f"{k[6:]} {v:.2f}x" for k, v in res.items() if k.startswith("ratio_")))
    if a.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
