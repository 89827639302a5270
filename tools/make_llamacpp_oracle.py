"""make_llamacpp_oracle.py - llama.cpp's own logits for tiny GGUF files, as test fixtures.

    python3 tools/make_llamacpp_oracle.py [OUT_DIR]     (default tests/fixtures/llamacpp)

For each case below, tests/model_builder.py writes a tiny random GGUF file (bitnet in F32
with per-matrix *.scale tensors, Q8_0, TQ1_0, TQ2_0; llama and qwen2 in Q8_0: types both
engines read losslessly), llama.cpp (through llama-cpp-python) evaluates a fixed 40-token
prompt with logits for every position, and OUT_DIR/<case>.npz gets

    logits  float16 [40, vocab]   llama.cpp's logits at every prompt position
    prompt  int32 [40]
    meta    JSON: the build_gguf arguments, the file's sha256, the llama-cpp-python version

tests/test_llamacpp_oracle.py rebuilds each file from the same arguments (checking the
sha256, so a changed builder cannot silently compare against stale logits) and compares
pylut's logits; it needs neither llama.cpp nor this tool. llama-cpp-python is a tool-only
dependency: pip install llama-cpp-python (built from source, CMAKE_ARGS=-DGGML_NATIVE=ON).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from model_builder import build_gguf  # noqa: E402

PROMPT_LEN = 40
PROMPT_SEED = 2024
# a made-up BPE vocabulary needs at least one merge for llama.cpp to load it
SMALL = dict(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn=128, vocab=256,
             context_length=64, merges=["t o"])
WIDE = dict(SMALL, dim=256, ffn=512)    # TQ1_0/TQ2_0 blocks hold 256 weights per row piece
CASES = {
    # F32: llama.cpp multiplies unquantized activations, so its logits carry no rounding of
    # its own there and the *.scale semantics are checked closely
    "bitnet-F32-scales": dict(arch="bitnet", tensor_type="F32", seed=11, scale_tensors=True, **SMALL),
    "bitnet-Q8_0": dict(arch="bitnet", tensor_type="Q8_0", seed=12, **SMALL),
    "bitnet-TQ1_0": dict(arch="bitnet", tensor_type="TQ1_0", seed=13, **WIDE),
    "bitnet-TQ2_0": dict(arch="bitnet", tensor_type="TQ2_0", seed=14, **WIDE),
    "llama-Q8_0": dict(arch="llama", tensor_type="Q8_0", seed=15, **SMALL),
    "qwen2-Q8_0": dict(arch="qwen2", tensor_type="Q8_0", seed=16, **SMALL),
}


def prompt(vocab: int) -> np.ndarray:
    return np.random.default_rng(PROMPT_SEED).integers(0, vocab, PROMPT_LEN).astype(np.int32)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def llamacpp_logits(path, tokens) -> np.ndarray:
    """Every position's logits from llama.cpp, the prompt in one batch."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2,
                          logits_all=True, verbose=False)
    llm.eval([int(t) for t in tokens])
    out = np.array(llm.scores[:len(tokens)], dtype=np.float32)
    llm.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", nargs="?", default=str(ROOT / "tests" / "fixtures" / "llamacpp"))
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args()
    import llama_cpp
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            kwargs = CASES[name]
            path = Path(tmp) / f"{name}.gguf"
            build_gguf(path, **kwargs)
            tokens = prompt(kwargs["vocab"])
            logits = llamacpp_logits(path, tokens)
            meta = dict(case=name, build_gguf=kwargs, sha256=sha256(path),
                        llama_cpp_python=llama_cpp.__version__, n_threads=2)
            np.savez_compressed(out_dir / f"{name}.npz", logits=logits.astype(np.float16),
                                prompt=tokens, meta=np.array(json.dumps(meta, sort_keys=True)))
            print(f"{name}: logits {logits.shape}, range {logits.min():.3f}..{logits.max():.3f}, "
                  f"sha256 {meta['sha256'][:12]}")


if __name__ == "__main__":
    main()
