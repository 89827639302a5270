"""Build a :class:`pylut.tokenizer.Tokenizer` from a GGUF file or a Hugging Face
``tokenizer.json``. Kept apart from the encoder so each file reads in one sitting."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._pretokenize import GPT2, PreTokenizer
from ..formats.gguf_reader import GGUF_MAGIC, read_gguf_metadata

logger = logging.getLogger("pylut")

_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = 1, 3, 4, 5, 6

# llama.cpp turns on "ignore merges" (a word that is itself a token is taken whole) and a
# default BOS for the Llama 3 family and Mistral's Tekken.
_LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
               "lfm2", "tekken"}
# Llama 3's vocabulary size and its first special token, to recognise a file whose
# converter wrote no tokenizer.ggml.pre (BitNet b1.58 2B4T's published GGUF is one).
_LLAMA3_N_VOCAB, _LLAMA3_BOS = 128256, (128000, "<|begin_of_text|>")


def load(cls, path: Path):
    if path.is_dir():
        candidate = path / "tokenizer.json"
        if not candidate.is_file():
            raise ValueError(f"{path}: folder has no tokenizer.json")
        return load_hf(cls, candidate)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC:
        return load_gguf(cls, path)
    if path.suffix == ".json" or head.lstrip()[:1] == b"{":
        return load_hf(cls, path)
    raise ValueError(f"{path}: neither a GGUF file (magic {head!r}) nor a tokenizer.json")


# --------------------------------------------------------------------------- GGUF


def _replace_undecodable(strings: List[str]) -> List[str]:
    """GGUFFile keeps a string's invalid UTF-8 as surrogates (lossless); the vocabulary reads
    it as llama.cpp shows it, one U+FFFD per bad sequence."""
    out = list(strings)
    for i, s in enumerate(out):
        if not s.isascii():
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                out[i] = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return out


def load_gguf(cls, path: Path, meta: Optional[Dict[str, Any]] = None):
    """From a GGUF file's metadata: read from `path`, or given (an open GGUFFile's)."""
    if meta is None:
        meta = read_gguf_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path}: GGUF file has no tokenizer metadata "
                         f"(tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    tokens = meta["tokenizer.ggml.tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: tokenizer.ggml.tokens must be a non-empty array of strings")
    tokens = _replace_undecodable(tokens)
    types = meta.get("tokenizer.ggml.token_type")
    types = [_TOKEN_NORMAL] * len(tokens) if types is None else types.tolist()

    if len(types) != len(tokens):
        raise ValueError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, expected "
                         f"{len(tokens)} (one per token)")

    def opt_int(key: str) -> Optional[int]:
        value = meta.get(key)
        if value is None:
            return None
        if isinstance(value, (str, float, list)) or getattr(value, "ndim", 0):
            raise ValueError(f"{path}: {key} = {value!r} should be an integer token id")
        value = int(value)
        if value >= len(tokens) and value != 0xFFFFFFFF:  # (u32 -1: llama.cpp's "none")
            raise ValueError(f"{path}: {key} = {value} is out of range: expected a token id in "
                             f"0..{len(tokens) - 1}")
        return None if value < 0 or value >= len(tokens) else value

    common: Dict[str, Any] = dict(
        bos_id=opt_int("tokenizer.ggml.bos_token_id"),
        eos_id=opt_int("tokenizer.ggml.eos_token_id"),
        unk_id=opt_int("tokenizer.ggml.unknown_token_id"),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        extra_eot_ids=[opt_int("tokenizer.ggml.eot_token_id"),
                       opt_int("tokenizer.ggml.eom_token_id")],
        source=str(path),
    )
    pre = meta.get("tokenizer.ggml.pre")

    if model == "llama":
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            raise ValueError(f"{path}: SentencePiece vocabulary without tokenizer.ggml.scores")
        if len(scores) != len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.scores has {len(scores)} entries, expected "
                             f"{len(tokens)} (one per token)")
        rstrip_ids = _phi3_rstrip_ids(meta, tokens, types)
        return cls(tokens, types, model="spm", scores=scores.tolist(),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                   add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
                   rstrip_ids=rstrip_ids, **common)
    if model == "gpt2":
        merges_raw = meta.get("tokenizer.ggml.merges")
        if merges_raw is None:  # test models often carry a made-up list of whole tokens
            logger.warning("%s: BPE vocabulary without tokenizer.ggml.merges; "
                           "only whole-word tokens can be produced", path)
            merges_raw = []
        merges = [tuple(m.split(" ", 1)) for m in _replace_undecodable(merges_raw)]
        if pre is None:
            pre = _guess_missing_pre(path, tokens)
        llama3 = pre in _LLAMA3_PRE
        return cls(tokens, types, model="bpe", merges=merges,
                   pretokenizer=PreTokenizer.by_name(pre), ignore_merges=llama3 or not merges,
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", llama3)), **common)
    if model == "gemma4":
        # Gemma 4: BPE over characters (not bytes) with spaces escaped to U+2581 and no
        # prefix space, merged over whole lines, <0xNN> byte fallback. llama.cpp always
        # adds BOS for it.
        merges_raw = meta.get("tokenizer.ggml.merges")
        if merges_raw is None:
            raise ValueError(f"{path}: gemma4 vocabulary without tokenizer.ggml.merges")
        merges = [tuple(m.split(" ", 1)) for m in _replace_undecodable(merges_raw)]
        return cls(tokens, types, model="bpe-chars", merges=merges,
                   pretokenizer=PreTokenizer.by_name("gemma4"), add_bos=True,
                   add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
                   **common)
    raise ValueError(f"{path}: unsupported tokenizer.ggml.model {model!r} "
                     f"(supported: 'llama', 'gpt2', 'gemma4')")


def _guess_missing_pre(path: Path, tokens: List[str]) -> str:
    """The pre-tokenizer of a byte-level BPE file that names none. llama.cpp uses its
    'default' rules; a Llama-3 vocabulary gets Llama 3's, which its text was trained with."""
    bos_id, bos_text = _LLAMA3_BOS
    if len(tokens) == _LLAMA3_N_VOCAB or (len(tokens) > bos_id and tokens[bos_id] == bos_text):
        logger.warning("%s: no tokenizer.ggml.pre; a Llama-3 vocabulary (%d tokens): using "
                       "the llama-bpe pre-tokenizer", path, len(tokens))
        return "llama-bpe"
    logger.warning("%s: no tokenizer.ggml.pre: using llama.cpp's 'default' pre-tokenizer "
                   "(text may be split differently from the model's training)", path)
    return "default"


def _phi3_rstrip_ids(meta: Dict[str, Any], tokens: List[str], types: List[int]) -> List[int]:
    """Phi-3's special tokens swallow the whitespace after them (as in its Hugging Face
    config, mirrored by llama.cpp), except <unk>, <s> and <|endoftext|>."""
    name = str(meta.get("general.name", "")).lower()
    if "phi-3" not in name and "phi3" not in name:
        return []
    keep = {"<unk>", "<s>", "<|endoftext|>"}
    return [i for i, (t, ty) in enumerate(zip(tokens, types))
            if ty in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED) and t not in keep]


# --------------------------------------------------------------------------- Hugging Face


def _token_content(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _pretokenizer_patterns(spec: Optional[dict], path: Path) -> Tuple[List[str], bool]:
    """Split patterns (in order) and whether the chain contains a ByteLevel step."""
    if not spec:
        return [], False
    kind = spec.get("type")
    if kind == "Sequence":
        patterns: List[str] = []
        byte_level = False
        for sub in spec.get("pretokenizers", []):
            sub_patterns, sub_byte = _pretokenizer_patterns(sub, path)
            patterns += sub_patterns
            byte_level = byte_level or sub_byte
        return patterns, byte_level
    if kind == "ByteLevel":
        if spec.get("add_prefix_space"):
            logger.warning("%s: ByteLevel add_prefix_space is not supported; ignored", path)
        return ([GPT2] if spec.get("use_regex", True) else []), True
    if kind == "Split":
        pattern = spec.get("pattern", {})
        if spec.get("behavior", "Isolated") != "Isolated" or spec.get("invert"):
            logger.warning("%s: Split behaviour %r/invert treated as Isolated", path,
                           spec.get("behavior"))
        if "Regex" in pattern:
            return [pattern["Regex"]], False
        import re
        return [re.escape(pattern.get("String", ""))], False
    if kind == "Digits":
        return [r"\p{N}" if spec.get("individual_digits") else r"\p{N}+"], False
    if kind in ("Metaspace", "WhitespaceSplit", "Whitespace", "Punctuation"):
        return [], False
    logger.warning("%s: unsupported pre-tokenizer %r ignored", path, kind)
    return [], False


def load_hf(cls, path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read tokenizer.json ({exc})") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or "vocab" not in model:
        raise ValueError(f"{path}: not a Hugging Face tokenizer.json (no model.vocab)")
    if model.get("type", "BPE") != "BPE":
        raise ValueError(f"{path}: unsupported tokenizer model type {model.get('type')!r} "
                         f"(only BPE is supported)")
    config_path = path.with_name("tokenizer_config.json")
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}

    vocab: Dict[str, int] = model["vocab"]
    added = data.get("added_tokens") or []
    size = max([*vocab.values(), *(t["id"] for t in added)], default=-1) + 1
    tokens = [f"[UNUSED_{i}]" for i in range(size)]
    types = [_TOKEN_UNUSED] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, _TOKEN_NORMAL
    rstrip_ids, lstrip_ids = [], []
    for t in added:
        i = t["id"]
        tokens[i] = t["content"]
        types[i] = _TOKEN_CONTROL if t.get("special") else _TOKEN_USER_DEFINED
        if t.get("rstrip"):
            rstrip_ids.append(i)
        if t.get("lstrip"):
            lstrip_ids.append(i)
    text_to_id = {t: i for i, t in enumerate(tokens)}

    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in model.get("merges", [])]
    patterns, byte_level = _pretokenizer_patterns(data.get("pre_tokenizer"), path)
    decoder = data.get("decoder") or {}
    byte_level = byte_level or decoder.get("type") == "ByteLevel"
    normalizer = json.dumps(data.get("normalizer") or {})

    def special_id(name: str) -> Optional[int]:
        return text_to_id.get(_token_content(config.get(name)))

    bos_id, eos_id = special_id("bos_token"), special_id("eos_token")
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # infer from the post-processor template, e.g. Llama 3's
        post = json.dumps(data.get("post_processor") or {})
        add_bos = bos_id is not None and json.dumps(tokens[bos_id]) in post
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)

    common: Dict[str, Any] = dict(
        bos_id=bos_id, eos_id=eos_id, unk_id=text_to_id.get(model.get("unk_token")),
        add_bos=bool(add_bos), add_eos=bool(config.get("add_eos_token", False)),
        chat_template=template, rstrip_ids=rstrip_ids, lstrip_ids=lstrip_ids,
        normalize_nfc='"NFC"' in normalizer, source=str(path))
    if byte_level:
        pretokenizer = PreTokenizer(patterns or [GPT2], "hf")
        return cls(tokens, types, model="bpe", merges=merges, pretokenizer=pretokenizer,
                   ignore_merges=bool(model.get("ignore_merges", False)), **common)
    # SentencePiece converted to BPE (Llama 2, Mistral): spaces escaped to U+2581, a
    # prefix space from a Prepend normalizer or a Metaspace pre-tokenizer.
    pre_spec = json.dumps(data.get("pre_tokenizer") or {})
    add_prefix = '"Prepend"' in normalizer or (
        '"Metaspace"' in pre_spec and '"never"' not in pre_spec)
    if model.get("byte_fallback"):  # mark the <0xNN> entries as the byte tokens they are
        for i, text in enumerate(tokens):
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">") \
                    and types[i] == _TOKEN_NORMAL:
                types[i] = _TOKEN_BYTE
    else:
        logger.warning("%s: BPE without ByteLevel or byte_fallback; unknown characters "
                       "map to the unknown token", path)
    return cls(tokens, types, model="bpe-chars", merges=merges,
               add_space_prefix=add_prefix, **common)
