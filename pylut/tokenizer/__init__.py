"""Text <-> token ids for GGUF and Hugging Face vocabularies, in Python (words of
C_MERGE_MIN_CHARS or more are merged in C, see _merge.py).

Three encoders are supported:

* ``spm``  -- SentencePiece-style vocabularies (``tokenizer.ggml.model = "llama"``): spaces
  become U+2581, adjacent pieces are merged greedily by the *score of the merged piece*,
  and characters missing from the vocabulary fall back to ``<0xNN>`` byte tokens.
* ``bpe``  -- byte-level BPE (``tokenizer.ggml.model = "gpt2"``): a pre-tokenizer cuts the
  text into words, each word's UTF-8 bytes are mapped to printable characters (the GPT-2
  trick) and merged by *merge rank*.
* ``bpe-chars`` -- Hugging Face BPE over characters with byte fallback (how Llama-2/Mistral
  ``tokenizer.json`` files describe a SentencePiece model, and Gemma 4's GGUF,
  ``tokenizer.ggml.model = "gemma4"``, split at runs of newlines): SPM escaping, merge-rank
  order.

Ids match llama.cpp on its golden vocabulary tests. Every word's result is cached, so
ordinary prose costs about one regex match plus one dict lookup per word.
"""
from __future__ import annotations

import codecs
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ._merge import C_MERGE_MIN_CHARS, MergeTable, merge_symbols
from ._pretokenize import PreTokenizer

logger = logging.getLogger("pylut")

# token_type values used by GGUF (same numbering as llama.cpp / sentencepiece)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # "▁", how SentencePiece writes a space inside pieces

# Texts of tokens that end a turn or a generation in common chat formats.
END_OF_TURN_TEXTS = frozenset({
    "</s>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>",
    "<|end_of_text|>", "<end_of_turn>", "<|END_OF_TURN_TOKEN|>", "<|return|>",
    "<|end▁of▁sentence|>", "<｜end▁of▁sentence｜>", "<|endofturn|>", "<EOT>",
})

_CACHE_LIMIT = 200_000  # words; the cache is simply dropped when it grows past this
_CACHE_MAX_WORD = 256  # longer words (base64 blobs, long runs) are rare: not worth keeping


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character table: bytes that are already
    printable map to themselves, the others to code points from U+0100 upwards."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
                 + list(range(0xAE, 0xFF + 1)))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
# str.translate table taking a latin-1 decoded byte string to GPT-2 printable characters
_LATIN1_TO_GPT2 = {b: c for b, c in _BYTE_TO_CHAR.items()}


def _score_ranks(pieces: Dict[str, float]) -> Dict[str, int]:
    """piece -> integer rank of its negated score (best score 0; equal scores, equal ranks;
    NaN last), the order merge_symbols needs as integers."""
    values = np.fromiter(pieces.values(), np.float64, len(pieces))
    _, ranks = np.unique(values, return_inverse=True)  # (np.unique sorts NaN last)
    return dict(zip(pieces, ranks.reshape(-1).tolist()))


class StreamDecoder:
    """Turns a stream of token ids into text, holding back bytes of a UTF-8 character that
    is split across tokens until it is complete.

    >>> sd = tok.stream_decoder()
    >>> for t in ids: print(sd.push(t), end="")
    >>> print(sd.flush())
    """

    def __init__(self, tokenizer: "Tokenizer", special: bool = False,
                 strip_leading_space: bool = False) -> None:
        self._tok = tokenizer
        self._special = special
        self._strip = strip_leading_space
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        piece = self._tok.token_to_piece(token_id, special=self._special)
        if self._strip and piece:
            self._strip = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Text still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """Encoder/decoder for one vocabulary. Build it with :meth:`from_file`."""

    def __init__(self, tokens: Sequence[str], token_types: Sequence[int], *, model: str,
                 scores: Optional[Sequence[float]] = None,
                 merges: Optional[Sequence[Tuple[str, str]]] = None,
                 pretokenizer: Optional[PreTokenizer] = None,
                 bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 unk_id: Optional[int] = None, add_bos: bool = False, add_eos: bool = False,
                 add_space_prefix: bool = True, ignore_merges: bool = False,
                 normalize_nfc: bool = False, chat_template: Optional[str] = None,
                 extra_eot_ids: Iterable[int] = (), rstrip_ids: Iterable[int] = (),
                 lstrip_ids: Iterable[int] = (), source: str = "<memory>") -> None:
        if model not in ("spm", "bpe", "bpe-chars"):
            raise ValueError(f"{source}: unknown tokenizer model {model!r}")
        if len(token_types) != len(tokens):
            raise ValueError(f"{source}: {len(tokens)} tokens but {len(token_types)} token types")
        self.model = model
        self.source = source
        self._tokens = list(tokens)
        self._types = [int(t) for t in token_types]
        # Like llama.cpp, treat end-of-generation markers that a converter left as
        # user-defined (Phi-3's "</s>") as control tokens: parsed only on request and
        # invisible in decoded text.
        for i, text in enumerate(self._tokens):
            if self._types[i] == TOKEN_USER_DEFINED and text in END_OF_TURN_TEXTS:
                self._types[i] = TOKEN_CONTROL
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.add_space_prefix = bool(add_space_prefix)
        self.ignore_merges = ignore_merges
        self.normalize_nfc = normalize_nfc
        self.chat_template = chat_template
        self.pretokenizer = pretokenizer
        self._rstrip_ids, self._lstrip_ids = set(rstrip_ids), set(lstrip_ids)
        self._cache: Dict[str, Tuple[int, ...]] = {}
        self._merge_table: Optional[MergeTable] = None  # built at the first long word

        # Ids reachable from plain text. Control, byte and unknown tokens are excluded so
        # that e.g. the text "<s>" or "<0x41>" is never turned into those ids by merging.
        plain_types = (TOKEN_NORMAL, TOKEN_USER_DEFINED, TOKEN_UNUSED, 0)
        self._text_to_id: Dict[str, int] = {}
        for i, (text, ttype) in enumerate(zip(self._tokens, self._types)):
            if ttype in plain_types:
                self._text_to_id.setdefault(text, i)
        self._byte_ids = self._find_byte_tokens()

        if model == "spm":
            if scores is None:
                raise ValueError(f"{source}: SentencePiece vocabulary without scores")
            # merged string -> priority (lower first): the negated score of that piece
            self._priority = _score_ranks({t: -float(scores[i]) for t, i in self._text_to_id.items()})
            self._pair_keys = False
        else:
            if merges is None:
                raise ValueError(f"{source}: BPE vocabulary without merges")
            self._priority = {}
            for rank, pair in enumerate(merges):
                self._priority.setdefault(tuple(pair), rank)
            self._pair_keys = True
        if model == "bpe" and self.pretokenizer is None:
            self.pretokenizer = PreTokenizer.by_name("gpt-2")
        # Gemma 4 (llama.cpp): a run of newlines that is itself a token is taken whole.
        self._whole_newlines = model != "bpe" and pretokenizer is not None and \
            pretokenizer.name == "gemma4"
        # Splitting SPM text at each run of spaces is exact only when no mergeable piece
        # holds a space after another character; otherwise encode each fragment whole.
        self._spm_chunks = model != "bpe" and not any(
            SPM_SPACE in t.lstrip(SPM_SPACE) for t in self._text_to_id)

        # Special tokens are looked up by exact text, whatever merges could make of them.
        self._special_to_id: Dict[str, int] = {}
        for i, (text, ttype) in enumerate(zip(self._tokens, self._types)):
            if ttype in (TOKEN_USER_DEFINED, TOKEN_CONTROL, TOKEN_UNKNOWN) and text:
                self._special_to_id.setdefault(text, i)
        self._special_plain, self._special_all = self._build_special_matchers()
        self._eot_ids = self._find_eot_ids(extra_eot_ids)
        self._pieces: Optional[List[bytes]] = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "Tokenizer":
        """Load from a GGUF file (model or vocab-only) or a Hugging Face ``tokenizer.json``
        (the file, or a folder holding it and optionally ``tokenizer_config.json``)."""
        from . import loaders  # local import keeps the two modules' roles apart
        return loaders.load(cls, Path(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: Dict, source: str) -> "Tokenizer":
        """From the metadata of a GGUF file already open (``GGUFFile.metadata``), so a model
        load reads the file's header once; `source` names the file in errors."""
        from . import loaders
        return loaders.load_gguf(cls, Path(source), metadata)

    def _find_byte_tokens(self) -> List[Optional[int]]:
        """Id for each byte value: ``<0xNN>`` tokens (SPM) or GPT-2 byte characters (BPE)."""
        ids: List[Optional[int]] = [None] * 256
        if self.model == "bpe":
            for b, ch in _BYTE_TO_CHAR.items():
                ids[b] = self._text_to_id.get(ch)
        else:
            for i, (text, ttype) in enumerate(zip(self._tokens, self._types)):
                if len(text) == 6 and text.startswith("<0x") and text.endswith(">") and \
                        ttype in (TOKEN_BYTE, TOKEN_NORMAL, 0):
                    try:
                        ids[int(text[3:5], 16)] = i
                    except ValueError:
                        pass
        return ids

    def _build_special_matchers(self):
        """Regexes finding special tokens in text, longest first. User-defined tokens are
        always recognised (as llama.cpp and Hugging Face do); control and unknown ones
        only with ``parse_special=True``."""
        always, optional = [], []
        for text, ttype in zip(self._tokens, self._types):
            if not text:
                continue
            if ttype == TOKEN_USER_DEFINED:
                always.append(text)
            elif ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN):
                optional.append(text)

        def compile_alternation(texts):
            if not texts:
                return None
            texts = sorted(set(texts), key=len, reverse=True)
            return re.compile("|".join(map(re.escape, texts)))

        return compile_alternation(always), compile_alternation(always + optional)

    def _find_eot_ids(self, extra: Iterable[int]) -> Set[int]:
        ids = {i for i in extra if i is not None and 0 <= i < len(self._tokens)}
        if self.eos_id is not None:
            ids.add(self.eos_id)
        for i, text in enumerate(self._tokens):
            if text in END_OF_TURN_TEXTS and self._types[i] in (
                    TOKEN_CONTROL, TOKEN_USER_DEFINED):
                ids.add(i)
        return ids

    # ------------------------------------------------------------------ properties

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    @property
    def eot_ids(self) -> Set[int]:
        """Ids that end a turn or generation (EOS plus e.g. ``<|eot_id|>``, ``<|im_end|>``)."""
        return set(self._eot_ids)

    def token_text(self, token_id: int) -> str:
        """The raw vocabulary entry (``"▁Hello"``, ``"Ġworld"``, ``"<0x0A>"``...)."""
        return self._tokens[token_id]

    def token_type(self, token_id: int) -> int:
        return self._types[token_id]

    def token_to_id(self, text: str) -> Optional[int]:
        """Id of a vocabulary entry given its raw text, whatever its type."""
        found = self._special_to_id.get(text)
        if found is None:
            found = self._text_to_id.get(text)
        if found is None and text in self._tokens:  # byte/unused entries: rare, so a scan
            found = self._tokens.index(text)
        return found

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        pre = self.pretokenizer.name if self.pretokenizer else None
        return (f"Tokenizer(model={self.model!r}, n_vocab={self.n_vocab}, pre={pre!r}, "
                f"bos={self.bos_id}, eos={self.eos_id}, source={self.source!r})")

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = False,
               add_eos: bool = False) -> List[int]:
        """Token ids for ``text``. ``add_bos``/``add_eos`` prepend/append BOS/EOS (pass
        ``add_bos=tok.add_bos`` for the model's default); ``parse_special`` lets control
        tokens written in the text (e.g. ``<|im_start|>``) become their single ids."""
        out: List[int] = []
        if add_bos and self.bos_id is not None:
            out.append(self.bos_id)
        if text:
            if self.normalize_nfc:
                text = unicodedata.normalize("NFC", text)
            after_special = True  # SPM adds its space prefix at the start and after specials
            for fragment in self._split_special(text, parse_special):
                if isinstance(fragment, int):
                    out.append(fragment)
                    after_special = True
                else:
                    self._encode_fragment(fragment, after_special, out)
                    after_special = False
        if add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _split_special(self, text: str, parse_special: bool) -> List[Union[str, int]]:
        matcher = self._special_all if parse_special else self._special_plain
        if matcher is None:
            return [text]
        out: List[Union[str, int]] = []
        pos = 0
        strip_next = False
        for m in matcher.finditer(text):
            start, end = m.span()
            token_id = self._special_to_id[m.group()]
            before = text[pos:start]
            if strip_next:
                before = before.lstrip()
            if token_id in self._lstrip_ids:
                before = before.rstrip()
            if before:
                out.append(before)
            out.append(token_id)
            strip_next = token_id in self._rstrip_ids
            pos = end
        rest = text[pos:]
        if strip_next:
            rest = rest.lstrip()
        if rest:
            out.append(rest)
        return out

    def _encode_fragment(self, text: str, after_special: bool, out: List[int]) -> None:
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        if self.model == "bpe":
            words = self.pretokenizer.split(text)
            encode_word = self._bpe_word
        else:
            if self.add_space_prefix and after_special:
                text = " " + text
            text = text.replace(" ", SPM_SPACE)
            if self.pretokenizer is not None:
                words = self.pretokenizer.split(text)
            else:
                words = _SPM_CHUNK.findall(text) if self._spm_chunks else [text]
            encode_word = self._spm_word
        get = cache.get
        extend = out.extend
        for word in words:
            ids = get(word)
            if ids is None:
                ids = encode_word(word)
                if len(word) <= _CACHE_MAX_WORD:
                    cache[word] = ids
            extend(ids)

    def _merged_ids(self, symbols: str, fallback) -> List[int]:
        """Token ids of `symbols` (one character per initial symbol) after merging; a piece
        that is no token goes to fallback(piece, ids)."""
        if len(symbols) >= C_MERGE_MIN_CHARS:
            if self._merge_table is None:
                self._merge_table = MergeTable(self._priority, self._pair_keys,
                                               self._text_to_id.get)
            return self._merge_table.encode(symbols, fallback)
        ids: List[int] = []
        lookup = self._text_to_id.get
        for piece in merge_symbols(list(symbols), self._priority, self._pair_keys):
            token_id = lookup(piece)
            if token_id is not None:
                ids.append(token_id)
            else:
                fallback(piece, ids)
        return ids

    def _spm_word(self, word: str) -> Tuple[int, ...]:
        if self._whole_newlines and word[:1] == "\n" and not word.strip("\n"):
            whole = self._text_to_id.get(word)
            if whole is not None:
                return (whole,)
        return tuple(self._merged_ids(word, self._utf8_fallback))

    def _bpe_word(self, word: str) -> Tuple[int, ...]:
        mapped = word.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_GPT2)
        if self.ignore_merges:
            whole = self._text_to_id.get(mapped)
            if whole is not None:
                return (whole,)
        return tuple(self._merged_ids(mapped, self._gpt2_bytes_fallback))

    def _utf8_fallback(self, piece: str, ids: List[int]) -> None:
        self._append_bytes(piece.encode("utf-8"), ids)

    def _gpt2_bytes_fallback(self, piece: str, ids: List[int]) -> None:
        # a piece missing from the vocabulary: one token per byte
        self._append_bytes(bytes(_CHAR_TO_BYTE[c] for c in piece), ids)

    def _append_bytes(self, data: bytes, ids: List[int]) -> None:
        for b in data:
            token_id = self._byte_ids[b]
            if token_id is None:
                token_id = self.unk_id
            if token_id is not None:
                ids.append(token_id)

    # ------------------------------------------------------------------ decoding

    def _build_pieces(self) -> List[bytes]:
        pieces: List[bytes] = []
        spm = self.model != "bpe"
        for text, ttype in zip(self._tokens, self._types):
            if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN):
                pieces.append(b"")
            elif ttype == TOKEN_BYTE and _BYTE_TOKEN.fullmatch(text):
                pieces.append(bytes([int(text[3:5], 16)]))
            elif ttype == TOKEN_USER_DEFINED:
                pieces.append(text.encode("utf-8"))
            elif spm:
                pieces.append(text.replace(SPM_SPACE, " ").encode("utf-8"))
            else:
                try:
                    pieces.append(bytes(_CHAR_TO_BYTE[c] for c in text))
                except KeyError:  # not a byte-level entry; show it as written
                    pieces.append(text.encode("utf-8"))
        return pieces

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes a token stands for. Control tokens give ``b""`` unless ``special``.
        A piece may hold part of a UTF-8 character; see :class:`StreamDecoder`."""
        if self._pieces is None:
            self._pieces = self._build_pieces()
        if not 0 <= token_id < len(self._pieces):
            raise IndexError(f"token id {token_id} out of range (n_vocab={len(self._pieces)})")
        piece = self._pieces[token_id]
        if special and not piece and self._types[token_id] in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return self._tokens[token_id].encode("utf-8")
        return piece

    def decode_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        """Concatenated raw pieces (no leading-space handling, no UTF-8 repair)."""
        to_piece = self.token_to_piece
        return b"".join(to_piece(i, special) for i in ids)

    def decode(self, ids: Iterable[int], special: bool = False,
               strip_leading_space: Optional[bool] = None) -> str:
        """Text for ``ids``. For SentencePiece vocabularies with a space prefix, the space
        that encoding added in front of the first word is removed again (default), so that
        ``decode(encode(s)) == s``. Invalid UTF-8 becomes U+FFFD."""
        if strip_leading_space is None:
            strip_leading_space = self.model != "bpe" and self.add_space_prefix
        data = self.decode_bytes(ids, special)
        if strip_leading_space and data[:1] == b" ":
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False,
                       strip_leading_space: bool = False) -> StreamDecoder:
        """Incremental decoder for generated tokens (keeps their leading spaces)."""
        return StreamDecoder(self, special=special, strip_leading_space=strip_leading_space)


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# An SPM chunk: a run of escaped spaces plus the following non-space characters.
_SPM_CHUNK = re.compile(SPM_SPACE + "+[^" + SPM_SPACE + "]*|[^" + SPM_SPACE + "]+")
