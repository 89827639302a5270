"""Writes tests/fixtures/bitnet/: tiny BitNet checkpoints with transformers' own logits, and
I2_S bytes from bitnet.cpp's own quantizers (the oracles of tests/test_bitnet.py).

Tool-only (CI reads the committed files):
    pip install torch==2.13.0 'transformers>=5' accelerate
    git clone https://github.com/microsoft/BitNet /tmp/bitnet-src      # any checkout
    python3 tools/make_bitnet_fixtures.py --bitnet-src /tmp/bitnet-src [--out tests/fixtures/bitnet]

Hugging Face folders (random weights, transformers' packed ternary layout, bf16 like the
published 2B4T checkpoint):
  bitnet_2b4t       BitNetForCausalLM shaped like BitNet b1.58 2B4T (ReLU^2, sub-norms, GQA
                    4:1, tied embedding), linear_class "bitlinear": w = trits / weight_scale
  bitnet_autobitlinear  the same with linear_class "autobitlinear" (offline): w = trits * weight_scale
  falcon3_style     LlamaForCausalLM with quant_method "bitnet" (Falcon3-*-1.58bit, Llama3-8B-1.58)
Each gets tokens.npy (the prompt), logits.npy (transformers' logits, which quantize every
linear layer's input to int8 per token), logits_float_act.npy (the same model with that
activation quantization switched off: the float computation pylut's reference does) and
reference.json. The weights come from pylut-independent code: transformers' pack_weights.

I2_S (i2s-bitnetcpp.bin, i2s-trits.npy, i2s.json): one fixed ternary matrix quantized by
bitnet.cpp's C quantize_i2_s (src/ggml-bitnet-mad.cpp, compiled here with g++ for x86 in a
small harness, ggml's two symbols shimmed) and by its Python quantize_to_i2_s
(utils/convert-hf-to-gguf-bitnet.py); the two must agree byte for byte.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")   # transformers' BitNet layers are torch.compile'd

import numpy as np  # noqa: E402

PROMPT_IDS = [1, 17, 42, 99, 7, 230, 5, 64, 128, 200, 3, 77, 150, 11, 240, 33]
VOCAB = 260
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
             initializer_range=0.09, bos_token_id=None, eos_token_id=None, pad_token_id=None,
             tie_word_embeddings=True)
I2S_SHAPE = (8, 384)
I2S_SCALE = 0.04296875   # fp16-exact: pylut's kernels keep it exactly


# ---------------------------------------------------------------- Hugging Face folders

def make_hf(out: str, name: str, seed: int) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, BitNetConfig, LlamaConfig
    from transformers.integrations import bitnet as hf_bitnet

    linear_class = "autobitlinear" if name == "bitnet_autobitlinear" else "bitlinear"
    folder = os.path.join(out, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.manual_seed(seed)
    if name == "falcon3_style":
        config = LlamaConfig(**SHAPE, rope_theta=1e6)
        config.architectures = ["LlamaForCausalLM"]
    else:
        config = BitNetConfig(**SHAPE, rope_theta=500000.0)   # hidden_act relu2 by default
        config.architectures = ["BitNetForCausalLM"]
    float_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = {}
    with torch.no_grad():
        for n, p in float_model.named_parameters():
            if n == "lm_head.weight":
                continue   # tied to the embedding
            if n == "model.embed_tokens.weight":   # unit scale (as model_builder's): clear logit margins
                tensors[n] = torch.randn_like(p).to(torch.bfloat16)
            elif n.endswith("norm.weight"):   # away from 1, so a misread norm shows
                tensors[n] = (1 + 0.2 * torch.randn_like(p)).to(torch.bfloat16)
            elif n.endswith("proj.weight"):
                if n.endswith(("o_proj.weight", "down_proj.weight")):   # GPT-2's 1/sqrt(2 L) residual gain
                    p = p * (2 * SHAPE["num_hidden_layers"]) ** -0.5
                # BitNet b1.58's ternarization (absmean), then transformers' own packing
                s = 1.0 / p.abs().mean().clamp(min=1e-5)
                trits = (p * s).round().clamp(-1, 1).to(torch.int8)
                tensors[n] = hf_bitnet.pack_weights(trits.clone())
                weight_scale = s if linear_class == "bitlinear" else 1.0 / s
                tensors[n[: -len(".weight")] + ".weight_scale"] = weight_scale.reshape(1).to(torch.bfloat16)
            else:
                tensors[n] = p.to(torch.bfloat16).contiguous()
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    saved = config.to_dict()
    saved["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                    "quantization_mode": "offline"}
    saved["torch_dtype"] = "bfloat16"
    saved.pop("dtype", None)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    sys.path.insert(0, os.path.dirname(__file__))
    from make_hf_fixtures import write_tokenizer
    write_tokenizer(folder)

    # the oracle: the folder as transformers reads it (packed weights unpacked by transformers)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ref = ref.to(torch.float32)   # autobitlinear's unpacking keeps the checkpoint's bf16 (exact trits)
    linears = [m for m in ref.modules() if isinstance(m, (hf_bitnet.BitLinear, hf_bitnet.AutoBitLinear))]
    if len(linears) != 7 * SHAPE["num_hidden_layers"]:
        sys.exit(f"{name}: transformers made {len(linears)} BitNet linear layers, expected "
                 f"{7 * SHAPE['num_hidden_layers']}")
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        logits = ref(ids).logits[0].float().numpy()
        # the same model without the int8 activation quantization: the float computation
        saved_quant, saved_act = hf_bitnet.BitLinear.activation_quant, hf_bitnet.ActQuant.apply
        hf_bitnet.BitLinear.activation_quant = lambda self, x, num_bits=8: (x, torch.ones_like(x[..., :1]))
        hf_bitnet.ActQuant.apply = lambda x: x
        try:
            logits_float = ref(ids).logits[0].float().numpy()
        finally:
            hf_bitnet.BitLinear.activation_quant, hf_bitnet.ActQuant.apply = saved_quant, saved_act
    np.save(os.path.join(folder, "tokens.npy"), np.asarray(PROMPT_IDS, np.int32))
    np.save(os.path.join(folder, "logits.npy"), logits.astype(np.float32))
    np.save(os.path.join(folder, "logits_float_act.npy"), logits_float.astype(np.float32))
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "seed": seed,
                   "linear_class": linear_class, "layer": type(linears[0]).__name__,
                   "logits": "transformers as is (int8 activations per token)",
                   "logits_float_act": "activation quantization replaced by the identity"}, f, indent=2)
    size = sum(os.path.getsize(os.path.join(folder, x)) for x in os.listdir(folder))
    rel = np.abs(logits - logits_float).max() / np.abs(logits_float).max()
    print(f"{name}: {type(linears[0]).__name__}, logit range {np.ptp(logits):.3f}, int8 activations move "
          f"them by {rel:.4f} of the range, {size / 1024:.0f} KiB")


# ---------------------------------------------------------------- I2_S from bitnet.cpp

_SHIM = """// harness: bitnet.cpp's quantize_i2_s with the two ggml symbols it uses
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
enum { GGML_TYPE_I2_S = 36 };
// ggml's type table gives I2_S one element per block of one byte
static size_t ggml_row_size(int type, int64_t n) { (void)type; return (size_t)n; }
"""

_MAIN = """
int main(int argc, char ** argv) {
    // argv: rows cols in.f32 out.bin
    int64_t nrow = atoll(argv[1]), ncol = atoll(argv[2]);
    std::vector<float> src(nrow * ncol);
    FILE * f = fopen(argv[3], "rb");
    if (!f || fread(src.data(), sizeof(float), src.size(), f) != src.size()) return 1;
    fclose(f);
    std::vector<uint8_t> dst(nrow * ncol / 4 + 32, 0);
    size_t n = quantize_i2_s(src.data(), dst.data(), nrow, ncol, nullptr);
    f = fopen(argv[4], "wb");
    fwrite(dst.data(), 1, n, f);
    fclose(f);
    return 0;
}
"""


def _function_source(text: str, signature: str) -> str:
    """The text of the C function starting at `signature`, through its matching brace."""
    start = text.index(signature)
    depth, i = 0, text.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start: i + 1]
        i += 1


def i2s_from_c(src_dir: str, w: np.ndarray) -> bytes:
    mad = open(os.path.join(src_dir, "src", "ggml-bitnet-mad.cpp")).read()
    # the QK_I2_S definition (per ISA) and the function itself, verbatim from the checkout
    qk = mad[mad.index("#if defined(__AVX__)"): mad.index("#endif", mad.index("#define QK_I2_S")) + len("#endif")]
    body = _function_source(mad, "size_t quantize_i2_s(")
    with tempfile.TemporaryDirectory() as tmp:
        cpp = os.path.join(tmp, "harness.cpp")
        with open(cpp, "w") as f:
            f.write(_SHIM + '#include "gemm-config.h"\n#include <cmath>\n#include <cstring>\n#include <cassert>\n'
                    + qk + "\n" + body + _MAIN)
        exe = os.path.join(tmp, "harness")
        subprocess.run(["g++", "-O1", "-mavx2", "-I", os.path.join(src_dir, "include"), cpp, "-o", exe], check=True)
        w.astype(np.float32).tofile(os.path.join(tmp, "in.f32"))
        subprocess.run([exe, str(w.shape[0]), str(w.shape[1]), os.path.join(tmp, "in.f32"),
                        os.path.join(tmp, "out.bin")], check=True)
        return open(os.path.join(tmp, "out.bin"), "rb").read()


def i2s_from_python(src_dir: str, w: np.ndarray) -> bytes:
    """bitnet.cpp's converter function, taken out of its script (which needs its own gguf fork)."""
    path = os.path.join(src_dir, "utils", "convert-hf-to-gguf-bitnet.py")
    tree = ast.parse(open(path).read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "quantize_to_i2_s")
    scope = {"np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), scope)
    return scope["quantize_to_i2_s"](w).tobytes()


def make_i2s(out: str, src_dir: str, commit: str | None) -> None:
    rng = np.random.default_rng(2026)
    trits = rng.integers(-1, 2, size=I2S_SHAPE).astype(np.int8)
    w = trits.astype(np.float32) * np.float32(I2S_SCALE)
    c_bytes, py_bytes = i2s_from_c(src_dir, w), i2s_from_python(src_dir, w)
    if c_bytes != py_bytes:
        sys.exit("bitnet.cpp's C and Python I2_S quantizers disagree on the fixture matrix")
    with open(os.path.join(out, "i2s-bitnetcpp.bin"), "wb") as f:
        f.write(c_bytes)
    np.save(os.path.join(out, "i2s-trits.npy"), trits)
    commit = commit or subprocess.run(["git", "-C", src_dir, "rev-parse", "HEAD"], capture_output=True,
                                      text=True).stdout.strip()
    with open(os.path.join(out, "i2s.json"), "w") as f:
        json.dump({"shape": list(I2S_SHAPE), "scale": I2S_SCALE, "bytes": len(c_bytes),
                   "source": "microsoft/BitNet src/ggml-bitnet-mad.cpp quantize_i2_s (x86, ACT_PARALLEL) "
                             "and utils/convert-hf-to-gguf-bitnet.py quantize_to_i2_s",
                   "commit": commit or "unknown"}, f, indent=2)
    print(f"I2_S: {I2S_SHAPE} -> {len(c_bytes)} bytes, C and Python quantizers agree")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "bitnet"))
    ap.add_argument("--bitnet-src", help="a microsoft/BitNet checkout (for the I2_S fixture)")
    ap.add_argument("--bitnet-commit", help="its commit, where the checkout is no git work tree")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.bitnet_src:
        make_i2s(args.out, args.bitnet_src, args.bitnet_commit)
    for i, name in enumerate(("bitnet_2b4t", "bitnet_autobitlinear", "falcon3_style")):
        make_hf(args.out, name, seed=i)


if __name__ == "__main__":
    main()
