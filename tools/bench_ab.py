#!/usr/bin/env python3
"""Before/after speed of two pylut trees, alternated in one run: did a change move performance?

    python3 tools/bench_ab.py --base /path/to/old-tree [--new .] [--rounds 3] \\
        [--model model-Q4_0.gguf --model model-TQ2_0.gguf] [--kernels "--shapes 4096x4096"]

Each tree must hold its own in-place build (`python3 setup.py build_ext --inplace`). Every
round runs each tree's own tools/bench_kernels.py (--json) and, per --model,
tools/bench_e2e.py (--no-peer --rounds 1 --json), in the order base,new on even rounds and
new,base on odd ones, so a drift of the shared VM's bandwidth lands on both sides alike.
Per figure the best round of each tree counts (fastest GEMV, highest tokens/s), and the
table shows new / base: > 1 means the new tree is faster. "Within noise" is judged against
the spread of the base tree's own rounds, printed beside each ratio (max/min - 1 over rounds).
"""
import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

E2E_KEYS = ("decode_tps_t1", "decode_tps_t2", "prefill_tps_t1", "prefill_tps_t2")


def run_json(tree: Path, script: str, args: list) -> dict:
    """Run TREE/tools/SCRIPT with ARGS from TREE (so it imports that tree's pylut); last line = JSON."""
    cmd = [sys.executable, str(tree / "tools" / script), *args]
    r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_ab: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def kernel_figures(obj: dict) -> dict:
    """{name: (value, higher_is_better)} from bench_kernels' rows."""
    out = {}
    for r in obj["rows"]:
        key = f"kernel {r['shape']} {r['type']} t{r['threads']}"
        out[key + " ms/GEMV"] = (r["ms_per_gemv"], False)
        if r.get("hot_gbps") is not None:
            out[key + " hot GB/s"] = (r["hot_gbps"], True)
    return out


def e2e_figures(obj: dict, model: str) -> dict:
    return {f"e2e {Path(model).name} {k}": (obj[k], True) for k in E2E_KEYS if k in obj}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="the tree before the change")
    ap.add_argument("--new", default=Path(__file__).resolve().parents[1], type=Path,
                    help="the tree after the change (default: this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", action="append", default=[], help="GGUF for bench_e2e (repeatable)")
    ap.add_argument("--kernels", default="--threads 1,2 --shapes 4096x4096,2048x8192 --mb 256 --no-membw",
                    help="arguments for bench_kernels.py ('' skips the kernel benchmark)")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    a = ap.parse_args(argv)
    trees = {"base": a.base.resolve(), "new": a.new.resolve()}
    for name, t in trees.items():
        if not (t / "tools" / "bench_kernels.py").is_file() or not list((t / "pylut").glob("_core*.so")):
            sys.exit(f"bench_ab: --{name} {t} is not a pylut tree with an in-place build")
    if a.rounds < 1:
        sys.exit("bench_ab: --rounds must be >= 1")

    seen = {"base": [], "new": []}   # per tree: one {figure: (value, higher)} per round
    for rnd in range(a.rounds):
        order = ("base", "new") if rnd % 2 == 0 else ("new", "base")
        for name in order:
            figs = {}
            if a.kernels.strip():
                figs.update(kernel_figures(run_json(trees[name], "bench_kernels.py",
                                                    ["--json", *shlex.split(a.kernels)])))
            for m in a.model:
                figs.update(e2e_figures(run_json(trees[name], "bench_e2e.py",
                                                 [m, "--no-peer", "--rounds", "1", "--json"]), m))
            seen[name].append(figs)
            print(f"round {rnd + 1} {name}: {len(figs)} figures", flush=True)

    def best(rounds, key):
        vals = [r[key][0] for r in rounds if key in r]
        higher = rounds[0][key][1]
        return (max(vals) if higher else min(vals)), vals, higher

    res, logs = {}, []
    print(f"\n{'figure':<52} {'base':>9} {'new':>9} {'new/base':>9} {'base spread':>12}")
    for key in sorted(set(seen["base"][0]) & set(seen["new"][0])):
        b, bvals, higher = best(seen["base"], key)
        n, _, _ = best(seen["new"], key)
        speed = (n / b) if higher else (b / n)      # > 1: new is faster
        spread = max(bvals) / min(bvals) - 1 if min(bvals) > 0 else float("nan")
        res[key] = dict(base=b, new=n, speedup=speed, base_spread=spread)
        logs.append(math.log(speed))
        print(f"{key:<52} {b:9.3f} {n:9.3f} {speed:8.3f}x {spread:11.1%}")
    gmean = math.exp(sum(logs) / len(logs)) if logs else float("nan")
    print(f"\ngeometric mean speedup (new / base) over {len(logs)} figures: {gmean:.3f}x "
          f"({a.rounds} alternated rounds; base {trees['base']}, new {trees['new']})")
    if a.json:
        print(json.dumps(dict(geomean_speedup=gmean, rounds=a.rounds, figures=res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
