"""make_arch_zoo.py - the architecture zoo: tiny models made by transformers (random init, then
TRAIN_STEPS Adam steps on the corpus, see train), converted and quantized by llama.cpp's own
tools, with both engines' logits, as test fixtures.

    python3 tools/make_arch_zoo.py [OUT]  [--only NAME ...]   (default tests/fixtures/zoo)

Tool-only (CI reads the committed files and needs none of these):
    pip install torch==2.13.0 'transformers>=5' llama-cpp-python sentencepiece protobuf
    LLAMA_CPP_DIR=<llama-cpp-python sdist>/vendor/llama.cpp   (its convert_hf_to_gguf.py and
    gguf-py; default: the first of LLAMA_CPP_DIRS below that exists)

Per entry of ZOO (one HF config + the quant types to write + a prompt), in OUT/<name>/:

    hf/                  the transformers folder (config.json, fp16 model.safetensors,
                         tokenizer.json, ...), kept when the entry says keep_hf
    <name>-<TYPE>.gguf   convert_hf_to_gguf.py (F32) -> llama_model_quantize -> TYPE
    oracle.npz           prompt    int32 [n]          the prompt's ids (the HF tokenizer's)
                         hf_logits float16 [n, vocab] transformers over the fp16 weights in fp32
                                   (entries that keep their HF folder or ask hf_logits)
                         lcpp_logits_<TYPE> float16 [n, vocab]  llama.cpp, prompt in one batch
                         lcpp_greedy_<TYPE> int32 [32]          llama.cpp's greedy continuation
                         lcpp_prompt int32 [m]        llama.cpp's tokenization of the prompt text
                         lcpp_logits_<TYPE>_ctx<N>    the prompt's logits with n_ctx N, for each
                                   N of the entry's extra_n_ctx
                         meta      JSON: the entry, the tensor types llama.cpp's quantizer chose
                                   per file (K-quants fall back where a row length is not a
                                   multiple of 256), versions
    OUT/manifest.json    every entry's files and sizes (the fixture budget is a few MB in all)

Adding an architecture is a ZOO entry: a config dict for `AutoConfig.for_model(model_type,
**config)`, the quant types, the tokenizer recipe (TOKENIZERS) and optionally `init`
(parameter-name suffix -> how to redraw it, so a misread weight shows in the logits).
K-quant types need every matrix row length (hidden, ffn, q dim) a multiple of 256: give those
types their own wide entry and keep F16/Q8_0 on a narrow one, which holds the sizes down.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_DIRS = ["/work/llamacpp-src/llama_cpp_python-0.3.36/vendor/llama.cpp"]
N_GREEDY = 32
SEED = 1234

# ---------------------------------------------------------------- the prompt and tokenizers

# ~100 tokens, the same for every entry: top-1 agreement with llama.cpp is a proportion, and
# 95 % of ~50 positions would leave room for two near-ties only
PROMPT = ("Once upon a time there was a tiny language model that learned to count: one, two, three. "
          "The quick brown fox jumps over the lazy dog; 12 cats sat on 3 mats, isn't it?")

# the training text of the tiny BPE vocabularies (fixed here so they are reproducible)
CORPUS = """\
The quick brown fox jumps over the lazy dog. A lazy dog sleeps in the sun while the fox runs.
It's a small model, isn't it? We'll see what they've done and what you'd like to try.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 42 100 365 1024 2024 3.14159 2.71828 1e-5 -7.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)  # squares
class Cat: pass
Cats sat on mats, dogs sat on logs; the cat and the dog are friends. Hello, world!
Once upon a time there was a tiny language model that learned to count: one, two, three.
"""

# pre-tokenizer name (as convert_hf_to_gguf.py writes tokenizer.ggml.pre) -> the split regex
# llama.cpp's llama-vocab.cpp uses for it (the tokenizer.json form)
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_REGEX = {
    "qwen2": _CONTRACTIONS + r"\p{N}" + _REST,
    "llama-bpe": _CONTRACTIONS + r"\p{N}{1,3}" + _REST,
    "falcon3": _CONTRACTIONS + r"\p{N}{1,3}" + _REST,   # llama-vocab.cpp: LLAMA3's
}

# recipe name -> how the tokenizer is built (see build_tokenizer):
#   kind "bpe": byte-level BPE split by PRE_REGEX[pre]; the converter writes tokenizer.ggml.pre = pre
#   kind "spm": a SentencePiece BPE model with byte fallback (tokenizer.model), a llama vocab in GGUF
TOKENIZERS = {
    "qwen2": dict(kind="bpe", pre="qwen2", vocab=320, bos=None, eos="<|im_end|>",
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "llama-bpe": dict(kind="bpe", pre="llama-bpe", vocab=320, bos="<|begin_of_text|>", eos="<|eot_id|>",
                      specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                "<|end_header_id|>", "<|eot_id|>"]),
    "falcon3": dict(kind="bpe", pre="falcon3", vocab=320, bos=None, eos="<|endoftext|>",
                    specials=[">>TITLE<<", ">>ABSTRACT<<", "<|pad|>", "<|endoftext|>"]),
    "spm": dict(kind="spm", vocab=320, bos="<s>", eos="</s>", specials=["<unk>", "<s>", "</s>"]),
    # Phi-4-mini's: a byte-level BPE that tokenizer_config.json calls GPT2Tokenizer, the only
    # BPE vocabulary the phi3 converter takes (anything else needs a sentencepiece tokenizer.model)
    "phi4": dict(kind="bpe", pre="llama-bpe", vocab=320, bos="<|begin_of_text|>", eos="<|eot_id|>",
                 specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], tokenizer_class="GPT2Tokenizer"),
}


def _train_bpe(recipe: dict):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(ignore_merges=recipe["pre"] in ("llama-bpe", "falcon3")))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_REGEX[recipe["pre"]]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe["vocab"], special_tokens=recipe["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    return tok


def _train_spm(recipe: dict, folder: Path):
    """Mistral-7B / Llama-2 style: a SentencePiece BPE model (tokenizer.model, byte fallback,
    <unk> <s> </s> at 0-2) as those checkpoints ship it; transformers converts it to its
    tokenizer.json and the converter reads tokenizer.model (its scores) for the GGUF."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS.splitlines() * 4), model_writer=buf,
                                   vocab_size=recipe["vocab"], model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   split_digits=True, allow_whitespace_only_pieces=True,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity",
                                   num_threads=1, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True, add_eos_token=False, legacy=False)))
    return AutoTokenizer.from_pretrained(folder)


def build_tokenizer(recipe_name: str, folder: Path):
    """Train the recipe's vocabulary and save it with transformers (tokenizer.json and
    tokenizer_config.json; tokenizer.model too for "spm"); returns the transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast
    recipe = TOKENIZERS[recipe_name]
    if recipe["kind"] == "spm":  # needs sentencepiece and protobuf
        fast = _train_spm(recipe, folder)
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=_train_bpe(recipe), bos_token=recipe["bos"],
                                       eos_token=recipe["eos"])
    if recipe.get("chat_template"):
        fast.chat_template = recipe["chat_template"]
    fast.save_pretrained(folder)
    if recipe.get("tokenizer_class"):
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = recipe["tokenizer_class"]
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return fast


# ---------------------------------------------------------------- the zoo

# narrow: F16/Q8_0 and the transformers comparison; wide: every matrix row a multiple of 256,
# so llama.cpp's Q4_K/Q2_K quantize them without fallbacks. One wide layer: its 256 x 256
# matrices are what the fixture budget (a few MB for the whole zoo) pays for.
NARROW = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
              initializer_range=0.1)
WIDE = dict(NARROW, hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_key_value_heads=1,
            head_dim=64)
FLOAT_TYPES, K_TYPES = ["F16", "Q8_0"], ["Q4_K", "Q2_K"]
# norms away from 1 and biases away from 0, so a misread one shows
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)
DEFAULT_INIT = {"norm.weight": ("one_plus", 0.2), ".bias": ("normal", 0.2)}



def _longrope(n_pairs: int, seed: int) -> dict:
    """LongRoPE parameters with short factors in [1, 4] and long ones in [4, 40] per pair:
    far enough from 1 (and from each other) that ignoring or swapping them shows."""
    rng = np.random.default_rng(seed)
    factors = lambda lo, hi: [round(float(x), 4) for x in np.sort(rng.uniform(lo, hi, n_pairs))]  # noqa: E731
    return {"rope_type": "longrope", "short_factor": factors(1.0, 4.0), "long_factor": factors(4.0, 40.0)}


# Phi-3.5/4-mini: max context 1024 over an original 256 (attention factor sqrt(1 + ln 4 / ln 256)).
# llama.cpp pads n_ctx to 256 and uses the long factors only past the original context, so its
# oracle runs the short ones, as transformers does for a prompt under 256 tokens.
PHI3 = dict(max_position_embeddings=1024, original_max_position_embeddings=256)

ZOO: dict[str, dict] = {
    "qwen3": dict(model_type="qwen3", config=dict(NARROW, tie_word_embeddings=True),
                  quants=FLOAT_TYPES, tokenizer="qwen2", keep_hf=True),
    "qwen3-k": dict(model_type="qwen3", config=dict(WIDE, tie_word_embeddings=True),
                    quants=K_TYPES, tokenizer="qwen2", keep_hf=False),
    # Qwen3's published YaRN setting (rope_scaling yarn, factor 4) on a small original context:
    # the converter writes rope.scaling.type/factor/original_context_length
    "qwen3-yarn": dict(model_type="qwen3", config=dict(NARROW, tie_word_embeddings=True, rope_parameters=dict(
        rope_type="yarn", rope_theta=1e6, factor=4.0, original_max_position_embeddings=64)),
        quants=["F16"], tokenizer="qwen2", keep_hf=False, hf_logits=True),
    # Llama 3.2: llama3 RoPE scaling (the converter writes rope_freqs.weight), tied embeddings.
    # A small original context puts most pairs into the divided and smoothed bands, so
    # ignoring the factors moves the logits within the prompt.
    "llama3.2": dict(model_type="llama", config=dict(NARROW, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
                     quants=FLOAT_TYPES, tokenizer="llama-bpe", keep_hf=True),
    "llama3.2-k": dict(model_type="llama", config=dict(WIDE, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
                       quants=K_TYPES, tokenizer="llama-bpe", keep_hf=False),
    # Mistral 7B: SentencePiece vocabulary, a sliding window (HF only: llama.cpp's converter
    # writes none for MistralForCausalLM) longer than the prompt (155 tokens of this vocabulary)
    "mistral": dict(model_type="mistral", config=dict(NARROW, sliding_window=160, rope_theta=1e6),
                    quants=FLOAT_TYPES, tokenizer="spm", keep_hf=True),
    # Falcon3: llama with head_dim * heads > hidden and its own pre-tokenizer name
    "falcon3": dict(model_type="llama", config=dict(NARROW, num_attention_heads=2, num_key_value_heads=1, head_dim=48,
                                                    rope_theta=1000042.0),
                    quants=FLOAT_TYPES, tokenizer="falcon3", keep_hf=True),
    # Phi-3.5-mini: fused qkv_proj / gate_up_proj, LongRoPE, untied head, a window past the context
    # (extra_n_ctx: llama.cpp's logits at n_ctx 300 too, which it pads to 512: the long factors)
    "phi3": dict(model_type="phi3", config=dict(NARROW, **PHI3, rope_parameters=_longrope(8, 1),
                                                sliding_window=2048, tie_word_embeddings=False),
                 quants=FLOAT_TYPES, tokenizer="phi4", keep_hf=True, extra_n_ctx=[300]),
    # Phi-4-mini: partial rotary 0.75 (12 of 16 dims: 6 factor pairs), tied head, no window
    # (the converter writes 0)
    "phi4mini": dict(model_type="phi3", config=dict(NARROW, **PHI3, sliding_window=None, tie_word_embeddings=True,
                                                    rope_parameters=dict(_longrope(6, 3), partial_rotary_factor=0.75)),
                     quants=FLOAT_TYPES, tokenizer="phi4", keep_hf=True),
    "phi3-k": dict(model_type="phi3", config=dict(WIDE, **PHI3, rope_parameters=_longrope(32, 5),
                                                  sliding_window=2048, tie_word_embeddings=False),
                   quants=K_TYPES, tokenizer="phi4", keep_hf=False),
    # SmolLM3: no RoPE on every 4th layer (layer 3 of 4), tied head
    "smollm3": dict(model_type="smollm3", config=dict(NARROW, num_hidden_layers=4, rope_theta=5e6,
                                                      tie_word_embeddings=True),
                    quants=FLOAT_TYPES, tokenizer="llama-bpe", keep_hf=True),
}

# Gemma: a window (8) far shorter than the prompt; query_pre_attn_scalar = head_dim, where
# transformers' scale and llama.cpp's (1/sqrt(head_dim) but for the 27B sizes) agree; Gemma's
# norms scale by (1 + weight), so their random weights sit around 0. Gemma 2: soft-caps small
# enough to bite, layers alternating windowed / global. Gemma 3: six layers, so the default
# pattern (every 6th global; the converter writes no pattern key) has a global layer, with
# linear RoPE scaling there and the local base elsewhere.
GEMMA = dict(NARROW, sliding_window=8, query_pre_attn_scalar=16)
GEMMA_WIDE = dict(WIDE, sliding_window=8, query_pre_attn_scalar=64)
GEMMA_INIT = {"norm.weight": ("normal", 0.2)}
GEMMA2_CAPS = dict(attn_logit_softcapping=1.5, final_logit_softcapping=2.0)
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
ZOO.update({
    "gemma2": dict(model_type="gemma2", config=dict(GEMMA, **GEMMA2_CAPS), quants=FLOAT_TYPES, tokenizer="spm",
                   keep_hf=True, init=GEMMA_INIT),
    "gemma2-k": dict(model_type="gemma2", config=dict(GEMMA_WIDE, **GEMMA2_CAPS), quants=K_TYPES, tokenizer="spm",
                     keep_hf=False, init=GEMMA_INIT),
    "gemma3": dict(model_type="gemma3_text", config=dict(GEMMA, hidden_size=32, num_attention_heads=2,
                                                         num_key_value_heads=1, num_hidden_layers=6,
                                                         rope_parameters=GEMMA3_ROPE),
                   quants=FLOAT_TYPES, tokenizer="spm", keep_hf=True, init=GEMMA_INIT),
    "gemma3-k": dict(model_type="gemma3_text", config=dict(GEMMA_WIDE, rope_parameters=GEMMA3_ROPE),
                     quants=K_TYPES, tokenizer="spm", keep_hf=False, init=GEMMA_INIT),
})


# ---------------------------------------------------------------- one entry


def _llama_cpp_dir() -> Path:
    for d in [os.environ.get("LLAMA_CPP_DIR")] + LLAMA_CPP_DIRS:
        if d and (Path(d) / "convert_hf_to_gguf.py").exists():
            return Path(d)
    sys.exit("llama.cpp's source tree not found: set LLAMA_CPP_DIR to the llama-cpp-python sdist's "
             "vendor/llama.cpp")


def make_hf(name: str, entry: dict, folder: Path, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    tok = build_tokenizer(entry["tokenizer"], folder)
    vocab = len(tok)
    config = AutoConfig.for_model(entry["model_type"], vocab_size=vocab, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=None, **entry["config"])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    init = dict(DEFAULT_INIT, **entry.get("init", {}))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            for suffix, (how, s) in init.items():
                if pname.endswith(suffix):
                    p.copy_((1 if how == "one_plus" else 0) + s * torch.randn_like(p))
                    break
    if TRAIN_STEPS:
        train(model, tok, seed)
    model.to(torch.float16).save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    return tok


# A few Adam steps on CORPUS (which the prompt's words come from), for every entry alike.
# Why: an untrained random model's logits are near-Gaussian over the vocabulary, so the
# top-2 gap at a position is a few % of the logit range, while llama.cpp's 8-bit activation
# rounding (Q8_0 / Q8_K inputs to every quantized matrix) moves its logits 1-2 % of the range:
# an exact engine then disagreed with llama.cpp's top-1 at 4-5 % of the positions, on noise
# alone (measured over seeds). Real checkpoints have the wide margins of a trained model;
# a short training run gives the tiny ones the same, without touching what is compared.
# The prompt's own sentences are held out (TRAIN_TEXT), so its margins come from what the
# model learned of the corpus, not from a memorized text.
TRAIN_STEPS, TRAIN_LR, TRAIN_LEN, TRAIN_BATCH = 100, 3e-3, 48, 8
TRAIN_TEXT = "\n".join(line for line in CORPUS.splitlines() if not (line and line[:16] in PROMPT))


def train(model, tok, seed: int) -> None:
    import torch
    ids = torch.tensor(tok(TRAIN_TEXT, add_special_tokens=False)["input_ids"])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - TRAIN_LEN, (TRAIN_BATCH,), generator=gen)
        batch = torch.stack([ids[s:s + TRAIN_LEN] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float().numpy()


# Run by convert(): llama.cpp's converter as a script, with its tokenizer detection told the
# pre-tokenizer the zoo built. convert_hf_to_gguf.py names a BPE pre-tokenizer by hashing the
# token ids of a test string; a tiny trained vocabulary has no registered hash, so this tool
# code (not the converter) replaces that lookup with the recipe's name. Gemma's converters
# read a SentencePiece tokenizer.model (the zoo's SPM vocabulary is a tokenizer.json): they
# read it as llama's converter does, through _set_vocab_llama_hf; tensors and hyperparameters
# are converted by the converter's own code.
_CONVERT = """
import runpy, sys
root, pre, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, root)
sys.path.insert(1, root + "/gguf-py")
import conversion.base as base
import conversion.gemma as gemma
def _hf_spm_vocab(self):
    self._set_vocab_llama_hf()
    self.gguf_writer.add_add_space_prefix(False)
for cls in (gemma.Gemma2Model, gemma.Gemma3Model):
    cls.set_vocab = _hf_spm_vocab
if pre:
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [root + "/convert_hf_to_gguf.py"] + argv
runpy.run_path(root + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def convert(folder: Path, out: Path, pre: str | None) -> None:
    root = _llama_cpp_dir()
    cmd = [sys.executable, "-c", _CONVERT, str(root), pre or "", str(folder), "--outtype", "f32",
           "--outfile", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"convert_hf_to_gguf.py failed on {folder}:\n{r.stderr[-4000:]}")


def quantize(src: Path, dst: Path, type_name: str) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
                    "Q4_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
                    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[type_name]
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        sys.exit(f"llama_model_quantize({src} -> {type_name}) failed")


def tensor_types(path: Path) -> dict[str, str]:
    sys.path.insert(0, str(_llama_cpp_dir() / "gguf-py"))
    import gguf
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def llamacpp_run(path: Path, ids: list[int], text: str, n_ctx: int | None = None):
    """(logits [n, vocab] for the prompt in one batch, N_GREEDY greedy ids, llama.cpp's own
    tokenization of the prompt text); n_ctx: the context llama.cpp is given (default: what
    the prompt and the greedy tokens need)."""
    import llama_cpp
    n_ctx = n_ctx or len(ids) + N_GREEDY + 8
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2,
                          logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
    greedy = []
    nxt = int(logits[-1].argmax())
    for _ in range(N_GREEDY):
        greedy.append(nxt)
        llm.eval([nxt])
        nxt = int(np.asarray(llm.scores[llm.n_tokens - 1]).argmax())
    lcpp_prompt = llm.tokenize(text.encode(), add_bos=False, special=False)
    llm.close()
    return logits, np.asarray(greedy, np.int32), np.asarray(lcpp_prompt, np.int32)


def make(out: Path, name: str, seed: int) -> dict:
    import llama_cpp
    import torch
    import transformers
    entry = ZOO[name]
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = folder / "hf" if entry.get("keep_hf") else tmp / "hf"
        tok = make_hf(name, entry, hf, seed)
        ids = tok(entry.get("prompt", PROMPT), add_special_tokens=False)["input_ids"]
        arrays = {"prompt": np.asarray(ids, np.int32)}
        if entry.get("keep_hf") or entry.get("hf_logits"):
            arrays["hf_logits"] = hf_logits(hf, ids).astype(np.float16)
        f32 = tmp / "f32.gguf"
        recipe = TOKENIZERS[entry["tokenizer"]]
        convert(hf, f32, recipe.get("pre"))
        types = {}
        for qt in entry["quants"]:
            path = folder / f"{name}-{qt}.gguf"
            quantize(f32, path, qt)
            types[qt] = tensor_types(path)
            logits, greedy, lcpp_prompt = llamacpp_run(path, ids, entry.get("prompt", PROMPT))
            arrays[f"lcpp_logits_{qt}"] = logits.astype(np.float16)
            arrays[f"lcpp_greedy_{qt}"] = greedy
            arrays["lcpp_prompt"] = lcpp_prompt
            for n_ctx in entry.get("extra_n_ctx", ()):  # settings chosen by the context (LongRoPE)
                arrays[f"lcpp_logits_{qt}_ctx{n_ctx}"] = llamacpp_run(path, ids, "", n_ctx)[0].astype(np.float16)
    meta = dict(name=name, entry=entry, seed=seed, tensor_types=types, prompt_text=entry.get("prompt", PROMPT),
                tokenizer=recipe, versions=dict(transformers=transformers.__version__, torch=torch.__version__,
                                                llama_cpp_python=llama_cpp.__version__))
    np.savez_compressed(folder / "oracle.npz", meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    fallbacks = {qt: sorted({v for k, v in t.items() if k.endswith(".weight") and v not in (qt, "F32")})
                 for qt, t in types.items()}
    same = np.array_equal(arrays["prompt"], arrays.get("lcpp_prompt", arrays["prompt"]))
    print(f"{name}: {len(ids)} prompt tokens (llama.cpp's tokenization {'agrees' if same else 'DIFFERS'}), "
          f"vocab {len(tok)}, {sum(files.values()) / 1024:.0f} KiB; "
          f"other types chosen by the quantizer: {fallbacks}")
    return dict(files=files, fallbacks=fallbacks, prompt_tokenization_agrees=bool(same))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=str(ROOT / "tests" / "fixtures" / "zoo"))
    ap.add_argument("--only", nargs="*", default=list(ZOO), choices=list(ZOO))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in args.only:
        manifest[name] = make(out, name, SEED + zlib.crc32(name.encode()) % 10000)  # stable as entries are added
    manifest = {k: manifest[k] for k in sorted(manifest) if k in ZOO}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(sum(e["files"].values()) for e in manifest.values())
    print(f"zoo: {len(manifest)} entries, {total / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
