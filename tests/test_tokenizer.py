"""Tests for pylut.tokenizer: llama.cpp golden ids, round trips, special tokens, the
Hugging Face tokenizer.json path, errors, streaming decode and the GGUF metadata reader.

The real vocabularies live in ../shared/testdata/vocab beside the repository; the rest of
llama.cpp's (Qwen3.5, Gemma 4, Falcon, StarCoder/SmolLM, ...) in the `models/` folder of
llama.cpp's source, which the llama-cpp-python sdist on PyPI carries:
tools/get_llamacpp_vocabs.sh unpacks it into the user's cache folder, where these tests look
(or into a folder named by PYLUT_LLAMACPP_MODELS).
Tests whose vocabulary is in neither place skip, naming it. ``regex`` and ``tokenizers`` serve
only as oracles."""
from __future__ import annotations

import json
import logging
import os
import random
import struct
from pathlib import Path

import pytest

from pylut.formats.gguf_reader import read_gguf_metadata
from pylut.tokenizer import Tokenizer
from pylut.tokenizer._pretokenize import PRETOKENIZER_RULES, PreTokenizer

VOCAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "vocab"
# where tools/get_llamacpp_vocabs.sh unpacks them by default (CI runs it before pytest)
LLAMACPP_MODELS = Path(os.environ.get("PYLUT_LLAMACPP_MODELS") or Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pylut" / "llama-cpp-python-0.3.36" / "models")
VOCABS = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2"]
# Every vocabulary with golden ids in llama.cpp's models/ folder that pylut's encoders cover
# (its bert-bge is WordPiece, which pylut does not load). Case counts: llama.cpp's files.
LLAMACPP_VOCABS = {"llama-spm": 46, "phi-3": 46, "llama-bpe": 46, "qwen2": 46, "gpt-2": 46,
                   "qwen35": 50, "gemma-4": 46, "falcon": 46, "starcoder": 46, "refact": 46,
                   "mpt": 46, "command-r": 46, "deepseek-coder": 46, "deepseek-llm": 46}
BPE_VOCABS = ["llama-bpe", "qwen2", "gpt-2"]
SEPARATOR = "\n__ggml_vocab_test__\n"

needs_vocab = pytest.mark.skipif(
    not VOCAB_DIR.is_dir(), reason=f"vocab fixtures not found at {VOCAB_DIR}")

# Text that exercises scripts, emoji sequences, whitespace runs, code and odd characters.
CORPUS = [
    "Hello world", " leading space", "trailing space ", "  multiple   spaces  ",
    "tabs\tand\nnewlines\r\n\r\nand more\n\n\n", "Ünïcödé façade naïve café Ærø",
    "日本語のテキストと漢字、カタカナ。", "中文测试，标点符号！“引号”", "한국어 텍스트입니다",
    "Здравствуй, мир! Ёжик", "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ", "ไทย ภาษา",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🦙🦙", "math ∑∫√∞ ≠ ≤ ±", "zero\u200bwidth joiner\u200d",
    "nbsp\u00a0here\u3000ideographic", "def f(x):\n    return x ** 2  # comment\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i]; }\n",
    '<html><body class="x">&amp;</body></html>', "It's, I'll, they've, WE'RE, she'D, 'tis",
    "1234567890 3.14159 1e-10 0xDEADBEEF 12,345,678", "!!!??? ... --- === ***",
    "\U0001D400\U0001D401 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐐀𐐨", "a" * 300, "\x00\x01 control \x7f chars",
    "¼ ½ ¾ ① Ⅻ ٣", "   \n  \t  ", "x\n", "Mixed🚀text123with\tstuff",
]


def vocab_path(name: str) -> Path:
    for folder in (VOCAB_DIR, LLAMACPP_MODELS):
        if (folder / f"ggml-vocab-{name}.gguf.out").is_file():
            return folder / f"ggml-vocab-{name}.gguf"
    return VOCAB_DIR / f"ggml-vocab-{name}.gguf"


def golden_cases(name: str):
    path = vocab_path(name)
    texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8")
    lines = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    cases = texts.split(SEPARATOR)
    if cases[-1] == "":  # the last case ends with a separator too (all but gemma-4's do)
        cases = cases[:-1]
    assert len(lines) >= len(cases)
    return [(text, [int(t) for t in line.split()]) for text, line in zip(cases, lines)]


_LOADED = {}


def load(name: str) -> Tokenizer:
    if name not in _LOADED:
        _LOADED[name] = Tokenizer.from_file(vocab_path(name))
    return _LOADED[name]


# --------------------------------------------------------------------------- golden ids


def needs_llamacpp_vocab(name: str) -> None:
    if not vocab_path(name).is_file():
        pytest.skip(f"ggml-vocab-{name}.gguf is in neither {VOCAB_DIR} nor PYLUT_LLAMACPP_MODELS "
                    f"(tools/get_llamacpp_vocabs.sh fetches llama.cpp's from PyPI)")


@pytest.mark.parametrize("name", sorted(LLAMACPP_VOCABS))
def test_golden_ids_match_llama_cpp(name):
    needs_llamacpp_vocab(name)
    tok = load(name)
    cases = golden_cases(name)
    assert len(cases) == LLAMACPP_VOCABS[name]
    failures = [(text, want, tok.encode(text)) for text, want in cases if tok.encode(text) != want]
    assert not failures, f"{name}: {len(failures)}/{len(cases)} differ, first: {failures[0]}"


@pytest.mark.parametrize("name", sorted(LLAMACPP_VOCABS))
def test_golden_ids_decode_back(name):
    needs_llamacpp_vocab(name)
    tok = load(name)
    for text, ids in golden_cases(name):
        assert tok.decode(ids) == text


@needs_vocab
@pytest.mark.parametrize("name", VOCABS)
def test_round_trip_corpus(name):
    tok = load(name)
    for text in CORPUS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.n_vocab for i in ids)
        assert tok.decode(ids) == text, (name, text)


@needs_vocab
def test_properties():
    spm, phi3, llama3, qwen2, gpt2 = (load(n) for n in VOCABS)
    assert (spm.bos_id, spm.eos_id, spm.n_vocab, spm.add_bos) == (1, 2, 32000, True)
    assert (llama3.bos_id, llama3.eos_id, llama3.n_vocab, llama3.add_bos) == (128000, 128001, 128256, True)
    assert (qwen2.add_bos, gpt2.add_bos) == (False, False)
    assert llama3.token_to_id("<|eot_id|>") in llama3.eot_ids and 128001 in llama3.eot_ids
    assert {151643, 151645} <= qwen2.eot_ids and 151644 not in qwen2.eot_ids
    assert {32000, 32007} <= phi3.eot_ids and 32010 not in phi3.eot_ids
    assert spm.chat_template is None
    assert "<|user|>" in phi3.chat_template and "<|im_start|>" in qwen2.chat_template
    assert spm.encode("Hello", add_bos=True)[0] == 1
    assert gpt2.encode("Hello", add_bos=True, add_eos=True)[-1] == 50256
    assert spm.token_to_piece(spm.token_to_id("<0x41>")) == b"A"
    assert llama3.token_to_piece(llama3.token_to_id("Ġworld")) == b" world"
    assert llama3.token_to_piece(128000) == b"" and llama3.token_to_piece(128000, special=True) == b"<|begin_of_text|>"
    with pytest.raises(IndexError):
        llama3.token_to_piece(-1)
    with pytest.raises(IndexError):
        spm.decode([32000])


# --------------------------------------------------------------------------- special tokens


@needs_vocab
def test_special_tokens_only_with_parse_special():
    qwen2 = load("qwen2")
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = qwen2.encode(text, parse_special=True)
    assert ids[0] == 151644 and ids[-1] == 151645 and len(ids) < 8
    plain = qwen2.encode(text)
    assert 151644 not in plain and 151645 not in plain
    assert qwen2.decode(plain) == text
    assert qwen2.decode(ids) == "user\nhi" and qwen2.decode(ids, special=True) == text

    llama3 = load("llama-bpe")
    ids = llama3.encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                        parse_special=True)
    assert ids[:2] == [128000, 128006] and ids[-1] == 128009


@needs_vocab
def test_spm_special_tokens_and_space_prefix():
    spm = load("llama-spm")
    ids = spm.encode("<s>Hello</s>", parse_special=True)
    # the space prefix is added again after each special token, as llama.cpp does
    assert ids == [1, spm.token_to_id("\u2581Hello"), 2]
    assert 1 not in spm.encode("<s>Hello") and 2 not in spm.encode("<s>Hello")


@needs_vocab
def test_phi3_special_tokens_swallow_following_whitespace():
    phi3 = load("phi-3")
    ids = phi3.encode("<|user|>\nHello<|end|>\n<|assistant|>", parse_special=True)
    assert ids == [32010, phi3.token_to_id("\u2581Hello"), 32007, 32001]
    # "</s>" is stored as user-defined but, as in llama.cpp, parsed only on request
    assert 2 not in phi3.encode("a</s>b") and phi3.encode("a</s>b", parse_special=True) == [263, 2, 289]


# --------------------------------------------------------------------------- Hugging Face path

LLAMA3_HF = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_HF = LLAMA3_HF.replace(r"\p{N}{1,3}", r"\p{N}")
HF_SPLITS = {"llama-bpe": [LLAMA3_HF], "qwen2": [QWEN2_HF], "gpt-2": None}


def bpe_tokenizer_json(name: str) -> dict:
    """A tokenizer.json equivalent to a byte-level BPE GGUF vocabulary."""
    meta = read_gguf_metadata(vocab_path(name))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"].tolist()
    splits = HF_SPLITS[name]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": splits is None}
    pre = byte_level if splits is None else {"type": "Sequence", "pretokenizers": [
        *({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
          for p in splits), byte_level]}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": types[i] == 3}
                         for i, t in enumerate(tokens) if types[i] != 1],
        "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": name == "llama-bpe",
                  "vocab": {t: i for i, t in enumerate(tokens) if types[i] == 1},
                  "merges": list(meta["tokenizer.ggml.merges"])},
    }


def spm_tokenizer_json(name: str) -> dict:
    """A Llama-2 style tokenizer.json (BPE over characters with byte fallback) derived from
    a SentencePiece GGUF vocabulary: merges ordered by the merged piece's score."""
    meta = read_gguf_metadata(vocab_path(name))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"].tolist()
    scores = meta["tokenizer.ggml.scores"].tolist()
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i in sorted(range(len(tokens)), key=lambda i: (-scores[i], i)):
        piece = tokens[i]
        if types[i] != 1 or len(piece) < 2:
            continue
        pairs = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        pairs.sort(key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
        merges += [f"{a} {b}" for a, b in pairs]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, t in enumerate(tokens) if types[i] in (2, 3)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens) if types[i] != 3 or t == "<unk>"},
                  "merges": merges},
    }


def oracle_texts(name: str):
    return [t for t, _ in golden_cases(name) if t] + CORPUS


@needs_vocab
@pytest.mark.parametrize("name", BPE_VOCABS)
def test_hf_tokenizer_json_matches_gguf(name, tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(bpe_tokenizer_json(name)), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>",
         "add_bos_token": False, "chat_template": "{{ messages }}"}), encoding="utf-8")
    hf = Tokenizer.from_file(tmp_path)  # the folder form
    gguf = load(name)
    assert hf.n_vocab == gguf.n_vocab and hf.chat_template == "{{ messages }}"
    for text in oracle_texts(name):
        assert hf.encode(text) == gguf.encode(text), text
        assert hf.encode(text, parse_special=True) == gguf.encode(text, parse_special=True)


@needs_vocab
@pytest.mark.parametrize("name", BPE_VOCABS)
def test_bpe_matches_hf_tokenizers_library(name):
    tokenizers = pytest.importorskip("tokenizers")
    oracle = tokenizers.Tokenizer.from_str(json.dumps(bpe_tokenizer_json(name)))
    tok = load(name)
    for text in oracle_texts(name):
        assert tok.encode(text) == oracle.encode(text, add_special_tokens=False).ids, text


@needs_vocab
def test_hf_sentencepiece_style_json(tmp_path):
    """Llama-2 style tokenizer.json (merges + byte fallback) against the library and
    against the GGUF SentencePiece encoder."""
    data = spm_tokenizer_json("llama-spm")
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    hf = Tokenizer.from_file(path)
    assert hf.model == "bpe-chars"
    spm = load("llama-spm")
    texts = oracle_texts("llama-spm")
    for text in texts:
        assert hf.encode(text) == spm.encode(text), text
        assert hf.decode(hf.encode(text)) == text
    try:
        import tokenizers
    except ImportError:
        return
    oracle = tokenizers.Tokenizer.from_str(json.dumps(data))
    for text in texts:
        assert hf.encode(text) == oracle.encode(text, add_special_tokens=False).ids, text


# --------------------------------------------------------------------------- streaming


@needs_vocab
@pytest.mark.parametrize("name", ["llama-spm", "qwen2"])
def test_stream_decoder_holds_split_characters(name):
    tok = load(name)
    text = "llama 🦙 and 日本 ✅"
    ids = tok.encode(text)
    stream = tok.stream_decoder(strip_leading_space=True)
    parts = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(parts) == text
    assert all("\ufffd" not in p for p in parts)
    # some token carries only part of a character, so some push returned nothing
    assert any(p == "" for p in parts[:-1])
    assert tok.decode_bytes(ids).decode("utf-8").lstrip(" ") == text


# --------------------------------------------------------------------------- pre-tokenizers


def _oracle_split(regex, patterns, text):
    pieces = [text]
    for pattern in patterns:
        compiled = regex.compile(pattern)
        out = []
        for piece in pieces:
            pos = 0
            for m in compiled.finditer(piece):
                if m.start() == m.end():
                    continue
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


@pytest.mark.parametrize("name", sorted(set(PRETOKENIZER_RULES) - {"deepseek-llm"}))
def test_pretokenizers_match_regex_module(name):
    # deepseek-llm is left out: its \p{LC} class depends on the Unicode version, and
    # `regex` ships a newer one than the standard library.
    regex = pytest.importorskip("regex")
    rng = random.Random(7)
    alphabet = ([chr(c) for c in range(32, 127)] * 3 + [chr(c) for c in range(0xA0, 0x600)]
                + list("\n\r\t 一丁가　、！‘\U0001F600\U00010400\U0001D7CE\U00010140\U00020000")
                + ["'s", "'LL", "  ", "\r\n"])
    texts = CORPUS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                      for _ in range(150)]
    splitter = PreTokenizer(PRETOKENIZER_RULES[name], name)
    for text in texts:
        assert splitter.split(text) == _oracle_split(regex, PRETOKENIZER_RULES[name], text), text


def test_unknown_pretokenizer_warns_and_uses_gpt2(caplog):
    with caplog.at_level(logging.WARNING, logger="pylut"):
        splitter = PreTokenizer.by_name("no-such-family")
    assert "no-such-family" in caplog.text
    assert splitter.name == "gpt-2"
    assert splitter.split("Hello  world's 123") == ["Hello", " ", " world", "'s", " 123"]


# --------------------------------------------------------------------------- GGUF metadata + errors


def _gguf_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, kvs, version: int = 3) -> Path:
    """Write a GGUF header with the given (key, type, encoded value) triples."""
    body = b"".join(_gguf_string(k) + struct.pack("<I", t) + v for k, t, v in kvs)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs)) + body)
    return path


def _str_array(items):
    return struct.pack("<IQ", 8, len(items)) + b"".join(_gguf_string(s) for s in items)


def test_gguf_meta_reads_every_value_type(tmp_path):
    kvs = [("u8", 0, struct.pack("<B", 200)), ("i8", 1, struct.pack("<b", -5)),
           ("u16", 2, struct.pack("<H", 60000)), ("i16", 3, struct.pack("<h", -300)),
           ("u32", 4, struct.pack("<I", 4_000_000_000)), ("i32", 5, struct.pack("<i", -7)),
           ("f32", 6, struct.pack("<f", 1.5)), ("bool", 7, b"\x01"),
           ("str", 8, _gguf_string("héllo")), ("u64", 10, struct.pack("<Q", 2**40)),
           ("i64", 11, struct.pack("<q", -2**40)), ("f64", 12, struct.pack("<d", 0.25)),
           ("arr_i32", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, -2, 3)),
           ("arr_str", 9, _str_array(["a", "", "ü"]))]
    meta = read_gguf_metadata(write_gguf(tmp_path / "all.gguf", kvs))
    assert [meta[k] for k in ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str",
                              "u64", "i64", "f64")] == \
        [200, -5, 60000, -300, 4_000_000_000, -7, 1.5, True, "héllo", 2**40, -2**40, 0.25]
    assert meta["arr_i32"].tolist() == [1, -2, 3] and meta["arr_str"] == ["a", "", "ü"]
    assert meta["GGUF.version"] == 3


def test_gguf_meta_errors(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 40)
    with pytest.raises(ValueError, match="magic"):
        read_gguf_metadata(bad)
    good = write_gguf(tmp_path / "t.gguf", [("general.name", 8, _gguf_string("x" * 50))])
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_gguf_metadata(cut)
    old = write_gguf(tmp_path / "v1.gguf", [], version=1)
    with pytest.raises(ValueError, match="version"):
        read_gguf_metadata(old)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        Tokenizer.from_file(tmp_path / "missing.gguf")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("just some text")
    with pytest.raises(ValueError, match="notes.txt"):
        Tokenizer.from_file(text_file)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_file(tmp_path)
    no_vocab = write_gguf(tmp_path / "weights.gguf", [("general.architecture", 8, _gguf_string("llama"))])
    with pytest.raises(ValueError, match=r"weights\.gguf.*no tokenizer metadata"):
        Tokenizer.from_file(no_vocab)
    odd = write_gguf(tmp_path / "odd.gguf", [
        ("tokenizer.ggml.model", 8, _gguf_string("t5-unigram")),
        ("tokenizer.ggml.tokens", 9, _str_array(["a", "b"]))])
    with pytest.raises(ValueError, match=r"odd\.gguf.*'t5-unigram'"):
        Tokenizer.from_file(odd)
    broken_json = tmp_path / "tokenizer.json"
    broken_json.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_file(broken_json)
    broken_json.write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    with pytest.raises(ValueError, match="Unigram"):
        Tokenizer.from_file(broken_json)


def test_tiny_handwritten_spm_gguf(tmp_path):
    """A vocabulary small enough to reason about: merges follow scores, unknown
    characters fall back to byte tokens."""
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "ab", "\u2581ab"] + \
        [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3, 1, 1, 1, 1, 1] + [6] * 256
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -1.5, -0.5] + [0.0] * 256
    kvs = [("tokenizer.ggml.model", 8, _gguf_string("llama")),
           ("tokenizer.ggml.tokens", 9, _str_array(tokens)),
           ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, len(scores)) + struct.pack(f"<{len(scores)}f", *scores)),
           ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(types)) + struct.pack(f"<{len(types)}i", *types)),
           ("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
           ("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2))]
    tok = Tokenizer.from_file(write_gguf(tmp_path / "tiny.gguf", kvs))
    assert tok.encode("ab") == [7]
    assert tok.encode("abc") == [7, 8 + ord("c")]
    assert tok.encode("ba", add_bos=True) == [1, 3, 5, 4]
    assert tok.decode(tok.encode("abé")) == "abé"


def test_bpe_gguf_without_merges_still_loads(tmp_path, caplog):
    """Made-up test vocabularies (whole-word tokens, no merges) must load."""
    words = ["Hello", "\u0120world", "<|endoftext|>"]
    kvs = [("tokenizer.ggml.model", 8, _gguf_string("gpt2")),
           ("tokenizer.ggml.tokens", 9, _str_array(words)),
           ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, 1, 3)),
           ("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2))]
    with caplog.at_level(logging.WARNING, logger="pylut"):
        tok = Tokenizer.from_file(write_gguf(tmp_path / "made_up.gguf", kvs))
    assert "merges" in caplog.text
    assert tok.n_vocab == 3 and tok.eot_ids == {2}
    assert tok.decode([0, 1, 2]) == "Hello world"
    assert tok.encode("Hello world") == [0, 1]


# --------------------------------------------------------------------------- the C merge loop


def _random_merge_case(rng, use_pairs):
    alphabet = "abcde"
    strings = set(alphabet)
    for _ in range(rng.randint(3, 40)):
        a, b = rng.choice(sorted(strings)), rng.choice(sorted(strings))
        strings.add(a + b)
    if use_pairs:  # BPE: pairs with (sometimes repeated) ranks, as a merges list gives
        pairs = {}
        for s in sorted(strings, key=len):
            if len(s) > 1:
                k = rng.randint(1, len(s) - 1)
                pairs.setdefault((s[:k], s[k:]), rng.randint(0, 30))
        priority = pairs
    else:  # SentencePiece: merged string -> rank, ties allowed
        priority = {s: rng.randint(0, 20) for s in strings if len(s) > 1}
    word = "".join(rng.choice(alphabet + "xy") for _ in range(rng.randint(0, 300)))
    return priority, word


@pytest.mark.parametrize("use_pairs", [True, False])
def test_c_merge_equals_python_reference(use_pairs):
    """src/text/bpe_merge.c against merge_symbols on random vocabularies and words (ties,
    characters no merge names, empty and one-symbol words)."""
    from pylut.tokenizer._merge import MergeTable, merge_symbols
    rng = random.Random(11 + use_pairs)
    for _ in range(300):
        priority, word = _random_merge_case(rng, use_pairs)
        pieces = merge_symbols(list(word), priority, use_pairs)
        vocab = {p: i for i, p in enumerate(sorted(set(pieces) | set("abc")))}
        vocab.pop("a", None)  # a piece that is no token goes to the fallback
        want = []
        for p in pieces:
            want += [vocab[p]] if p in vocab else [-ord(c) for c in p]
        table = MergeTable(priority, use_pairs, vocab.get)
        got = table.encode(word, lambda piece, ids: ids.extend(-ord(c) for c in piece))
        assert got == want, (priority, word)


@needs_vocab
@pytest.mark.parametrize("name", VOCABS)
def test_long_words_take_the_c_path_with_the_same_ids(name, monkeypatch):
    """Words past C_MERGE_MIN_CHARS merge in C: the same ids as the Python loop, on real
    vocabularies, for long runs and long mixed words."""
    import pylut.tokenizer as tokenizer_module
    tok = load(name)
    rng = random.Random(5)
    words = ["a" * 5000, "ab" * 777, "".join(rng.choice("abcdefgh") for _ in range(3000)),
             "é" * 300 + "日本" * 100 + "x" * 64, "0123456789" * 40, "🦙" * 70]
    tok._cache.clear()
    fast = [tok.encode(w) for w in words]
    monkeypatch.setattr(tokenizer_module, "C_MERGE_MIN_CHARS", 10 ** 9)
    tok._cache.clear()
    slow = [tok.encode(w) for w in words]
    assert fast == slow
    for w, ids in zip(words, fast):
        assert tok.decode(ids) == w


# The original expressions of the models' tokenizer.json files (as llama.cpp quotes them),
# with their case-insensitive groups: our rules spell those out for Python's re.
HF_ORIGINALS = {
    "gpt-4o": [r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "tekken": [r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen35": [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
               r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "llama-bpe": [LLAMA3_HF], "qwen2": [QWEN2_HF],
}


@pytest.mark.parametrize("name", sorted(HF_ORIGINALS))
def test_pretokenizers_match_the_models_own_expressions(name):
    regex = pytest.importorskip("regex")
    rng = random.Random(3)
    alphabet = (list("aAbBzZ'sStTdDlLmMvVrReE 0123456789/.,!?\n\r\t") * 2
                + list("ÉéÀàßŁłΣσДдǅʰ々中ـ\u0301\u0308😀"))
    texts = CORPUS + ["HTMLParser's ÉCOLE/x I'M we'Ve 12345 ǅemal ΣΑΣ", "a\u0301b\u0308C"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    splitter = PreTokenizer.by_name(name)
    for text in texts:
        assert splitter.split(text) == _oracle_split(regex, HF_ORIGINALS[name], text), text


def test_pretokenizer_names_of_the_families():
    assert PreTokenizer.by_name("falcon3").name == "llama-bpe"
    assert PreTokenizer.by_name("smollm").name == "starcoder"
    assert PreTokenizer.by_name("llama4").name == "gpt-4o"
    for name in ("qwen35", "gpt-4o", "tekken", "qwen2", "llama-bpe"):
        assert PreTokenizer.by_name(name).name == name
    assert PreTokenizer.by_name("tekken").split("HTMLParser's 2024") == \
        ["HTMLParser", "'s", " ", "2", "0", "2", "4"]
    assert PreTokenizer.by_name("gpt-4o").split("HTMLParser's 2024/x") == \
        ["HTMLParser's", " ", "202", "4", "/x"]


@needs_vocab
def test_llama3_sized_vocab_without_pre_gets_llama_bpe(caplog):
    """BitNet b1.58 2B4T's GGUF names no pre-tokenizer; its vocabulary is Llama 3's."""
    meta = dict(read_gguf_metadata(vocab_path("llama-bpe")))
    del meta["tokenizer.ggml.pre"]
    with caplog.at_level(logging.WARNING, logger="pylut"):
        tok = Tokenizer.from_gguf_metadata(meta, "no-pre.gguf")
    assert "no tokenizer.ggml.pre" in caplog.text and "llama-bpe" in caplog.text
    assert tok.pretokenizer.name == "llama-bpe" and tok.add_bos and tok.ignore_merges
    for text, want in golden_cases("llama-bpe"):
        assert tok.encode(text) == want
    gpt2 = dict(read_gguf_metadata(vocab_path("gpt-2")))
    del gpt2["tokenizer.ggml.pre"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pylut"):
        assert Tokenizer.from_gguf_metadata(gpt2, "small.gguf").pretokenizer.name == "default"
    assert "'default'" in caplog.text


@needs_vocab
def test_spm_without_space_prefix_as_gemma_files_say():
    """Gemma's GGUFs are SentencePiece with add_space_prefix = false and byte fallback."""
    meta = dict(read_gguf_metadata(vocab_path("llama-spm")))
    meta["tokenizer.ggml.add_space_prefix"] = False
    tok = Tokenizer.from_gguf_metadata(meta, "gemma-like.gguf")
    assert [tok.token_text(i) for i in tok.encode("Hello world")] == ["Hello", "\u2581world"]
    assert tok.decode(tok.encode(" Hi  there")) == " Hi  there"
    assert [tok.token_text(i) for i in tok.encode("🦙")] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


def test_c_merge_table_skips_malformed_merge_lines():
    from pylut.tokenizer._merge import MergeTable, merge_symbols
    priority = {("a",): 0, ("a", "b"): 1, ("ab", "ab"): 2}
    word = "ab" * 40 + "a"
    vocab = {"ab": 0, "abab": 1, "a": 2}
    want = [vocab[p] for p in merge_symbols(list(word), priority, True)]
    assert MergeTable(priority, True, vocab.get).encode(word, lambda p, ids: None) == want
