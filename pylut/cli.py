"""pylut command line. `pylut cpu` prints what the kernels see; the model commands (chat,
run, serve, bench, convert, info) come with the model runtime."""
import argparse
import json
import sys

from . import __version__


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pylut", description="Fast CPU runtime for low-bit LLMs.")
    parser.add_argument("--version", action="version", version=f"pylut {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cpu = sub.add_parser("cpu", help="show CPU features and the kernels pylut selected")
    cpu.add_argument("--json", action="store_true", help="print one JSON object")
    cpu.add_argument("--bench", action="store_true",
                     help="also time a 2-bit 4096x4096 GEMV (decode) on this machine")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "cpu":
        from .kernels import cpu_features
        f = cpu_features()
        if args.bench:
            f["gemv_2bit_4096"] = _bench_gemv()
        if args.json:
            print(json.dumps(f))
        else:
            print(f"kernels: {f['isa']} (best here: {f['best']}; supported: {', '.join(f['supported'])})")
            print(f"cpu flags: {', '.join(f['flags']) or '-'}")
            print(f"physical cores: {f['physical_cores']}")
            if args.bench:
                b = f["gemv_2bit_4096"]
                print(f"2-bit 4096x4096 GEMV: {b['ms']:.3f} ms, {b['gbps']:.1f} GB/s of packed weights "
                      f"({b['bits_per_weight']:.3f} bits/weight, {b['threads']} threads, in cache)")
        return 0
    return 2


def _bench_gemv():
    import time

    import numpy as np

    from .kernels import gemm, physical_cores, quantize
    w = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    q = quantize(w, bits=2, group=128)
    x = np.ones(4096, np.float32)
    best = float("inf")
    for _ in range(50):
        t0 = time.perf_counter()
        gemm(q, x)
        best = min(best, time.perf_counter() - t0)
    return {"ms": best * 1e3, "gbps": q.nbytes / best / 1e9, "bits_per_weight": q.bits_per_weight,
            "threads": physical_cores()}


if __name__ == "__main__":
    sys.exit(main())
