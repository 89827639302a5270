"""Writes tests/fixtures/hf/: tiny random Hugging Face folders saved by transformers >= 5
(config.json with `rope_parameters`, fp16 safetensors, a byte-level tokenizer.json) and
transformers' own float32 logits over a fixed prompt, the oracle of tests/test_hf_rope.py.

Tool-only (CI reads the committed files):
    pip install torch==2.13.0 'transformers>=5'
    python3 tools/make_hf_fixtures.py [--out tests/fixtures/hf]

Each folder also gets tokens.npy (the prompt's ids), logits.npy [tokens, vocab] float32,
inv_freq.npy (transformers' rotary inverse frequencies) and reference.json (prompt, versions,
the cos/sin attention scaling). One folder is rewritten into the pre-5 layout (top-level
rope_theta + rope_scaling) and its logits come from transformers reading that layout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config

PROMPT = "The quick brown fox jumps over a lazy dog 42"
VOCAB = 260  # the 256 byte tokens and 4 unused rows (checkpoints pad their vocabularies)
SHAPE = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
             initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None)

# name -> (config class, extra config, rewrite to the old layout: None or the config edit)
FIXTURES = {
    "llama": (LlamaConfig, {}, None),
    # the window (128) is under the context (256): pylut runs up to the window, exactly
    "mistral": (MistralConfig, {"sliding_window": 128}, None),
    "qwen2_theta1e6": (Qwen2Config, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                                     "tie_word_embeddings": True}, None),
    # a small original context puts most pairs into the divided / smoothed bands at short prompts
    "llama3_scaled": (LlamaConfig, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 64}}, None),
    "qwen2_yarn": (Qwen2Config, {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                     "original_max_position_embeddings": 64}}, None),
    "llama_old_layout": (LlamaConfig, {"rope_parameters": {"rope_type": "linear", "rope_theta": 20000.0,
                                                           "factor": 2.0}},
                         {"rope_theta": 20000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 byte values (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(folder: str) -> None:
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = {"version": "1.0", "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "vocab": vocab, "merges": [], "unk_token": None}}
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


def make(out: str, name: str, seed: int) -> None:
    cls, extra, old_layout = FIXTURES[name]
    folder = os.path.join(out, name)
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(seed)
    config = cls(**SHAPE, **extra)
    config.architectures = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                             "qwen2": "Qwen2ForCausalLM"}[config.model_type]]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms away from 1, so a misread norm weight shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    if "rope_parameters" not in saved:
        sys.exit(f"{name}: transformers {transformers.__version__} did not write rope_parameters")
    if old_layout is not None:
        del saved["rope_parameters"]
        saved.update(old_layout)
        with open(cfg_path, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
    for junk in ("generation_config.json",):
        if os.path.exists(os.path.join(folder, junk)):
            os.remove(os.path.join(folder, junk))

    # the oracle: the folder as transformers reads it back (fp16 weights computed in fp32)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = ref(torch.tensor([ids])).logits[0].float().numpy()
    rotary = ref.model.rotary_emb
    np.save(os.path.join(folder, "tokens.npy"), np.asarray(ids, np.int32))
    np.save(os.path.join(folder, "logits.npy"), logits.astype(np.float32))
    np.save(os.path.join(folder, "inv_freq.npy"), rotary.inv_freq.float().numpy())
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump({"prompt": PROMPT, "transformers": transformers.__version__, "torch": torch.__version__,
                   "attention_scaling": float(rotary.attention_scaling), "seed": seed,
                   "rope_parameters": ref.config.rope_parameters}, f, indent=2, sort_keys=True)
    size = sum(os.path.getsize(os.path.join(folder, x)) for x in os.listdir(folder))
    print(f"{name}: {len(ids)} tokens, logit range {np.ptp(logits):.3f}, "
          f"rope {ref.config.rope_parameters}, {size / 1024:.0f} KiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for i, name in enumerate(FIXTURES):
        make(args.out, name, seed=i)


if __name__ == "__main__":
    main()
